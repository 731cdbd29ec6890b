//! What an answer looks up, indexed by key so that it reads what it names and not the whole
//! cluster: Services by ClusterIP, slices by the Service they belong to, pods by address. The
//! reflectors' callbacks keep it (`app.rs`), one object at a time, before they tell the
//! streams of the change; the objects themselves stay in the reflectors' stores. A relist
//! (after a 410 or a reconnect) says nothing object by object: the kind is rebuilt from its
//! store at the next lookup.

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
    sync::{Arc, RwLock},
};

use k8s_openapi::api::{
    core::v1::{Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::runtime::reflector::{ObjectRef, Store};
use meshwork_service_model::{cluster_ips, service_key, slice_service, Key};

/// An index of `K` values by what a lookup asks, with the reverse map that lets one object's
/// change replace its own entries.
#[derive(Debug)]
struct Multi<V> {
    by: HashMap<V, BTreeSet<Key>>,
    of: HashMap<Key, Vec<V>>,
    /// A relist happened: rebuild from the store before the next lookup.
    stale: bool,
}

impl<V> Default for Multi<V> {
    fn default() -> Self {
        Multi {
            by: HashMap::new(),
            of: HashMap::new(),
            // Nothing is known before the first list.
            stale: true,
        }
    }
}

impl<V: std::hash::Hash + Eq + Clone> Multi<V> {
    fn set(&mut self, key: Key, values: Vec<V>) {
        self.remove(&key);
        for v in &values {
            self.by.entry(v.clone()).or_default().insert(key.clone());
        }
        if !values.is_empty() {
            self.of.insert(key, values);
        }
    }

    fn remove(&mut self, key: &Key) {
        for v in self.of.remove(key).unwrap_or_default() {
            if let Some(keys) = self.by.get_mut(&v) {
                keys.remove(key);
                if keys.is_empty() {
                    self.by.remove(&v);
                }
            }
        }
    }

    fn get(&self, v: &V) -> impl Iterator<Item = &Key> {
        self.by.get(v).into_iter().flatten()
    }

    /// Entries only for objects in the store (`keys`), and each both ways.
    #[cfg(test)]
    fn assert_tracks(&self, keys: &BTreeSet<Key>) {
        assert!(
            self.of.keys().all(|k| keys.contains(k)),
            "entries of objects gone"
        );
        let pairs: usize = self.by.values().map(BTreeSet::len).sum();
        let values: usize = self.of.values().map(Vec::len).sum();
        assert_eq!(pairs, values, "stale reverse entries");
    }

    fn rebuild(&mut self, all: impl Iterator<Item = (Key, Vec<V>)>) {
        let mut fresh = Multi::default();
        for (k, vs) in all {
            fresh.set(k, vs);
        }
        // Fresh only once whole.
        fresh.stale = false;
        *self = fresh;
    }

    /// The values `key` is filed under.
    fn values(&self, key: &Key) -> &[V] {
        self.of.get(key).map_or(&[], Vec::as_slice)
    }
}

fn key_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<Key> {
    meta.namespace.clone().zip(meta.name.clone())
}

fn service_ips(s: &Service) -> Vec<IpAddr> {
    s.spec.as_ref().map(cluster_ips).unwrap_or_default()
}

fn slice_owner(s: &EndpointSlice) -> Vec<Key> {
    slice_service(s).into_iter().collect()
}

/// Every address a pod's status lists (`podIP` and `podIPs`), once each.
pub(super) fn addresses(p: &Pod) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = p
        .status
        .iter()
        .flat_map(|s| {
            s.pod_ips
                .iter()
                .flatten()
                .map(|i| i.ip.as_str())
                .chain(s.pod_ip.as_deref())
        })
        .filter_map(|ip| ip.parse().ok())
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

/// A pod's addresses on the pod network while it may own them ([`super::owns_ip`]): none for
/// a host-network or finished pod, whose addresses are the node's or given back.
fn pod_ips(p: &Pod) -> Vec<IpAddr> {
    let running = p
        .status
        .as_ref()
        .is_some_and(|st| matches!(st.phase.as_deref(), Some("Running" | "Pending")));
    if !running || p.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
        return Vec::new();
    }
    addresses(p)
}

#[derive(Debug, Default)]
pub struct Index {
    services: Multi<IpAddr>,
    slices: Multi<Key>,
    pods: Multi<IpAddr>,
}

/// The index the reflectors' callbacks write and the streams read.
pub type SharedIndex = Arc<RwLock<Index>>;

/// The reflectors' stores, and the index over them.
pub struct Objects<'a> {
    pub index: &'a SharedIndex,
    pub services: &'a Store<Service>,
    pub slices: &'a Store<EndpointSlice>,
    pub pods: &'a Store<Pod>,
}

impl Index {
    /// A Service applied (or deleted).
    pub fn service(&mut self, s: &Service, deleted: bool) {
        if let Some(k) = service_key(s) {
            self.services
                .set(k, if deleted { vec![] } else { service_ips(s) });
        }
    }

    /// A slice applied (or deleted); returns the Service it belonged to before, when that was
    /// another (its label changed): that Service's streams must hear of it too.
    pub fn slice(&mut self, s: &EndpointSlice, deleted: bool) -> Option<Key> {
        let k = key_of(&s.metadata)?;
        let now = if deleted { vec![] } else { slice_owner(s) };
        let before = self.slices.values(&k).first().cloned();
        self.slices.set(k, now.clone());
        before.filter(|b| now.first() != Some(b))
    }

    pub fn pod(&mut self, p: &Pod, deleted: bool) {
        if let Some(k) = key_of(&p.metadata) {
            self.pods.set(k, if deleted { vec![] } else { pod_ips(p) });
        }
    }

    /// A kind was listed again: rebuilt from its store at the next lookup.
    pub fn relisted_services(&mut self) {
        self.services.stale = true;
    }

    pub fn relisted_slices(&mut self) {
        self.slices.stale = true;
    }

    pub fn relisted_pods(&mut self) {
        self.pods.stale = true;
    }
}

impl Objects<'_> {
    /// The index, rebuilt first for a kind that was relisted.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        {
            let idx = self.index.read().unwrap_or_else(|p| p.into_inner());
            if !(idx.services.stale || idx.slices.stale || idx.pods.stale) {
                return idx;
            }
        }
        {
            let mut idx = self.index.write().unwrap_or_else(|p| p.into_inner());
            if idx.services.stale {
                let all = self.services.state();
                idx.services.rebuild(
                    all.iter()
                        .filter_map(|s| Some((service_key(s)?, service_ips(s)))),
                );
            }
            if idx.slices.stale {
                let all = self.slices.state();
                idx.slices.rebuild(
                    all.iter()
                        .filter_map(|s| Some((key_of(&s.metadata)?, slice_owner(s)))),
                );
            }
            if idx.pods.stale {
                let all = self.pods.state();
                idx.pods.rebuild(
                    all.iter()
                        .filter_map(|p| Some((key_of(&p.metadata)?, pod_ips(p)))),
                );
            }
        }
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// The lookups by reading every object, as answers did before the index: what the index must
/// agree with (its tests) and be measured against (`benches/discovery.rs`).
pub struct Scan<'a> {
    pub svcs: &'a [Arc<Service>],
    pub slices: &'a [Arc<EndpointSlice>],
    pub pods: &'a HashMap<Key, Arc<Pod>>,
}

impl super::Lookup for Scan<'_> {
    fn service_named(&self, key: &Key) -> Option<Arc<Service>> {
        self.svcs
            .iter()
            .find(|s| service_key(s).as_ref() == Some(key))
            .cloned()
    }
    fn service_at(&self, ip: IpAddr) -> Option<Arc<Service>> {
        self.svcs
            .iter()
            .find(|s| service_ips(s).contains(&ip))
            .cloned()
    }
    fn slices_of(&self, key: &Key) -> Vec<Arc<EndpointSlice>> {
        self.slices
            .iter()
            .filter(|s| slice_service(s).as_ref() == Some(key))
            .cloned()
            .collect()
    }
    fn pod(&self, ns: &str, name: &str) -> Option<Arc<Pod>> {
        self.pods.get(&(ns.to_string(), name.to_string())).cloned()
    }
    fn pod_at(&self, ip: IpAddr) -> Option<Arc<Pod>> {
        super::pod_at(self.pods.values().cloned(), ip)
    }
}

impl super::Lookup for Objects<'_> {
    fn service_named(&self, key: &Key) -> Option<Arc<Service>> {
        self.services.get(&ObjectRef::new(&key.1).within(&key.0))
    }

    fn service_at(&self, ip: IpAddr) -> Option<Arc<Service>> {
        let keys: Vec<Key> = self.read().services.get(&ip).cloned().collect();
        // The store may be a step ahead of the index: what it holds has the last word.
        keys.iter()
            .filter_map(|k| self.service_named(k))
            .find(|s| service_ips(s).contains(&ip))
    }

    fn slices_of(&self, service: &Key) -> Vec<Arc<EndpointSlice>> {
        let keys: Vec<Key> = self.read().slices.get(service).cloned().collect();
        keys.iter()
            .filter_map(|k| self.slices.get(&ObjectRef::new(&k.1).within(&k.0)))
            .filter(|s| slice_service(s).as_ref() == Some(service))
            .collect()
    }

    fn pod(&self, ns: &str, name: &str) -> Option<Arc<Pod>> {
        self.pods.get(&ObjectRef::new(name).within(ns))
    }

    fn pod_at(&self, ip: IpAddr) -> Option<Arc<Pod>> {
        let keys: Vec<Key> = self.read().pods.get(&ip).cloned().collect();
        super::pod_at(keys.iter().filter_map(|k| self.pod(&k.0, &k.1)), ip)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use std::collections::HashMap;

    use kube::runtime::{reflector, watcher};
    use serde_json::json;

    use super::*;
    use crate::destination::Lookup;

    fn service(name: &str, ip: &str) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"clusterIP": ip, "ports": [{"port": 80}]},
        }))
        .unwrap()
    }

    fn slice(name: &str, service: &str) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4", "endpoints": [],
        }))
        .unwrap()
    }

    fn pod(name: &str, ip: &str, deleting: bool) -> Pod {
        let mut v = json!({
            "metadata": {"name": name, "namespace": "shop"},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
        });
        if deleting {
            v["metadata"]["deletionTimestamp"] = json!("2026-12-07T10:00:00Z");
        }
        serde_json::from_value(v).unwrap()
    }

    /// The stores, the index kept the way the callbacks keep it, and the same objects as lists.
    struct World {
        sw: reflector::store::Writer<Service>,
        lw: reflector::store::Writer<EndpointSlice>,
        pw: reflector::store::Writer<Pod>,
        services: Store<Service>,
        slices: Store<EndpointSlice>,
        pods: Store<Pod>,
        index: SharedIndex,
    }

    impl World {
        fn new() -> World {
            let (services, mut sw) = reflector::store::<Service>();
            let (slices, mut lw) = reflector::store::<EndpointSlice>();
            let (pods, mut pw) = reflector::store::<Pod>();
            sw.apply_watcher_event(&watcher::Event::InitDone);
            lw.apply_watcher_event(&watcher::Event::InitDone);
            pw.apply_watcher_event(&watcher::Event::InitDone);
            World {
                sw,
                lw,
                pw,
                services,
                slices,
                pods,
                index: SharedIndex::default(),
            }
        }

        fn idx(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
            self.index.write().unwrap()
        }

        fn svc(&mut self, s: Service, deleted: bool) {
            let ev = if deleted {
                watcher::Event::Delete(s.clone())
            } else {
                watcher::Event::Apply(s.clone())
            };
            self.sw.apply_watcher_event(&ev);
            self.idx().service(&s, deleted);
        }

        fn sl(&mut self, s: EndpointSlice, deleted: bool) -> Option<Key> {
            let ev = if deleted {
                watcher::Event::Delete(s.clone())
            } else {
                watcher::Event::Apply(s.clone())
            };
            self.lw.apply_watcher_event(&ev);
            self.idx().slice(&s, deleted)
        }

        fn po(&mut self, p: Pod, deleted: bool) {
            let ev = if deleted {
                watcher::Event::Delete(p.clone())
            } else {
                watcher::Event::Apply(p.clone())
            };
            self.pw.apply_watcher_event(&ev);
            self.idx().pod(&p, deleted);
        }

        fn objs(&self) -> Objects<'_> {
            Objects {
                index: &self.index,
                services: &self.services,
                slices: &self.slices,
                pods: &self.pods,
            }
        }

        /// Every lookup through the index equals the same lookup over lists, and the index
        /// holds nothing of objects gone.
        fn check(&self) {
            let objs = self.objs();
            {
                // A lookup first: a relisted kind is rebuilt by it.
                let idx = objs.read();
                let keys = |metas: Vec<Option<Key>>| metas.into_iter().flatten().collect();
                idx.services.assert_tracks(&keys(
                    self.services
                        .state()
                        .iter()
                        .map(|s| key_of(&s.metadata))
                        .collect(),
                ));
                idx.slices.assert_tracks(&keys(
                    self.slices
                        .state()
                        .iter()
                        .map(|s| key_of(&s.metadata))
                        .collect(),
                ));
                idx.pods.assert_tracks(&keys(
                    self.pods
                        .state()
                        .iter()
                        .map(|p| key_of(&p.metadata))
                        .collect(),
                ));
            }
            let (svcs, slices) = (self.services.state(), self.slices.state());
            let pods: HashMap<(String, String), Arc<Pod>> = self
                .pods
                .state()
                .into_iter()
                .map(|p| (key_of(&p.metadata).unwrap(), p))
                .collect();
            let lists = Scan {
                svcs: &svcs,
                slices: &slices,
                pods: &pods,
            };
            let names = |v: Option<Arc<Service>>| v.and_then(|s| s.metadata.name.clone());
            for ip in ["10.96.0.7", "10.96.0.8", "10.96.0.9"] {
                let ip: IpAddr = ip.parse().unwrap();
                assert_eq!(
                    names(objs.service_at(ip)),
                    names(lists.service_at(ip)),
                    "{ip}"
                );
            }
            for svc in ["web", "api"] {
                let k = ("shop".to_string(), svc.to_string());
                let mut a: Vec<_> = objs
                    .slices_of(&k)
                    .iter()
                    .map(|s| s.metadata.name.clone())
                    .collect();
                let mut b: Vec<_> = lists
                    .slices_of(&k)
                    .iter()
                    .map(|s| s.metadata.name.clone())
                    .collect();
                a.sort();
                b.sort();
                assert_eq!(a, b, "slices of {svc}");
            }
            for ip in ["10.244.1.5", "10.244.1.6"] {
                let ip: IpAddr = ip.parse().unwrap();
                let name = |p: Option<Arc<Pod>>| p.and_then(|p| p.metadata.name.clone());
                assert_eq!(name(objs.pod_at(ip)), name(lists.pod_at(ip)), "{ip}");
            }
        }
    }

    #[test]
    fn the_index_answers_as_a_scan_of_the_stores_would() {
        let mut w = World::new();
        // Nothing listed yet: rebuilt from the (empty) stores.
        w.check();
        w.svc(service("web", "10.96.0.7"), false);
        w.svc(service("api", "10.96.0.8"), false);
        w.sl(slice("web-1", "web"), false);
        w.sl(slice("api-1", "api"), false);
        w.po(pod("a", "10.244.1.5", false), false);
        w.po(pod("b", "10.244.1.6", false), false);
        w.check();
        // A ClusterIP changes hands, a slice moves to another Service, a pod goes, another
        // takes a terminating one's address.
        w.svc(service("web", "10.96.0.9"), false);
        assert_eq!(
            w.sl(slice("web-1", "api"), false),
            Some(("shop".into(), "web".into())),
            "the Service the slice left, for its streams"
        );
        assert_eq!(w.sl(slice("web-1", "api"), false), None);
        w.po(pod("a", "10.244.1.5", false), true);
        w.po(pod("b", "10.244.1.6", true), false);
        w.po(pod("c", "10.244.1.6", false), false);
        w.check();
        assert_eq!(
            w.objs()
                .pod_at("10.244.1.6".parse().unwrap())
                .unwrap()
                .metadata
                .name
                .as_deref(),
            Some("c"),
            "the one not terminating"
        );
        assert_eq!(w.objs().slices_of(&("shop".into(), "api".into())).len(), 2);
        w.svc(service("api", "10.96.0.8"), true);
        w.sl(slice("api-1", "api"), true);
        w.check();
        // A relist replaces a store wholesale, with nothing said object by object.
        w.sw.apply_watcher_event(&watcher::Event::Init);
        w.sw.apply_watcher_event(&watcher::Event::InitApply(service("db", "10.96.0.7")));
        w.sw.apply_watcher_event(&watcher::Event::InitDone);
        w.idx().relisted_services();
        w.check();
        assert!(w.objs().service_at("10.96.0.9".parse().unwrap()).is_none());
    }
}
