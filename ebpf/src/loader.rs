//! Loading the objects, attaching and pinning the programs, and removing them again. The
//! maps the programs share are handed to a [`Programmer`] over [`KernelMaps`].

use std::{
    fs::File,
    path::{Path, PathBuf},
};

use aya::{
    maps::{Array, MapData},
    programs::{
        links::{FdLink, LinkOrder, PinnedLink},
        tc::TcAttachOptions,
        CgroupAttachMode, CgroupSockAddr, SchedClassifier, TcAttachType,
    },
    Ebpf, EbpfLoader,
};
use meshwork_netlink::Netns;

use crate::{
    abi::NpCfg, maps::KernelMaps, programmer::Programmer, sys, Config, Datapath, Error, Frontend,
    Service, Stats, Uplink, SOCK_LB_OBJ, TC_NODEPORT_OBJ,
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
    "mw_drops",
];

/// The kernel datapath of one node: its programs attached and pinned, its maps programmed.
pub struct BpfDatapath {
    cfg: Config,
    prog: Programmer<KernelMaps>,
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

impl BpfDatapath {
    /// Loads the programs (maps are reused from the pin directory if present), attaches what is
    /// not attached yet (pinned links survive the loader: traffic keeps flowing while it is
    /// down), and reads back what is programmed. Never flushes.
    pub fn open(cfg: Config) -> Result<BpfDatapath, Error> {
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
        let prog = Programmer::new(KernelMaps::take(&mut sock)?)?;
        Ok(BpfDatapath { cfg, prog })
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

impl Datapath for BpfDatapath {
    fn upsert(&mut self, s: &Service) -> Result<(), Error> {
        self.prog.upsert(s)
    }
    fn remove(&mut self, f: &Frontend) -> Result<bool, Error> {
        self.prog.remove(f)
    }
    fn list(&self) -> Result<Vec<Service>, Error> {
        self.prog.list()
    }
    fn stats(&self, f: &Frontend) -> Result<Option<Stats>, Error> {
        self.prog.stats(f)
    }
    fn settle(&mut self) {
        self.prog.settle()
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

/// A pinned tc link from an earlier loader holds only while it is attached to the uplink as it
/// is now: after the uplink (or its namespace) was recreated, the kernel has detached it
/// (ifindex 0) or it sits on another device. Such pins are removed so the programs are attached
/// again, instead of "reading back" a link that carries no traffic.
fn drop_stale_tc_pins(links: &Path, up: &Uplink) -> Result<(), Error> {
    let pins: Vec<PathBuf> = TC_PROGS
        .iter()
        .map(|(n, _)| links.join(n))
        .filter(|p| p.exists())
        .collect();
    if pins.is_empty() {
        return Ok(());
    }
    let name = std::ffi::CString::new(up.name.as_str())
        .map_err(|_| Error::Invalid(format!("bad uplink name {:?}", up.name)))?;
    // SAFETY: if_nametoindex with a NUL-terminated name.
    let lookup = || Ok::<u32, Error>(unsafe { libc::if_nametoindex(name.as_ptr()) });
    let ifindex = match &up.netns {
        Some(ns) => Netns::open(ns)?.run(lookup)??,
        None => lookup()?,
    };
    for pin in pins {
        let on = sys::pinned_tcx_ifindex(&pin)?;
        if on != Some(ifindex) || ifindex == 0 {
            tracing::info!(pin = %pin.display(), attached_to = ?on, uplink_ifindex = ifindex,
                "pinned tc link is not on the current uplink: attaching again");
            std::fs::remove_file(&pin).map_err(|source| Error::Io {
                what: "removing stale pin",
                path: pin.clone(),
                source,
            })?;
        }
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
    drop_stale_tc_pins(links, up)?;
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
