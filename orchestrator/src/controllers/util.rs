//! Small pieces the controllers share: pod predicates, label selectors, owner references,
//! template hashes and expectations.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::core::v1::{Node, Pod, PodTemplateSpec, Toleration},
    apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference},
    jiff::{SignedDuration, Timestamp},
};

/// The pod's Ready condition is True.
pub fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The node's Ready condition is True.
pub fn node_ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The NoSchedule taints kube's node lifecycle controller puts on NotReady and cordoned nodes
/// (TaintNodesByCondition); this cluster derives them from the node instead of storing them.
pub const TAINT_NOT_READY: &str = "node.kubernetes.io/not-ready";
pub const TAINT_UNSCHEDULABLE: &str = "node.kubernetes.io/unschedulable";

/// Whether `tolerations` allow scheduling onto the NoSchedule taint `key` (which has no value).
pub fn tolerates(tolerations: &[Toleration], key: &str) -> bool {
    tolerations.iter().any(|t| {
        let effect = matches!(t.effect.as_deref(), None | Some("" | "NoSchedule"));
        let k = t.key.as_deref().unwrap_or_default();
        let matched = match t.operator.as_deref() {
            Some("Exists") => k.is_empty() || k == key,
            _ => k == key && t.value.as_deref().unwrap_or_default().is_empty(),
        };
        effect && matched
    })
}

/// Why a pod with `node_selector` and `tolerations` may not be placed on `n` (not Ready or
/// cordoned, as the taints above, unless tolerated; labels), in the scheduler's words; None
/// when it may. The scheduler and the DaemonSet controller agree on this, so a daemon pod
/// lands where an ordinary pod with its tolerations could (a CNI or agent DaemonSet tolerates
/// not-ready: readying the node is its job).
pub fn node_unfit(
    n: &Node,
    node_selector: Option<&BTreeMap<String, String>>,
    tolerations: &[Toleration],
) -> Option<&'static str> {
    if !node_ready(n) && !tolerates(tolerations, TAINT_NOT_READY) {
        return Some("not ready");
    }
    if n.spec.as_ref().and_then(|s| s.unschedulable) == Some(true)
        && !tolerates(tolerations, TAINT_UNSCHEDULABLE)
    {
        return Some("unschedulable");
    }
    let labels = n.metadata.labels.as_ref();
    if !node_selector
        .into_iter()
        .flatten()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
    {
        return Some("didn't match Pod's node affinity/selector");
    }
    None
}

/// At most this many pod creates or deletes per owner per pass, so one large owner cannot
/// starve the others of a pass (kube: a slow-start burst).
pub const BURST: usize = 100;

/// Not finished and not being deleted: counts towards a ReplicaSet's replicas.
pub fn pod_active(p: &Pod) -> bool {
    let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
    p.metadata.deletion_timestamp.is_none() && !matches!(phase, Some("Succeeded" | "Failed"))
}

/// Whether `labels` satisfy `sel` (matchLabels and matchExpressions). An empty selector matches
/// everything, as in the API.
pub fn selector_matches(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let ml = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    ml && sel.match_expressions.iter().flatten().all(|e| {
        let vals = e.values.as_deref().unwrap_or(&[]);
        let got = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => got.is_some_and(|g| vals.contains(g)),
            "NotIn" => got.is_none_or(|g| !vals.contains(g)),
            "Exists" => got.is_some(),
            "DoesNotExist" => got.is_none(),
            _ => false,
        }
    })
}

/// The controller owner's uid, if any.
pub fn controller_uid(m: &ObjectMeta) -> Option<&str> {
    m.owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.as_str())
}

/// A controller reference to `owner` (blockOwnerDeletion, as kube-controller-manager sets).
pub fn controller_ref(api_version: &str, kind: &str, owner: &ObjectMeta) -> OwnerReference {
    OwnerReference {
        api_version: api_version.into(),
        kind: kind.into(),
        name: owner.name.clone().unwrap_or_default(),
        uid: owner.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// A stable, short hash of a pod template (the `pod-template-hash` label), in the alphabet
/// Kubernetes uses for generated names (no vowels, no confusable digits).
pub fn template_hash(template: &serde_json::Value) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    // FNV-1a 64 over canonical JSON (serde_json maps are sorted).
    let mut h: u64 = 0xcbf29ce484222325;
    for b in template.to_string().bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    let mut out = String::new();
    for _ in 0..10 {
        out.push(ALPHABET[(h % ALPHABET.len() as u64) as usize] as char);
        h /= ALPHABET.len() as u64;
    }
    out
}

/// A pod template as JSON with what Go's encoding would leave out dropped — nulls, empty
/// strings, objects and arrays — and without the `pod-template-hash` label: two templates are
/// the same for a Deployment when these are equal (kube's EqualIgnoreHash, which compares
/// decoded Go structs). A template that went through a Go client (kubectl's `rollout undo`
/// writes `resources: {}` and `creationTimestamp: null`) still matches its original.
pub fn template_for_compare(t: &PodTemplateSpec) -> serde_json::Value {
    let mut v = serde_json::to_value(t).unwrap_or_default();
    if let Some(labels) = v
        .pointer_mut("/metadata/labels")
        .and_then(|l| l.as_object_mut())
    {
        labels.remove(POD_TEMPLATE_HASH);
    }
    prune(&mut v);
    v
}

pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";

fn prune(v: &mut serde_json::Value) -> bool {
    use serde_json::Value;
    match v {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => {
            for x in a.iter_mut() {
                prune(x);
            }
            a.is_empty()
        }
        Value::Object(m) => {
            m.retain(|_, x| !prune(x));
            m.is_empty()
        }
        _ => false,
    }
}

/// kube's EqualIgnoreHash.
pub fn templates_equal(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    template_for_compare(a) == template_for_compare(b)
}

/// The `pod-template-hash` of a Deployment's template (kube's ComputeHash: the template and,
/// after name collisions, the collision count).
pub fn pod_template_hash(t: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut v = template_for_compare(t);
    if let Some(n) = collision_count.filter(|n| *n > 0) {
        v = serde_json::json!({"template": v, "collisionCount": n});
    }
    template_hash(&v)
}

/// When the pod's Ready condition last turned True, if it is Ready.
pub fn ready_since(p: &Pod) -> Option<Timestamp> {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready" && c.status == "True"))
        .map(|c| {
            c.last_transition_time
                .as_ref()
                .map_or(Timestamp::UNIX_EPOCH, |t| t.0)
        })
}

/// kube's IsPodAvailable: Ready, and for `min_ready_seconds` > 0 Ready for longer than that.
/// Otherwise, for a Ready pod, when it becomes available.
pub fn pod_available(
    p: &Pod,
    min_ready_seconds: i32,
    now: Timestamp,
) -> Result<(), Option<Timestamp>> {
    let Some(since) = ready_since(p) else {
        return Err(None);
    };
    if min_ready_seconds <= 0 {
        return Ok(());
    }
    let at = since + SignedDuration::from_secs(min_ready_seconds as i64);
    if at < now {
        Ok(())
    } else {
        Err(Some(at))
    }
}

/// Brings `wake` forward to just after `at` (a Ready pod turning available after
/// minReadySeconds), so the pass that counts it runs then rather than at the next resync.
pub fn wake_for(wake: &mut Option<Duration>, now: Timestamp, at: Timestamp) {
    let left = now.duration_until(at) + SignedDuration::from_secs(1);
    let left = Duration::try_from(left).unwrap_or_default();
    *wake = Some(wake.map_or(left, |w| w.min(left)));
}

/// Read-your-writes over a watch cache: the objects a controller wrote (by uid, with the
/// resourceVersion the API returned) replace older cached copies until the cache catches up,
/// and objects it created show before the cache has them (for a few seconds). The API server's
/// resourceVersions are its store's global revision, so they compare as numbers.
pub struct Fresh<K> {
    written: HashMap<String, (u64, std::sync::Arc<K>, Instant, bool)>,
}

impl<K> Default for Fresh<K> {
    fn default() -> Self {
        Fresh {
            written: HashMap::new(),
        }
    }
}

const FRESH_CREATED_TTL: Duration = Duration::from_secs(5);

fn rv_of(m: &ObjectMeta) -> Option<u64> {
    m.resource_version.as_deref().and_then(|r| r.parse().ok())
}

impl<K: kube::Resource> Fresh<K> {
    /// Records an object the API returned from a write; `created` for a create.
    pub fn wrote(&mut self, obj: K, created: bool) -> std::sync::Arc<K> {
        let obj = std::sync::Arc::new(obj);
        if let (Some(uid), Some(rv)) = (obj.meta().uid.clone(), rv_of(obj.meta())) {
            self.written
                .insert(uid, (rv, obj.clone(), Instant::now(), created));
        }
        obj
    }

    pub fn forget(&mut self, uid: &str) {
        self.written.remove(uid);
    }

    /// The newer of the cached object and our last write of it.
    pub fn get(&mut self, cached: std::sync::Arc<K>) -> std::sync::Arc<K> {
        let Some(uid) = cached.meta().uid.clone() else {
            return cached;
        };
        match self.written.get(&uid) {
            Some((rv, obj, _, _)) if rv_of(cached.meta()).is_some_and(|c| c < *rv) => obj.clone(),
            Some(_) => {
                self.written.remove(&uid);
                cached
            }
            None => cached,
        }
    }

    /// `cached` with our writes laid over, plus what we created that the cache lacks yet.
    /// Written objects the cache no longer has (deleted) are dropped.
    pub fn overlay(&mut self, cached: Vec<std::sync::Arc<K>>) -> Vec<std::sync::Arc<K>> {
        let seen: HashSet<String> = cached.iter().filter_map(|o| o.meta().uid.clone()).collect();
        let mut out: Vec<std::sync::Arc<K>> = cached.into_iter().map(|o| self.get(o)).collect();
        self.written.retain(|uid, (_, obj, at, created)| {
            if seen.contains(uid) {
                return true;
            }
            let keep = *created && at.elapsed() < FRESH_CREATED_TTL;
            if keep {
                out.push(obj.clone());
            }
            keep
        });
        out
    }
}

/// What a controller wrote but its cache may not show yet, per owner: names created (count as
/// present until seen) and names deleted (count as gone until seen gone or terminating).
/// Entries expire, so a lost watch event cannot wedge an owner.
#[derive(Default)]
pub struct Expectations {
    adds: HashMap<String, (HashSet<String>, Instant)>,
    dels: HashMap<String, (HashSet<String>, Instant)>,
}

const EXPECTATION_TTL: Duration = Duration::from_secs(30);

impl Expectations {
    pub fn created(&mut self, owner: &str, name: String) {
        let e = self
            .adds
            .entry(owner.into())
            .or_insert_with(|| (HashSet::new(), Instant::now()));
        e.0.insert(name);
        e.1 = Instant::now();
    }
    pub fn deleted(&mut self, owner: &str, name: String) {
        let e = self
            .dels
            .entry(owner.into())
            .or_insert_with(|| (HashSet::new(), Instant::now()));
        e.0.insert(name);
        e.1 = Instant::now();
    }
    /// Given the names the cache shows as active for `owner`: how many created ones are still
    /// unseen, and which shown ones are already deleted.
    pub fn observe(&mut self, owner: &str, active: &HashSet<String>) -> (usize, HashSet<String>) {
        let mut pending = 0;
        if let Some((names, at)) = self.adds.get_mut(owner) {
            names.retain(|n| !active.contains(n));
            if names.is_empty() || at.elapsed() > EXPECTATION_TTL {
                self.adds.remove(owner);
            } else {
                pending = names.len();
            }
        }
        let mut gone = HashSet::new();
        if let Some((names, at)) = self.dels.get_mut(owner) {
            names.retain(|n| active.contains(n));
            if names.is_empty() || at.elapsed() > EXPECTATION_TTL {
                self.dels.remove(owner);
            } else {
                gone = names.clone();
            }
        }
        (pending, gone)
    }
    pub fn forget(&mut self, owner: &str) {
        self.adds.remove(owner);
        self.dels.remove(owner);
    }
}

/// `intstr` percent-or-count against `total` (round up for surge, down for unavailable).
pub fn scaled(
    v: Option<&k8s_openapi::apimachinery::pkg::util::intstr::IntOrString>,
    total: i32,
    default_pct: i32,
    round_up: bool,
) -> i32 {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let pct = |p: i32| {
        let x = p as i64 * total as i64;
        (if round_up { (x + 99) / 100 } else { x / 100 }) as i32
    };
    match v {
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(s)) => s
            .strip_suffix('%')
            .and_then(|p| p.parse().ok())
            .map_or(pct(default_pct), pct),
        None => pct(default_pct),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::{
        apis::meta::v1::LabelSelectorRequirement, util::intstr::IntOrString,
    };

    #[test]
    fn selectors() {
        let labels: BTreeMap<String, String> = [("app".to_string(), "web".to_string())]
            .into_iter()
            .collect();
        let sel = |ml: &[(&str, &str)], op: Option<(&str, &str, &[&str])>| LabelSelector {
            match_labels: Some(
                ml.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            match_expressions: op.map(|(k, o, v)| {
                vec![LabelSelectorRequirement {
                    key: k.into(),
                    operator: o.into(),
                    values: Some(v.iter().map(|s| s.to_string()).collect()),
                }]
            }),
        };
        assert!(selector_matches(&sel(&[("app", "web")], None), &labels));
        assert!(!selector_matches(&sel(&[("app", "db")], None), &labels));
        assert!(selector_matches(
            &sel(&[], Some(("app", "In", &["web", "x"]))),
            &labels
        ));
        assert!(!selector_matches(
            &sel(&[], Some(("app", "NotIn", &["web"]))),
            &labels
        ));
        assert!(selector_matches(
            &sel(&[], Some(("tier", "DoesNotExist", &[]))),
            &labels
        ));
    }

    #[test]
    fn surge_and_unavailable_round_like_kubernetes() {
        let pct = IntOrString::String("25%".into());
        assert_eq!(scaled(Some(&pct), 3, 25, true), 1);
        assert_eq!(scaled(Some(&pct), 3, 25, false), 0);
        assert_eq!(scaled(None, 10, 25, true), 3);
        assert_eq!(scaled(Some(&IntOrString::Int(2)), 10, 25, false), 2);
    }

    #[test]
    fn template_hash_is_stable_and_sensitive() {
        let a = serde_json::json!({"spec": {"containers": [{"name": "c", "image": "busybox"}]}});
        let b = serde_json::json!({"spec": {"containers": [{"name": "c", "image": "nginx"}]}});
        assert_eq!(template_hash(&a), template_hash(&a.clone()));
        assert_ne!(template_hash(&a), template_hash(&b));
        assert_eq!(template_hash(&a).len(), 10);
    }

    #[test]
    fn expectations_count_unseen_creates() {
        let mut e = Expectations::default();
        e.created("rs", "p1".into());
        e.created("rs", "p2".into());
        let seen: HashSet<String> = ["p1".to_string()].into_iter().collect();
        assert_eq!(e.observe("rs", &seen).0, 1);
        let seen: HashSet<String> = ["p1".to_string(), "p2".to_string()].into_iter().collect();
        assert_eq!(e.observe("rs", &seen).0, 0);
        e.deleted("rs", "p1".into());
        assert!(e.observe("rs", &seen).1.contains("p1"));
        let seen: HashSet<String> = ["p2".to_string()].into_iter().collect();
        assert!(e.observe("rs", &seen).1.is_empty());
    }

    #[test]
    fn templates_compare_as_go_would_encode_them() {
        let t = |v: serde_json::Value| -> PodTemplateSpec { serde_json::from_value(v).unwrap() };
        let a = t(serde_json::json!({"metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}}));
        // What kubectl sends back from a ReplicaSet: hash label, empty structs, nulls.
        let b = t(
            serde_json::json!({"metadata": {"labels": {"app": "web", "pod-template-hash": "x"},
            "creationTimestamp": null},
            "spec": {"containers": [{"name": "c", "image": "busybox", "resources": {}}], "securityContext": {}}}),
        );
        assert!(templates_equal(&a, &b));
        assert_eq!(pod_template_hash(&a, None), pod_template_hash(&b, None));
        assert_ne!(pod_template_hash(&a, None), pod_template_hash(&a, Some(1)));
        let c = t(serde_json::json!({"metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "c", "image": "busybox", "env": [{"name": "A", "value": "1"}]}]}}));
        assert!(!templates_equal(&a, &c));
    }

    #[test]
    fn availability_waits_min_ready_seconds() {
        let pod = |ready: bool, since: i64| -> Pod {
            serde_json::from_value(serde_json::json!({"status": {"conditions": [{
                "type": "Ready", "status": if ready { "True" } else { "False" },
                "lastTransitionTime": Timestamp::from_second(since).unwrap().to_string()}]}}))
            .unwrap()
        };
        let now = Timestamp::from_second(1_000).unwrap();
        assert_eq!(pod_available(&pod(true, 990), 0, now), Ok(()));
        assert_eq!(pod_available(&pod(false, 990), 0, now), Err(None));
        assert_eq!(pod_available(&pod(true, 990), 5, now), Ok(()));
        // kube's IsPodAvailable: Ready for strictly longer than minReadySeconds.
        assert_eq!(
            pod_available(&pod(true, 995), 5, now),
            Err(Some(Timestamp::from_second(1_000).unwrap()))
        );
        assert!(pod_available(&pod(true, 998), 5, now).is_err());
    }
}
