//! eBPF Service load balancing (the mechanism half of the kube-proxy replacement) and the
//! mesh's interception.
//!
//! The C programs in `bpf/` (socket LB on cgroup hooks, NodePort on tc) are compiled by
//! `build.rs`. The crate, by layer (README.md, "Rust side, by layer"):
//! - `model`: what callers program (frontends, backends, services, the loader's config);
//! - `loader`: [`BpfDatapath`] loads the objects with aya, attaches and pins programs and maps
//!   under a per-node bpffs directory;
//! - `programmer`: ids, reference counts, the transactional update and read-back, over the
//!   [`maps::Maps`] seam (the kernel's maps, or [`fake::FakeMaps`] in tests);
//! - `observer`: read-only access to another process's pinned maps;
//! - `mesh`: outbound interception of meshed pods (connect4 to the proxy, SO_ORIGINAL_DST
//!   answered by a getsockopt program).
//!
//! No Kubernetes knowledge here: the control agent decides what to program.

pub mod abi;
mod error;
pub mod fake;
mod loader;
pub mod maglev;
pub mod maps;
pub mod mesh;
mod model;
mod observer;
mod programmer;
pub mod sys;

pub use error::Error;
pub use loader::{uninstall_dir, BpfDatapath};
pub use model::{Algorithm, Backend, Config, Frontend, Proto, Service, Stats, Uplink, SNAT_PORTS};
pub use observer::{drops, Observer};
pub use programmer::Programmer;

/// The datapath as the control agent drives it: the kernel's ([`BpfDatapath`]) or, in tests,
/// [`FakeDatapath`].
pub trait Datapath: Send {
    /// Programs `s`, replacing what its frontend had. On error nothing changed.
    fn upsert(&mut self, s: &Service) -> Result<(), Error>;
    /// Removes a frontend; false if it was not programmed.
    fn remove(&mut self, f: &Frontend) -> Result<bool, Error>;
    /// What is programmed, read back from the maps.
    fn list(&self) -> Result<Vec<Service>, Error>;
    fn stats(&self, f: &Frontend) -> Result<Option<Stats>, Error>;
    /// Frees what earlier updates retired once no program can still read it.
    fn settle(&mut self);
}

/// The programming logic over in-memory maps.
pub type FakeDatapath = Programmer<fake::FakeMaps>;

impl<M: maps::Maps + Send> Datapath for Programmer<M> {
    fn upsert(&mut self, s: &Service) -> Result<(), Error> {
        Programmer::upsert(self, s)
    }
    fn remove(&mut self, f: &Frontend) -> Result<bool, Error> {
        Programmer::remove(self, f)
    }
    fn list(&self) -> Result<Vec<Service>, Error> {
        Programmer::list(self)
    }
    fn stats(&self, f: &Frontend) -> Result<Option<Stats>, Error> {
        Programmer::stats(self, f)
    }
    fn settle(&mut self) {
        Programmer::settle(self)
    }
}

/// The compiled objects, for tools and the layout test.
pub const SOCK_LB_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sock_lb.o"));
/// Outbound interception of meshed pods (`bpf/mesh_redirect.c`, `mesh.rs`).
pub const MESH_REDIRECT_OBJ: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mesh_redirect.o"));
pub const TC_NODEPORT_OBJ: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tc_nodeport.o"));
/// The BPF_PROG_RUN harness of the socket LB's decision (`bpf/tests/sock_lb_test.c`): tests
/// only, never attached.
pub const SOCK_LB_TEST_OBJ: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sock_lb_test.o"));
