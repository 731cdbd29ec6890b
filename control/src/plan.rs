//! Desired vs programmed → the operations to apply (pure, table-tested; ARCHITECTURE.md, mechanism and policy). Operations are
//! idempotent, so a failed apply is simply planned again.

use meshwork_ebpf::{Frontend, Service as LbService};

use crate::desired::Desired;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Upsert(LbService),
    Remove(Frontend),
}

/// Backends are compared as sets: the datapath may list them in slot order.
fn same(a: &LbService, b: &LbService) -> bool {
    let (mut x, mut y) = (a.backends.clone(), b.backends.clone());
    x.sort();
    y.sort();
    x == y && a.algorithm == b.algorithm && a.affinity == b.affinity
}

pub fn plan(want: &Desired, have: &Desired) -> Vec<Op> {
    let mut ops: Vec<Op> = want
        .iter()
        .filter(|(f, w)| have.get(f).is_none_or(|h| !same(w, h)))
        .map(|(_, w)| Op::Upsert(w.clone()))
        .collect();
    ops.extend(
        have.keys()
            .filter(|f| !want.contains_key(f))
            .map(|f| Op::Remove(*f)),
    );
    ops
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use meshwork_ebpf::{Algorithm, Backend};

    use super::*;

    fn svc(port: u16, backends: &[u16]) -> LbService {
        LbService {
            frontend: Frontend::tcp([10, 96, 0, 1], port),
            backends: backends
                .iter()
                .map(|b| Backend::new([10, 244, 1, 2], *b))
                .collect(),
            algorithm: Algorithm::Random,
            affinity: None,
        }
    }

    fn map<const N: usize>(v: [LbService; N]) -> Desired {
        v.into_iter().map(|s| (s.frontend, s)).collect()
    }

    #[test]
    fn plans() {
        let a = svc(80, &[1, 2]);
        let a_reordered = svc(80, &[2, 1]);
        let a_changed = svc(80, &[1]);
        let mut a_affinity = svc(80, &[1, 2]);
        a_affinity.affinity = Some(Duration::from_secs(5));
        let b = svc(81, &[1]);
        let cases: Vec<(&str, Desired, Desired, Vec<Op>)> = vec![
            ("converged", map([a.clone()]), map([a_reordered]), vec![]),
            (
                "new",
                map([a.clone(), b.clone()]),
                map([a.clone()]),
                vec![Op::Upsert(b.clone())],
            ),
            (
                "gone",
                map([a.clone()]),
                map([a.clone(), b.clone()]),
                vec![Op::Remove(b.frontend)],
            ),
            (
                "backends changed",
                map([a_changed.clone()]),
                map([a.clone()]),
                vec![Op::Upsert(a_changed)],
            ),
            (
                "affinity changed",
                map([a_affinity.clone()]),
                map([a]),
                vec![Op::Upsert(a_affinity)],
            ),
            ("empty", Desired::new(), Desired::new(), vec![]),
        ];
        for (what, want, have, ops) in cases {
            assert_eq!(plan(&want, &have), ops, "{what}");
        }
    }
}
