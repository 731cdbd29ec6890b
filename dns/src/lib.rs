//! Cluster DNS (see README.md): `zone` (snapshot from the API objects), `answer` (query →
//! response), `forward` (other names), `server` (UDP fast path, TCP), `wire` (what the fast
//! path reads without a decode), `metrics` (Prometheus and the admin endpoints), `app` (wiring).

pub mod answer;
pub mod app;
pub mod config;
pub mod forward;
pub mod metrics;
pub mod server;
pub mod wire;
pub mod zone;
