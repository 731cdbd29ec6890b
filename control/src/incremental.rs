//! Incremental desired state. The watch caches hand out the same `Arc` for an object until it
//! changes, so a pass finds what changed by pointer (no string work per object), recomputes the
//! desired frontends of those Services only and plans only them: one change among 10,000
//! Services costs that Service plus a pointer walk, not the whole table. A full pass (first
//! sync, after a failed apply) recomputes everything and plans against all that is programmed.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::Arc,
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use meshwork_ebpf::Frontend;

use crate::desired::{desired, Desired, NodeInfo, Options};

type Key = (String, String);

#[derive(Default)]
pub struct Tracker {
    /// Objects of the last pass by identity (held, so an address is never reused meanwhile).
    svcs: HashMap<usize, (Arc<Service>, Option<Key>)>,
    slices: HashMap<usize, (Arc<EndpointSlice>, Option<Key>)>,
    svc_by_key: HashMap<Key, Arc<Service>>,
    slices_by_key: HashMap<Key, Vec<Arc<EndpointSlice>>>,
    desired: HashMap<Key, Desired>,
}

fn id<T>(a: &Arc<T>) -> usize {
    Arc::as_ptr(a) as usize
}

fn svc_key(s: &Service) -> Option<Key> {
    Some((s.metadata.namespace.clone()?, s.metadata.name.clone()?))
}

impl Tracker {
    /// Everything, recomputed (the cache is rebuilt).
    pub fn full(
        &mut self,
        node: &NodeInfo,
        opts: &Options,
        services: &[Arc<Service>],
        slices: &[Arc<EndpointSlice>],
    ) -> Desired {
        *self = Tracker::default();
        self.changes(node, opts, services, slices).0
    }

    /// The desired entries of the Services that changed since the last call (they or their
    /// slices), and the frontends to plan: old and new ones of those Services.
    pub fn changes(
        &mut self,
        node: &NodeInfo,
        opts: &Options,
        services: &[Arc<Service>],
        slices: &[Arc<EndpointSlice>],
    ) -> (Desired, BTreeSet<Frontend>) {
        let mut dirty: HashSet<Key> = HashSet::new();
        let mut next = HashMap::with_capacity(services.len());
        for s in services {
            let e = match self.svcs.remove(&id(s)) {
                Some(e) => e,
                None => {
                    let k = svc_key(s);
                    if let Some(k) = &k {
                        dirty.insert(k.clone());
                        self.svc_by_key.insert(k.clone(), s.clone());
                    }
                    (s.clone(), k)
                }
            };
            next.insert(id(s), e);
        }
        // Replaced or deleted since the last pass.
        for (_, (_, k)) in self.svcs.drain() {
            dirty.extend(k);
        }
        self.svcs = next;
        let mut next = HashMap::with_capacity(slices.len());
        for s in slices {
            let e = match self.slices.remove(&id(s)) {
                Some(e) => e,
                None => {
                    let k = meshwork_kube_watch::slice_service(s);
                    if let Some(k) = &k {
                        dirty.insert(k.clone());
                        self.slices_by_key
                            .entry(k.clone())
                            .or_default()
                            .push(s.clone());
                    }
                    (s.clone(), k)
                }
            };
            next.insert(id(s), e);
        }
        for (_, (old, k)) in self.slices.drain() {
            if let Some(k) = k {
                if let Some(v) = self.slices_by_key.get_mut(&k) {
                    v.retain(|x| !Arc::ptr_eq(x, &old));
                    if v.is_empty() {
                        self.slices_by_key.remove(&k);
                    }
                }
                dirty.insert(k);
            }
        }
        self.slices = next;

        let mut want = Desired::new();
        let mut scope = BTreeSet::new();
        for k in dirty {
            if let Some(old) = self.desired.remove(&k) {
                scope.extend(old.keys().copied());
            }
            let live = self
                .svc_by_key
                .get(&k)
                .filter(|s| self.svcs.contains_key(&id(s)))
                .cloned();
            let Some(svc) = live else {
                self.svc_by_key.remove(&k);
                continue;
            };
            let its: Vec<&EndpointSlice> = self
                .slices_by_key
                .get(&k)
                .into_iter()
                .flatten()
                .map(|s| s.as_ref())
                .collect();
            let d = desired(node, opts, &[svc.as_ref()], &its);
            scope.extend(d.keys().copied());
            want.extend(d.iter().map(|(f, s)| (*f, s.clone())));
            self.desired.insert(k, d);
        }
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

    fn svc(name: &str, ip: &str, rv: &str) -> Arc<Service> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "d", "resourceVersion": rv},
                "spec": {"clusterIP": ip, "ports": [{"port": 80, "targetPort": 8080}]}
            }))
            .unwrap(),
        )
    }

    fn slice(svc: &str, ips: &[&str], rv: &str) -> Arc<EndpointSlice> {
        Arc::new(serde_json::from_value(json!({
            "metadata": {"name": svc, "namespace": "d", "resourceVersion": rv,
                         "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4",
            "endpoints": ips.iter().map(|ip| json!({"addresses": [ip], "conditions": {"ready": true}})).collect::<Vec<_>>(),
            "ports": [{"name": "", "port": 8080, "protocol": "TCP"}]
        }))
        .unwrap())
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
        let mut have = t.full(
            &node(),
            &opts,
            &[a.clone(), b.clone()],
            &[sa.clone(), sb.clone()],
        );
        assert_eq!(have.len(), 2);

        let step = |t: &mut Tracker,
                    have: &mut Desired,
                    svcs: &[Arc<Service>],
                    slices: &[Arc<EndpointSlice>]|
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
            let sv: Vec<&Service> = svcs.iter().map(|s| s.as_ref()).collect();
            let sl: Vec<&EndpointSlice> = slices.iter().map(|s| s.as_ref()).collect();
            let full = desired(&node(), &opts, &sv, &sl);
            assert_eq!(plan(&full, have), vec![], "incremental state drifted");
            n
        };
        // Nothing changed (same objects): nothing planned.
        assert_eq!(
            step(
                &mut t,
                &mut have,
                &[a.clone(), b.clone()],
                &[sa.clone(), sb.clone()]
            ),
            0
        );
        // One slice changes: one upsert.
        let sb2 = slice("b", &["10.0.0.9"], "5");
        assert_eq!(
            step(
                &mut t,
                &mut have,
                &[a.clone(), b.clone()],
                &[sa.clone(), sb2.clone()]
            ),
            1
        );
        // A Service changes its clusterIP: the old frontend goes, the new one comes.
        let a2 = svc("a", "10.96.0.7", "6");
        assert_eq!(
            step(
                &mut t,
                &mut have,
                &[a2.clone(), b.clone()],
                &[sa.clone(), sb2.clone()]
            ),
            2
        );
        // A slice and then its Service disappear.
        assert_eq!(
            step(
                &mut t,
                &mut have,
                &[a2.clone(), b.clone()],
                std::slice::from_ref(&sb2)
            ),
            1
        );
        assert_eq!(
            step(
                &mut t,
                &mut have,
                std::slice::from_ref(&b),
                std::slice::from_ref(&sb2)
            ),
            1
        );
    }
}
