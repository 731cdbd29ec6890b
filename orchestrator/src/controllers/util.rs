//! Small pieces the controllers share: pod predicates, label selectors, owner references,
//! template hashes and expectations.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::core::v1::Pod,
    apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference},
};

/// The pod's Ready condition is True.
pub fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

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
}
