//! Loading, attaching, pinning, and the typed service API.

use std::{
    collections::{BTreeMap, HashMap as Std, HashSet},
    fs::File,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::{
    maps::{Array, HashMap, MapData},
    programs::{
        links::{FdLink, LinkOrder, PinnedLink},
        tc::TcAttachOptions,
        CgroupAttachMode, CgroupSockAddr, SchedClassifier, TcAttachType,
    },
    Ebpf, EbpfLoader,
};
use meshwork_netlink::Netns;

use crate::{
    abi::{
        self, Backend6Val, BackendVal, MaglevTable, MemberKey, NpCfg, SlotKey, StatsVal, Svc,
        Svc6Key, SvcKey,
    },
    maglev, sys, Error, SOCK_LB_OBJ, TC_NODEPORT_OBJ,
};

const SOCK_PROGS: &[&str] = &[
    "mw_connect4",
    "mw_sendmsg4",
    "mw_recvmsg4",
    "mw_getpeername4",
    "mw_connect6",
    "mw_sendmsg6",
    "mw_recvmsg6",
    "mw_getpeername6",
];
const TC_PROGS: &[(&str, TcAttachType)] = &[
    ("mw_nodeport_in", TcAttachType::Ingress),
    ("mw_nodeport_out", TcAttachType::Egress),
];
/// Every map the objects pin by name (removed by uninstall).
const MAPS: &[&str] = &[
    "mw_services",
    "mw_slots",
    "mw_maglev",
    "mw_backends",
    "mw_services6",
    "mw_backends6",
    "mw_revnat6",
    "mw_members",
    "mw_stats",
    "mw_affinity",
    "mw_revnat",
    "mw_np_fwd",
    "mw_np_rev",
    "mw_np_snat",
    "mw_np_cfg",
];

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

/// A frontend as the maps key it, per family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum FrontKey {
    V4(SvcKey),
    V6(Svc6Key),
}

/// A backend as the maps store it, per family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum BackKey {
    V4(BackendVal),
    V6(Backend6Val),
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
    fn key(&self) -> FrontKey {
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
    fn from_v4(k: &SvcKey) -> Option<Self> {
        Some(Frontend {
            addr: IpAddr::V4(Ipv4Addr::from(u32::from_be(k.addr))),
            port: u16::from_be(k.port),
            proto: proto_of(k.proto)?,
        })
    }
    fn from_v6(k: &Svc6Key) -> Option<Self> {
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
    fn identity(&self) -> Vec<u8> {
        let mut v = match self.addr {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        };
        v.extend_from_slice(&self.port.to_be_bytes());
        v
    }
    fn key(&self, proto: Proto) -> BackKey {
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

/// In-memory mirror of one programmed frontend, rebuilt from the maps on open.
#[derive(Clone, Debug)]
struct Entry {
    svc: Svc,
    backend_ids: Vec<u32>,
}

pub struct Datapath {
    cfg: Config,
    services: HashMap<MapData, SvcKey, Svc>,
    services6: HashMap<MapData, Svc6Key, Svc>,
    slots: HashMap<MapData, SlotKey, u32>,
    maglev: HashMap<MapData, u32, MaglevTable>,
    backends: HashMap<MapData, u32, BackendVal>,
    backends6: HashMap<MapData, u32, Backend6Val>,
    members: HashMap<MapData, MemberKey, u8>,
    stats: HashMap<MapData, u32, StatsVal>,
    entries: Std<FrontKey, Entry>,
    /// (backend value) → (id, references)
    backend_ids: Std<BackKey, (u32, u32)>,
    backend_by_id: Std<u32, BackKey>,
    next_svc: u32,
    next_table: u32,
    next_backend: u32,
    free_svc: Vec<u32>,
    /// Old slot tables and backends, freed after [`GRACE`]: a program that read the service
    /// entry just before an update may still look them up.
    graveyard: Vec<(Instant, Garbage)>,
}

/// Longer than any program holds a map value pointer (one RCU read section: microseconds).
const GRACE: Duration = Duration::from_millis(50);

#[derive(Clone, Debug)]
enum Garbage {
    Table(Svc),
    Backend(u32, BackKey),
    /// Leftovers found at startup (not tied to a service we know).
    Maglev(u32),
    Slots(Vec<SlotKey>),
}

fn take<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<HashMap<MapData, K, V>, Error> {
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| Error::Invalid(format!("map {name} missing from the object")))?;
    HashMap::try_from(map).map_err(Error::map(name))
}

/// Pins an attachment so it outlives this process: the program stays attached while no loader
/// runs, and the next loader finds it instead of attaching a second copy.
fn pin_link<L>(link: L, path: &Path) -> Result<(), Error>
where
    L: TryInto<FdLink, Error = aya::programs::links::LinkError>,
{
    let fd: FdLink = link.try_into().map_err(|e| Error::Pin {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })?;
    fd.pin(path).map(|_| ()).map_err(|e| Error::Pin {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })
}

impl Datapath {
    /// Loads the programs (maps are reused from the pin directory if present), attaches what is
    /// not attached yet (pinned links survive the loader: traffic keeps flowing while it is
    /// down), and reads back what is programmed. Never flushes.
    pub fn open(cfg: Config) -> Result<Datapath, Error> {
        sys::ensure_bpffs(Path::new(Config::BPFFS))?;
        let links = cfg.pin_dir.join("links");
        std::fs::create_dir_all(&links).map_err(|source| Error::Io {
            what: "creating",
            path: links.clone(),
            source,
        })?;
        let mut sock = EbpfLoader::new()
            .default_map_pin_directory(&cfg.pin_dir)
            .load(SOCK_LB_OBJ)
            .map_err(|e| Error::Load {
                object: "sock_lb.o",
                source: Box::new(e),
            })?;
        attach_sock(&mut sock, &cfg.cgroup, &links)?;
        if let Some(up) = &cfg.uplink {
            write_np_cfg(&mut sock, &cfg)?;
            if cfg.snat.is_some() {
                accept_local(up)?;
            }
            attach_tc(&cfg.pin_dir, &links, up)?;
        }

        let mut dp = Datapath {
            services: take(&mut sock, "mw_services")?,
            services6: take(&mut sock, "mw_services6")?,
            slots: take(&mut sock, "mw_slots")?,
            maglev: take(&mut sock, "mw_maglev")?,
            backends: take(&mut sock, "mw_backends")?,
            backends6: take(&mut sock, "mw_backends6")?,
            members: take(&mut sock, "mw_members")?,
            stats: take(&mut sock, "mw_stats")?,
            cfg,
            entries: Std::new(),
            backend_ids: Std::new(),
            backend_by_id: Std::new(),
            next_svc: 1,
            next_table: 1,
            next_backend: 1,
            free_svc: Vec::new(),
            graveyard: Vec::new(),
        };
        dp.recover()?;
        Ok(dp)
    }

    /// Rebuilds the mirror from the maps and retires debris of an update that was interrupted
    /// (slot tables no service points at, unreferenced backends, stale affinity members).
    fn recover(&mut self) -> Result<(), Error> {
        let refs = self.recover_services()?;
        let tables: HashSet<u32> = self.entries.values().map(|e| e.svc.table).collect();
        self.retire_stale_tables(&tables);
        self.recover_backends(&refs);
        let used: HashSet<u32> = self.entries.values().map(|e| e.svc.id).collect();
        self.free_svc = (1..self.next_svc).filter(|i| !used.contains(i)).collect();
        self.remove_stale_members();
        Ok(())
    }

    /// Reads every programmed frontend back; returns references per backend id.
    fn recover_services(&mut self) -> Result<Std<u32, u32>, Error> {
        let mut svcs: Vec<(FrontKey, Svc)> = self
            .services
            .iter()
            .map(|r| r.map(|(k, v)| (FrontKey::V4(k), v)))
            .collect::<Result<_, _>>()
            .map_err(Error::map("mw_services"))?;
        let svcs6: Vec<(FrontKey, Svc)> = self
            .services6
            .iter()
            .map(|r| r.map(|(k, v)| (FrontKey::V6(k), v)))
            .collect::<Result<_, _>>()
            .map_err(Error::map("mw_services6"))?;
        svcs.extend(svcs6);
        let mut refs: Std<u32, u32> = Std::new();
        for (k, v) in svcs {
            let ids = self.read_ids(&v);
            for id in &ids {
                *refs.entry(*id).or_default() += 1;
            }
            self.next_svc = self.next_svc.max(v.id + 1);
            self.next_table = self.next_table.max(v.table + 1);
            self.entries.insert(
                k,
                Entry {
                    svc: v,
                    backend_ids: ids,
                },
            );
        }
        Ok(refs)
    }

    /// Tables no service points at. A loader that stopped mid-update may have left them while a
    /// program still reads one: they get the same grace as any old table.
    fn retire_stale_tables(&mut self, tables: &HashSet<u32>) {
        let now = Instant::now();
        let stale_maglev: Vec<u32> = self
            .maglev
            .keys()
            .filter_map(Result::ok)
            .filter(|t| !tables.contains(t))
            .collect();
        for t in stale_maglev {
            self.graveyard.push((now, Garbage::Maglev(t)));
        }
        let stale_slots: Vec<SlotKey> = self
            .slots
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !tables.contains(&k.table))
            .collect();
        if !stale_slots.is_empty() {
            self.graveyard.push((now, Garbage::Slots(stale_slots)));
        }
    }

    /// Rebuilds backend reference counts; unreferenced backends are retired.
    fn recover_backends(&mut self, refs: &Std<u32, u32>) {
        let now = Instant::now();
        let mut all: Vec<(u32, BackKey)> = self
            .backends
            .iter()
            .filter_map(Result::ok)
            .map(|(id, v)| (id, BackKey::V4(v)))
            .collect();
        all.extend(
            self.backends6
                .iter()
                .filter_map(Result::ok)
                .map(|(id, v)| (id, BackKey::V6(v))),
        );
        for (id, val) in all {
            self.next_backend = self.next_backend.max(id + 1);
            match refs.get(&id) {
                Some(n) => {
                    self.backend_ids.insert(val, (id, *n));
                    self.backend_by_id.insert(id, val);
                }
                None => self.graveyard.push((now, Garbage::Backend(id, val))),
            }
        }
    }

    /// Affinity members of services without affinity, or of backends a service no longer has
    /// (an update interrupted between the switch and the cleanup).
    fn remove_stale_members(&mut self) {
        let wanted: HashSet<(u32, u32)> = self
            .entries
            .values()
            .filter(|e| e.svc.affinity_secs > 0)
            .flat_map(|e| e.backend_ids.iter().map(move |b| (e.svc.id, *b)))
            .collect();
        let stale: Vec<MemberKey> = self
            .members
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !wanted.contains(&(k.svc, k.backend)))
            .collect();
        for k in stale {
            let _ = self.members.remove(&k);
        }
    }

    /// Backend ids of a programmed service (distinct, in slot order for random).
    fn read_ids(&self, v: &Svc) -> Vec<u32> {
        read_ids(&self.slots, &self.maglev, v)
    }

    fn drop_table(&mut self, v: &Svc) {
        if v.algo == abi::ALGO_MAGLEV {
            let _ = self.maglev.remove(&v.table);
        } else {
            for slot in 0..v.slots {
                let _ = self.slots.remove(&SlotKey {
                    table: v.table,
                    slot,
                });
            }
        }
    }

    fn alloc_svc(&mut self) -> u32 {
        self.free_svc.pop().unwrap_or_else(|| {
            self.next_svc += 1;
            self.next_svc - 1
        })
    }

    fn backend_ref(&mut self, val: BackKey) -> Result<u32, Error> {
        if let Some((id, n)) = self.backend_ids.get_mut(&val) {
            *n += 1;
            return Ok(*id);
        }
        let id = self.next_backend;
        self.next_backend += 1;
        match &val {
            BackKey::V4(v) => self
                .backends
                .insert(id, v, 0)
                .map_err(Error::map("mw_backends"))?,
            BackKey::V6(v) => self
                .backends6
                .insert(id, v, 0)
                .map_err(Error::map("mw_backends6"))?,
        }
        self.backend_ids.insert(val, (id, 1));
        self.backend_by_id.insert(id, val);
        Ok(id)
    }

    fn remove_backend(&mut self, id: u32, val: &BackKey) {
        let _ = match val {
            BackKey::V4(_) => self.backends.remove(&id),
            BackKey::V6(_) => self.backends6.remove(&id),
        };
    }

    fn backend_unref(&mut self, ids: &[u32]) {
        for id in ids {
            let Some(val) = self.backend_by_id.get(id).copied() else {
                continue;
            };
            if let Some((_, n)) = self.backend_ids.get_mut(&val) {
                *n -= 1;
                if *n == 0 {
                    self.backend_ids.remove(&val);
                    self.backend_by_id.remove(id);
                    self.graveyard
                        .push((Instant::now(), Garbage::Backend(*id, val)));
                }
            }
        }
    }

    /// Waits out the grace period and frees everything earlier updates left behind (tests and
    /// tools that want to observe the maps settled; updates collect as they go).
    pub fn settle(&mut self) {
        if let Some((newest, _)) = self.graveyard.last() {
            let left = GRACE.saturating_sub(newest.elapsed());
            std::thread::sleep(left);
        }
        self.collect();
    }

    /// Frees graveyard entries older than the grace period.
    fn collect(&mut self) {
        let now = Instant::now();
        let (due, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.graveyard)
            .into_iter()
            .partition(|(at, _)| now.duration_since(*at) >= GRACE);
        self.graveyard = keep;
        for (_, g) in due {
            match g {
                Garbage::Table(svc) => self.drop_table(&svc),
                Garbage::Backend(id, val) => self.remove_backend(id, &val),
                Garbage::Maglev(t) => {
                    let _ = self.maglev.remove(&t);
                }
                Garbage::Slots(keys) => {
                    for k in keys {
                        let _ = self.slots.remove(&k);
                    }
                }
            }
        }
    }

    fn put_service(&mut self, key: &FrontKey, svc: &Svc) -> Result<(), Error> {
        match key {
            FrontKey::V4(k) => self
                .services
                .insert(k, svc, 0)
                .map_err(Error::map("mw_services")),
            FrontKey::V6(k) => self
                .services6
                .insert(k, svc, 0)
                .map_err(Error::map("mw_services6")),
        }
    }

    fn del_service(&mut self, key: &FrontKey) -> Result<(), Error> {
        match key {
            FrontKey::V4(k) => self.services.remove(k).map_err(Error::map("mw_services")),
            FrontKey::V6(k) => self.services6.remove(k).map_err(Error::map("mw_services6")),
        }
    }

    /// Programs `s`, replacing what its frontend had. Atomic for the datapath: the new slot
    /// table is complete before the service entry is switched to it in one map update.
    pub fn upsert(&mut self, s: &Service) -> Result<(), Error> {
        // Validate before anything is allocated or written.
        check_families(s)?;
        self.collect();
        let key = s.frontend.key();
        let old = self.entries.get(&key).cloned();
        let id = match &old {
            Some(o) => o.svc.id,
            None => self.alloc_svc(),
        };
        let ids = s
            .backends
            .iter()
            .map(|b| self.backend_ref(b.key(s.frontend.proto)))
            .collect::<Result<Vec<u32>, Error>>()?;
        let table = self.next_table;
        self.next_table = self.next_table.wrapping_add(1).max(1);
        let slots = self.write_table(table, s, &ids)?;
        let affinity_secs = s
            .affinity
            .map(|d| d.as_secs().clamp(1, 86400) as u32)
            .unwrap_or(0);
        if affinity_secs > 0 {
            self.add_members(id, &ids)?;
        }
        if old.is_none() {
            self.stats
                .insert(id, StatsVal::default(), 0)
                .map_err(Error::map("mw_stats"))?;
        }
        let svc = Svc {
            id,
            table,
            slots,
            backends: ids.len() as u32,
            affinity_secs,
            algo: match s.algorithm {
                Algorithm::Random => abi::ALGO_RANDOM,
                Algorithm::Maglev => abi::ALGO_MAGLEV,
            },
            flags: 0,
        };
        // The switch: one map update moves the datapath to the complete new table.
        self.put_service(&key, &svc)?;
        let mut distinct = ids.clone();
        distinct.sort_unstable();
        distinct.dedup();
        if let Some(o) = old {
            self.retire(&o, affinity_secs, &distinct);
        }
        // backend_ref counted one reference per listed backend; keep one per distinct id.
        self.backend_unref(&extra_refs(&ids));
        self.entries.insert(
            key,
            Entry {
                svc,
                backend_ids: distinct,
            },
        );
        Ok(())
    }

    /// Writes the slot table `table` for `s` (random: one slot per backend; Maglev: one map
    /// value holding the whole lookup table). Returns the slot count.
    fn write_table(&mut self, table: u32, s: &Service, ids: &[u32]) -> Result<u32, Error> {
        match s.algorithm {
            Algorithm::Random => {
                for (i, bid) in ids.iter().enumerate() {
                    let slot = i as u32;
                    self.slots
                        .insert(SlotKey { table, slot }, *bid, 0)
                        .map_err(Error::map("mw_slots"))?;
                }
                Ok(ids.len() as u32)
            }
            Algorithm::Maglev if ids.is_empty() => Ok(0),
            Algorithm::Maglev => {
                let idents: Vec<Vec<u8>> = s.backends.iter().map(Backend::identity).collect();
                let mut t = Box::new(MaglevTable {
                    slot: [0; maglev::DEFAULT_SIZE as usize],
                });
                let lookup = maglev::table(&idents, maglev::DEFAULT_SIZE);
                for (slot, i) in t.slot.iter_mut().zip(lookup) {
                    *slot = ids[i as usize];
                }
                self.maglev
                    .insert(table, t.as_ref(), 0)
                    .map_err(Error::map("mw_maglev"))?;
                Ok(maglev::DEFAULT_SIZE)
            }
        }
    }

    fn add_members(&mut self, svc: u32, ids: &[u32]) -> Result<(), Error> {
        for backend in ids {
            self.members
                .insert(
                    MemberKey {
                        svc,
                        backend: *backend,
                    },
                    1u8,
                    0,
                )
                .map_err(Error::map("mw_members"))?;
        }
        Ok(())
    }

    /// After the switch: the old table goes to the graveyard, affinity members of backends the
    /// service no longer has (or all, if affinity was turned off) go, old references drop.
    fn retire(&mut self, old: &Entry, affinity_secs: u32, keep: &[u32]) {
        self.graveyard
            .push((Instant::now(), Garbage::Table(old.svc)));
        if old.svc.affinity_secs > 0 {
            for b in &old.backend_ids {
                if affinity_secs == 0 || !keep.contains(b) {
                    let _ = self.members.remove(&MemberKey {
                        svc: old.svc.id,
                        backend: *b,
                    });
                }
            }
        }
        self.backend_unref(&old.backend_ids);
    }

    /// Removes a frontend; false if it was not programmed.
    pub fn remove(&mut self, f: &Frontend) -> Result<bool, Error> {
        let key = f.key();
        let Some(o) = self.entries.remove(&key) else {
            return Ok(false);
        };
        self.collect();
        self.del_service(&key)?;
        self.graveyard.push((Instant::now(), Garbage::Table(o.svc)));
        for bid in &o.backend_ids {
            let _ = self.members.remove(&MemberKey {
                svc: o.svc.id,
                backend: *bid,
            });
        }
        let _ = self.stats.remove(&o.svc.id);
        self.backend_unref(&o.backend_ids);
        self.free_svc.push(o.svc.id);
        Ok(true)
    }

    /// What is programmed, read back from the maps (not from memory).
    pub fn list(&self) -> Result<Vec<Service>, Error> {
        let mut found: Vec<(Frontend, Svc)> = Vec::new();
        for item in self.services.iter() {
            let (k, v) = item.map_err(Error::map("mw_services"))?;
            found.extend(Frontend::from_v4(&k).map(|f| (f, v)));
        }
        for item in self.services6.iter() {
            let (k, v) = item.map_err(Error::map("mw_services6"))?;
            found.extend(Frontend::from_v6(&k).map(|f| (f, v)));
        }
        let mut out = BTreeMap::new();
        for (frontend, v) in found {
            let mut backends = Vec::new();
            for id in self.read_ids(&v) {
                backends.push(self.read_backend(frontend.addr.is_ipv4(), id)?);
            }
            out.insert(
                frontend,
                Service {
                    frontend,
                    backends,
                    algorithm: if v.algo == abi::ALGO_MAGLEV {
                        Algorithm::Maglev
                    } else {
                        Algorithm::Random
                    },
                    affinity: (v.affinity_secs > 0)
                        .then(|| Duration::from_secs(u64::from(v.affinity_secs))),
                },
            );
        }
        Ok(out.into_values().collect())
    }

    fn read_backend(&self, v4: bool, id: u32) -> Result<Backend, Error> {
        read_backend(&self.backends, &self.backends6, v4, id)
    }

    pub fn stats(&self, f: &Frontend) -> Result<Option<Stats>, Error> {
        let Some(e) = self.entries.get(&f.key()) else {
            return Ok(None);
        };
        let s = self
            .stats
            .get(&e.svc.id, 0)
            .map_err(Error::map("mw_stats"))?;
        Ok(Some(Stats {
            connects: s.connects,
            no_backend: s.no_backend,
            packets: s.packets,
            bytes: s.bytes,
        }))
    }

    pub fn pin_dir(&self) -> &Path {
        &self.cfg.pin_dir
    }

    /// Detaches every program and removes every pin: nothing of ours stays in bpffs.
    pub fn uninstall(self) -> Result<(), Error> {
        let dir = self.cfg.pin_dir.clone();
        drop(self);
        uninstall_dir(&dir)
    }
}

/// Removes the datapath pinned at `dir` without loading it (e.g. from a CLI).
pub fn uninstall_dir(dir: &Path) -> Result<(), Error> {
    let links = dir.join("links");
    for name in SOCK_PROGS.iter().chain(TC_PROGS.iter().map(|(n, _)| n)) {
        let pin = links.join(name);
        if pin.exists() {
            let link = PinnedLink::from_pin(&pin).map_err(|e| Error::Pin {
                path: pin.clone(),
                detail: e.to_string(),
            })?;
            // Unpinning drops the last reference: the kernel detaches the program.
            drop(link.unpin().map_err(|source| Error::Io {
                what: "unpinning",
                path: pin.clone(),
                source,
            })?);
        }
    }
    for m in MAPS {
        let p = dir.join(m);
        if p.exists() {
            std::fs::remove_file(&p).map_err(|source| Error::Io {
                what: "removing pin",
                path: p.clone(),
                source,
            })?;
        }
    }
    let _ = std::fs::remove_dir(&links);
    let _ = std::fs::remove_dir(dir);
    if let Some(parent) = dir.parent() {
        // The shared `meshwork` dir goes when the last node's datapath does.
        let _ = std::fs::remove_dir(parent);
    }
    Ok(())
}

/// A program of the object by name, as its kind.
fn program<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, Error>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| Error::Invalid(format!("program {name} missing")))?
        .try_into()
        .map_err(Error::prog(name))
}

/// Attaches the socket programs to `cgroup` and pins their links, skipping any already pinned
/// (attached by an earlier loader: no second copy).
fn attach_sock(sock: &mut Ebpf, cgroup: &Path, links: &Path) -> Result<(), Error> {
    let cg = File::open(cgroup).map_err(|source| Error::Io {
        what: "opening cgroup",
        path: cgroup.to_path_buf(),
        source,
    })?;
    for name in SOCK_PROGS {
        let pin = links.join(name);
        if pin.exists() {
            continue;
        }
        let prog: &mut CgroupSockAddr = program(sock, name)?;
        prog.load().map_err(Error::prog(name))?;
        // bpf_link attachments to a cgroup always coexist with others (implicitly "multi");
        // the kernel wants flags 0 for them, which is what `Single` maps to.
        let id = prog
            .attach(&cg, CgroupAttachMode::Single)
            .map_err(Error::prog(name))?;
        let link = prog.take_link(id).map_err(Error::prog(name))?;
        pin_link(link, &pin)?;
    }
    Ok(())
}

/// Writes the tc settings (SNAT address and ports) into `mw_np_cfg`: on every open by a
/// loader that has the uplink (the tc path's owner), so they follow its configuration; a loader
/// without one (a tool) leaves them alone.
fn write_np_cfg(sock: &mut Ebpf, cfg: &Config) -> Result<(), Error> {
    let (min, max) = (*cfg.snat_ports.start(), *cfg.snat_ports.end());
    if cfg.snat.is_some() && (min == 0 || max < min) {
        return Err(Error::Invalid(format!(
            "SNAT port range {min}..={max} is empty or includes 0"
        )));
    }
    let map = sock
        .map_mut("mw_np_cfg")
        .ok_or_else(|| Error::Invalid("map mw_np_cfg missing from the object".into()))?;
    let mut arr: Array<&mut MapData, NpCfg> =
        Array::try_from(map).map_err(Error::map("mw_np_cfg"))?;
    let v = NpCfg {
        snat_addr: cfg.snat.map_or(0, |a| u32::from(a).to_be()),
        snat_port_min: min,
        snat_port_max: max,
    };
    arr.set(0, v, 0).map_err(Error::map("mw_np_cfg"))
}

/// `net.ipv4.conf.<uplink>.accept_local = 1` in the uplink's namespace (a per-namespace
/// sysctl: /proc/sys/net resolves to the namespace of the thread that opens it). SNATed
/// packets carry the node's own address as source on the way in (to a remote backend) and,
/// for a NodeIP frontend, on the way back out; without it the kernel drops them as martians.
fn accept_local(up: &Uplink) -> Result<(), Error> {
    let path = PathBuf::from(format!("/proc/sys/net/ipv4/conf/{}/accept_local", up.name));
    let write = || {
        std::fs::write(&path, b"1").map_err(|source| Error::Io {
            what: "setting",
            path: path.clone(),
            source,
        })
    };
    match &up.netns {
        Some(ns) => Netns::open(ns)?.run(write)?,
        None => write(),
    }
}

fn attach_tc(pin_dir: &Path, links: &Path, up: &Uplink) -> Result<(), Error> {
    if TC_PROGS.iter().all(|(n, _)| links.join(n).exists()) {
        return Ok(());
    }
    let mut tc = EbpfLoader::new()
        .default_map_pin_directory(pin_dir)
        .load(TC_NODEPORT_OBJ)
        .map_err(|e| Error::Load {
            object: "tc_nodeport.o",
            source: Box::new(e),
        })?;
    let attach = |tc: &mut Ebpf| -> Result<(), Error> {
        for (name, ty) in TC_PROGS {
            let pin = links.join(name);
            if pin.exists() {
                continue;
            }
            let prog: &mut SchedClassifier = program(tc, name)?;
            prog.load().map_err(Error::prog(name))?;
            let id = prog
                .attach_with_options(
                    &up.name,
                    *ty,
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )
                .map_err(Error::prog(name))?;
            let link = prog.take_link(id).map_err(Error::prog(name))?;
            pin_link(link, &pin)?;
        }
        Ok(())
    };
    match &up.netns {
        // The uplink's ifindex is resolved in the calling thread's namespace.
        Some(ns) => Netns::open(ns)?.run(|| attach(&mut tc))?,
        None => attach(&mut tc),
    }
}

fn check_families(s: &Service) -> Result<(), Error> {
    match s
        .backends
        .iter()
        .find(|b| b.addr.is_ipv4() != s.frontend.addr.is_ipv4())
    {
        Some(b) => Err(Error::Invalid(format!(
            "backend {} is not of the frontend {}'s address family",
            b.addr, s.frontend.addr
        ))),
        None => Ok(()),
    }
}

/// Duplicate ids in a backend list (the same backend listed twice) took extra references.
fn extra_refs(ids: &[u32]) -> Vec<u32> {
    let mut seen = HashSet::new();
    ids.iter().filter(|i| !seen.insert(**i)).copied().collect()
}

/// The backend ids of a service: its slot table (random) or the distinct ids of its Maglev
/// table.
fn read_ids(
    slots: &HashMap<MapData, SlotKey, u32>,
    maglev: &HashMap<MapData, u32, MaglevTable>,
    v: &Svc,
) -> Vec<u32> {
    if v.algo == abi::ALGO_MAGLEV {
        let mut ids = maglev
            .get(&v.table, 0)
            .map(|t| t.slot.to_vec())
            .unwrap_or_default();
        ids.sort_unstable();
        ids.dedup();
        ids
    } else {
        (0..v.slots)
            .filter_map(|slot| {
                slots
                    .get(
                        &SlotKey {
                            table: v.table,
                            slot,
                        },
                        0,
                    )
                    .ok()
            })
            .collect()
    }
}

fn read_backend(
    backends: &HashMap<MapData, u32, BackendVal>,
    backends6: &HashMap<MapData, u32, Backend6Val>,
    v4: bool,
    id: u32,
) -> Result<Backend, Error> {
    Ok(if v4 {
        let b = backends.get(&id, 0).map_err(Error::map("mw_backends"))?;
        Backend::new(Ipv4Addr::from(u32::from_be(b.addr)), u16::from_be(b.port))
            .with_remote(b.flags & abi::BACKEND_REMOTE != 0)
    } else {
        let b = backends6.get(&id, 0).map_err(Error::map("mw_backends6"))?;
        Backend::new(Ipv6Addr::from(b.addr), u16::from_be(b.port))
            .with_remote(b.flags & abi::BACKEND_REMOTE != 0)
    })
}

/// A read-only view of what a node has programmed, straight from its pinned maps: for another
/// process (a benchmark timing convergence, a status command) without loading programs or
/// reading the whole table.
pub struct Observer {
    services: HashMap<MapData, SvcKey, Svc>,
    services6: HashMap<MapData, Svc6Key, Svc>,
    slots: HashMap<MapData, SlotKey, u32>,
    maglev: HashMap<MapData, u32, MaglevTable>,
    backends: HashMap<MapData, u32, BackendVal>,
    backends6: HashMap<MapData, u32, Backend6Val>,
}

fn pinned<K: aya::Pod, V: aya::Pod>(
    dir: &Path,
    name: &'static str,
) -> Result<HashMap<MapData, K, V>, Error> {
    let data = MapData::from_pin(dir.join(name)).map_err(|e| Error::Pin {
        path: dir.join(name),
        detail: e.to_string(),
    })?;
    HashMap::try_from(aya::maps::Map::HashMap(data)).map_err(Error::map(name))
}

impl Observer {
    /// Opens the maps pinned in `pin_dir` (a running or stopped agent's).
    pub fn open(pin_dir: &Path) -> Result<Observer, Error> {
        Ok(Observer {
            services: pinned(pin_dir, "mw_services")?,
            services6: pinned(pin_dir, "mw_services6")?,
            slots: pinned(pin_dir, "mw_slots")?,
            maglev: pinned(pin_dir, "mw_maglev")?,
            backends: pinned(pin_dir, "mw_backends")?,
            backends6: pinned(pin_dir, "mw_backends6")?,
        })
    }

    /// The backends programmed for `f` now (None: no such frontend).
    pub fn backends(&self, f: &Frontend) -> Result<Option<Vec<Backend>>, Error> {
        let v = match f.key() {
            FrontKey::V4(k) => self.services.get(&k, 0).ok(),
            FrontKey::V6(k) => self.services6.get(&k, 0).ok(),
        };
        let Some(v) = v else { return Ok(None) };
        read_ids(&self.slots, &self.maglev, &v)
            .into_iter()
            .map(|id| read_backend(&self.backends, &self.backends6, f.addr.is_ipv4(), id))
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// How many frontends are programmed.
    pub fn len(&self) -> usize {
        self.services.keys().count() + self.services6.keys().count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
