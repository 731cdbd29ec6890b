//! Incremental desired state. The reflectors say which objects changed (`Seen` events: a
//! Service, or a slice with the Service it belongs to); a pass recomputes the desired frontends
//! of those Services only and plans only them: one change among 10,000 Services costs that
//! Service, not a walk over the table. A full pass (first sync, a relist, after a failed apply)
//! recomputes everything and plans against all that is programmed.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::Arc,
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use meshwork_ebpf::Frontend;
use meshwork_service_model::Key;

use crate::desired::{desired, Desired, NodeInfo, Options};

/// One change the reflectors reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A Service applied or deleted.
    Service(Key),
    /// A slice applied or deleted, with the Service its label names (None: no label).
    Slice {
        slice: Key,
        service: Option<Key>,
        deleted: bool,
    },
    /// A list completed: what changed meanwhile is not known object by object.
    Relisted,
}

/// Where a pass reads the objects (the reflectors' stores; maps in tests).
pub trait Objects {
    fn service(&self, k: &Key) -> Option<Arc<Service>>;
    fn slice(&self, k: &Key) -> Option<Arc<EndpointSlice>>;
    fn services(&self) -> Vec<Arc<Service>>;
    fn slices(&self) -> Vec<Arc<EndpointSlice>>;
}

fn key_of(m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<Key> {
    Some((m.namespace.clone()?, m.name.clone()?))
}

#[derive(Default)]
pub struct Tracker {
    /// slice → the Service it belongs to, and back.
    owner: HashMap<Key, Key>,
    slices_of: HashMap<Key, BTreeSet<Key>>,
    /// The desired frontends last computed per Service.
    desired: HashMap<Key, Desired>,
    /// Services to recompute at the next pass.
    dirty: HashSet<Key>,
    /// A relist was seen: the next pass must be full.
    relisted: bool,
}

impl Tracker {
    /// Takes one reported change into the next pass.
    pub fn note(&mut self, c: Change) {
        match c {
            Change::Service(k) => {
                self.dirty.insert(k);
            }
            Change::Slice {
                slice,
                service,
                deleted,
            } => {
                let now = if deleted { None } else { service };
                let was = self.owner.get(&slice).cloned();
                if was == now {
                    self.dirty.extend(now);
                    return;
                }
                if let Some(old) = was {
                    if let Some(set) = self.slices_of.get_mut(&old) {
                        set.remove(&slice);
                        if set.is_empty() {
                            self.slices_of.remove(&old);
                        }
                    }
                    self.owner.remove(&slice);
                    self.dirty.insert(old);
                }
                if let Some(new) = now {
                    self.slices_of
                        .entry(new.clone())
                        .or_default()
                        .insert(slice.clone());
                    self.owner.insert(slice, new.clone());
                    self.dirty.insert(new);
                }
            }
            Change::Relisted => self.relisted = true,
        }
    }

    /// Whether the next pass must be full (a relist since the last one).
    pub fn needs_full(&self) -> bool {
        self.relisted
    }

    /// Everything, recomputed; the index is rebuilt from the objects.
    pub fn full(&mut self, node: &NodeInfo, opts: &Options, objs: &impl Objects) -> Desired {
        *self = Tracker::default();
        for s in objs.slices() {
            if let (Some(slice), Some(svc)) = (
                key_of(&s.metadata),
                meshwork_service_model::slice_service(&s),
            ) {
                self.slices_of
                    .entry(svc.clone())
                    .or_default()
                    .insert(slice.clone());
                self.owner.insert(slice, svc);
            }
        }
        self.dirty = objs
            .services()
            .iter()
            .filter_map(|s| key_of(&s.metadata))
            .collect();
        self.changes(node, opts, objs).0
    }

    /// The desired entries of the Services that changed since the last pass (they or their
    /// slices), and the frontends to plan: old and new ones of those Services.
    pub fn changes(
        &mut self,
        node: &NodeInfo,
        opts: &Options,
        objs: &impl Objects,
    ) -> (Desired, BTreeSet<Frontend>) {
        let mut want = Desired::new();
        let mut scope = BTreeSet::new();
        for k in std::mem::take(&mut self.dirty) {
            if let Some(old) = self.desired.remove(&k) {
                scope.extend(old.keys().copied());
            }
            let Some(svc) = objs.service(&k) else {
                continue;
            };
            let slices: Vec<Arc<EndpointSlice>> = self
                .slices_of
                .get(&k)
                .into_iter()
                .flatten()
                .filter_map(|s| objs.slice(s))
                .collect();
            let its: Vec<&EndpointSlice> = slices.iter().map(|s| s.as_ref()).collect();
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

    fn svc(name: &str, ip: &str) -> Arc<Service> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "d"},
                "spec": {"clusterIP": ip, "ports": [{"port": 80, "targetPort": 8080}]}
            }))
            .unwrap(),
        )
    }

    fn slice(name: &str, svc: &str, ips: &[&str]) -> Arc<EndpointSlice> {
        Arc::new(serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "d",
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

    /// The objects as the stores would hold them, and the changes a reflector reports.
    #[derive(Default)]
    struct World {
        svcs: HashMap<Key, Arc<Service>>,
        slices: HashMap<Key, Arc<EndpointSlice>>,
    }

    fn k(n: &str) -> Key {
        ("d".into(), n.into())
    }

    impl World {
        fn put_svc(&mut self, s: Arc<Service>) -> Change {
            let key = key_of(&s.metadata).unwrap();
            self.svcs.insert(key.clone(), s);
            Change::Service(key)
        }
        fn del_svc(&mut self, n: &str) -> Change {
            self.svcs.remove(&k(n));
            Change::Service(k(n))
        }
        fn put_slice(&mut self, s: Arc<EndpointSlice>) -> Change {
            let key = key_of(&s.metadata).unwrap();
            let service = meshwork_service_model::slice_service(&s);
            self.slices.insert(key.clone(), s);
            Change::Slice {
                slice: key,
                service,
                deleted: false,
            }
        }
        fn del_slice(&mut self, n: &str) -> Change {
            let s = self.slices.remove(&k(n)).unwrap();
            Change::Slice {
                slice: k(n),
                service: meshwork_service_model::slice_service(&s),
                deleted: true,
            }
        }
    }

    impl Objects for World {
        fn service(&self, k: &Key) -> Option<Arc<Service>> {
            self.svcs.get(k).cloned()
        }
        fn slice(&self, k: &Key) -> Option<Arc<EndpointSlice>> {
            self.slices.get(k).cloned()
        }
        fn services(&self) -> Vec<Arc<Service>> {
            self.svcs.values().cloned().collect()
        }
        fn slices(&self) -> Vec<Arc<EndpointSlice>> {
            self.slices.values().cloned().collect()
        }
    }

    /// Applies one incremental pass; checks it ends where a full recompute does; returns how
    /// many operations it planned.
    fn step(t: &mut Tracker, have: &mut Desired, w: &World, changes: Vec<Change>) -> usize {
        let opts = Options::default();
        for c in changes {
            t.note(c);
        }
        let (want, scope) = t.changes(&node(), &opts, w);
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
        let sv = w.services();
        let sl = w.slices();
        let sv: Vec<&Service> = sv.iter().map(|s| s.as_ref()).collect();
        let sl: Vec<&EndpointSlice> = sl.iter().map(|s| s.as_ref()).collect();
        let full = desired(&node(), &opts, &sv, &sl);
        assert_eq!(plan(&full, have), vec![], "incremental state drifted");
        n
    }

    /// The incremental plans, applied in turn, always end where a full recompute does, and
    /// plan only what the reported changes touch.
    #[test]
    fn partial_plans_match_the_full_recompute() {
        let opts = Options::default();
        let mut w = World::default();
        w.put_svc(svc("a", "10.96.0.1"));
        w.put_svc(svc("b", "10.96.0.2"));
        w.put_slice(slice("a-1", "a", &["10.0.0.1"]));
        w.put_slice(slice("b-1", "b", &["10.0.0.2", "10.0.0.3"]));
        let mut t = Tracker::default();
        let mut have = t.full(&node(), &opts, &w);
        assert_eq!(have.len(), 2);

        // Nothing reported: nothing planned.
        assert_eq!(step(&mut t, &mut have, &w, vec![]), 0);
        // One slice changes: one upsert.
        let c = w.put_slice(slice("b-1", "b", &["10.0.0.9"]));
        assert_eq!(step(&mut t, &mut have, &w, vec![c]), 1);
        // A second slice of the same Service adds to it.
        let c = w.put_slice(slice("b-2", "b", &["10.0.0.10"]));
        assert_eq!(step(&mut t, &mut have, &w, vec![c]), 1);
        // A Service changes its clusterIP: the old frontend goes, the new one comes.
        let c = w.put_svc(svc("a", "10.96.0.7"));
        assert_eq!(step(&mut t, &mut have, &w, vec![c]), 2);
        // A slice is relabelled to another Service: both are replanned.
        let c = w.put_slice(slice("b-2", "a", &["10.0.0.10"]));
        assert_eq!(step(&mut t, &mut have, &w, vec![c]), 2);
        // A slice and then its Service disappear.
        let c = w.del_slice("a-1");
        assert_eq!(step(&mut t, &mut have, &w, vec![c]), 1);
        let c1 = w.del_slice("b-2");
        let c2 = w.del_svc("a");
        assert_eq!(step(&mut t, &mut have, &w, vec![c1, c2]), 1);
        assert_eq!(have.len(), 1);
        // A relist asks for a full pass.
        t.note(Change::Relisted);
        assert!(t.needs_full());
        let again = t.full(&node(), &opts, &w);
        assert_eq!(again, have);
        assert!(!t.needs_full());
    }
}
