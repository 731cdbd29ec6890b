//! meshwork-proxy: the sidecar data path (see README.md). Built up layer by layer towards the
//! shape of linkerd2-proxy's `app/inbound` and `app/outbound`; README.md says what exists.

pub mod accept;
pub mod admin;
pub mod app;
pub mod config;
pub mod detect;
pub mod drain;
pub mod http;
pub mod inbound;
pub mod io;
pub mod metrics;
pub mod otlp;
pub mod outbound;
pub mod sessions;
pub mod sni;
pub mod tap;
pub mod tls;
pub mod trace;
pub mod transport_header;
pub mod upgrade;
