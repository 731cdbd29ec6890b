//! The node agent (kube-proxy / cilium-agent role, see README.md): `desired` (pure Service
//! semantics), `plan` (desired vs programmed), `app` (watch → plan → eBPF datapath), `metrics`
//! (Prometheus and /healthz). The proxy's discovery and identity gRPC services join `app` as
//! modules when the proxy lands.

pub mod app;
pub mod apply;
pub mod config;
pub mod desired;
pub mod discover;
pub mod incremental;
pub mod metrics;
pub mod nodes;
pub mod plan;
