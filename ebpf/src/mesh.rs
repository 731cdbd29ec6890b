//! Outbound interception for meshed pods (`bpf/mesh_redirect.c`): loading the programs once
//! per node, attaching them to a pod's cgroup with pinned links (they outlive the loader, as
//! the Service LB's do), and the per-pod entries that switch interception on. No Kubernetes
//! here: the node runtime decides which pods and ports (orchestrator/src/node/mesh.rs).

use std::{
    fs::File,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use aya::{
    maps::{
        lpm_trie::{Key, LpmTrie},
        HashMap, MapData, SockHash,
    },
    programs::{CgroupSockAddr, CgroupSockopt, SkLookup, SockOps},
    Ebpf, EbpfLoader,
};

use crate::{sys, Error, MESH_REDIRECT_OBJ};

/// bpf_attach_type values (uapi `enum bpf_attach_type`).
const BPF_CGROUP_SOCK_OPS: u32 = 3;
const BPF_CGROUP_INET4_CONNECT: u32 = 10;
const BPF_CGROUP_INET6_CONNECT: u32 = 11;
const BPF_CGROUP_GETSOCKOPT: u32 = 21;
const BPF_SK_LOOKUP: u32 = 36;
const INBOUND_PROG: &str = "mw_mesh_inbound";

const PROGS: &[(&str, u32)] = &[
    ("mw_mesh_connect4", BPF_CGROUP_INET4_CONNECT),
    ("mw_mesh_connect6", BPF_CGROUP_INET6_CONNECT),
    ("mw_mesh_sockops", BPF_CGROUP_SOCK_OPS),
    ("mw_mesh_getsockopt", BPF_CGROUP_GETSOCKOPT),
];

/// `struct mw_mesh_pod`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct PodVal {
    proxy_cgroup: u64,
    outbound_port: u16,
    pad: [u16; 3],
}
// SAFETY: plain old data, no padding beyond the explicit field.
unsafe impl aya::Pod for PodVal {}

/// `struct mw_mesh_skip_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct SkipKey {
    netns: u64,
    port: u16,
    pad: [u16; 3],
}
// SAFETY: plain old data, no padding beyond the explicit field.
unsafe impl aya::Pod for SkipKey {}

/// `struct mw_mesh_net_key` after its prefixlen (aya's `Key` carries that).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct NetKey {
    netns_lo: u32,
    netns_hi: u32,
    addr: u32,
}
// SAFETY: plain old data, no padding.
unsafe impl aya::Pod for NetKey {}

impl NetKey {
    fn of(netns: u64) -> NetKey {
        NetKey {
            netns_lo: netns as u32,
            netns_hi: (netns >> 32) as u32,
            addr: 0,
        }
    }
    fn netns(&self) -> u64 {
        u64::from(self.netns_hi) << 32 | u64::from(self.netns_lo)
    }
}

/// `struct mw_mesh_in`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct InVal {
    inbound_port: u16,
    admin_port: u16,
    pad: u32,
}
// SAFETY: plain old data, no padding beyond the explicit field.
unsafe impl aya::Pod for InVal {}

/// `struct mw_mesh_in_skip_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct InSkipKey {
    addr: u32,
    port: u16,
    pad: u16,
}
// SAFETY: plain old data, no padding beyond the explicit field.
unsafe impl aya::Pod for InSkipKey {}

/// Inbound steering of one pod: connections to `addr` on any other port go to the proxy.
#[derive(Clone, Debug)]
pub struct MeshInbound {
    pub addr: std::net::Ipv4Addr,
    /// The pod's IPv6 address on a dual-stack network: connections to it on app ports are
    /// dropped (the proxy carries IPv4 only), never let past the proxy.
    pub addr6: Option<std::net::Ipv6Addr>,
    pub inbound_port: u16,
    pub admin_port: u16,
    pub skip_inbound_ports: Vec<u16>,
}

/// What interception of one pod needs.
#[derive(Clone, Debug)]
pub struct MeshPod {
    /// The cgroup id of the proxy's container: its own connections go where they are sent.
    pub proxy_cgroup: u64,
    /// The proxy's outbound listener on 127.0.0.1.
    pub outbound_port: u16,
    /// Destination ports that bypass the proxy.
    pub skip_outbound_ports: Vec<u16>,
    /// Destination subnets (address, prefix length) that bypass the proxy.
    pub skip_outbound_nets: Vec<(std::net::Ipv4Addr, u8)>,
}

/// The node's interception programs, loaded, with their maps pinned under `dir`.
pub struct Interceptor {
    ebpf: Ebpf,
    dir: PathBuf,
}

impl Interceptor {
    pub fn open(dir: &Path) -> Result<Interceptor, Error> {
        sys::ensure_bpffs(Path::new(crate::Config::BPFFS))?;
        let links = dir.join("links");
        std::fs::create_dir_all(&links).map_err(|source| Error::Io {
            what: "creating",
            path: links.clone(),
            source,
        })?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(dir)
            .load(MESH_REDIRECT_OBJ)
            .map_err(|e| Error::Load {
                object: "mesh_redirect.o",
                source: Box::new(e),
            })?;
        for (name, _) in PROGS {
            let p = ebpf
                .program_mut(name)
                .ok_or_else(|| Error::Invalid(format!("no program {name} in mesh_redirect.o")))?;
            match *name {
                "mw_mesh_connect4" | "mw_mesh_connect6" => {
                    let p: &mut CgroupSockAddr = p.try_into().map_err(Error::prog(name))?;
                    p.load().map_err(Error::prog(name))?;
                }
                "mw_mesh_sockops" => {
                    let p: &mut SockOps = p.try_into().map_err(Error::prog(name))?;
                    p.load().map_err(Error::prog(name))?;
                }
                _ => {
                    let p: &mut CgroupSockopt = p.try_into().map_err(Error::prog(name))?;
                    p.load().map_err(Error::prog(name))?;
                }
            }
        }
        let p: &mut SkLookup = ebpf
            .program_mut(INBOUND_PROG)
            .ok_or_else(|| Error::Invalid(format!("no program {INBOUND_PROG}")))?
            .try_into()
            .map_err(Error::prog(INBOUND_PROG))?;
        p.load().map_err(Error::prog(INBOUND_PROG))?;
        Ok(Interceptor {
            ebpf,
            dir: dir.to_path_buf(),
        })
    }

    fn pin(&self, pod: &str, prog: &str) -> PathBuf {
        self.dir.join("links").join(format!("{pod}-{prog}"))
    }

    /// Attaches the programs to the pod's cgroup (`pod` names the pins); what is pinned
    /// already stays.
    pub fn attach(&mut self, pod: &str, cgroup: &Path) -> Result<(), Error> {
        let cg = File::open(cgroup).map_err(|source| Error::Io {
            what: "opening cgroup",
            path: cgroup.to_path_buf(),
            source,
        })?;
        for (name, attach_type) in PROGS {
            let pin = self.pin(pod, name);
            if pin.exists() {
                continue;
            }
            let p = self
                .ebpf
                .program(name)
                .ok_or_else(|| Error::Invalid(format!("no program {name}")))?;
            let fd = p.fd().map_err(Error::prog(name))?;
            sys::link_and_pin(fd.as_fd(), cg.as_fd(), *attach_type, &pin)?;
        }
        Ok(())
    }

    /// Steers connections to the pod's address (in its network namespace at `netns`) to its
    /// proxy; until `listener` registers the proxy's socket they are dropped.
    pub fn attach_inbound(
        &mut self,
        pod: &str,
        netns: &Path,
        inbound: &MeshInbound,
    ) -> Result<(), Error> {
        let map_err = |e: aya::maps::MapError| Error::Invalid(format!("mesh maps: {e}"));
        let addr = u32::from(inbound.addr).to_be();
        {
            let mut skips: HashMap<&mut MapData, InSkipKey, u8> =
                HashMap::try_from(self.map("mw_mesh_in_skip")?).map_err(map_err)?;
            // An earlier pod with this address whose removal failed must not lend this one
            // its excluded ports.
            remove_keys(&mut skips, |k| k.addr == addr);
            for port in &inbound.skip_inbound_ports {
                let k = InSkipKey {
                    addr,
                    port: *port,
                    pad: 0,
                };
                skips.insert(k, 1, 0).map_err(map_err)?;
            }
        }
        {
            let mut in6: HashMap<&mut MapData, [u8; 16], u32> =
                HashMap::try_from(self.map("mw_mesh_in6")?).map_err(map_err)?;
            clear_in6(&mut in6, addr);
            if let Some(a6) = inbound.addr6 {
                in6.insert(a6.octets(), addr, 0).map_err(map_err)?;
            }
        }
        {
            let mut cfg: HashMap<&mut MapData, u32, InVal> =
                HashMap::try_from(self.map("mw_mesh_in")?).map_err(map_err)?;
            let v = InVal {
                inbound_port: inbound.inbound_port,
                admin_port: inbound.admin_port,
                pad: 0,
            };
            cfg.insert(addr, v, 0).map_err(map_err)?;
        }
        let pin = self.pin(pod, INBOUND_PROG);
        if pin.exists() {
            return Ok(());
        }
        let ns = File::open(netns).map_err(|source| Error::Io {
            what: "opening",
            path: netns.to_path_buf(),
            source,
        })?;
        let p = self
            .ebpf
            .program(INBOUND_PROG)
            .ok_or_else(|| Error::Invalid(format!("no program {INBOUND_PROG}")))?;
        let fd = p.fd().map_err(Error::prog(INBOUND_PROG))?;
        sys::link_and_pin(fd.as_fd(), ns.as_fd(), BPF_SK_LOOKUP, &pin)
    }

    /// The proxy's inbound listening socket for the pod at `addr` (the map holds its own
    /// reference; the kernel drops the entry when the socket closes).
    pub fn listener(
        &mut self,
        addr: std::net::Ipv4Addr,
        socket: std::os::fd::BorrowedFd<'_>,
    ) -> Result<(), Error> {
        let map_err = |e: aya::maps::MapError| Error::Invalid(format!("mesh maps: {e}"));
        let mut socks: SockHash<&mut MapData, u32> =
            SockHash::try_from(self.map("mw_mesh_in_socks")?).map_err(map_err)?;
        socks
            .insert(u32::from(addr).to_be(), socket, 0)
            .map_err(map_err)
    }

    fn map(&mut self, name: &'static str) -> Result<&mut aya::maps::Map, Error> {
        self.ebpf
            .map_mut(name)
            .ok_or_else(|| Error::Invalid(format!("no map {name} in mesh_redirect.o")))
    }

    /// Switches interception on for the pod whose network namespace has cookie `netns`.
    pub fn enable(&mut self, netns: u64, pod: &MeshPod) -> Result<(), Error> {
        let map_err = |e: aya::maps::MapError| Error::Invalid(format!("mesh maps: {e}"));
        {
            let mut skips: HashMap<&mut MapData, SkipKey, u8> =
                HashMap::try_from(self.map("mw_mesh_skip")?).map_err(map_err)?;
            remove_keys(&mut skips, |k| k.netns == netns);
            for port in &pod.skip_outbound_ports {
                let k = SkipKey {
                    netns,
                    port: *port,
                    ..Default::default()
                };
                skips.insert(k, 1, 0).map_err(map_err)?;
            }
        }
        {
            let mut nets: LpmTrie<&mut MapData, NetKey, u8> =
                LpmTrie::try_from(self.map("mw_mesh_skip_nets")?).map_err(map_err)?;
            clear_nets(&mut nets, netns);
            for (addr, len) in &pod.skip_outbound_nets {
                let k = NetKey {
                    addr: u32::from(*addr).to_be(),
                    ..NetKey::of(netns)
                };
                nets.insert(&Key::new(64 + u32::from(*len), k), 1, 0)
                    .map_err(map_err)?;
            }
        }
        let mut pods: HashMap<&mut MapData, u64, PodVal> =
            HashMap::try_from(self.map("mw_mesh_pods")?).map_err(map_err)?;
        let v = PodVal {
            proxy_cgroup: pod.proxy_cgroup,
            outbound_port: pod.outbound_port,
            ..Default::default()
        };
        pods.insert(netns, v, 0).map_err(map_err)
    }

    /// Stops intercepting the pod (its entries go) and detaches the programs from its cgroup
    /// and network namespace.
    pub fn remove(
        &mut self,
        pod: &str,
        netns: Option<u64>,
        addr: Option<std::net::Ipv4Addr>,
    ) -> Result<(), Error> {
        let map_err = |e: aya::maps::MapError| Error::Invalid(format!("mesh maps: {e}"));
        if let Some(addr) = addr.map(|a| u32::from(a).to_be()) {
            {
                let mut cfg: HashMap<&mut MapData, u32, InVal> =
                    HashMap::try_from(self.map("mw_mesh_in")?).map_err(map_err)?;
                let _ = cfg.remove(&addr);
            }
            {
                let mut socks: SockHash<&mut MapData, u32> =
                    SockHash::try_from(self.map("mw_mesh_in_socks")?).map_err(map_err)?;
                let _ = socks.remove(&addr);
            }
            {
                let mut in6: HashMap<&mut MapData, [u8; 16], u32> =
                    HashMap::try_from(self.map("mw_mesh_in6")?).map_err(map_err)?;
                clear_in6(&mut in6, addr);
            }
            let mut skips: HashMap<&mut MapData, InSkipKey, u8> =
                HashMap::try_from(self.map("mw_mesh_in_skip")?).map_err(map_err)?;
            remove_keys(&mut skips, |k| k.addr == addr);
        }
        if let Some(netns) = netns {
            {
                let mut nets: LpmTrie<&mut MapData, NetKey, u8> =
                    LpmTrie::try_from(self.map("mw_mesh_skip_nets")?).map_err(map_err)?;
                clear_nets(&mut nets, netns);
            }
            let mut pods: HashMap<&mut MapData, u64, PodVal> =
                HashMap::try_from(self.map("mw_mesh_pods")?).map_err(map_err)?;
            let _ = pods.remove(&netns);
            let mut skips: HashMap<&mut MapData, SkipKey, u8> =
                HashMap::try_from(self.map("mw_mesh_skip")?).map_err(map_err)?;
            remove_keys(&mut skips, |k| k.netns == netns);
        }
        for name in PROGS.iter().map(|(n, _)| *n).chain([INBOUND_PROG]) {
            let pin = self.pin(pod, name);
            match std::fs::remove_file(&pin) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(Error::Io {
                        what: "unpinning",
                        path: pin,
                        source,
                    })
                }
            }
        }
        Ok(())
    }
}

/// Removes the keys of `map` that `which` picks (collected first: deleting while iterating
/// a BPF hash map skips entries).
fn remove_keys<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<&mut MapData, K, V>,
    which: impl Fn(&K) -> bool,
) {
    let keys: Vec<K> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| which(k))
        .collect();
    for k in keys {
        let _ = map.remove(&k);
    }
}

/// Removes the excluded subnets of the pod in `netns`.
fn clear_nets(nets: &mut LpmTrie<&mut MapData, NetKey, u8>, netns: u64) {
    let mine: Vec<Key<NetKey>> = nets
        .keys()
        .filter_map(Result::ok)
        .filter(|k| k.data().netns() == netns)
        .collect();
    for k in mine {
        let _ = nets.remove(&k);
    }
}

/// Removes the IPv6 addresses that stand for IPv4 address `addr` (network order).
fn clear_in6(in6: &mut HashMap<&mut MapData, [u8; 16], u32>, addr: u32) {
    let mine: Vec<[u8; 16]> = in6
        .iter()
        .filter_map(Result::ok)
        .filter(|(_, v)| *v == addr)
        .map(|(k, _)| k)
        .collect();
    for k in mine {
        let _ = in6.remove(&k);
    }
}
