//! The scheduler: binds each unscheduled pod to a node — Ready and schedulable, matching
//! nodeName/nodeSelector, with room for the pod's requests (cpu, memory, pod count) — scoring
//! the least allocated highest (kube-scheduler's NodeResourcesFit LeastAllocated), fewer pods
//! breaking ties so replicas spread.

use std::collections::HashMap;

use anyhow::Context;
use k8s_openapi::{
    api::core::v1::{Node, Pod},
    apimachinery::pkg::api::resource::Quantity,
};
use kube::{
    api::{Api, PostParams},
    Client, ResourceExt,
};
use serde_json::json;

use crate::controllers::{
    node_unfit,
    runner::{Event, Key, Obj, Reconcile},
    Caches,
};

pub const SCHEDULER_NAME: &str = "default-scheduler";

pub struct Scheduler {
    client: Client,
    caches: Caches,
    /// Pods bound by this scheduler that the cache does not show bound yet: uid → node.
    assumed: HashMap<String, String>,
}

/// cpu in millicores, memory in bytes, from a Kubernetes quantity.
pub fn parse_quantity(q: &Quantity, cpu: bool) -> i64 {
    let s = q.0.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == '+'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let n: f64 = num.parse().unwrap_or(0.0);
    let mult: f64 = match suffix {
        "m" => 0.001,
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024f64.powi(4),
        _ => 1.0,
    };
    let v = n * mult;
    if cpu {
        (v * 1000.0).round() as i64
    } else {
        v.round() as i64
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Resources {
    pub cpu_milli: i64,
    pub memory: i64,
    pub pods: i64,
}

pub fn requests(p: &Pod) -> Resources {
    let mut r = Resources {
        pods: 1,
        ..Default::default()
    };
    for c in p.spec.iter().flat_map(|s| s.containers.iter()) {
        if let Some(req) = c.resources.as_ref().and_then(|r| r.requests.as_ref()) {
            r.cpu_milli += req.get("cpu").map_or(0, |q| parse_quantity(q, true));
            r.memory += req.get("memory").map_or(0, |q| parse_quantity(q, false));
        }
    }
    r
}

fn allocatable(n: &Node) -> Resources {
    let a = n
        .status
        .as_ref()
        .and_then(|s| s.allocatable.clone().or_else(|| s.capacity.clone()))
        .unwrap_or_default();
    Resources {
        cpu_milli: a
            .get("cpu")
            .map_or(i64::MAX / 4, |q| parse_quantity(q, true)),
        memory: a
            .get("memory")
            .map_or(i64::MAX / 4, |q| parse_quantity(q, false)),
        pods: a.get("pods").map_or(110, |q| parse_quantity(q, false)),
    }
}

/// The best node for `pod` given what is already placed (`used` per node), or why none fits.
pub fn pick<'a>(
    pod: &Pod,
    nodes: &'a [&'a Node],
    used: &HashMap<String, Resources>,
) -> Result<&'a Node, String> {
    let spec = pod.spec.clone().unwrap_or_default();
    let want = requests(pod);
    let mut reasons: Vec<String> = Vec::new();
    let mut best: Option<(i64, i64, &'a Node)> = None;
    for &n in nodes {
        let name = n.name_any();
        let tolerations = spec.tolerations.as_deref().unwrap_or_default();
        if let Some(why) = node_unfit(n, spec.node_selector.as_ref(), tolerations) {
            reasons.push(format!("{name}: {why}"));
            continue;
        }
        let cap = allocatable(n);
        let u = used.get(&name).copied().unwrap_or_default();
        if u.cpu_milli + want.cpu_milli > cap.cpu_milli {
            reasons.push(format!("{name}: Insufficient cpu"));
            continue;
        }
        if u.memory + want.memory > cap.memory {
            reasons.push(format!("{name}: Insufficient memory"));
            continue;
        }
        if u.pods + 1 > cap.pods {
            reasons.push(format!("{name}: Too many pods"));
            continue;
        }
        let free = |used: i64, cap: i64| {
            if cap <= 0 {
                0
            } else {
                (cap - used).max(0) * 100 / cap
            }
        };
        let score = (free(u.cpu_milli + want.cpu_milli, cap.cpu_milli)
            + free(u.memory + want.memory, cap.memory))
            / 2;
        let better = match best {
            None => true,
            Some((s, pods, _)) => score > s || (score == s && u.pods < pods),
        };
        if better {
            best = Some((score, u.pods, n));
        }
    }
    best.map(|(_, _, n)| n).ok_or_else(|| {
        format!(
            "0/{} nodes are available: {}",
            nodes.len(),
            reasons.join(", ")
        )
    })
}

impl Scheduler {
    pub fn new(client: Client, caches: Caches) -> Self {
        Scheduler {
            client,
            caches,
            assumed: HashMap::new(),
        }
    }
}

/// Whether `p` waits for this scheduler.
fn unscheduled(p: &Pod) -> bool {
    let spec = p.spec.as_ref();
    let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
    spec.and_then(|s| s.node_name.as_ref()).is_none()
        && p.metadata.deletion_timestamp.is_none()
        && !matches!(phase, Some("Succeeded" | "Failed"))
        && spec
            .and_then(|s| s.scheduler_name.as_deref())
            .is_none_or(|s| s == SCHEDULER_NAME)
}

/// Keyed by pod, oldest first at start (kube-scheduler's active queue, without priorities).
impl Reconcile for Scheduler {
    type Key = Key;
    const NAME: &'static str = "scheduler";

    fn all(&self) -> Vec<Key> {
        let mut pods: Vec<_> = self
            .caches
            .pods
            .state()
            .into_iter()
            .filter(|p| unscheduled(p))
            .collect();
        pods.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
        pods.iter().map(|p| Key::of(p.as_ref())).collect()
    }

    /// An unscheduled pod; every unscheduled pod when room may have appeared (a node changed,
    /// a bound pod went or finished).
    fn triggers(&self, ev: &Event, out: &mut Vec<Key>) {
        match ev {
            Event::Applied(Obj::Pod(p)) if unscheduled(p) => out.push(Key::of(p.as_ref())),
            Event::Applied(Obj::Pod(p)) => {
                let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
                if matches!(phase, Some("Succeeded" | "Failed")) {
                    out.extend(self.all());
                }
            }
            Event::Deleted(Obj::Pod(_)) => out.extend(self.all()),
            Event::Applied(Obj::Node(_)) | Event::Deleted(Obj::Node(_)) => out.extend(self.all()),
            _ => {}
        }
    }

    async fn reconcile(&mut self, key: &Key) -> anyhow::Result<Option<std::time::Duration>> {
        let Some(p) = key.live(&self.caches.pods) else {
            return Ok(None);
        };
        let uid = p.uid().unwrap_or_default();
        if !unscheduled(&p) || self.assumed.contains_key(&uid) {
            return Ok(None);
        }
        let nodes = self.caches.nodes.state();
        let node_refs: Vec<&Node> = nodes.iter().map(|n| n.as_ref()).collect();
        let mut live = std::collections::HashSet::new();
        let mut used: HashMap<String, Resources> = HashMap::new();
        for q in self.caches.pods.state() {
            let quid = q.uid().unwrap_or_default();
            live.insert(quid.clone());
            let bound = q.spec.as_ref().and_then(|s| s.node_name.clone());
            if bound.is_some() {
                self.assumed.remove(&quid);
            }
            let phase = q.status.as_ref().and_then(|s| s.phase.as_deref());
            if matches!(phase, Some("Succeeded" | "Failed")) {
                continue;
            }
            if let Some(n) = bound.or_else(|| self.assumed.get(&quid).cloned()) {
                add(used.entry(n).or_default(), &requests(&q));
            }
        }
        // Pods bound by us and deleted before the cache showed them bound.
        self.assumed.retain(|uid, _| live.contains(uid));
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &key.ns);
        match pick(&p, &node_refs, &used) {
            Ok(n) => {
                let node = n.name_any();
                let body = json!({
                    "apiVersion": "v1", "kind": "Binding",
                    "metadata": {"name": p.name_any(), "namespace": key.ns},
                    "target": {"apiVersion": "v1", "kind": "Node", "name": node},
                });
                let res: Result<serde_json::Value, _> = api
                    .create_subresource("binding", &p.name_any(), &PostParams::default(), &body)
                    .await;
                match res {
                    Ok(_) => {
                        self.assumed.insert(uid, node);
                    }
                    Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {}
                    Err(e) => return Err(e).context(format!("binding {}", p.name_any())),
                }
            }
            Err(why) => {
                self.mark_unschedulable(&api, &p, &why).await?;
            }
        }
        Ok(None)
    }
}

fn add(to: &mut Resources, r: &Resources) {
    to.cpu_milli += r.cpu_milli;
    to.memory += r.memory;
    to.pods += 1;
}

impl Scheduler {
    /// PodScheduled=False/Unschedulable with the reason, as kube-scheduler reports it.
    async fn mark_unschedulable(&self, api: &Api<Pod>, p: &Pod, why: &str) -> anyhow::Result<()> {
        let conds = p
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        if conds
            .iter()
            .any(|c| c.type_ == "PodScheduled" && c.message.as_deref() == Some(why))
        {
            return Ok(());
        }
        let mut all: Vec<_> = conds
            .into_iter()
            .filter(|c| c.type_ != "PodScheduled")
            .collect();
        all.push(k8s_openapi::api::core::v1::PodCondition {
            type_: "PodScheduled".into(),
            status: "False".into(),
            reason: Some("Unschedulable".into()),
            message: Some(why.into()),
            last_transition_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                crate::api::kind::now_seconds(),
            )),
            ..Default::default()
        });
        api.patch_status(
            &p.name_any(),
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"status": {"conditions": all}})),
        )
        .await
        .context("reporting unschedulable")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{NodeCondition, NodeStatus, PodSpec};
    use std::collections::BTreeMap;

    fn node(name: &str, cpu: &str, labels: &[(&str, &str)]) -> Node {
        Node {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(name.into()),
                labels: Some(
                    labels
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                ),
                ..Default::default()
            },
            spec: None,
            status: Some(NodeStatus {
                allocatable: Some(BTreeMap::from([
                    ("cpu".to_string(), Quantity(cpu.into())),
                    ("memory".to_string(), Quantity("1Gi".into())),
                    ("pods".to_string(), Quantity("10".into())),
                ])),
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
        }
    }

    fn pod(cpu: Option<&str>, selector: &[(&str, &str)]) -> Pod {
        let mut c = k8s_openapi::api::core::v1::Container {
            name: "c".into(),
            ..Default::default()
        };
        if let Some(cpu) = cpu {
            c.resources = Some(k8s_openapi::api::core::v1::ResourceRequirements {
                requests: Some(BTreeMap::from([("cpu".to_string(), Quantity(cpu.into()))])),
                ..Default::default()
            });
        }
        Pod {
            spec: Some(PodSpec {
                containers: vec![c],
                node_selector: (!selector.is_empty()).then(|| {
                    selector
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn quantities() {
        assert_eq!(parse_quantity(&Quantity("250m".into()), true), 250);
        assert_eq!(parse_quantity(&Quantity("2".into()), true), 2000);
        assert_eq!(parse_quantity(&Quantity("64Mi".into()), false), 64 << 20);
        assert_eq!(parse_quantity(&Quantity("1G".into()), false), 1_000_000_000);
    }

    #[test]
    fn least_allocated_and_selectors() {
        let a = node("a", "2", &[("disk", "ssd")]);
        let b = node("b", "2", &[]);
        let nodes = [&a, &b];
        let mut used = HashMap::new();
        used.insert(
            "a".to_string(),
            Resources {
                cpu_milli: 1000,
                memory: 0,
                pods: 1,
            },
        );
        assert_eq!(
            pick(&pod(Some("500m"), &[]), &nodes, &used)
                .unwrap()
                .name_any(),
            "b"
        );
        assert_eq!(
            pick(&pod(None, &[("disk", "ssd")]), &nodes, &used)
                .unwrap()
                .name_any(),
            "a"
        );
        let err = pick(&pod(Some("3"), &[]), &nodes, &used).unwrap_err();
        assert!(err.contains("Insufficient cpu"), "{err}");
        // Equal scores: fewer pods wins, so replicas spread.
        let mut used = HashMap::new();
        used.insert(
            "a".to_string(),
            Resources {
                cpu_milli: 0,
                memory: 0,
                pods: 2,
            },
        );
        assert_eq!(
            pick(&pod(None, &[]), &nodes, &used).unwrap().name_any(),
            "b"
        );
    }
}
