//! DaemonSet, after kube's daemon set controller (pkg/controller/daemon): one pod per eligible
//! node, bound there directly (`spec.nodeName`, so the scheduler leaves it alone); pods on nodes
//! that stopped being eligible or went away are deleted, and a node with two keeps the oldest.
//! A changed template rolls node by node within maxUnavailable (RollingUpdate) or waits for the
//! user to delete old pods (OnDelete). The status carries what `kubectl get ds` and
//! `kubectl rollout status` read.
//!
//! Eligible here means what the scheduler would accept (`util::node_unfit`) for the template's
//! nodeSelector and tolerations plus the one kube adds to every daemon pod
//! (`node.kubernetes.io/unschedulable`): cordoned nodes keep their daemons, and NotReady nodes
//! get and keep them when the template tolerates `node.kubernetes.io/not-ready` (an agent or
//! CNI DaemonSet must run on a node whose network is not ready yet; without the toleration a
//! NotReady node loses its daemon pods).
//!
//! `plan` is the whole decision for one DaemonSet, pure; `Controller` feeds it the caches and
//! writes what it returns.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    sync::Arc,
    time::Duration,
};

use anyhow::Context;
use k8s_openapi::{
    api::{
        apps::v1::{DaemonSet, DaemonSetSpec, DaemonSetStatus},
        core::v1::{Node, Pod, Toleration},
    },
    jiff::Timestamp,
};
use kube::{
    api::{Api, DeleteParams, Patch, PatchParams, PostParams},
    Client, ResourceExt,
};

use super::{
    runner::{keys, owner_key, Event, Key, Obj, Reconcile},
    util::{
        controller_ref, controller_uid, node_unfit, pod_active, pod_available, pod_ready, scaled,
        template_for_compare, template_hash, wake_for, Expectations, BURST, TAINT_UNSCHEDULABLE,
    },
    Caches,
};
use crate::api::kind::now_seconds;

/// The label naming the template revision a daemon pod was made from.
pub const REVISION_HASH: &str = "controller-revision-hash";
/// The label with the DaemonSet generation a daemon pod was made at.
pub const TEMPLATE_GENERATION: &str = "pod-template-generation";

/// What one pass does for one DaemonSet.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// Nodes that get a new pod.
    pub create: Vec<String>,
    /// Pods to delete, by name.
    pub delete: Vec<String>,
    pub status: DaemonSetStatus,
    /// When the next Ready pod turns available (minReadySeconds), if one is waiting.
    pub available_at: Option<Timestamp>,
}

/// The revision hash of the DaemonSet's template. Templates that differ only in what a Go
/// client would leave out hash the same, so a kubectl round trip does not roll the pods.
pub fn revision_hash(ds: &DaemonSet) -> String {
    let t = ds
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    template_hash(&template_for_compare(&t))
}

/// The pod the DaemonSet runs on `node`: its template, bound to the node, labelled with the
/// revision and generation it came from, controlled by the DaemonSet.
pub fn daemon_pod(ds: &DaemonSet, node: &str, hash: &str) -> Pod {
    let template = ds
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let mut meta = template.metadata.unwrap_or_default();
    meta.name = None;
    meta.generate_name = Some(format!("{}-", ds.name_any()));
    meta.namespace = ds.namespace();
    let labels = meta.labels.get_or_insert_with(Default::default);
    labels.insert(REVISION_HASH.into(), hash.into());
    labels.insert(
        TEMPLATE_GENERATION.into(),
        ds.metadata.generation.unwrap_or(1).to_string(),
    );
    meta.owner_references = Some(vec![controller_ref("apps/v1", "DaemonSet", &ds.metadata)]);
    let mut spec = template.spec.unwrap_or_default();
    spec.node_name = Some(node.into());
    Pod {
        metadata: meta,
        spec: Some(spec),
        status: None,
    }
}

fn name_of(p: &Pod) -> String {
    p.metadata.name.clone().unwrap_or_default()
}

fn deleting(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_some()
}

fn terminal(p: &Pod) -> bool {
    let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
    matches!(phase, Some("Succeeded" | "Failed"))
}

fn updated(p: &Pod, hash: &str) -> bool {
    p.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(REVISION_HASH))
        .is_some_and(|h| h == hash)
}

fn rolling(spec: &DaemonSetSpec) -> bool {
    spec.update_strategy
        .as_ref()
        .and_then(|s| s.type_.as_deref())
        .is_none_or(|t| t == "RollingUpdate")
}

/// kube's UnavailableCount: maxUnavailable of `desired`, percentages rounded up. Surge
/// rollouts are not implemented, so a DaemonSet that asks only for surge (or for 0) rolls
/// one node at a time — kube's own fallback when both are 0.
fn max_unavailable(spec: &DaemonSetSpec, desired: i32) -> i32 {
    let v = spec
        .update_strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref())
        .and_then(|r| r.max_unavailable.as_ref());
    scaled(v, desired, 0, true).max(1)
}

/// One pass for `ds` given every node and the pods it controls.
pub fn plan(ds: &DaemonSet, nodes: &[&Node], pods: &[&Pod], now: Timestamp) -> Plan {
    let spec = ds.spec.clone().unwrap_or_default();
    let node_selector = spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.node_selector.as_ref());
    let mut tolerations = spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default();
    tolerations.push(Toleration {
        key: Some(TAINT_UNSCHEDULABLE.into()),
        operator: Some("Exists".into()),
        effect: Some("NoSchedule".into()),
        ..Default::default()
    });
    let hash = revision_hash(ds);
    let min_ready = spec.min_ready_seconds.unwrap_or(0);

    // Oldest first on each node (kube's podByCreationTimestampAndPhase): the oldest is the one
    // kept and the one the status reports.
    let mut on_node: BTreeMap<&str, Vec<&Pod>> = BTreeMap::new();
    for p in pods {
        if let Some(n) = p.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
            on_node.entry(n).or_default().push(p);
        }
    }
    for list in on_node.values_mut() {
        list.sort_by_key(|p| {
            (
                p.metadata.creation_timestamp.as_ref().map(|t| t.0),
                name_of(p),
            )
        });
    }
    let mut known: Vec<&Node> = nodes.to_vec();
    known.sort_by_key(|n| n.metadata.name.clone());
    let node_name = |n: &Node| -> String { n.metadata.name.clone().unwrap_or_default() };
    let eligible: BTreeSet<String> = known
        .iter()
        .filter(|n| node_unfit(n, node_selector, &tolerations).is_none())
        .map(|n| node_name(n))
        .collect();
    let known_names: HashSet<String> = known.iter().map(|n| node_name(n)).collect();
    let pods_on = |n: &str| on_node.get(n).map(Vec::as_slice).unwrap_or(&[]);

    // kube's manage: the right number of pods on each node.
    let mut create = Vec::new();
    let mut delete = Vec::new();
    for n in &known {
        let name = node_name(n);
        let here = pods_on(&name);
        if eligible.contains(&name) {
            let mut running = Vec::new();
            for p in here.iter().filter(|p| !deleting(p)) {
                if terminal(p) {
                    delete.push(name_of(p));
                } else {
                    running.push(*p);
                }
            }
            // A terminating pod does not hold the node: its replacement starts alongside.
            match running.split_first() {
                None => create.push(name),
                Some((_, extra)) => delete.extend(extra.iter().map(|p| name_of(p))),
            }
        } else {
            delete.extend(here.iter().filter(|p| !deleting(p)).map(|p| name_of(p)));
        }
    }
    for (n, here) in &on_node {
        if !known_names.contains(*n) {
            delete.extend(here.iter().filter(|p| !deleting(p)).map(|p| name_of(p)));
        }
    }

    let desired = i32::try_from(eligible.len()).unwrap_or(i32::MAX);
    // kube's rollingUpdate, only once manage has nothing left to do (its expectations are met).
    if create.is_empty() && delete.is_empty() && rolling(&spec) {
        let budget = max_unavailable(&spec, desired);
        let mut unavailable = 0;
        let mut replace = Vec::new();
        let mut candidates = Vec::new();
        // Only nodes that should run a pod count. kube also counts nodes still holding a
        // terminating pod, but it has a pod GC for pods of vanished nodes; here such a pod
        // stays terminating (no node runtime finishes it) and would stall the rollout.
        for n in eligible.iter().map(String::as_str) {
            let (new, old): (Vec<&Pod>, Vec<&Pod>) = pods_on(n)
                .iter()
                .copied()
                .filter(|p| !deleting(p))
                .partition(|p| updated(p, &hash));
            match (new.as_slice(), old.as_slice()) {
                ([], [old]) => {
                    if pod_available(old, min_ready, now).is_ok() {
                        if unavailable < budget {
                            candidates.push(name_of(old));
                        }
                    } else {
                        // Already down: replacing it costs nothing. Unlike kube, it still
                        // counts against the budget, so a rollout never takes an available
                        // pod while others are broken beyond maxUnavailable.
                        replace.push(name_of(old));
                        unavailable += 1;
                    }
                }
                ([new], []) => {
                    if pod_available(new, min_ready, now).is_err() {
                        unavailable += 1;
                    }
                }
                // Nothing live (a pod on its way), or more than one: not serving as it should.
                _ => unavailable += 1,
            }
        }
        let room = usize::try_from(budget - unavailable)
            .unwrap_or(0)
            .min(candidates.len());
        delete = replace;
        delete.extend(candidates.into_iter().take(room));
    }

    // kube's updateDaemonSetStatus: per node, its oldest pod (terminal pods being deleted are
    // gone already as far as the status goes).
    let (mut current, mut misscheduled, mut ready, mut up_to_date, mut available) = (0, 0, 0, 0, 0);
    let mut available_at: Option<Timestamp> = None;
    for n in &known {
        let name = node_name(n);
        let first = pods_on(&name)
            .iter()
            .find(|p| !(terminal(p) && deleting(p)));
        if !eligible.contains(&name) {
            if first.is_some() {
                misscheduled += 1;
            }
            continue;
        }
        let Some(p) = first else { continue };
        current += 1;
        if pod_ready(p) {
            ready += 1;
            match pod_available(p, min_ready, now) {
                Ok(()) => available += 1,
                Err(Some(at)) => available_at = Some(available_at.map_or(at, |a| a.min(at))),
                Err(None) => {}
            }
        }
        if updated(p, &hash) {
            up_to_date += 1;
        }
    }
    let old = ds.status.clone().unwrap_or_default();
    let status = DaemonSetStatus {
        collision_count: old.collision_count,
        conditions: old.conditions,
        current_number_scheduled: current,
        desired_number_scheduled: desired,
        number_available: Some(available),
        number_misscheduled: misscheduled,
        number_ready: ready,
        number_unavailable: Some(desired - available),
        observed_generation: ds.metadata.generation,
        updated_number_scheduled: Some(up_to_date),
    };
    Plan {
        create,
        delete,
        status,
        available_at,
    }
}

pub struct Controller {
    client: Client,
    caches: Caches,
    expect: Expectations,
    wake: Option<Duration>,
}

impl Controller {
    pub fn new(client: Client, caches: Caches) -> Self {
        Controller {
            client,
            caches,
            expect: Expectations::default(),
            wake: None,
        }
    }
}

impl Reconcile for Controller {
    type Key = Key;
    const NAME: &'static str = "daemonset";

    fn all(&self) -> Vec<Key> {
        keys(&self.caches.daemonsets)
    }

    /// The DaemonSet itself; a pod's owner; every DaemonSet when a node comes, goes or changes.
    fn triggers(&self, ev: &Event, out: &mut Vec<Key>) {
        match ev.obj() {
            Some(Obj::DaemonSet(d)) => out.push(Key::of(d.as_ref())),
            Some(Obj::Pod(p)) => out.extend(owner_key(&p.metadata, "DaemonSet")),
            Some(Obj::Node(_)) => out.extend(self.all()),
            _ => {}
        }
    }

    /// Again when a Ready pod turns available (minReadySeconds).
    async fn reconcile(&mut self, key: &Key) -> anyhow::Result<Option<Duration>> {
        // Being deleted: its pods go with the garbage collector (or stay, for an Orphan delete).
        let Some(ds) = key.live(&self.caches.daemonsets) else {
            return Ok(None);
        };
        self.wake = None;
        let nodes = self.caches.nodes.state();
        let nodes: Vec<&Node> = nodes.iter().map(Arc::as_ref).collect();
        let pods = self.caches.pods.state();
        self.sync(&ds, &nodes, &pods).await?;
        Ok(self.wake)
    }
}

impl Controller {
    async fn sync(
        &mut self,
        ds: &DaemonSet,
        nodes: &[&Node],
        pods: &[Arc<Pod>],
    ) -> anyhow::Result<()> {
        let ns = ds.namespace().unwrap_or_default();
        let uid = ds.uid().unwrap_or_default();
        let owned: Vec<&Pod> = pods
            .iter()
            .map(Arc::as_ref)
            .filter(|p| {
                p.metadata.namespace.as_deref() == Some(ns.as_str())
                    && controller_uid(&p.metadata) == Some(uid.as_str())
            })
            .collect();
        let active: HashSet<String> = owned
            .iter()
            .filter(|p| pod_active(p))
            .map(|p| name_of(p))
            .collect();
        let (pending, gone) = self.expect.observe(&uid, &active);
        let now = now_seconds();
        let plan = plan(ds, nodes, &owned, now);
        if let Some(at) = plan.available_at {
            wake_for(&mut self.wake, now, at);
        }
        // Acting on a cache that does not show our last writes yet would create a second pod
        // on a node or delete past the rollout budget: wait for it (kube's expectations).
        if pending == 0 && gone.is_empty() {
            let api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
            let hash = revision_hash(ds);
            for node in plan.create.iter().take(BURST) {
                let made = api
                    .create(&PostParams::default(), &daemon_pod(ds, node, &hash))
                    .await
                    .with_context(|| format!("creating a pod on node {node}"))?;
                tracing::info!(daemonset = %ds.name_any(), pod = %made.name_any(), node = %node, "created daemon pod");
                self.expect.created(&uid, made.name_any());
            }
            for name in plan.delete.iter().take(BURST) {
                tracing::info!(daemonset = %ds.name_any(), pod = %name, "deleting daemon pod");
                match api.delete(name, &DeleteParams::default()).await {
                    Ok(_) => self.expect.deleted(&uid, name.clone()),
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => return Err(e).with_context(|| format!("deleting pod {name}")),
                }
            }
        }
        if ds.status.as_ref() != Some(&plan.status) {
            let api: Api<DaemonSet> = Api::namespaced(self.client.clone(), &ns);
            match api
                .patch_status(
                    &ds.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(serde_json::json!({ "status": plan.status })),
                )
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => self.expect.forget(&uid),
                Err(e) => return Err(e).context("updating status"),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    const NOW: i64 = 1_000_000;

    fn ds(extra: Value) -> DaemonSet {
        let mut v = json!({
            "metadata": {"name": "agent", "namespace": "kube-system", "uid": "ds-uid", "generation": 3},
            "spec": {
                "selector": {"matchLabels": {"app": "agent"}},
                "template": {
                    "metadata": {"labels": {"app": "agent"}},
                    "spec": {"containers": [{"name": "a", "image": "busybox"}]}
                }
            }
        });
        merge(&mut v, extra);
        serde_json::from_value(v).unwrap()
    }

    fn merge(into: &mut Value, from: Value) {
        match (into, from) {
            (Value::Object(a), Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(Value::Null), v);
                }
            }
            (slot, v) => *slot = v,
        }
    }

    /// A node: `r` Ready, `u` unschedulable, `-` NotReady; labels `k=v`.
    fn node(name: &str, state: char, labels: &[(&str, &str)]) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>()},
            "spec": {"unschedulable": state == 'u'},
            "status": {"conditions": [{"type": "Ready", "status": if state == '-' { "False" } else { "True" }}]}
        }))
        .unwrap()
    }

    /// How a test pod looks: its revision, readiness (Ready since `NOW - ready_for` seconds)
    /// and lifecycle.
    #[derive(Clone, Copy)]
    struct P {
        current: bool,
        ready_for: Option<i64>,
        phase: &'static str,
        deleting: bool,
        created: i64,
    }

    const READY: P = P {
        current: true,
        ready_for: Some(600),
        phase: "Running",
        deleting: false,
        created: 100,
    };
    const STARTING: P = P {
        ready_for: None,
        ..READY
    };
    const OLD: P = P {
        current: false,
        ..READY
    };
    const OLD_BROKEN: P = P {
        current: false,
        ..STARTING
    };

    fn pod(d: &DaemonSet, name: &str, node: &str, p: P) -> Pod {
        let hash = if p.current {
            revision_hash(d)
        } else {
            "old".into()
        };
        let mut v = json!({
            "metadata": {"name": name, "namespace": "kube-system",
                "creationTimestamp": at(p.created).to_string(),
                "labels": {"app": "agent", REVISION_HASH: hash}},
            "spec": {"nodeName": node, "containers": [{"name": "a", "image": "busybox"}]},
            "status": {"phase": p.phase, "conditions": [{"type": "Ready",
                "status": if p.ready_for.is_some() { "True" } else { "False" },
                "lastTransitionTime": at(NOW - p.ready_for.unwrap_or(0)).to_string()}]}
        });
        if p.deleting {
            v["metadata"]["deletionTimestamp"] = json!(at(NOW).to_string());
        }
        serde_json::from_value(v).unwrap()
    }

    fn run(d: &DaemonSet, nodes: &[Node], pods: &[Pod]) -> Plan {
        let n: Vec<&Node> = nodes.iter().collect();
        let p: Vec<&Pod> = pods.iter().collect();
        plan(d, &n, &p, at(NOW))
    }

    fn ready_nodes(names: &[&str]) -> Vec<Node> {
        names.iter().map(|n| node(n, 'r', &[])).collect()
    }

    #[test]
    fn creates_and_deletes() {
        let plain = ds(json!({}));
        let ssd = ds(json!({"spec": {"template": {"spec": {"nodeSelector": {"disk": "ssd"}}}}}));
        let on_delete = ds(json!({"spec": {"updateStrategy": {"type": "OnDelete"}}}));
        let tolerant = ds(json!({"spec": {"template": {"spec": {
            "nodeSelector": {"disk": "ssd"}, "tolerations": [{"operator": "Exists"}]}}}}));
        let mixed = || {
            vec![
                node("a", 'r', &[("disk", "ssd")]),
                node("b", 'r', &[("disk", "ssd")]),
                node("c", '-', &[("disk", "ssd")]),
                node("d", 'u', &[("disk", "ssd")]),
                node("e", 'r', &[("disk", "hdd")]),
            ]
        };
        let terminating = P {
            deleting: true,
            ..READY
        };
        let failed = P {
            phase: "Failed",
            ..READY
        };
        struct Case {
            what: &'static str,
            ds: DaemonSet,
            nodes: Vec<Node>,
            pods: Vec<(&'static str, &'static str, P)>,
            create: &'static [&'static str],
            delete: &'static [&'static str],
        }
        let cases = vec![
            Case {
                what: "a pod for each Ready node matching the nodeSelector, cordoned too",
                ds: ssd.clone(),
                nodes: mixed(),
                pods: vec![],
                create: &["a", "b", "d"],
                delete: &[],
            },
            Case {
                what: "no nodeSelector: every eligible node",
                ds: plain.clone(),
                nodes: mixed(),
                pods: vec![],
                create: &["a", "b", "d", "e"],
                delete: &[],
            },
            Case {
                what: "a template tolerating not-ready also runs on the NotReady node",
                ds: tolerant.clone(),
                nodes: mixed(),
                pods: vec![("pc", "c", READY)],
                create: &["a", "b", "d"],
                delete: &[],
            },
            Case {
                what: "pods on NotReady, unmatched and vanished nodes go; cordoned stay",
                ds: ssd.clone(),
                nodes: mixed(),
                pods: vec![
                    ("pa", "a", READY),
                    ("pc", "c", READY),
                    ("pd", "d", READY),
                    ("pe", "e", READY),
                    ("px", "gone", READY),
                ],
                create: &["b"],
                delete: &["pc", "pe", "px"],
            },
            Case {
                what: "a node with two pods keeps the oldest",
                ds: plain.clone(),
                nodes: ready_nodes(&["a"]),
                pods: vec![
                    ("young", "a", P { created: 200, ..READY }),
                    ("old", "a", P { created: 100, ..READY }),
                    ("twin", "a", P { created: 100, ..READY }),
                ],
                create: &[],
                delete: &["twin", "young"],
            },
            Case {
                what: "a terminating pod does not hold its node; one already going is not deleted again",
                ds: plain.clone(),
                nodes: ready_nodes(&["a", "b"]),
                pods: vec![("pa", "a", terminating), ("pb", "b", READY), ("pz", "gone", terminating)],
                create: &["a"],
                delete: &[],
            },
            Case {
                what: "a failed pod is replaced",
                ds: plain.clone(),
                nodes: ready_nodes(&["a"]),
                pods: vec![("pa", "a", failed)],
                create: &["a"],
                delete: &["pa"],
            },
            Case {
                what: "rolling: one available old pod at a time (maxUnavailable 1)",
                ds: plain.clone(),
                nodes: ready_nodes(&["a", "b", "c"]),
                pods: vec![("pa", "a", OLD), ("pb", "b", OLD), ("pc", "c", OLD)],
                create: &[],
                delete: &["pa"],
            },
            Case {
                what: "rolling: a new pod not Ready yet uses the budget",
                ds: plain.clone(),
                nodes: ready_nodes(&["a", "b", "c"]),
                pods: vec![("pa", "a", STARTING), ("pb", "b", OLD), ("pc", "c", OLD)],
                create: &[],
                delete: &[],
            },
            Case {
                what: "rolling: a replaced node whose pod is still coming uses the budget",
                ds: plain.clone(),
                nodes: ready_nodes(&["a", "b"]),
                pods: vec![("pa", "a", terminating), ("pb", "b", OLD), ("pa2", "a", STARTING)],
                create: &[],
                delete: &[],
            },
            Case {
                what: "rolling: a pod stuck terminating on a vanished or NotReady node does not hold the rollout",
                ds: plain.clone(),
                nodes: vec![node("a", 'r', &[]), node("b", 'r', &[]), node("x", '-', &[])],
                pods: vec![("pa", "a", OLD), ("pb", "b", OLD), ("px", "x", terminating), ("pz", "gone", terminating)],
                create: &[],
                delete: &["pa"],
            },
            Case {
                what: "rolling: the next node once the new pod is Ready",
                ds: plain.clone(),
                nodes: ready_nodes(&["a", "b", "c"]),
                pods: vec![("pa", "a", READY), ("pb", "b", OLD), ("pc", "c", OLD)],
                create: &[],
                delete: &["pb"],
            },
            Case {
                what: "rolling: broken old pods are replaced at once and count as unavailable",
                ds: plain.clone(),
                nodes: ready_nodes(&["a", "b", "c"]),
                pods: vec![("pa", "a", OLD), ("pb", "b", OLD_BROKEN), ("pc", "c", OLD_BROKEN)],
                create: &[],
                delete: &["pb", "pc"],
            },
            Case {
                what: "rolling waits while nodes still need pods",
                ds: plain.clone(),
                nodes: ready_nodes(&["a", "b", "c"]),
                pods: vec![("pb", "b", OLD), ("pc", "c", OLD)],
                create: &["a"],
                delete: &[],
            },
            Case {
                what: "rolling: maxUnavailable 2",
                ds: ds(json!({"spec": {"updateStrategy": {"rollingUpdate": {"maxUnavailable": 2}}}})),
                nodes: ready_nodes(&["a", "b", "c"]),
                pods: vec![("pa", "a", OLD), ("pb", "b", OLD), ("pc", "c", OLD)],
                create: &[],
                delete: &["pa", "pb"],
            },
            Case {
                what: "rolling: a percentage of desired, rounded up (25% of 10 is 3)",
                ds: ds(json!({"spec": {"updateStrategy": {"rollingUpdate": {"maxUnavailable": "25%"}}}})),
                nodes: ready_nodes(&["n0", "n1", "n2", "n3", "n4", "n5", "n6", "n7", "n8", "n9"]),
                pods: vec![
                    ("p0", "n0", OLD), ("p1", "n1", OLD), ("p2", "n2", OLD), ("p3", "n3", OLD),
                    ("p4", "n4", OLD), ("p5", "n5", OLD), ("p6", "n6", OLD), ("p7", "n7", OLD),
                    ("p8", "n8", OLD), ("p9", "n9", OLD),
                ],
                create: &[],
                delete: &["p0", "p1", "p2"],
            },
            Case {
                what: "rolling: a small percentage still moves one node (10% of 3)",
                ds: ds(json!({"spec": {"updateStrategy": {"rollingUpdate": {"maxUnavailable": "10%"}}}})),
                nodes: ready_nodes(&["a", "b", "c"]),
                pods: vec![("pa", "a", OLD), ("pb", "b", OLD), ("pc", "c", OLD)],
                create: &[],
                delete: &["pa"],
            },
            Case {
                what: "rolling: maxUnavailable 0 (surge only) still rolls one at a time",
                ds: ds(json!({"spec": {"updateStrategy": {"rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}}})),
                nodes: ready_nodes(&["a", "b"]),
                pods: vec![("pa", "a", OLD), ("pb", "b", OLD)],
                create: &[],
                delete: &["pa"],
            },
            Case {
                what: "rolling: minReadySeconds keeps a Ready new pod unavailable for a while",
                ds: ds(json!({"spec": {"minReadySeconds": 900}})),
                nodes: ready_nodes(&["a", "b"]),
                pods: vec![("pa", "a", READY), ("pb", "b", P { ready_for: Some(1000), ..OLD })],
                create: &[],
                delete: &[],
            },
            Case {
                what: "OnDelete: old pods stay until someone deletes them",
                ds: on_delete.clone(),
                nodes: ready_nodes(&["a", "b", "c"]),
                pods: vec![("pa", "a", OLD), ("pb", "b", OLD_BROKEN)],
                create: &["c"],
                delete: &[],
            },
            Case {
                what: "OnDelete: a deleted old pod comes back at the new revision",
                ds: on_delete.clone(),
                nodes: ready_nodes(&["a", "b"]),
                pods: vec![("pa", "a", OLD), ("pb", "b", P { deleting: true, ..OLD })],
                create: &["b"],
                delete: &[],
            },
        ];
        for c in cases {
            let pods: Vec<Pod> = c
                .pods
                .iter()
                .map(|(name, node, p)| pod(&c.ds, name, node, *p))
                .collect();
            let got = run(&c.ds, &c.nodes, &pods);
            assert_eq!(got.create, c.create, "{}: creates", c.what);
            let mut deleted = got.delete.clone();
            deleted.sort();
            assert_eq!(deleted, c.delete, "{}: deletes", c.what);
        }
    }

    /// (desired, current, misscheduled, ready, updated, available, unavailable)
    fn counts(s: &DaemonSetStatus) -> (i32, i32, i32, i32, i32, i32, i32) {
        (
            s.desired_number_scheduled,
            s.current_number_scheduled,
            s.number_misscheduled,
            s.number_ready,
            s.updated_number_scheduled.unwrap_or(-1),
            s.number_available.unwrap_or(-1),
            s.number_unavailable.unwrap_or(-1),
        )
    }

    #[test]
    fn status_counts() {
        let d = ds(json!({}));
        let nodes = vec![
            node("a", 'r', &[]),
            node("b", 'r', &[]),
            node("c", 'r', &[]),
            node("d", 'r', &[]),
            node("x", '-', &[]),
        ];
        let pods = vec![
            pod(&d, "pa", "a", READY),
            pod(&d, "pb", "b", OLD),
            pod(&d, "pc", "c", STARTING),
            // Misscheduled: on a NotReady node, still there.
            pod(&d, "px", "x", READY),
            // A terminal pod being deleted counts nowhere: d has no pod.
            pod(
                &d,
                "pd",
                "d",
                P {
                    phase: "Failed",
                    deleting: true,
                    ..READY
                },
            ),
        ];
        let got = run(&d, &nodes, &pods);
        assert_eq!(counts(&got.status), (4, 3, 1, 2, 2, 2, 2));
        assert_eq!(got.status.observed_generation, Some(3));
        assert_eq!(got.available_at, None);

        // minReadySeconds: Ready pods become available later, and the plan says when.
        let slow = ds(json!({"spec": {"minReadySeconds": 900}}));
        let pods = vec![
            pod(&slow, "pa", "a", READY),
            pod(
                &slow,
                "pb",
                "b",
                P {
                    ready_for: Some(1000),
                    ..READY
                },
            ),
        ];
        let got = run(&slow, &nodes[..2], &pods);
        assert_eq!(counts(&got.status), (2, 2, 0, 2, 2, 1, 1));
        assert_eq!(got.available_at, Some(at(NOW - 600 + 900)));

        // Nothing eligible: all zeros, still observed.
        let got = run(&d, &[], &[]);
        assert_eq!(counts(&got.status), (0, 0, 0, 0, 0, 0, 0));
        assert_eq!(got.status.observed_generation, Some(3));
    }

    #[test]
    fn rollout_converges_pass_by_pass() {
        // Apply each plan as the API would (deletes terminate, creates start unready, then
        // turn Ready): the rollout finishes with one new pod per node, never more than
        // maxUnavailable nodes without an available pod.
        let d = ds(json!({}));
        let nodes = ready_nodes(&["a", "b", "c"]);
        let mut pods: Vec<Pod> = ["a", "b", "c"]
            .iter()
            .map(|n| pod(&d, &format!("old-{n}"), n, OLD))
            .collect();
        for pass in 0..20 {
            // Time passes between passes: what was started is Ready now.
            for p in pods.iter_mut() {
                if let Some(c) = p.status.as_mut().and_then(|s| s.conditions.as_mut()) {
                    c[0].status = "True".into();
                }
            }
            let got = run(&d, &nodes, &pods);
            let available = got.status.number_available.unwrap_or(0);
            assert!(available >= 2, "pass {pass}: only {available} available");
            if got.create.is_empty() && got.delete.is_empty() {
                assert_eq!(counts(&got.status), (3, 3, 0, 3, 3, 3, 0));
                return;
            }
            pods.retain(|p| !got.delete.contains(&name_of(p)));
            for n in &got.create {
                pods.push(pod(&d, &format!("new-{n}"), n, STARTING));
            }
        }
        panic!("did not converge: {pods:#?}");
    }

    #[test]
    fn daemon_pods_are_bound_labelled_and_owned() {
        let d = ds(json!({"spec": {"template": {
            "metadata": {"annotations": {"note": "kept"}},
            "spec": {"tolerations": [{"operator": "Exists"}]}}}}));
        let hash = revision_hash(&d);
        let p = daemon_pod(&d, "n1", &hash);
        assert_eq!(p.metadata.generate_name.as_deref(), Some("agent-"));
        assert_eq!(p.metadata.name, None);
        assert_eq!(p.metadata.namespace.as_deref(), Some("kube-system"));
        let labels = p.metadata.labels.clone().unwrap();
        assert_eq!(labels["app"], "agent");
        assert_eq!(labels[REVISION_HASH], hash);
        assert_eq!(labels[TEMPLATE_GENERATION], "3");
        assert_eq!(p.metadata.annotations.unwrap()["note"], "kept");
        let owner = &p.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("DaemonSet", "agent", "ds-uid")
        );
        assert_eq!(
            (owner.controller, owner.block_owner_deletion),
            (Some(true), Some(true))
        );
        let spec = p.spec.unwrap();
        assert_eq!(spec.node_name.as_deref(), Some("n1"));
        assert_eq!(spec.tolerations.unwrap().len(), 1);
        // The hash follows the template and nothing else.
        let relabelled =
            ds(json!({"metadata": {"labels": {"x": "y"}}, "spec": {"minReadySeconds": 5}}));
        assert_eq!(revision_hash(&relabelled), revision_hash(&ds(json!({}))));
        let changed = ds(
            json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "nginx"}]}}}}),
        );
        assert_ne!(revision_hash(&changed), revision_hash(&ds(json!({}))));
    }
}
