//! The programmer's logic over in-memory maps (no kernel): the transactional update under a
//! failing write at every step, reference counting across services, read-back after a
//! restart. The kernel half is `loader.rs` and `tests/tests/service_lb.rs`.
#![allow(
    clippy::unwrap_used,
    reason = "test code: a panic with its location is the failure report"
)]

use std::{net::Ipv4Addr, net::Ipv6Addr, time::Duration};

use meshwork_ebpf::{fake::FakeMaps, Algorithm, Backend, FakeDatapath, Frontend, Service};

fn svc(port: u16, backends: &[u8], algorithm: Algorithm, affinity: bool) -> Service {
    Service {
        frontend: Frontend::tcp(Ipv4Addr::new(10, 96, 0, 10), port),
        backends: backends
            .iter()
            .map(|b| Backend::new(Ipv4Addr::new(10, 244, 0, *b), 8080))
            .collect(),
        algorithm,
        affinity: affinity.then(|| Duration::from_secs(30)),
    }
}

/// Maglev tables read back their backends in id order, not the order given.
fn norm(mut v: Vec<Service>) -> Vec<Service> {
    for s in &mut v {
        if s.algorithm == Algorithm::Maglev {
            s.backends.sort();
        }
    }
    v.sort_by_key(|s| s.frontend);
    v
}

fn fresh() -> FakeDatapath {
    FakeDatapath::new(FakeMaps::new()).unwrap()
}

/// Every write an update can make, by the map it goes to.
const MAPS: &[&str] = &[
    "mw_backends",
    "mw_slots",
    "mw_maglev",
    "mw_members",
    "mw_stats",
    "mw_services",
];

#[test]
fn round_trip_update_and_remove_leave_nothing() {
    let mut dp = fresh();
    let a = svc(80, &[1, 2, 3], Algorithm::Random, false);
    let b = svc(81, &[2, 3, 4], Algorithm::Maglev, true);
    dp.upsert(&a).unwrap();
    dp.upsert(&b).unwrap();
    assert_eq!(dp.list().unwrap(), vec![a.clone(), b.clone()]);
    let a2 = svc(80, &[3, 5], Algorithm::Random, true);
    dp.upsert(&a2).unwrap();
    dp.settle();
    assert_eq!(dp.list().unwrap(), vec![a2.clone(), b.clone()]);
    // Backends 1 and 2 (2 still used by b) : 2,3,4,5 stored.
    assert_eq!(dp.maps().sizes().1, 4);
    assert!(dp.remove(&a2.frontend).unwrap());
    assert!(!dp.remove(&a2.frontend).unwrap());
    assert!(dp.remove(&b.frontend).unwrap());
    dp.settle();
    assert_eq!(dp.maps(), &FakeMaps::new(), "everything freed");
}

#[test]
fn a_failed_write_at_any_step_changes_nothing_and_leaks_nothing() {
    // (what is programmed first, the update that meets the fault)
    let cases = [
        (None, svc(80, &[1, 2], Algorithm::Random, true)),
        (None, svc(80, &[1, 2], Algorithm::Maglev, true)),
        (
            Some(svc(80, &[1, 2], Algorithm::Random, true)),
            svc(80, &[2, 3, 4], Algorithm::Random, true),
        ),
        (
            Some(svc(80, &[1, 2], Algorithm::Random, false)),
            svc(80, &[1, 9], Algorithm::Maglev, true),
        ),
    ];
    let mut met = std::collections::BTreeSet::new();
    for (before, update) in &cases {
        for map in MAPS {
            for after in 0..3 {
                let mut dp = fresh();
                // A second service shares backend 2: its references must survive.
                let other = svc(443, &[2, 7], Algorithm::Random, false);
                dp.upsert(&other).unwrap();
                if let Some(b) = before {
                    dp.upsert(b).unwrap();
                }
                dp.settle();
                let maps_before = dp.maps().clone();
                let listed_before = dp.list().unwrap();
                dp.maps_mut().fail_write(map, after);
                let Err(e) = dp.upsert(update) else {
                    // This update makes fewer writes to `map` than `after`+1.
                    continue;
                };
                met.insert(*map);
                assert!(e.to_string().contains(map), "{e}");
                assert_eq!(dp.maps(), &maps_before, "{map} after {after}: maps changed");
                assert_eq!(dp.list().unwrap(), listed_before);

                // The mirror is intact: the update goes through on retry, and removing
                // everything frees every backend (no leaked reference).
                dp.upsert(update).unwrap();
                let want = norm(vec![update.clone(), other.clone()]);
                assert_eq!(norm(dp.list().unwrap()), want);
                dp.remove(&update.frontend).unwrap();
                dp.settle();
                assert_eq!(dp.list().unwrap(), vec![other.clone()]);
                assert_eq!(dp.maps().sizes(), (1, 2, 2), "{map} after {after}: leak");
                dp.remove(&other.frontend).unwrap();
                dp.settle();
                assert_eq!(dp.maps(), &FakeMaps::new(), "{map} after {after}: leak");
            }
        }
    }
    // Every map an update writes met a fault in some case.
    assert_eq!(met.len(), MAPS.len(), "faults met only {met:?}");
}

#[test]
fn a_failed_new_service_returns_its_id() {
    let mut dp = fresh();
    dp.maps_mut().fail_write("mw_services", 0);
    dp.upsert(&svc(80, &[1], Algorithm::Random, false))
        .unwrap_err();
    dp.upsert(&svc(81, &[1], Algorithm::Random, false)).unwrap();
    dp.upsert(&svc(82, &[1], Algorithm::Random, false)).unwrap();
    // Ids 1 and 2, not 2 and 3: the failed one's id was given back. Read through a restart.
    let again = FakeDatapath::new(dp.maps().clone()).unwrap();
    assert_eq!(again.list().unwrap().len(), 2);
    let stats_ids: Vec<bool> = [80, 81, 82]
        .iter()
        .map(|p| {
            again
                .stats(&Frontend::tcp(Ipv4Addr::new(10, 96, 0, 10), *p))
                .unwrap()
                .is_some()
        })
        .collect();
    assert_eq!(stats_ids, [false, true, true]);
}

#[test]
fn mixed_families_are_refused_before_anything_is_written() {
    let mut dp = fresh();
    let mut s = svc(80, &[1], Algorithm::Random, false);
    s.backends.push(Backend::new(Ipv6Addr::LOCALHOST, 80));
    let e = dp.upsert(&s).unwrap_err();
    assert!(e.to_string().contains("address family"), "{e}");
    assert_eq!(dp.maps(), &FakeMaps::new());
}

#[test]
fn a_restart_reads_back_and_keeps_counting_references() {
    let mut dp = fresh();
    // A backend listed twice (weight by repetition) and one shared by two services.
    let a = svc(80, &[1, 1, 2], Algorithm::Random, true);
    let b = svc(81, &[2, 3], Algorithm::Maglev, false);
    dp.upsert(&a).unwrap();
    dp.upsert(&b).unwrap();
    let mut again = FakeDatapath::new(dp.maps().clone()).unwrap();
    assert_eq!(again.list().unwrap(), vec![a.clone(), b.clone()]);
    again.remove(&a.frontend).unwrap();
    again.settle();
    assert_eq!(again.list().unwrap(), vec![b.clone()]);
    assert_eq!(again.maps().sizes().1, 2, "backends 2 and 3 stay");
    again.remove(&b.frontend).unwrap();
    again.settle();
    assert_eq!(
        again.maps(),
        &FakeMaps::new(),
        "backend 1 counted once per service"
    );
}

#[test]
fn a_restart_retires_debris_of_an_interrupted_update() {
    let mut dp = fresh();
    let a = svc(80, &[1, 2], Algorithm::Random, true);
    dp.upsert(&a).unwrap();
    let clean = dp.maps().clone();
    // A loader killed between writing a new table and switching to it leaves a backend and a
    // slot table that no service points at.
    let mut debris = clean.clone();
    {
        use meshwork_ebpf::{abi::SlotKey, maps::Maps};
        let stray = meshwork_ebpf::maps::BackKey::V4(meshwork_ebpf::abi::BackendVal {
            addr: u32::from(Ipv4Addr::new(10, 244, 0, 99)).to_be(),
            port: 8080u16.to_be(),
            proto: 6,
            flags: 0,
        });
        debris.put_backend(999, &stray).unwrap();
        debris
            .put_slot(&SlotKey { table: 77, slot: 0 }, 999)
            .unwrap();
    }
    let mut restarted = FakeDatapath::new(debris).unwrap();
    assert_eq!(restarted.list().unwrap(), vec![a]);
    restarted.settle();
    assert_eq!(restarted.maps(), &clean, "stray table and backend retired");
}
