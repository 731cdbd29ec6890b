//! Programming services into the maps: id allocation, backend reference counts, slot tables,
//! the switch, the grace period, read-back. Generic over [`Maps`], so every path here (the
//! failure paths included) runs against [`crate::fake::FakeMaps`] in unit tests.
//!
//! An update is a transaction: reserve ids in memory → write the new backends, slot table,
//! affinity members and counters → switch the service entry in one map update → commit the
//! reference counts and retire what the old entry used. A write that fails before the switch is
//! undone (nothing the programs can see changed, no reference or id is leaked); after the
//! switch nothing can fail.

use std::{
    collections::{BTreeMap, HashMap as Std, HashSet},
    time::{Duration, Instant},
};

use crate::{
    abi::{self, MaglevTable, MemberKey, SlotKey, Svc},
    maglev,
    maps::{read_ids, BackKey, FrontKey, Maps},
    Algorithm, Backend, Error, Frontend, Service, Stats,
};

/// In-memory mirror of one programmed frontend, rebuilt from the maps on open.
#[derive(Clone, Debug)]
struct Entry {
    svc: Svc,
    /// Distinct, sorted.
    backend_ids: Vec<u32>,
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

/// What an update wrote before its switch, to undo if a later write fails.
#[derive(Default)]
struct Written {
    backends: Vec<(u32, BackKey)>,
    slots: Vec<SlotKey>,
    maglev: Option<u32>,
    members: Vec<MemberKey>,
    stats: Option<u32>,
}

pub struct Programmer<M> {
    maps: M,
    entries: Std<FrontKey, Entry>,
    /// (backend value) → (id, references: services using it)
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

impl<M: Maps> Programmer<M> {
    /// Takes over `maps`, reading back what they hold and retiring debris of an update that
    /// was interrupted (slot tables no service points at, unreferenced backends, stale
    /// affinity members).
    pub fn new(maps: M) -> Result<Self, Error> {
        let mut p = Programmer {
            maps,
            entries: Std::new(),
            backend_ids: Std::new(),
            backend_by_id: Std::new(),
            next_svc: 1,
            next_table: 1,
            next_backend: 1,
            free_svc: Vec::new(),
            graveyard: Vec::new(),
        };
        let refs = p.recover_services()?;
        let tables: HashSet<u32> = p.entries.values().map(|e| e.svc.table).collect();
        p.retire_stale_tables(&tables);
        p.recover_backends(&refs);
        let used: HashSet<u32> = p.entries.values().map(|e| e.svc.id).collect();
        p.free_svc = (1..p.next_svc).filter(|i| !used.contains(i)).collect();
        p.remove_stale_members();
        Ok(p)
    }

    /// The maps (a test injects faults or compares contents through this).
    pub fn maps(&self) -> &M {
        &self.maps
    }

    pub fn maps_mut(&mut self) -> &mut M {
        &mut self.maps
    }

    /// Reads every programmed frontend back; returns references per backend id.
    fn recover_services(&mut self) -> Result<Std<u32, u32>, Error> {
        let mut refs: Std<u32, u32> = Std::new();
        for (k, v) in self.maps.services()? {
            let mut ids = read_ids(&self.maps, &v);
            // A random table may list a backend twice; references are per service.
            ids.sort_unstable();
            ids.dedup();
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
        for t in self.maps.maglev_keys() {
            if !tables.contains(&t) {
                self.graveyard.push((now, Garbage::Maglev(t)));
            }
        }
        let stale_slots: Vec<SlotKey> = self
            .maps
            .slot_keys()
            .into_iter()
            .filter(|k| !tables.contains(&k.table))
            .collect();
        if !stale_slots.is_empty() {
            self.graveyard.push((now, Garbage::Slots(stale_slots)));
        }
    }

    /// Rebuilds backend reference counts; unreferenced backends are retired.
    fn recover_backends(&mut self, refs: &Std<u32, u32>) {
        let now = Instant::now();
        for (id, val) in self.maps.backends() {
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
        for k in self.maps.member_keys() {
            if !wanted.contains(&(k.svc, k.backend)) {
                self.maps.del_member(&k);
            }
        }
    }

    fn drop_table(&mut self, v: &Svc) {
        if v.algo == abi::ALGO_MAGLEV {
            self.maps.del_maglev(v.table);
        } else {
            for slot in 0..v.slots {
                self.maps.del_slot(&SlotKey {
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

    /// Drops one reference from each of `ids` (distinct); a backend nobody uses any more is
    /// retired.
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
                Garbage::Backend(id, val) => self.maps.del_backend(id, &val),
                Garbage::Maglev(t) => self.maps.del_maglev(t),
                Garbage::Slots(keys) => {
                    for k in keys {
                        self.maps.del_slot(&k);
                    }
                }
            }
        }
    }

    /// Programs `s`, replacing what its frontend had. Atomic for the datapath (the new slot
    /// table is complete before the service entry is switched to it in one map update) and for
    /// this mirror (an error leaves maps, ids and reference counts as they were).
    pub fn upsert(&mut self, s: &Service) -> Result<(), Error> {
        // Validate before anything is allocated or written.
        check_families(s)?;
        self.collect();
        let key = s.frontend.key();
        let old = self.entries.get(&key).cloned();
        // Reserve: ids in memory only.
        let id = match &old {
            Some(o) => o.svc.id,
            None => self.alloc_svc(),
        };
        let (next_table, next_backend) = (self.next_table, self.next_backend);
        let table = self.next_table;
        self.next_table = self.next_table.wrapping_add(1).max(1);
        let mut written = Written::default();
        match self.write(s, &key, id, table, old.as_ref(), &mut written) {
            Ok((svc, ids)) => {
                self.commit(key, svc, &ids, old, &written);
                Ok(())
            }
            Err(e) => {
                self.undo(written);
                if old.is_none() {
                    self.free_svc.push(id);
                }
                (self.next_table, self.next_backend) = (next_table, next_backend);
                Err(e)
            }
        }
    }

    /// Write and switch: everything of `s` the programs need, then the service entry.
    fn write(
        &mut self,
        s: &Service,
        key: &FrontKey,
        id: u32,
        table: u32,
        old: Option<&Entry>,
        written: &mut Written,
    ) -> Result<(Svc, Vec<u32>), Error> {
        // Slot order follows `s.backends` (duplicates keep their slots: weights by repetition).
        let mut ids = Vec::with_capacity(s.backends.len());
        // Backends new to the maps in this update (a list may name one twice).
        let mut fresh: Std<BackKey, u32> = Std::new();
        for b in &s.backends {
            let val = b.key(s.frontend.proto);
            let known = self
                .backend_ids
                .get(&val)
                .map(|(id, _)| *id)
                .or_else(|| fresh.get(&val).copied());
            let bid = match known {
                Some(bid) => bid,
                None => {
                    let bid = self.next_backend;
                    self.next_backend += 1;
                    self.maps.put_backend(bid, &val)?;
                    written.backends.push((bid, val));
                    fresh.insert(val, bid);
                    bid
                }
            };
            ids.push(bid);
        }
        let slots = self.write_table(table, s, &ids, written)?;
        let affinity_secs = s
            .affinity
            .map(|d| d.as_secs().clamp(1, 86400) as u32)
            .unwrap_or(0);
        if affinity_secs > 0 {
            // Entry backend ids are sorted and distinct.
            let had = |b: &u32| {
                old.is_some_and(|o| {
                    o.svc.affinity_secs > 0 && o.backend_ids.binary_search(b).is_ok()
                })
            };
            let mut distinct = ids.clone();
            distinct.sort_unstable();
            distinct.dedup();
            for backend in &distinct {
                let k = MemberKey {
                    svc: id,
                    backend: *backend,
                };
                if had(backend) {
                    continue;
                }
                self.maps.put_member(&k)?;
                written.members.push(k);
            }
        }
        if old.is_none() {
            self.maps.put_stats(id)?;
            written.stats = Some(id);
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
        self.maps.put_service(key, &svc)?;
        Ok((svc, ids))
    }

    /// Writes the slot table `table` for `s` (random: one slot per backend; Maglev: one map
    /// value holding the whole lookup table). Returns the slot count.
    fn write_table(
        &mut self,
        table: u32,
        s: &Service,
        ids: &[u32],
        written: &mut Written,
    ) -> Result<u32, Error> {
        match s.algorithm {
            Algorithm::Random => {
                for (i, bid) in ids.iter().enumerate() {
                    let k = SlotKey {
                        table,
                        slot: i as u32,
                    };
                    self.maps.put_slot(&k, *bid)?;
                    written.slots.push(k);
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
                self.maps.put_maglev(table, t.as_ref())?;
                written.maglev = Some(table);
                Ok(maglev::DEFAULT_SIZE)
            }
        }
    }

    /// A failed update: nothing it wrote is referenced by a service entry, so it goes at once.
    fn undo(&mut self, w: Written) {
        for k in &w.slots {
            self.maps.del_slot(k);
        }
        if let Some(t) = w.maglev {
            self.maps.del_maglev(t);
        }
        for k in &w.members {
            self.maps.del_member(k);
        }
        if let Some(id) = w.stats {
            self.maps.del_stats(id);
        }
        for (id, val) in &w.backends {
            self.maps.del_backend(*id, val);
        }
    }

    /// After the switch: references are counted, the old table goes to the graveyard,
    /// affinity members of backends the service no longer has (or all, if affinity was turned
    /// off) go, old references drop.
    fn commit(
        &mut self,
        key: FrontKey,
        svc: Svc,
        ids: &[u32],
        old: Option<Entry>,
        written: &Written,
    ) {
        for (id, val) in &written.backends {
            self.backend_ids.insert(*val, (*id, 0));
            self.backend_by_id.insert(*id, *val);
        }
        let mut distinct = ids.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        for id in &distinct {
            if let Some(val) = self.backend_by_id.get(id) {
                if let Some((_, n)) = self.backend_ids.get_mut(val) {
                    *n += 1;
                }
            }
        }
        if let Some(o) = old {
            self.graveyard.push((Instant::now(), Garbage::Table(o.svc)));
            if o.svc.affinity_secs > 0 {
                for b in &o.backend_ids {
                    if svc.affinity_secs == 0 || distinct.binary_search(b).is_err() {
                        self.maps.del_member(&MemberKey {
                            svc: o.svc.id,
                            backend: *b,
                        });
                    }
                }
            }
            self.backend_unref(&o.backend_ids);
        }
        self.entries.insert(
            key,
            Entry {
                svc,
                backend_ids: distinct,
            },
        );
    }

    /// Removes a frontend; false if it was not programmed.
    pub fn remove(&mut self, f: &Frontend) -> Result<bool, Error> {
        let key = f.key();
        let Some(o) = self.entries.get(&key).cloned() else {
            return Ok(false);
        };
        self.collect();
        self.maps.del_service(&key)?;
        self.entries.remove(&key);
        self.graveyard.push((Instant::now(), Garbage::Table(o.svc)));
        for bid in &o.backend_ids {
            self.maps.del_member(&MemberKey {
                svc: o.svc.id,
                backend: *bid,
            });
        }
        self.maps.del_stats(o.svc.id);
        self.backend_unref(&o.backend_ids);
        self.free_svc.push(o.svc.id);
        Ok(true)
    }

    /// What is programmed, read back from the maps (not from memory).
    pub fn list(&self) -> Result<Vec<Service>, Error> {
        let mut out = BTreeMap::new();
        for (k, v) in self.maps.services()? {
            let frontend = match k {
                FrontKey::V4(k) => Frontend::from_v4(&k),
                FrontKey::V6(k) => Frontend::from_v6(&k),
            };
            let Some(frontend) = frontend else { continue };
            let backends = read_ids(&self.maps, &v)
                .into_iter()
                .map(|id| {
                    self.maps
                        .backend(frontend.addr.is_ipv4(), id)
                        .map(BackKey::to_backend)
                })
                .collect::<Result<Vec<_>, _>>()?;
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

    pub fn stats(&self, f: &Frontend) -> Result<Option<Stats>, Error> {
        let Some(e) = self.entries.get(&f.key()) else {
            return Ok(None);
        };
        let s = self.maps.stats(e.svc.id)?;
        Ok(Some(Stats {
            connects: s.connects,
            no_backend: s.no_backend,
            packets: s.packets,
            bytes: s.bytes,
        }))
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
