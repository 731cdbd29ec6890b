//! In-memory maps with injectable write failures: the programmer's logic (and control's apply
//! loop above it) under plain `cargo test`, in the way aya's `sys/fake.rs` stands in for the
//! syscalls. Not a model of the BPF programs: nothing here load balances.

use std::collections::{BTreeMap, HashMap};

use crate::{
    abi::{MaglevTable, MemberKey, SlotKey, StatsVal, Svc},
    maps::{BackKey, FrontKey, Maps},
    Error,
};

/// The LB maps as plain collections. Compare two [`FakeMaps`] (`==`) to check that a failed
/// update left the maps exactly as they were.
#[derive(Clone, Debug, Default)]
pub struct FakeMaps {
    services: Vec<(FrontKey, Svc)>,
    slots: BTreeMap<(u32, u32), u32>,
    maglev: BTreeMap<u32, Vec<u32>>,
    backends: BTreeMap<u32, BackKey>,
    members: BTreeMap<(u32, u32), ()>,
    stats: BTreeMap<u32, StatsVal>,
    /// Per map name: how many more writes succeed before one fails (then the fault is gone).
    faults: HashMap<&'static str, usize>,
}

impl FakeMaps {
    pub fn new() -> Self {
        Self::default()
    }

    /// The write to `map` (a kernel map name: `mw_slots`, `mw_backends`, ...) after `after`
    /// successful ones fails once, as a full map's `ENOSPC` would.
    pub fn fail_write(&mut self, map: &'static str, after: usize) {
        self.faults.insert(map, after);
    }

    /// How many backends and slot entries are stored (for leak checks).
    pub fn sizes(&self) -> (usize, usize, usize) {
        (self.services.len(), self.backends.len(), self.slots.len())
    }

    fn write(&mut self, map: &'static str) -> Result<(), Error> {
        match self.faults.get_mut(map) {
            Some(0) => {
                self.faults.remove(map);
                Err(Error::Map {
                    name: map,
                    source: Box::new(aya::maps::MapError::SyscallError(aya::sys::SyscallError {
                        call: "bpf_map_update_elem",
                        io_error: std::io::Error::from_raw_os_error(libc::ENOSPC),
                    })),
                })
            }
            Some(n) => {
                *n -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }
}

/// Only the contents count: a pending fault is not part of what the maps hold.
impl PartialEq for FakeMaps {
    fn eq(&self, other: &Self) -> bool {
        let key = |m: &FakeMaps| {
            let mut s = m.services.clone();
            s.sort_by_key(|(k, _)| format!("{k:?}"));
            (
                s,
                m.slots.clone(),
                m.maglev.clone(),
                m.backends.clone(),
                m.members.clone(),
            )
        };
        key(self) == key(other) && self.stats == other.stats
    }
}

impl Maps for FakeMaps {
    fn services(&self) -> Result<Vec<(FrontKey, Svc)>, Error> {
        Ok(self.services.clone())
    }

    fn service(&self, k: &FrontKey) -> Option<Svc> {
        self.services.iter().find(|(f, _)| f == k).map(|(_, v)| *v)
    }

    fn put_service(&mut self, k: &FrontKey, v: &Svc) -> Result<(), Error> {
        self.write("mw_services")?;
        match self.services.iter_mut().find(|(f, _)| f == k) {
            Some((_, old)) => *old = *v,
            None => self.services.push((*k, *v)),
        }
        Ok(())
    }

    fn del_service(&mut self, k: &FrontKey) -> Result<(), Error> {
        self.services.retain(|(f, _)| f != k);
        Ok(())
    }

    fn slot(&self, k: &SlotKey) -> Option<u32> {
        self.slots.get(&(k.table, k.slot)).copied()
    }

    fn slot_keys(&self) -> Vec<SlotKey> {
        self.slots
            .keys()
            .map(|&(table, slot)| SlotKey { table, slot })
            .collect()
    }

    fn put_slot(&mut self, k: &SlotKey, backend: u32) -> Result<(), Error> {
        self.write("mw_slots")?;
        self.slots.insert((k.table, k.slot), backend);
        Ok(())
    }

    fn del_slot(&mut self, k: &SlotKey) {
        self.slots.remove(&(k.table, k.slot));
    }

    fn maglev(&self, table: u32) -> Option<Box<MaglevTable>> {
        let v = self.maglev.get(&table)?;
        let mut t = Box::new(MaglevTable {
            slot: [0; crate::maglev::DEFAULT_SIZE as usize],
        });
        t.slot.copy_from_slice(v);
        Some(t)
    }

    fn maglev_keys(&self) -> Vec<u32> {
        self.maglev.keys().copied().collect()
    }

    fn put_maglev(&mut self, table: u32, v: &MaglevTable) -> Result<(), Error> {
        self.write("mw_maglev")?;
        self.maglev.insert(table, v.slot.to_vec());
        Ok(())
    }

    fn del_maglev(&mut self, table: u32) {
        self.maglev.remove(&table);
    }

    fn backends(&self) -> Vec<(u32, BackKey)> {
        self.backends.iter().map(|(id, v)| (*id, *v)).collect()
    }

    fn backend(&self, v4: bool, id: u32) -> Result<BackKey, Error> {
        match self.backends.get(&id) {
            Some(v @ BackKey::V4(_)) if v4 => Ok(*v),
            Some(v @ BackKey::V6(_)) if !v4 => Ok(*v),
            _ => Err(Error::Map {
                name: if v4 { "mw_backends" } else { "mw_backends6" },
                source: Box::new(aya::maps::MapError::KeyNotFound),
            }),
        }
    }

    fn put_backend(&mut self, id: u32, v: &BackKey) -> Result<(), Error> {
        self.write(match v {
            BackKey::V4(_) => "mw_backends",
            BackKey::V6(_) => "mw_backends6",
        })?;
        self.backends.insert(id, *v);
        Ok(())
    }

    fn del_backend(&mut self, id: u32, _v: &BackKey) {
        self.backends.remove(&id);
    }

    fn member_keys(&self) -> Vec<MemberKey> {
        self.members
            .keys()
            .map(|&(svc, backend)| MemberKey { svc, backend })
            .collect()
    }

    fn put_member(&mut self, k: &MemberKey) -> Result<(), Error> {
        self.write("mw_members")?;
        self.members.insert((k.svc, k.backend), ());
        Ok(())
    }

    fn del_member(&mut self, k: &MemberKey) {
        self.members.remove(&(k.svc, k.backend));
    }

    fn stats(&self, svc: u32) -> Result<StatsVal, Error> {
        self.stats.get(&svc).copied().ok_or(Error::Map {
            name: "mw_stats",
            source: Box::new(aya::maps::MapError::KeyNotFound),
        })
    }

    fn put_stats(&mut self, svc: u32) -> Result<(), Error> {
        self.write("mw_stats")?;
        self.stats.insert(svc, StatsVal::default());
        Ok(())
    }

    fn del_stats(&mut self, svc: u32) {
        self.stats.remove(&svc);
    }
}
