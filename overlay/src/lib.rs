//! Node-side VXLAN overlay (see README.md): a pure plan plus a thin netlink applier.

mod apply;
mod plan;

pub use apply::{Error, Overlay, OverlayConfig};
pub use plan::{plan, vtep_addr, vtep_mac, Desired, Observed, Op, RemoteNode};
