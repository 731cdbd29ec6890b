//! The node agent (kube-proxy / cilium-agent role, see README.md): `desired` (pure Service
//! semantics over `meshwork-service-model`), `incremental` (which Services a pass replans, from
//! the reflectors' per-object changes), `plan` (desired vs programmed), `apply` (operations
//! onto a `meshwork_ebpf::Datapath`), `sync` (the Service datapath loop), `overlay` (the
//! overlay loop from Node objects, via the pure `nodes`), `discover` (node-local settings in a
//! DaemonSet pod), `destination` (the proxies' discovery API), `app` (wiring only), `metrics`
//! (Prometheus, /healthz, datapath drops).

pub mod app;
pub mod apply;
pub mod config;
pub mod desired;
pub mod destination;
pub mod discover;
pub mod incremental;
pub mod metrics;
pub mod nodes;
pub mod overlay;
pub mod plan;
pub mod sync;
