//! Built-in IPAM: one file per leased address under `<dataDir>/<network>/leases/`.
//!
//! Why it cannot double-allocate, even under kill -9:
//! - every allocation happens under an exclusive `flock` on `<network>/lock`; the kernel drops
//!   the lock when the holder dies, so a killed ADD never blocks the others;
//! - a lease is written to a temp file and then `link(2)`ed to its address's name, which fails
//!   with `EEXIST` if the address is taken: a lease file is either absent or complete, never
//!   half-written, and it exists *before* any interface carries the address;
//! - temp files can only be created by the lock holder, so any found after taking the lock are
//!   debris of a crashed holder and are removed.
//!
//! A lease left by a killed ADD is released by the runtime's DEL (containerd and podman call DEL
//! after a failed ADD) or by GC. Leases are not fsync'd: they guard against process death, and
//! after a reboot every pod is gone and the runtime's GC clears the directory.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write},
    net::IpAddr,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use crate::config::{ip_u128, u128_ip, Range};

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no free address in {start}-{end} ({used} leased)")]
    Exhausted {
        start: IpAddr,
        end: IpAddr,
        used: usize,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> IpamError + '_ {
    move |source| IpamError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Who holds a lease: one attachment.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Owner {
    pub container_id: String,
    pub ifname: String,
}

impl Owner {
    fn encode(&self) -> String {
        format!("{}\n{}\n", self.container_id, self.ifname)
    }

    fn decode(s: &str) -> Option<Owner> {
        let mut lines = s.lines();
        let container_id = lines.next()?.to_string();
        let ifname = lines.next()?.to_string();
        (!container_id.is_empty()).then_some(Owner {
            container_id,
            ifname,
        })
    }
}

/// An address handed to an owner; `fresh` if this call created the lease (a rollback may free
/// only those: an existing lease belongs to a live attachment).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    pub ip: IpAddr,
    pub fresh: bool,
}

/// The lease directory of one network, locked for as long as this value lives.
pub struct Store {
    leases: PathBuf,
    root: PathBuf,
    _lock: File,
}

impl Store {
    /// Like [`Store::lock`], but `None` when the network never had a lease (DEL, GC and CHECK
    /// must not create state for a network they never saw).
    pub fn lock_existing(data_dir: &Path, network: &str) -> Result<Option<Store>, IpamError> {
        if !data_dir.join(network).join("leases").is_dir() {
            return Ok(None);
        }
        Self::lock(data_dir, network).map(Some)
    }

    /// Opens (creating if needed) `<data_dir>/<network>` and takes its lock, waiting for it.
    pub fn lock(data_dir: &Path, network: &str) -> Result<Store, IpamError> {
        let root = data_dir.join(network);
        let leases = root.join("leases");
        fs::create_dir_all(&leases).map_err(io_err(&leases))?;
        let lock_path = root.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        loop {
            // SAFETY: flock on an fd we own.
            let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                break;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(io_err(&lock_path)(e));
            }
        }
        let store = Store {
            leases,
            root,
            _lock: lock,
        };
        store.remove_debris()?;
        Ok(store)
    }

    fn remove_debris(&self) -> Result<(), IpamError> {
        for entry in fs::read_dir(&self.leases).map_err(io_err(&self.leases))? {
            let entry = entry.map_err(io_err(&self.leases))?;
            if entry.file_name().to_string_lossy().starts_with(".tmp-") {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    /// All leases: address and owner (None if the file is unreadable — treated as taken).
    pub fn leases(&self) -> Result<Vec<(IpAddr, Option<Owner>)>, IpamError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.leases).map_err(io_err(&self.leases))? {
            let entry = entry.map_err(io_err(&self.leases))?;
            let name = entry.file_name();
            let Some(ip) = name.to_str().and_then(|s| s.parse::<IpAddr>().ok()) else {
                continue;
            };
            let owner = fs::read_to_string(entry.path())
                .ok()
                .and_then(|s| Owner::decode(&s));
            out.push((ip, owner));
        }
        out.sort_by_key(|(ip, _)| *ip);
        Ok(out)
    }

    /// Leases `owner` an address from `range`: its existing one if it has one (`fresh` false),
    /// else the next free address after the last one handed out (round robin, so a just-freed
    /// address is not reused at once while stale conntrack/ARP entries may still point at it).
    pub fn allocate(&self, range: &Range, owner: &Owner) -> Result<Lease, IpamError> {
        let leases = self.leases()?;
        if let Some((ip, _)) = leases
            .iter()
            .find(|(ip, o)| o.as_ref() == Some(owner) && range.contains_alloc(*ip))
        {
            return Ok(Lease {
                ip: *ip,
                fresh: false,
            });
        }
        let v6 = range.start.is_ipv6();
        let (start, end) = (ip_u128(range.start), ip_u128(range.end));
        let span = end - start + 1;
        let last_path = self.root.join(if v6 { "last6" } else { "last4" });
        let last = fs::read_to_string(&last_path)
            .ok()
            .and_then(|s| s.trim().parse::<IpAddr>().ok())
            .filter(|ip| range.contains_alloc(*ip))
            .map(ip_u128);
        let first = match last {
            Some(l) => start + (l - start + 1) % span,
            None => start,
        };
        let gateway = ip_u128(range.gateway);
        let taken: std::collections::HashSet<u128> =
            leases.iter().map(|(ip, _)| ip_u128(*ip)).collect();
        let content = owner.encode();
        // Bounded by the range, and in practice by the number of leases + 1.
        let mut cand = first;
        for _ in 0..span {
            if cand != gateway && !taken.contains(&cand) {
                let ip = u128_ip(cand, v6);
                if self.try_take(ip, &content)? {
                    let _ = write_small(&last_path, &ip.to_string());
                    return Ok(Lease { ip, fresh: true });
                }
            }
            cand = if cand == end { start } else { cand + 1 };
        }
        Err(IpamError::Exhausted {
            start: range.start,
            end: range.end,
            used: leases
                .iter()
                .filter(|(ip, _)| range.contains_alloc(*ip))
                .count(),
        })
    }

    /// Atomically creates the lease file for `ip` with `content`; false if it exists.
    fn try_take(&self, ip: IpAddr, content: &str) -> Result<bool, IpamError> {
        let tmp = self.leases.join(format!(".tmp-{}", std::process::id()));
        write_small(&tmp, content).map_err(io_err(&tmp))?;
        let target = self.leases.join(ip.to_string());
        let res = fs::hard_link(&tmp, &target);
        let _ = fs::remove_file(&tmp);
        match res {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(io_err(&target)(e)),
        }
    }

    /// Frees every lease of `owner`; returns the freed addresses.
    pub fn release(&self, owner: &Owner) -> Result<Vec<IpAddr>, IpamError> {
        self.release_where(|o| o == owner)
    }

    /// Frees the given leases of `owner` (only while still `owner`'s).
    pub fn release_ips(&self, owner: &Owner, ips: &[IpAddr]) -> Result<Vec<IpAddr>, IpamError> {
        self.release_matching(|ip, o| o == owner && ips.contains(&ip))
    }

    /// Frees leases whose owner fails `keep` (GC). Unreadable leases are kept: they may belong
    /// to an ADD that crashed mid-write of an older layout; DEL/GC by owner cannot name them.
    pub fn release_where(
        &self,
        mut free: impl FnMut(&Owner) -> bool,
    ) -> Result<Vec<IpAddr>, IpamError> {
        self.release_matching(|_, o| free(o))
    }

    fn release_matching(
        &self,
        mut free: impl FnMut(IpAddr, &Owner) -> bool,
    ) -> Result<Vec<IpAddr>, IpamError> {
        let mut freed = Vec::new();
        for (ip, owner) in self.leases()? {
            if owner.as_ref().is_some_and(|o| free(ip, o)) {
                let p = self.leases.join(ip.to_string());
                match fs::remove_file(&p) {
                    Ok(()) => freed.push(ip),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err(&p)(e)),
                }
            }
        }
        Ok(freed)
    }

    /// Free addresses left in `range`.
    pub fn free_in(&self, range: &Range) -> Result<u128, IpamError> {
        let used = self
            .leases()?
            .iter()
            .filter(|(ip, _)| range.contains_alloc(*ip) && *ip != range.gateway)
            .count() as u128;
        Ok(range.size().saturating_sub(used))
    }
}

fn write_small(path: &Path, content: &str) -> io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(content.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NetConf;

    fn range(json_ipam: &str) -> Range {
        let conf = format!(r#"{{"cniVersion":"1.1.0","name":"n","ipam":{json_ipam}}}"#);
        NetConf::parse(conf.as_bytes())
            .unwrap()
            .validate()
            .unwrap()
            .ranges
            .remove(0)
    }

    fn owner(id: &str) -> Owner {
        Owner {
            container_id: id.into(),
            ifname: "eth0".into(),
        }
    }

    #[test]
    fn allocates_distinct_round_robin_and_skips_gateway() {
        let dir = tempfile::tempdir().unwrap();
        let r = range(r#"{"subnet":"10.1.0.0/29"}"#); // hosts .1-.6, .1 gateway
        let s = Store::lock(dir.path(), "n").unwrap();
        let a = s.allocate(&r, &owner("a")).unwrap().ip;
        let b = s.allocate(&r, &owner("b")).unwrap().ip;
        assert_eq!(a.to_string(), "10.1.0.2");
        assert_eq!(b.to_string(), "10.1.0.3");
        assert_eq!(
            s.allocate(&r, &owner("a")).unwrap().ip,
            a,
            "same owner keeps its lease"
        );
        s.release(&owner("a")).unwrap();
        let c = s.allocate(&r, &owner("c")).unwrap().ip;
        assert_eq!(
            c.to_string(),
            "10.1.0.4",
            "a freed address is not reused at once"
        );
    }

    #[test]
    fn exhaustion_is_an_error_and_free_count_reaches_zero() {
        let dir = tempfile::tempdir().unwrap();
        let r = range(r#"{"subnet":"10.1.0.0/29"}"#);
        let s = Store::lock(dir.path(), "n").unwrap();
        for i in 0..5 {
            s.allocate(&r, &owner(&format!("c{i}"))).unwrap();
        }
        assert_eq!(s.free_in(&r).unwrap(), 0);
        let err = s.allocate(&r, &owner("x")).unwrap_err();
        assert!(matches!(err, IpamError::Exhausted { used: 5, .. }), "{err}");
        s.release_where(|o| o.container_id == "c3").unwrap();
        assert_eq!(s.free_in(&r).unwrap(), 1);
        assert_eq!(
            s.allocate(&r, &owner("x")).unwrap().ip.to_string(),
            "10.1.0.5"
        );
    }

    #[test]
    fn state_persists_across_store_instances_and_debris_is_swept() {
        let dir = tempfile::tempdir().unwrap();
        let r = range(r#"{"subnet":"10.1.0.0/24"}"#);
        {
            let s = Store::lock(dir.path(), "n").unwrap();
            s.allocate(&r, &owner("a")).unwrap();
        }
        fs::write(dir.path().join("n/leases/.tmp-999"), "x\ny\n").unwrap();
        let s = Store::lock(dir.path(), "n").unwrap();
        assert!(!dir.path().join("n/leases/.tmp-999").exists());
        let leases = s.leases().unwrap();
        assert_eq!(leases.len(), 1);
        assert_eq!(leases[0].1, Some(owner("a")));
        assert_eq!(
            s.allocate(&r, &owner("b")).unwrap().ip.to_string(),
            "10.1.0.3"
        );
    }

    #[test]
    fn concurrent_stores_serialise_on_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let r = range(r#"{"subnet":"10.1.0.0/24"}"#);
        let ips: Vec<IpAddr> = std::thread::scope(|sc| {
            let hs: Vec<_> = (0..16)
                .map(|i| {
                    let (d, r) = (dir.path(), &r);
                    sc.spawn(move || {
                        Store::lock(d, "n")
                            .unwrap()
                            .allocate(r, &owner(&format!("c{i}")))
                            .unwrap()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap().ip).collect()
        });
        let distinct: std::collections::HashSet<_> = ips.iter().collect();
        assert_eq!(distinct.len(), 16);
    }

    #[test]
    fn v6_allocation() {
        let dir = tempfile::tempdir().unwrap();
        let r = range(r#"{"subnet6":"fd00:1::/64"}"#);
        let s = Store::lock(dir.path(), "n").unwrap();
        assert_eq!(
            s.allocate(&r, &owner("a")).unwrap().ip.to_string(),
            "fd00:1::2"
        );
    }
}
