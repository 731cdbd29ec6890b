//! eBPF Service load balancing: the mechanism half of the kube-proxy replacement.
//!
//! The C programs in `bpf/` (socket LB on cgroup hooks, NodePort on tc) are compiled by
//! `build.rs`; [`Datapath`] loads them with aya, pins maps and links under a per-node bpffs
//! directory, and offers a typed API over frontends and backends. No Kubernetes knowledge here:
//! the control agent decides what to program.

pub mod abi;
mod datapath;
mod error;
pub mod maglev;
mod sys;

pub use datapath::{
    uninstall_dir, Algorithm, Backend, Config, Datapath, Frontend, Observer, Proto, Service, Stats,
    Uplink,
};
pub use error::Error;

/// The compiled objects, for tools and the layout test.
pub const SOCK_LB_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sock_lb.o"));
pub const TC_NODEPORT_OBJ: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tc_nodeport.o"));
