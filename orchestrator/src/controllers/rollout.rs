//! The Deployment controller's arithmetic as pure functions over ReplicaSet summaries, following
//! kube's pkg/controller/deployment (rolling.go, recreate.go, sync.go, progress.go and
//! util/deployment_util.go): the new ReplicaSet's size, old ReplicaSets' scale-down, proportional
//! scaling, revision annotations, history cleanup and the status with its Progressing and
//! Available conditions. `deployment.rs` reads the caches, calls these and writes the results.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::apps::v1::DeploymentCondition,
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::{SignedDuration, Timestamp},
};

pub const REVISION: &str = "deployment.kubernetes.io/revision";
pub const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";
/// Annotations of a Deployment that are not copied to its ReplicaSets (kube's annotationsToSkip).
const SKIP_COPY: &[&str] = &[
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    REVISION_HISTORY,
    DESIRED_REPLICAS,
    MAX_REPLICAS,
    "deprecated.deployment.rollback.to",
];
/// kube's maxRevHistoryLengthInChars.
const REVISION_HISTORY_CHARS: usize = 2000;

pub const PROGRESSING: &str = "Progressing";
pub const AVAILABLE: &str = "Available";
pub const NEW_RS_AVAILABLE: &str = "NewReplicaSetAvailable";
pub const RS_UPDATED: &str = "ReplicaSetUpdated";
pub const NEW_RS_CREATED: &str = "NewReplicaSetCreated";
pub const FOUND_NEW_RS: &str = "FoundNewReplicaSet";
pub const TIMED_OUT: &str = "ProgressDeadlineExceeded";
pub const PAUSED: &str = "DeploymentPaused";
pub const RESUMED: &str = "DeploymentResumed";

/// One ReplicaSet as the arithmetic sees it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rs {
    pub name: String,
    /// spec.replicas
    pub spec: i32,
    /// status.replicas, readyReplicas, availableReplicas
    pub replicas: i32,
    pub ready: i32,
    pub available: i32,
    pub revision: i64,
    /// creationTimestamp in seconds (ties broken by name, as kube does).
    pub created: i64,
    pub desired_ann: Option<i32>,
    pub max_ann: Option<i32>,
    pub generation: i64,
    pub observed_generation: i64,
    pub deleting: bool,
}

/// The Deployment's replicas and its resolved RollingUpdate budget (kube's MaxSurge and
/// MaxUnavailable: both 0 for Recreate; unavailable at most replicas).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Budget {
    pub replicas: i32,
    pub rolling: bool,
    pub surge: i32,
    pub unavailable: i32,
}

impl Budget {
    /// `surge` and `unavailable` are the scaled intstr values (surge rounded up, unavailable
    /// down); both 0 means unavailable 1 (kube's ResolveFenceposts).
    pub fn new(replicas: i32, rolling: bool, surge: i32, unavailable: i32) -> Budget {
        let unavailable = if surge == 0 && unavailable == 0 {
            1
        } else {
            unavailable
        };
        Budget {
            replicas,
            rolling,
            surge: if rolling { surge } else { 0 },
            unavailable: if !rolling || replicas == 0 {
                0
            } else {
                unavailable.min(replicas)
            },
        }
    }
    fn max_total(&self) -> i32 {
        self.replicas + self.surge
    }
    fn min_available(&self) -> i32 {
        self.replicas - self.unavailable
    }
}

/// Indices of `rss` oldest first (kube's ReplicaSetsByCreationTimestamp).
fn by_creation(rss: &[Rs]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..rss.len()).collect();
    idx.sort_by(|&a, &b| (rss[a].created, &rss[a].name).cmp(&(rss[b].created, &rss[b].name)));
    idx
}

/// kube's NewRSNewReplicas: the new ReplicaSet grows by what the surge budget leaves beside
/// all ReplicaSets' spec sizes (`all_spec` includes the new one); Recreate: full size.
pub fn new_rs_replicas(b: &Budget, all_spec: i32, new_spec: i32) -> i32 {
    if !b.rolling {
        return b.replicas;
    }
    if all_spec >= b.max_total() {
        return new_spec;
    }
    let up = (b.max_total() - all_spec).min(b.replicas - new_spec);
    new_spec + up
}

/// kube's reconcileNewReplicaSet: the new ReplicaSet's next size, when it changes.
pub fn reconcile_new(b: &Budget, all_spec: i32, new_spec: i32) -> Option<i32> {
    if new_spec == b.replicas {
        return None;
    }
    if new_spec > b.replicas {
        return Some(b.replicas);
    }
    let n = new_rs_replicas(b, all_spec, new_spec);
    (n != new_spec).then_some(n)
}

/// kube's reconcileOldReplicaSets: first the old ReplicaSets' unavailable replicas go (oldest
/// ReplicaSet first, within what the budget allows), then available ones while at least
/// `replicas - maxUnavailable` stay available. Returns the new sizes of `olds`, in order.
pub fn reconcile_olds(b: &Budget, olds: &[Rs], new: &Rs) -> Vec<i32> {
    let mut sizes: Vec<i32> = olds.iter().map(|r| r.spec).collect();
    let old_total: i32 = sizes.iter().sum();
    if old_total == 0 {
        return sizes;
    }
    let all_total = old_total + new.spec;
    let new_unavailable = new.spec - new.available;
    let max_down = all_total - b.min_available() - new_unavailable;
    if max_down <= 0 {
        return sizes;
    }
    let order = by_creation(olds);
    // cleanupUnhealthyReplicas
    let mut cleaned = 0;
    for &i in &order {
        if cleaned >= max_down {
            break;
        }
        if sizes[i] == 0 || sizes[i] <= olds[i].available {
            continue;
        }
        let cut = (max_down - cleaned).min(sizes[i] - olds[i].available);
        sizes[i] -= cut;
        cleaned += cut;
    }
    // scaleDownOldReplicaSetsForRollingUpdate
    let available: i32 = olds.iter().map(|r| r.available).sum::<i32>() + new.available;
    if available <= b.min_available() {
        return sizes;
    }
    let total = available - b.min_available();
    let mut done = 0;
    for &i in &order {
        if done >= total {
            break;
        }
        if sizes[i] == 0 {
            continue;
        }
        let cut = sizes[i].min(total - done);
        sizes[i] -= cut;
        done += cut;
    }
    sizes
}

/// kube's isScalingEvent: an active ReplicaSet was sized for another replica count.
pub fn is_scaling_event(b: &Budget, all: &[&Rs]) -> bool {
    all.iter()
        .filter(|r| r.spec > 0)
        .any(|r| r.desired_ann.is_some_and(|d| d != b.replicas))
}

/// kube's getReplicaSetFraction: what `rs` gains (or loses) when the Deployment's maximum goes
/// from the one it was sized for (its max-replicas annotation) to today's.
fn fraction(b: &Budget, status_replicas: i32, rs: &Rs) -> i32 {
    if b.replicas == 0 {
        return -rs.spec;
    }
    let before = match rs.max_ann {
        Some(m) if m != 0 => m,
        _ => status_replicas,
    };
    if before == 0 {
        return 0;
    }
    let size = (rs.spec as f64 * b.max_total() as f64) / before as f64;
    (size + 0.5).floor() as i32 - rs.spec
}

fn proportion(b: &Budget, status_replicas: i32, rs: &Rs, to_add: i32, added: i32) -> i32 {
    if rs.spec == 0 || to_add == 0 || to_add == added {
        return 0;
    }
    let f = fraction(b, status_replicas, rs);
    let allowed = to_add - added;
    if to_add > 0 {
        f.min(allowed)
    } else {
        f.max(allowed)
    }
}

/// kube's `scale` (sync.go): the sizes to give ReplicaSets when the Deployment is paused or its
/// replica count changed. The only active (or else the newest) ReplicaSet takes all replicas; a
/// saturated new ReplicaSet leaves the old ones at 0; otherwise, for RollingUpdate, the change
/// is spread over the active ReplicaSets in proportion to their size (leftovers to the largest).
/// `status_replicas` is the Deployment's status.replicas. Returns (name, size) to apply; an
/// unchanged size in the list still refreshes the replica annotations.
pub fn scale(
    b: &Budget,
    status_replicas: i32,
    new: Option<&Rs>,
    olds: &[Rs],
) -> Vec<(String, i32)> {
    // FindActiveOrLatest
    let mut olds_newest: Vec<&Rs> = olds.iter().collect();
    olds_newest.sort_by(|a, c| (c.created, &c.name).cmp(&(a.created, &a.name)));
    let active: Vec<&Rs> = olds_newest
        .iter()
        .copied()
        .chain(new)
        .filter(|r| r.spec > 0)
        .collect();
    let only = match active.len() {
        0 => new.or(olds_newest.first().copied()),
        1 => Some(active[0]),
        _ => None,
    };
    if let Some(r) = only {
        return vec![(r.name.clone(), b.replicas)];
    }
    // IsSaturated
    if new.is_some_and(|n| {
        n.spec == b.replicas && n.desired_ann == Some(b.replicas) && n.available == b.replicas
    }) {
        return olds
            .iter()
            .filter(|r| r.spec > 0)
            .map(|r| (r.name.clone(), 0))
            .collect();
    }
    if !b.rolling {
        return Vec::new();
    }
    let mut all: Vec<&Rs> = olds.iter().chain(new).filter(|r| r.spec > 0).collect();
    let current: i32 = all.iter().map(|r| r.spec).sum();
    let allowed = if b.replicas > 0 { b.max_total() } else { 0 };
    let to_add = allowed - current;
    if to_add > 0 {
        // larger first, newer first among equals
        all.sort_by(|a, c| {
            c.spec
                .cmp(&a.spec)
                .then((c.created, &c.name).cmp(&(a.created, &a.name)))
        });
    } else if to_add < 0 {
        // larger first, older first among equals
        all.sort_by(|a, c| {
            c.spec
                .cmp(&a.spec)
                .then((a.created, &a.name).cmp(&(c.created, &c.name)))
        });
    }
    let mut added = 0;
    let mut sizes: Vec<i32> = Vec::with_capacity(all.len());
    for r in &all {
        let p = proportion(b, status_replicas, r, to_add, added);
        sizes.push(r.spec + p);
        added += p;
    }
    if to_add != 0 && !sizes.is_empty() {
        sizes[0] = (sizes[0] + to_add - added).max(0);
    }
    all.iter().map(|r| r.name.clone()).zip(sizes).collect()
}

/// kube's cleanupDeployment: the old ReplicaSets beyond `limit` to delete, lowest revision
/// first, skipping any that still has replicas (spec or status) or an unobserved spec.
pub fn cleanup(olds: &[Rs], limit: i32) -> Vec<String> {
    let mut alive: Vec<&Rs> = olds.iter().filter(|r| !r.deleting).collect();
    let diff = alive.len() as i64 - limit.max(0) as i64;
    if diff <= 0 {
        return Vec::new();
    }
    alive.sort_by(|a, c| (a.revision, a.created, &a.name).cmp(&(c.revision, c.created, &c.name)));
    alive
        .into_iter()
        .take(diff as usize)
        .filter(|r| r.replicas == 0 && r.spec == 0 && r.generation <= r.observed_generation)
        .map(|r| r.name.clone())
        .collect()
}

/// kube's SetNewReplicaSetAnnotations: copies the Deployment's annotations (but kube's own and
/// kubectl's last-applied) onto the ReplicaSet, raises its revision to `new_revision` when
/// lower (a ReplicaSet brought back by a rollback keeps its former revisions in
/// revision-history), and for a ReplicaSet about to be created, the replica annotations.
/// Returns whether anything changed.
pub fn new_rs_annotations(
    d_annotations: &BTreeMap<String, String>,
    rs_annotations: &mut BTreeMap<String, String>,
    new_revision: i64,
    exists: bool,
    b: &Budget,
) -> bool {
    let mut changed = false;
    for (k, v) in d_annotations {
        if SKIP_COPY.contains(&k.as_str()) || rs_annotations.get(k) == Some(v) {
            continue;
        }
        rs_annotations.insert(k.clone(), v.clone());
        changed = true;
    }
    let old = rs_annotations.get(REVISION).cloned();
    let old_rev = match old.as_deref().map(str::parse::<i64>) {
        None => 0,
        Some(Ok(r)) => r,
        Some(Err(_)) => return changed,
    };
    if old_rev < new_revision {
        rs_annotations.insert(REVISION.into(), new_revision.to_string());
        changed = true;
        if let Some(old) = old {
            let history = rs_annotations
                .get(REVISION_HISTORY)
                .cloned()
                .unwrap_or_default();
            if history.is_empty() {
                rs_annotations.insert(REVISION_HISTORY.into(), old);
            } else {
                let mut revs: Vec<&str> = history.split(',').collect();
                let mut total = history.len() + old.len() + 1;
                let mut start = 0;
                while total > REVISION_HISTORY_CHARS && start < revs.len() {
                    total -= revs[start].len() + 1;
                    start += 1;
                }
                if total <= REVISION_HISTORY_CHARS {
                    revs = revs.split_off(start);
                    revs.push(&old);
                    rs_annotations.insert(REVISION_HISTORY.into(), revs.join(","));
                }
            }
        }
    }
    if !exists {
        changed |= replica_annotations(rs_annotations, b);
    }
    changed
}

/// kube's SetReplicasAnnotations: desired-replicas and max-replicas (replicas + maxSurge).
pub fn replica_annotations(ann: &mut BTreeMap<String, String>, b: &Budget) -> bool {
    let want = [
        (DESIRED_REPLICAS, b.replicas.to_string()),
        (MAX_REPLICAS, b.max_total().to_string()),
    ];
    let mut changed = false;
    for (k, v) in want {
        if ann.get(k) != Some(&v) {
            ann.insert(k.into(), v);
            changed = true;
        }
    }
    changed
}

/// The replica counts of a Deployment's status (kube's calculateStatus).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Counts {
    pub replicas: i32,
    pub updated: i32,
    pub ready: i32,
    pub available: i32,
    pub unavailable: i32,
}

pub fn counts(all: &[&Rs], new: Option<&Rs>) -> Counts {
    let available: i32 = all.iter().map(|r| r.available).sum();
    let total_spec: i32 = all.iter().map(|r| r.spec).sum();
    Counts {
        replicas: all.iter().map(|r| r.replicas).sum(),
        updated: new.map_or(0, |n| n.replicas),
        ready: all.iter().map(|r| r.ready).sum(),
        available,
        unavailable: (total_spec - available).max(0),
    }
}

/// kube's DeploymentComplete (`observed`: the statuses read are of the current specs).
pub fn complete(replicas: i32, c: &Counts, observed: bool) -> bool {
    c.updated == replicas && c.replicas == replicas && c.available == replicas && observed
}

/// kube's DeploymentProgressing: more updated, ready or available replicas, or fewer old ones.
pub fn progressed(old: &Counts, new: &Counts) -> bool {
    new.updated > old.updated
        || (new.replicas - new.updated) < (old.replicas - old.updated)
        || new.ready > old.ready
        || new.available > old.available
}

pub fn condition<'a>(
    conds: &'a [DeploymentCondition],
    type_: &str,
) -> Option<&'a DeploymentCondition> {
    conds.iter().find(|c| c.type_ == type_)
}

fn new_condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    now: Timestamp,
) -> DeploymentCondition {
    DeploymentCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_transition_time: Some(Time(now)),
        last_update_time: Some(Time(now)),
    }
}

/// kube's SetDeploymentCondition: unchanged when status and reason are the same; the
/// transition time kept when only the reason changes.
pub fn set_condition(conds: &mut Vec<DeploymentCondition>, mut c: DeploymentCondition) {
    if let Some(cur) = condition(conds, &c.type_) {
        if cur.status == c.status && cur.reason == c.reason {
            return;
        }
        if cur.status == c.status {
            c.last_transition_time = cur.last_transition_time.clone();
        }
    }
    conds.retain(|x| x.type_ != c.type_);
    conds.push(c);
}

/// kube's checkPausedConditions: Progressing Unknown with DeploymentPaused while paused, and
/// DeploymentResumed when resumed (not over a timed-out rollout).
pub fn paused_condition(conds: &mut Vec<DeploymentCondition>, paused: bool, now: Timestamp) {
    let reason = condition(conds, PROGRESSING).and_then(|c| c.reason.clone());
    if reason.as_deref() == Some(TIMED_OUT) {
        return;
    }
    let paused_now = reason.as_deref() == Some(PAUSED);
    if paused && !paused_now {
        set_condition(
            conds,
            new_condition(
                PROGRESSING,
                "Unknown",
                PAUSED,
                "Deployment is paused".into(),
                now,
            ),
        );
    } else if !paused && paused_now {
        set_condition(
            conds,
            new_condition(
                PROGRESSING,
                "Unknown",
                RESUMED,
                "Deployment is resumed".into(),
                now,
            ),
        );
    }
}

/// Progressing True with `reason` (NewReplicaSetCreated / FoundNewReplicaSet), as
/// getNewReplicaSet records when it creates or first finds the new ReplicaSet.
pub fn new_rs_condition(
    conds: &mut Vec<DeploymentCondition>,
    reason: &str,
    message: String,
    now: Timestamp,
) {
    set_condition(
        conds,
        new_condition(PROGRESSING, "True", reason, message, now),
    );
}

/// kube's calculateStatus condition: Available when at least replicas - maxUnavailable are.
pub fn available_condition(
    conds: &mut Vec<DeploymentCondition>,
    b: &Budget,
    c: &Counts,
    now: Timestamp,
) {
    let c = if c.available >= b.min_available() {
        new_condition(
            AVAILABLE,
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.".into(),
            now,
        )
    } else {
        new_condition(
            AVAILABLE,
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.".into(),
            now,
        )
    };
    set_condition(conds, c);
}

/// kube's DeploymentTimedOut over the conditions being written.
pub fn timed_out(conds: &[DeploymentCondition], deadline: i32, now: Timestamp) -> bool {
    let Some(c) = condition(conds, PROGRESSING) else {
        return false;
    };
    match c.reason.as_deref() {
        Some(NEW_RS_AVAILABLE) => false,
        Some(TIMED_OUT) => true,
        _ => c
            .last_update_time
            .as_ref()
            .is_some_and(|t| t.0 + SignedDuration::from_secs(deadline as i64) < now),
    }
}

/// kube's syncRolloutStatus conditions: with a progress deadline and a rollout not yet
/// recorded complete, Progressing turns NewReplicaSetAvailable when complete, is refreshed as
/// ReplicaSetUpdated on any progress (the deadline counts from its lastUpdateTime), and turns
/// False/ProgressDeadlineExceeded when none came within the deadline. Without a deadline there
/// is no Progressing condition.
#[allow(
    clippy::too_many_arguments,
    reason = "the inputs of kube's syncRolloutStatus"
)]
pub fn rollout_conditions(
    conds: &mut Vec<DeploymentCondition>,
    deadline: Option<i32>,
    old: &Counts,
    new: &Counts,
    is_complete_now: bool,
    new_rs: Option<&str>,
    deployment: &str,
    now: Timestamp,
) {
    let Some(deadline) = deadline else {
        conds.retain(|c| c.type_ != PROGRESSING);
        return;
    };
    let current = condition(conds, PROGRESSING).cloned();
    let recorded_complete = new.replicas == new.updated
        && current.as_ref().and_then(|c| c.reason.as_deref()) == Some(NEW_RS_AVAILABLE);
    if recorded_complete {
        return;
    }
    let what = match new_rs {
        Some(n) => format!("ReplicaSet \"{n}\""),
        None => format!("Deployment \"{deployment}\""),
    };
    if is_complete_now {
        set_condition(
            conds,
            new_condition(
                PROGRESSING,
                "True",
                NEW_RS_AVAILABLE,
                format!("{what} has successfully progressed."),
                now,
            ),
        );
    } else if progressed(old, new) {
        let mut c = new_condition(
            PROGRESSING,
            "True",
            RS_UPDATED,
            format!("{what} is progressing."),
            now,
        );
        if let Some(cur) = &current {
            if cur.status == "True" {
                c.last_transition_time = cur.last_transition_time.clone();
            }
            conds.retain(|x| x.type_ != PROGRESSING);
        }
        set_condition(conds, c);
    } else if timed_out(conds, deadline, now) {
        set_condition(
            conds,
            new_condition(
                PROGRESSING,
                "False",
                TIMED_OUT,
                format!("{what} has timed out progressing."),
                now,
            ),
        );
    }
}

/// kube's requeueStuckDeployment: when to look again so a stuck rollout times out on time
/// (None: complete, timed out, or nothing to measure from).
pub fn recheck_in(
    conds: &[DeploymentCondition],
    deadline: Option<i32>,
    is_complete_now: bool,
    now: Timestamp,
) -> Option<std::time::Duration> {
    let deadline = deadline?;
    let c = condition(conds, PROGRESSING)?;
    if is_complete_now || c.reason.as_deref() == Some(TIMED_OUT) {
        return None;
    }
    let from = c.last_update_time.as_ref()?.0;
    let at = from + SignedDuration::from_secs(deadline as i64 + 1);
    let left = now.duration_until(at);
    Some(
        std::time::Duration::try_from(left)
            .unwrap_or_default()
            .max(std::time::Duration::from_millis(500)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rs(name: &str, spec: i32, available: i32, created: i64) -> Rs {
        Rs {
            name: name.into(),
            spec,
            replicas: spec,
            ready: available,
            available,
            created,
            revision: created,
            ..Default::default()
        }
    }

    #[test]
    fn budget_resolves_fenceposts() {
        // (replicas, rolling, surge, unavailable) -> (surge, unavailable)
        let cases = [
            ((10, true, 3, 2), (3, 2)),
            ((10, true, 0, 0), (0, 1)),
            ((3, true, 1, 5), (1, 3)),
            ((0, true, 1, 1), (1, 0)),
            ((4, false, 1, 1), (0, 0)),
        ];
        for ((r, rolling, s, u), want) in cases {
            let b = Budget::new(r, rolling, s, u);
            assert_eq!((b.surge, b.unavailable), want, "{r} {rolling} {s} {u}");
        }
    }

    #[test]
    fn new_replica_set_grows_within_surge() {
        let b = Budget::new(10, true, 3, 2);
        // (all spec, new spec) -> next new size
        let cases = [
            ((10, 0), Some(3)),   // 13 - 10
            ((13, 3), None),      // at max total
            ((11, 5), Some(7)),   // 2 more fit
            ((8, 8), Some(10)),   // capped by replicas - new
            ((12, 12), Some(10)), // too big: down to replicas
            ((10, 10), None),
        ];
        for ((all, new), want) in cases {
            assert_eq!(reconcile_new(&b, all, new), want, "all {all} new {new}");
        }
        assert_eq!(new_rs_replicas(&Budget::new(4, false, 0, 0), 4, 0), 4);
    }

    #[test]
    fn old_replica_sets_shrink_unhealthy_first_then_to_min_available() {
        let b = Budget::new(4, true, 1, 1);
        // new RS at 1 (0 available), old 4 all available: may remove 5-3-1 = 1 → old to 3.
        let new = rs("new", 1, 0, 2);
        assert_eq!(reconcile_olds(&b, &[rs("old", 4, 4, 1)], &new), vec![3]);
        // new available 1: available 5 - min 3 → 2 down.
        let new = rs("new", 1, 1, 2);
        assert_eq!(reconcile_olds(&b, &[rs("old", 4, 4, 1)], &new), vec![2]);
        // an old RS with unavailable pods loses those first, even below min available.
        let new = rs("new", 2, 0, 3);
        let olds = [rs("a", 2, 0, 1), rs("b", 2, 2, 2)];
        // max down = 6 - 3 - 2 = 1 (unhealthy of a), available 2 <= 3: nothing more.
        assert_eq!(reconcile_olds(&b, &olds, &new), vec![1, 2]);
        // nothing to scale down when all olds are at 0.
        assert_eq!(reconcile_olds(&b, &[rs("a", 0, 0, 1)], &new), vec![0]);
        // oldest ReplicaSet first.
        let new = rs("new", 4, 4, 9);
        let olds = [rs("young", 1, 1, 5), rs("old", 1, 1, 1)];
        assert_eq!(reconcile_olds(&b, &olds, &new), vec![0, 0]);
        let new = rs("new", 3, 2, 9);
        assert_eq!(reconcile_olds(&b, &olds, &new), vec![1, 0]);
    }

    #[test]
    fn scaling_events_and_proportional_scaling() {
        let mut a = rs("a", 3, 3, 1);
        a.desired_ann = Some(3);
        assert!(is_scaling_event(&Budget::new(5, true, 1, 1), &[&a]));
        assert!(!is_scaling_event(&Budget::new(3, true, 1, 1), &[&a]));

        // One active ReplicaSet takes all replicas.
        let b = Budget::new(5, true, 1, 1);
        let new = rs("new", 0, 0, 2);
        assert_eq!(
            scale(&b, 3, Some(&new), &[a.clone()]),
            vec![("a".into(), 5)]
        );
        // None active: the new one.
        let old0 = rs("a", 0, 0, 1);
        assert_eq!(
            scale(&b, 0, Some(&new), std::slice::from_ref(&old0)),
            vec![("new".into(), 5)]
        );
        // None active and no new one (paused with a changed template): the newest old.
        let old1 = rs("b", 0, 0, 3);
        assert_eq!(scale(&b, 0, None, &[old0, old1]), vec![("b".into(), 5)]);

        // Mid-rollout 10 → 20 (surge 3): 6 old + 7 new sized for max 13, now max 23.
        let b20 = Budget::new(20, true, 3, 2);
        let mut old = rs("old", 6, 6, 1);
        old.max_ann = Some(13);
        let mut new = rs("new", 7, 7, 2);
        new.max_ann = Some(13);
        let mut got = scale(&b20, 13, Some(&new), &[old.clone()]);
        got.sort();
        // old: round(6*23/13)=11 (+5), new: round(7*23/13)=12 (+5): 23 in all.
        assert_eq!(got, vec![("new".into(), 12), ("old".into(), 11)]);
        // and back down 20 → 10: everything sized for 23 returns to 13.
        let b10 = Budget::new(10, true, 3, 2);
        let (mut old, mut new) = (rs("old", 11, 11, 1), rs("new", 12, 12, 2));
        old.max_ann = Some(23);
        new.max_ann = Some(23);
        let mut got = scale(&b10, 23, Some(&new), &[old]);
        got.sort();
        assert_eq!(got, vec![("new".into(), 7), ("old".into(), 6)]);

        // A saturated new ReplicaSet: the old ones go to 0.
        let mut new = rs("new", 5, 5, 2);
        new.desired_ann = Some(5);
        assert_eq!(
            scale(&b, 5, Some(&new), &[rs("a", 1, 1, 1)]),
            vec![("a".into(), 0)]
        );
        // Recreate with two active: nothing proportional.
        assert!(scale(
            &Budget::new(5, false, 0, 0),
            5,
            Some(&rs("n", 2, 0, 2)),
            &[rs("a", 1, 1, 1)]
        )
        .is_empty());
        // Scale to 0: every active ReplicaSet to 0.
        let mut got = scale(
            &Budget::new(0, true, 1, 1),
            4,
            Some(&rs("n", 2, 2, 2)),
            &[rs("a", 2, 2, 1)],
        );
        got.sort();
        assert_eq!(got, vec![("a".into(), 0), ("n".into(), 0)]);
    }

    #[test]
    fn cleanup_deletes_lowest_revisions_beyond_the_limit() {
        let mut olds: Vec<Rs> = (1..=4).map(|i| rs(&format!("r{i}"), 0, 0, i)).collect();
        assert_eq!(cleanup(&olds, 1), vec!["r1", "r2", "r3"]);
        assert_eq!(cleanup(&olds, 4), Vec::<String>::new());
        assert_eq!(cleanup(&olds, 0).len(), 4);
        // one still has pods, one has an unobserved spec: both kept, not replaced by others.
        olds[0].replicas = 1;
        olds[1].generation = 2;
        olds[1].observed_generation = 1;
        assert_eq!(cleanup(&olds, 1), vec!["r3"]);
        // one being deleted does not count.
        olds[3].deleting = true;
        assert_eq!(cleanup(&olds, 1), Vec::<String>::new());
        // revision order, not creation order.
        let mut a = rs("a", 0, 0, 1);
        a.revision = 5;
        let b = rs("b", 0, 0, 2);
        assert_eq!(cleanup(&[a, b], 1), vec!["b"]);
    }

    #[test]
    fn revision_annotations_follow_kube() {
        let b = Budget::new(3, true, 1, 0);
        let d: BTreeMap<String, String> = [
            ("kubernetes.io/change-cause", "v2"),
            (REVISION, "7"),
            ("kubectl.kubernetes.io/last-applied-configuration", "{}"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        // A ReplicaSet about to be created.
        let mut ann = BTreeMap::new();
        assert!(new_rs_annotations(&d, &mut ann, 3, false, &b));
        assert_eq!(ann.get(REVISION).map(String::as_str), Some("3"));
        assert_eq!(
            ann.get("kubernetes.io/change-cause").map(String::as_str),
            Some("v2")
        );
        assert_eq!(ann.get(DESIRED_REPLICAS).map(String::as_str), Some("3"));
        assert_eq!(ann.get(MAX_REPLICAS).map(String::as_str), Some("4"));
        assert!(!ann.contains_key("kubectl.kubernetes.io/last-applied-configuration"));
        assert!(!ann.contains_key(REVISION_HISTORY));
        // Unchanged on the next pass.
        assert!(!new_rs_annotations(&d, &mut ann, 3, true, &b));
        // Rolled back to: a higher revision, the old one kept in history.
        assert!(new_rs_annotations(&d, &mut ann, 5, true, &b));
        assert_eq!(ann.get(REVISION).map(String::as_str), Some("5"));
        assert_eq!(ann.get(REVISION_HISTORY).map(String::as_str), Some("3"));
        assert!(new_rs_annotations(&d, &mut ann, 8, true, &b));
        assert_eq!(ann.get(REVISION_HISTORY).map(String::as_str), Some("3,5"));
        // Never lowered.
        assert!(!new_rs_annotations(&d, &mut ann, 6, true, &b));
        assert_eq!(ann.get(REVISION).map(String::as_str), Some("8"));
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).unwrap()
    }

    fn progressing(conds: &[DeploymentCondition]) -> (String, String, i64, i64) {
        let c = condition(conds, PROGRESSING).unwrap();
        (
            c.status.clone(),
            c.reason.clone().unwrap(),
            c.last_transition_time.as_ref().unwrap().0.as_second() - 1_700_000_000,
            c.last_update_time.as_ref().unwrap().0.as_second() - 1_700_000_000,
        )
    }

    #[test]
    fn progress_deadline_conditions() {
        let c = |replicas, updated, ready, available| Counts {
            replicas,
            updated,
            ready,
            available,
            unavailable: 0,
        };
        let mut conds = Vec::new();
        new_rs_condition(&mut conds, NEW_RS_CREATED, "Created".into(), at(0));
        // Progress (a new replica) refreshes lastUpdateTime, keeps the transition time.
        rollout_conditions(
            &mut conds,
            Some(5),
            &c(0, 0, 0, 0),
            &c(2, 2, 0, 0),
            false,
            Some("rs"),
            "d",
            at(1),
        );
        assert_eq!(
            progressing(&conds),
            ("True".into(), RS_UPDATED.into(), 0, 1)
        );
        // No progress within the deadline: not yet at 6, timed out at 7.
        rollout_conditions(
            &mut conds,
            Some(5),
            &c(2, 2, 0, 0),
            &c(2, 2, 0, 0),
            false,
            Some("rs"),
            "d",
            at(6),
        );
        assert_eq!(progressing(&conds).1, RS_UPDATED);
        assert!(recheck_in(&conds, Some(5), false, at(6)).is_some());
        rollout_conditions(
            &mut conds,
            Some(5),
            &c(2, 2, 0, 0),
            &c(2, 2, 0, 0),
            false,
            Some("rs"),
            "d",
            at(7),
        );
        assert_eq!(
            progressing(&conds),
            ("False".into(), TIMED_OUT.into(), 7, 7)
        );
        assert_eq!(recheck_in(&conds, Some(5), false, at(8)), None);
        // Stays timed out without progress; progress later flips it back (a new transition).
        rollout_conditions(
            &mut conds,
            Some(5),
            &c(2, 2, 0, 0),
            &c(2, 2, 0, 0),
            false,
            Some("rs"),
            "d",
            at(9),
        );
        assert_eq!(progressing(&conds).1, TIMED_OUT);
        rollout_conditions(
            &mut conds,
            Some(5),
            &c(2, 2, 0, 0),
            &c(2, 2, 1, 1),
            false,
            Some("rs"),
            "d",
            at(10),
        );
        assert_eq!(
            progressing(&conds),
            ("True".into(), RS_UPDATED.into(), 10, 10)
        );
        // Complete.
        rollout_conditions(
            &mut conds,
            Some(5),
            &c(2, 2, 1, 1),
            &c(2, 2, 2, 2),
            true,
            Some("rs"),
            "d",
            at(11),
        );
        assert_eq!(
            progressing(&conds),
            ("True".into(), NEW_RS_AVAILABLE.into(), 10, 11)
        );
        // A recorded completion is not re-evaluated (and never times out).
        rollout_conditions(
            &mut conds,
            Some(5),
            &c(2, 2, 2, 2),
            &c(2, 2, 1, 1),
            false,
            Some("rs"),
            "d",
            at(100),
        );
        assert_eq!(progressing(&conds).1, NEW_RS_AVAILABLE);
        // Without a deadline there is no Progressing condition.
        rollout_conditions(
            &mut conds,
            None,
            &c(2, 2, 2, 2),
            &c(2, 2, 2, 2),
            true,
            Some("rs"),
            "d",
            at(101),
        );
        assert!(condition(&conds, PROGRESSING).is_none());
    }

    #[test]
    fn paused_and_resumed_conditions() {
        let mut conds = Vec::new();
        new_rs_condition(&mut conds, NEW_RS_AVAILABLE, "done".into(), at(0));
        paused_condition(&mut conds, true, at(1));
        assert_eq!(progressing(&conds), ("Unknown".into(), PAUSED.into(), 1, 1));
        paused_condition(&mut conds, true, at(2));
        assert_eq!(progressing(&conds).3, 1, "unchanged while paused");
        paused_condition(&mut conds, false, at(3));
        assert_eq!(
            progressing(&conds),
            ("Unknown".into(), RESUMED.into(), 1, 3)
        );
        // The deadline counts from the resume.
        assert!(!timed_out(&conds, 5, at(8)));
        assert!(timed_out(&conds, 5, at(9)));
        // A timed-out rollout gets no paused condition.
        let mut conds = Vec::new();
        set_condition(
            &mut conds,
            new_condition(PROGRESSING, "False", TIMED_OUT, "x".into(), at(0)),
        );
        paused_condition(&mut conds, true, at(1));
        assert_eq!(progressing(&conds).1, TIMED_OUT);
    }

    #[test]
    fn available_condition_and_counts() {
        let b = Budget::new(4, true, 1, 1);
        let (new, old) = (rs("n", 2, 1, 2), rs("o", 2, 2, 1));
        let c = counts(&[&old, &new], Some(&new));
        assert_eq!(
            c,
            Counts {
                replicas: 4,
                updated: 2,
                ready: 3,
                available: 3,
                unavailable: 1
            }
        );
        assert!(!complete(4, &c, true));
        let mut conds = Vec::new();
        available_condition(&mut conds, &b, &c, at(0));
        assert_eq!(condition(&conds, AVAILABLE).unwrap().status, "True");
        let c = counts(&[&rs("o", 4, 2, 1)], None);
        available_condition(&mut conds, &b, &c, at(1));
        assert_eq!(condition(&conds, AVAILABLE).unwrap().status, "False");
        assert!(complete(
            2,
            &counts(&[&rs("n", 2, 2, 1)], Some(&rs("n", 2, 2, 1))),
            true
        ));
    }
}
