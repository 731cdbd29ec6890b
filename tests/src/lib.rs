//! End-to-end tests live in `tests/`; see README.md. The stack helpers they share with
//! `mesh-ctl up` (API server in a lab node, agents, DNS) live in `mesh_ctl::stack`.
