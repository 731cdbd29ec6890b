//! What callers program: frontends, backends, services, and the loader's configuration. Plain
//! data; the map encodings live in `maps.rs`.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{
    abi::{self, Backend6Val, BackendVal, Svc6Key, SvcKey},
    maps::{BackKey, FrontKey},
};

/// Source ports NodePort SNAT allocates from (per backend address:port), unless configured.
pub const SNAT_PORTS: std::ops::RangeInclusive<u16> = 32768..=60999;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp = 6,
    Udp = 17,
}

/// What clients address: ClusterIP:port, NodeIP:nodePort or ExternalIP:port (IPv4 or IPv6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frontend {
    pub addr: IpAddr,
    pub port: u16,
    pub proto: Proto,
}

fn proto_of(p: u8) -> Option<Proto> {
    match p {
        6 => Some(Proto::Tcp),
        17 => Some(Proto::Udp),
        _ => None,
    }
}

impl Frontend {
    pub fn tcp(addr: impl Into<IpAddr>, port: u16) -> Self {
        Frontend {
            addr: addr.into(),
            port,
            proto: Proto::Tcp,
        }
    }
    pub fn udp(addr: impl Into<IpAddr>, port: u16) -> Self {
        Frontend {
            addr: addr.into(),
            port,
            proto: Proto::Udp,
        }
    }
    pub(crate) fn key(&self) -> FrontKey {
        match self.addr {
            IpAddr::V4(a) => FrontKey::V4(SvcKey {
                addr: u32::from(a).to_be(),
                port: self.port.to_be(),
                proto: self.proto as u8,
                pad: 0,
            }),
            IpAddr::V6(a) => FrontKey::V6(Svc6Key {
                addr: a.octets(),
                port: self.port.to_be(),
                proto: self.proto as u8,
                pad: 0,
            }),
        }
    }
    pub(crate) fn from_v4(k: &SvcKey) -> Option<Self> {
        Some(Frontend {
            addr: IpAddr::V4(Ipv4Addr::from(u32::from_be(k.addr))),
            port: u16::from_be(k.port),
            proto: proto_of(k.proto)?,
        })
    }
    pub(crate) fn from_v6(k: &Svc6Key) -> Option<Self> {
        Some(Frontend {
            addr: IpAddr::V6(Ipv6Addr::from(k.addr)),
            port: u16::from_be(k.port),
            proto: proto_of(k.proto)?,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Backend {
    pub addr: IpAddr,
    pub port: u16,
    /// Not on this node: a flow from outside (tc on the uplink) to it is SNATed to
    /// [`Config::snat`], so the backend's replies come back through this node. The socket hooks
    /// ignore it. The caller decides what is remote.
    pub remote: bool,
}

impl Backend {
    pub fn new(addr: impl Into<IpAddr>, port: u16) -> Self {
        Backend {
            addr: addr.into(),
            port,
            remote: false,
        }
    }
    /// This backend with [`Backend::remote`] set to `remote`.
    pub fn with_remote(mut self, remote: bool) -> Self {
        self.remote = remote;
        self
    }
    pub(crate) fn identity(&self) -> Vec<u8> {
        let mut v = match self.addr {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        };
        v.extend_from_slice(&self.port.to_be_bytes());
        v
    }
    pub(crate) fn key(&self, proto: Proto) -> BackKey {
        let flags = if self.remote { abi::BACKEND_REMOTE } else { 0 };
        match self.addr {
            IpAddr::V4(a) => BackKey::V4(BackendVal {
                addr: u32::from(a).to_be(),
                port: self.port.to_be(),
                proto: proto as u8,
                flags,
            }),
            IpAddr::V6(a) => BackKey::V6(Backend6Val {
                addr: a.octets(),
                port: self.port.to_be(),
                proto: proto as u8,
                flags,
            }),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Algorithm {
    #[default]
    Random,
    Maglev,
}

/// One frontend and where it leads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub frontend: Frontend,
    /// Empty: connects fail at once.
    pub backends: Vec<Backend>,
    pub algorithm: Algorithm,
    /// sessionAffinity ClientIP timeout; the client is the pod (its network namespace) for
    /// socket LB and the source address for NodePort.
    pub affinity: Option<Duration>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub connects: u64,
    pub no_backend: u64,
    pub packets: u64,
    pub bytes: u64,
}

/// Where NodePort/ExternalIP traffic from outside arrives.
#[derive(Clone, Debug)]
pub struct Uplink {
    /// The node's network namespace (None: the caller's).
    pub netns: Option<PathBuf>,
    pub name: String,
}

#[derive(Clone, Debug)]
pub struct Config {
    /// Per-node pin directory, e.g. `/sys/fs/bpf/meshwork/<node>`; must be on bpffs.
    pub pin_dir: PathBuf,
    /// cgroup v2 directory whose sockets are load balanced (the node's subtree).
    pub cgroup: PathBuf,
    pub uplink: Option<Uplink>,
    /// The node address tc SNATs flows from outside to [`Backend::remote`] backends to (their
    /// replies must reach this node's uplink at it); None: no SNAT, remote backends are only
    /// DNATed. Applied only with an uplink; then `net.ipv4.conf.<uplink>.accept_local` is set
    /// to 1 in the uplink's namespace: the kernel would otherwise drop the SNATed packets (and
    /// replies from a NodeIP frontend) as martians with a local source.
    pub snat: Option<Ipv4Addr>,
    /// Source ports SNAT allocates from.
    pub snat_ports: std::ops::RangeInclusive<u16>,
}

impl Config {
    pub const BPFFS: &'static str = "/sys/fs/bpf";

    pub fn new(node: &str, cgroup: impl Into<PathBuf>) -> Self {
        Config {
            pin_dir: Path::new(Self::BPFFS).join("meshwork").join(node),
            cgroup: cgroup.into(),
            uplink: None,
            snat: None,
            snat_ports: SNAT_PORTS,
        }
    }
}
