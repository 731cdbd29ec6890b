//! The storage seam: the typed operations the programmer performs on the LB maps, over the
//! kernel's pinned maps ([`KernelMaps`]) or memory ([`crate::fake::FakeMaps`]). Everything
//! above this trait (id allocation, reference counts, the switch, read-back) is plain logic and
//! runs under `cargo test` against the fake.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::Path,
};

use aya::{
    maps::{HashMap, MapData},
    Ebpf,
};

use crate::{
    abi::{
        self, Backend6Val, BackendVal, MaglevTable, MemberKey, SlotKey, StatsVal, Svc, Svc6Key,
        SvcKey,
    },
    Backend, Error,
};

/// A frontend as the maps key it, per family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FrontKey {
    V4(SvcKey),
    V6(Svc6Key),
}

/// A backend as the maps store it, per family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackKey {
    V4(BackendVal),
    V6(Backend6Val),
}

impl BackKey {
    pub(crate) fn to_backend(self) -> Backend {
        match self {
            BackKey::V4(b) => {
                Backend::new(Ipv4Addr::from(u32::from_be(b.addr)), u16::from_be(b.port))
                    .with_remote(b.flags & abi::BACKEND_REMOTE != 0)
            }
            BackKey::V6(b) => Backend::new(Ipv6Addr::from(b.addr), u16::from_be(b.port))
                .with_remote(b.flags & abi::BACKEND_REMOTE != 0),
        }
    }
}

/// The LB maps as the programmer uses them. Writes report errors (they decide whether an
/// update happened); removals are best effort, as the kernel's delete of a missing key is.
pub trait Maps {
    fn services(&self) -> Result<Vec<(FrontKey, Svc)>, Error>;
    fn service(&self, k: &FrontKey) -> Option<Svc>;
    fn put_service(&mut self, k: &FrontKey, v: &Svc) -> Result<(), Error>;
    fn del_service(&mut self, k: &FrontKey) -> Result<(), Error>;

    fn slot(&self, k: &SlotKey) -> Option<u32>;
    fn slot_keys(&self) -> Vec<SlotKey>;
    fn put_slot(&mut self, k: &SlotKey, backend: u32) -> Result<(), Error>;
    fn del_slot(&mut self, k: &SlotKey);

    fn maglev(&self, table: u32) -> Option<Box<MaglevTable>>;
    fn maglev_keys(&self) -> Vec<u32>;
    fn put_maglev(&mut self, table: u32, v: &MaglevTable) -> Result<(), Error>;
    fn del_maglev(&mut self, table: u32);

    /// Every stored backend of both families.
    fn backends(&self) -> Vec<(u32, BackKey)>;
    fn backend(&self, v4: bool, id: u32) -> Result<BackKey, Error>;
    fn put_backend(&mut self, id: u32, v: &BackKey) -> Result<(), Error>;
    fn del_backend(&mut self, id: u32, v: &BackKey);

    fn member_keys(&self) -> Vec<MemberKey>;
    fn put_member(&mut self, k: &MemberKey) -> Result<(), Error>;
    fn del_member(&mut self, k: &MemberKey);

    fn stats(&self, svc: u32) -> Result<StatsVal, Error>;
    fn put_stats(&mut self, svc: u32) -> Result<(), Error>;
    fn del_stats(&mut self, svc: u32);
}

/// The backend ids of a service: its slot table (random) or the distinct ids of its Maglev
/// table.
pub(crate) fn read_ids(m: &impl Maps, v: &Svc) -> Vec<u32> {
    if v.algo == abi::ALGO_MAGLEV {
        let mut ids = m
            .maglev(v.table)
            .map(|t| t.slot.to_vec())
            .unwrap_or_default();
        ids.sort_unstable();
        ids.dedup();
        ids
    } else {
        (0..v.slots)
            .filter_map(|slot| {
                m.slot(&SlotKey {
                    table: v.table,
                    slot,
                })
            })
            .collect()
    }
}

/// The kernel's maps, taken from a loaded object or opened from their pins.
pub struct KernelMaps {
    services: HashMap<MapData, SvcKey, Svc>,
    services6: HashMap<MapData, Svc6Key, Svc>,
    slots: HashMap<MapData, SlotKey, u32>,
    maglev: HashMap<MapData, u32, MaglevTable>,
    backends: HashMap<MapData, u32, BackendVal>,
    backends6: HashMap<MapData, u32, Backend6Val>,
    members: HashMap<MapData, MemberKey, u8>,
    stats: HashMap<MapData, u32, StatsVal>,
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

impl KernelMaps {
    /// The maps of the loaded socket-LB object (the loader's).
    pub(crate) fn take(sock: &mut Ebpf) -> Result<KernelMaps, Error> {
        Ok(KernelMaps {
            services: take(sock, "mw_services")?,
            services6: take(sock, "mw_services6")?,
            slots: take(sock, "mw_slots")?,
            maglev: take(sock, "mw_maglev")?,
            backends: take(sock, "mw_backends")?,
            backends6: take(sock, "mw_backends6")?,
            members: take(sock, "mw_members")?,
            stats: take(sock, "mw_stats")?,
        })
    }

    /// The maps pinned in `dir` (another process's datapath, running or stopped).
    pub fn pinned(dir: &Path) -> Result<KernelMaps, Error> {
        Ok(KernelMaps {
            services: pinned(dir, "mw_services")?,
            services6: pinned(dir, "mw_services6")?,
            slots: pinned(dir, "mw_slots")?,
            maglev: pinned(dir, "mw_maglev")?,
            backends: pinned(dir, "mw_backends")?,
            backends6: pinned(dir, "mw_backends6")?,
            members: pinned(dir, "mw_members")?,
            stats: pinned(dir, "mw_stats")?,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.services.keys().count() + self.services6.keys().count()
    }
}

impl Maps for KernelMaps {
    fn services(&self) -> Result<Vec<(FrontKey, Svc)>, Error> {
        let mut out: Vec<(FrontKey, Svc)> = self
            .services
            .iter()
            .map(|r| r.map(|(k, v)| (FrontKey::V4(k), v)))
            .collect::<Result<_, _>>()
            .map_err(Error::map("mw_services"))?;
        for r in self.services6.iter() {
            let (k, v) = r.map_err(Error::map("mw_services6"))?;
            out.push((FrontKey::V6(k), v));
        }
        Ok(out)
    }

    fn service(&self, k: &FrontKey) -> Option<Svc> {
        match k {
            FrontKey::V4(k) => self.services.get(k, 0).ok(),
            FrontKey::V6(k) => self.services6.get(k, 0).ok(),
        }
    }

    fn put_service(&mut self, k: &FrontKey, v: &Svc) -> Result<(), Error> {
        match k {
            FrontKey::V4(k) => self
                .services
                .insert(k, v, 0)
                .map_err(Error::map("mw_services")),
            FrontKey::V6(k) => self
                .services6
                .insert(k, v, 0)
                .map_err(Error::map("mw_services6")),
        }
    }

    fn del_service(&mut self, k: &FrontKey) -> Result<(), Error> {
        match k {
            FrontKey::V4(k) => self.services.remove(k).map_err(Error::map("mw_services")),
            FrontKey::V6(k) => self.services6.remove(k).map_err(Error::map("mw_services6")),
        }
    }

    fn slot(&self, k: &SlotKey) -> Option<u32> {
        self.slots.get(k, 0).ok()
    }

    fn slot_keys(&self) -> Vec<SlotKey> {
        self.slots.keys().filter_map(Result::ok).collect()
    }

    fn put_slot(&mut self, k: &SlotKey, backend: u32) -> Result<(), Error> {
        self.slots
            .insert(k, backend, 0)
            .map_err(Error::map("mw_slots"))
    }

    fn del_slot(&mut self, k: &SlotKey) {
        let _ = self.slots.remove(k);
    }

    fn maglev(&self, table: u32) -> Option<Box<MaglevTable>> {
        self.maglev.get(&table, 0).ok().map(Box::new)
    }

    fn maglev_keys(&self) -> Vec<u32> {
        self.maglev.keys().filter_map(Result::ok).collect()
    }

    fn put_maglev(&mut self, table: u32, v: &MaglevTable) -> Result<(), Error> {
        self.maglev
            .insert(table, v, 0)
            .map_err(Error::map("mw_maglev"))
    }

    fn del_maglev(&mut self, table: u32) {
        let _ = self.maglev.remove(&table);
    }

    fn backends(&self) -> Vec<(u32, BackKey)> {
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
        all
    }

    fn backend(&self, v4: bool, id: u32) -> Result<BackKey, Error> {
        Ok(if v4 {
            BackKey::V4(
                self.backends
                    .get(&id, 0)
                    .map_err(Error::map("mw_backends"))?,
            )
        } else {
            BackKey::V6(
                self.backends6
                    .get(&id, 0)
                    .map_err(Error::map("mw_backends6"))?,
            )
        })
    }

    fn put_backend(&mut self, id: u32, v: &BackKey) -> Result<(), Error> {
        match v {
            BackKey::V4(v) => self
                .backends
                .insert(id, v, 0)
                .map_err(Error::map("mw_backends")),
            BackKey::V6(v) => self
                .backends6
                .insert(id, v, 0)
                .map_err(Error::map("mw_backends6")),
        }
    }

    fn del_backend(&mut self, id: u32, v: &BackKey) {
        let _ = match v {
            BackKey::V4(_) => self.backends.remove(&id),
            BackKey::V6(_) => self.backends6.remove(&id),
        };
    }

    fn member_keys(&self) -> Vec<MemberKey> {
        self.members.keys().filter_map(Result::ok).collect()
    }

    fn put_member(&mut self, k: &MemberKey) -> Result<(), Error> {
        self.members
            .insert(k, 1u8, 0)
            .map_err(Error::map("mw_members"))
    }

    fn del_member(&mut self, k: &MemberKey) {
        let _ = self.members.remove(k);
    }

    fn stats(&self, svc: u32) -> Result<StatsVal, Error> {
        self.stats.get(&svc, 0).map_err(Error::map("mw_stats"))
    }

    fn put_stats(&mut self, svc: u32) -> Result<(), Error> {
        self.stats
            .insert(svc, StatsVal::default(), 0)
            .map_err(Error::map("mw_stats"))
    }

    fn del_stats(&mut self, svc: u32) {
        let _ = self.stats.remove(&svc);
    }
}
