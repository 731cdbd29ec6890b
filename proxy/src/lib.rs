//! meshwork-proxy: the sidecar data path (see README.md). Built up layer by layer in the shape
//! of linkerd2-proxy's `app/inbound` and `app/outbound`; what exists so far is the first layer
//! of both stacks, protocol detection.

pub mod detect;
pub mod io;
pub mod outbound;
pub mod sni;
