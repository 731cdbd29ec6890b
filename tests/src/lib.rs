//! End-to-end tests live in `tests/`; see README.md. The lab cluster builder and the component
//! starters they share with `mesh-ctl up` (API server in a lab node, agents, DNS) live in
//! `meshwork_lab::cluster` and `meshwork_lab::stack`.
