//! Incremental desired state. Per Service, the desired frontends are recomputed only when the
//! Service or one of its EndpointSlices changed (by resourceVersion), and only those frontends
//! are planned: one change among 10,000 Services costs that Service, not the whole table. A full
//! pass (first sync, after a failed apply) recomputes everything and plans against all that is
//! programmed.

use std::collections::{BTreeSet, HashMap};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use meshwork_ebpf::Frontend;

use crate::desired::{desired, Desired, NodeInfo, Options};

type Key = (String, String);
/// The Service's resourceVersion and its slices' (sorted).
type Fingerprint = (String, Vec<String>);

#[derive(Default)]
pub struct Tracker {
    per_svc: HashMap<Key, (Fingerprint, Desired)>,
}

fn by_service<'a>(slices: &[&'a EndpointSlice]) -> HashMap<Key, Vec<&'a EndpointSlice>> {
    let mut out: HashMap<Key, Vec<&EndpointSlice>> = HashMap::new();
    for s in slices {
        if let Some(k) = meshwork_kube_watch::slice_service(s) {
            out.entry(k).or_default().push(s);
        }
    }
    out
}

fn key(s: &Service) -> Option<Key> {
    Some((s.metadata.namespace.clone()?, s.metadata.name.clone()?))
}

fn fingerprint(s: &Service, slices: &[&EndpointSlice]) -> Fingerprint {
    let mut rvs: Vec<String> = slices
        .iter()
        .map(|e| e.metadata.resource_version.clone().unwrap_or_default())
        .collect();
    rvs.sort();
    (s.metadata.resource_version.clone().unwrap_or_default(), rvs)
}

impl Tracker {
    /// Everything, recomputed (the cache is rebuilt).
    pub fn full(
        &mut self,
        node: &NodeInfo,
        opts: &Options,
        services: &[&Service],
        slices: &[&EndpointSlice],
    ) -> Desired {
        self.per_svc.clear();
        let (want, _) = self.changes(node, opts, services, slices);
        want
    }

    /// The desired entries of the Services that changed since the last call, and the
    /// frontends to plan: old and new ones of changed Services and those of removed ones.
    pub fn changes(
        &mut self,
        node: &NodeInfo,
        opts: &Options,
        services: &[&Service],
        slices: &[&EndpointSlice],
    ) -> (Desired, BTreeSet<Frontend>) {
        let grouped = by_service(slices);
        let mut want = Desired::new();
        let mut scope = BTreeSet::new();
        let mut seen = std::collections::HashSet::with_capacity(services.len());
        for svc in services {
            let Some(k) = key(svc) else { continue };
            let its: &[&EndpointSlice] = grouped.get(&k).map(Vec::as_slice).unwrap_or(&[]);
            let fp = fingerprint(svc, its);
            seen.insert(k.clone());
            if self.per_svc.get(&k).is_some_and(|(old, _)| *old == fp) {
                continue;
            }
            let d = desired(node, opts, &[*svc], its);
            scope.extend(d.keys().copied());
            want.extend(d.iter().map(|(f, s)| (*f, s.clone())));
            if let Some((_, old)) = self.per_svc.insert(k, (fp, d)) {
                scope.extend(old.keys().copied());
            }
        }
        self.per_svc.retain(|k, (_, old)| {
            let keep = seen.contains(k);
            if !keep {
                scope.extend(old.keys().copied());
            }
            keep
        });
        (want, scope)
    }
}

/// `have` restricted to `scope`: what a partial plan compares against.
pub fn within(have: &Desired, scope: &BTreeSet<Frontend>) -> Desired {
    scope
        .iter()
        .filter_map(|f| have.get(f).map(|s| (*f, s.clone())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{plan, Op};
    use serde_json::json;

    fn svc(name: &str, ip: &str, rv: &str) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "d", "resourceVersion": rv},
            "spec": {"clusterIP": ip, "ports": [{"port": 80, "targetPort": 8080}]}
        }))
        .unwrap()
    }

    fn slice(svc: &str, ips: &[&str], rv: &str) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": svc, "namespace": "d", "resourceVersion": rv,
                         "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4",
            "endpoints": ips.iter().map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}})).collect::<Vec<_>>(),
            "ports": [{"name": "", "port": 8080, "protocol": "TCP"}]
        }))
        .unwrap()
    }

    fn node() -> NodeInfo {
        NodeInfo {
            name: "n1".into(),
            addresses: vec![],
        }
    }

    /// The incremental plans, applied in turn, always end where a full recompute does.
    #[test]
    fn partial_plans_match_the_full_recompute() {
        let opts = Options::default();
        let mut t = Tracker::default();
        let (a, b) = (svc("a", "10.96.0.1", "1"), svc("b", "10.96.0.2", "2"));
        let sa = slice("a", &["10.0.0.1"], "3");
        let sb = slice("b", &["10.0.0.2", "10.0.0.3"], "4");
        let mut have = t.full(&node(), &opts, &[&a, &b], &[&sa, &sb]);
        assert_eq!(have.len(), 2);

        let step = |t: &mut Tracker,
                    have: &mut Desired,
                    svcs: &[&Service],
                    slices: &[&EndpointSlice]|
         -> usize {
            let (want, scope) = t.changes(&node(), &opts, svcs, slices);
            let ops = plan(&want, &within(have, &scope));
            let n = ops.len();
            for op in ops {
                match op {
                    Op::Upsert(s) => {
                        have.insert(s.frontend, s);
                    }
                    Op::Remove(f) => {
                        have.remove(&f);
                    }
                }
            }
            let full = desired(&node(), &opts, svcs, slices);
            assert_eq!(plan(&full, have), vec![], "incremental state drifted");
            n
        };
        // Nothing changed: nothing planned.
        assert_eq!(step(&mut t, &mut have, &[&a, &b], &[&sa, &sb]), 0);
        // One slice changes: one upsert.
        let sb2 = slice("b", &["10.0.0.9"], "5");
        assert_eq!(step(&mut t, &mut have, &[&a, &b], &[&sa, &sb2]), 1);
        // A Service changes its clusterIP: the old frontend goes, the new one comes.
        let a2 = svc("a", "10.96.0.7", "6");
        assert_eq!(step(&mut t, &mut have, &[&a2, &b], &[&sa, &sb2]), 2);
        // A Service disappears.
        assert_eq!(step(&mut t, &mut have, &[&b], &[&sb2]), 1);
    }
}
