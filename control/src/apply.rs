//! Applying planned operations to a datapath: what succeeded becomes what is programmed, what
//! failed is left for the next pass to plan again (operations are idempotent).

use meshwork_ebpf::Datapath;

use crate::{desired::Desired, plan::Op};

/// Applies `ops`; returns how many failed (those are planned again on the next pass).
pub fn apply(dp: &mut impl Datapath, have: &mut Desired, ops: Vec<Op>) -> usize {
    let mut failed = 0;
    for op in ops {
        match op {
            Op::Upsert(s) => match dp.upsert(&s) {
                Ok(()) => {
                    have.insert(s.frontend, s);
                }
                Err(e) => {
                    failed += 1;
                    tracing::warn!(frontend = ?s.frontend, error = %e, "upsert");
                }
            },
            Op::Remove(f) => match dp.remove(&f) {
                Ok(_) => {
                    have.remove(&f);
                }
                Err(e) => {
                    failed += 1;
                    tracing::warn!(frontend = ?f, error = %e, "remove");
                }
            },
        }
    }
    failed
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use meshwork_ebpf::{fake::FakeMaps, Algorithm, Backend, FakeDatapath, Frontend, Service};

    use super::*;
    use crate::plan::plan;

    fn svc(port: u16, backends: &[u8]) -> Service {
        Service {
            frontend: Frontend::tcp(Ipv4Addr::new(10, 96, 0, 1), port),
            backends: backends
                .iter()
                .map(|b| Backend::new(Ipv4Addr::new(10, 244, 1, *b), 80))
                .collect(),
            algorithm: Algorithm::Random,
            affinity: None,
        }
    }

    /// The agent's loop in small: plan against what is programmed, apply, repeat until nothing
    /// fails. A failed write is planned again and lands; nothing else is rewritten.
    #[test]
    fn a_failed_write_is_planned_again_and_lands() {
        let mut dp = FakeDatapath::new(FakeMaps::new()).unwrap();
        let mut have = Desired::new();
        let want: Desired = [svc(80, &[1, 2]), svc(81, &[3]), svc(82, &[4])]
            .into_iter()
            .map(|s| (s.frontend, s))
            .collect();
        // The second upsert's slot write fails (the first wrote two slots).
        dp.maps_mut().fail_write("mw_slots", 2);
        let ops = plan(&want, &have);
        assert_eq!(ops.len(), 3);
        assert_eq!(apply(&mut dp, &mut have, ops), 1);
        assert_eq!(
            have.len(),
            2,
            "the failed frontend is not recorded as programmed"
        );
        let again = plan(&want, &have);
        assert_eq!(again, vec![Op::Upsert(svc(81, &[3]))]);
        assert_eq!(apply(&mut dp, &mut have, again), 0);
        assert_eq!(have, want);
        assert_eq!(
            dp.list().unwrap(),
            want.values().cloned().collect::<Vec<_>>()
        );
        assert!(plan(&want, &have).is_empty());

        // Removal of what is no longer wanted.
        let want: Desired = want.into_iter().filter(|(f, _)| f.port != 82).collect();
        let ops = plan(&want, &have);
        assert_eq!(apply(&mut dp, &mut have, ops), 0);
        assert_eq!(
            dp.list().unwrap(),
            want.values().cloned().collect::<Vec<_>>()
        );
    }
}
