//! `kubectl rollout` against the bundled orchestrator in the lab (the harness of
//! `orchestrator.rs`: the apiserver with its controllers on node 1, a node runtime on each of
//! two lab nodes, kubectl 1.33): `history` and `undo` (the old ReplicaSet comes back with a new
//! revision, the pods with the old template), `pause` (a template change rolls nothing, scaling
//! still works) and `resume`, `restart`, Recreate, `revisionHistoryLimit`,
//! `progressDeadlineSeconds` (Progressing False / ProgressDeadlineExceeded, `rollout status`
//! fails) and `minReadySeconds` (availableReplicas lags readyReplicas).
#![cfg(target_os = "linux")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic with its location is the failure report"
)]

#[path = "support/orch.rs"]
mod orch;

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use orch::{web, Orch};
use serde_json::{json, Value};

/// COLOUR of each running (not terminating) web pod.
fn colours(o: &Orch) -> Vec<String> {
    let v = o.json(&["get", "pods", "-l", "app=web"]);
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| {
            p["spec"]["containers"][0]["env"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["name"] == "COLOUR")
                .map_or(String::new(), |e| e["value"].as_str().unwrap().to_string())
        })
        .collect()
}

/// The web ReplicaSets: (name, spec.replicas, revision).
fn replica_sets(o: &Orch) -> Vec<(String, i64, i64)> {
    let v = o.json(&["get", "rs", "-l", "app=web"]);
    let mut out: Vec<(String, i64, i64)> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["metadata"]["name"].as_str().unwrap().to_string(),
                r["spec"]["replicas"].as_i64().unwrap(),
                r["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
                    .as_str()
                    .unwrap_or("0")
                    .parse()
                    .unwrap(),
            )
        })
        .collect();
    out.sort_by_key(|r| r.2);
    out
}

/// The revisions `kubectl rollout history` lists.
fn history(o: &Orch) -> Vec<i64> {
    o.kubectl(&["rollout", "history", "deployment/web"])
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

fn status(o: &Orch, name: &str) -> Value {
    o.json(&["get", "deployment", name])
}

fn progressing(d: &Value) -> (String, String) {
    let c = d["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Progressing")
        .cloned()
        .unwrap_or(Value::Null);
    (
        c["status"].as_str().unwrap_or("").to_string(),
        c["reason"].as_str().unwrap_or("").to_string(),
    )
}

fn rollout_status(o: &Orch) {
    o.kubectl(&["rollout", "status", "deployment/web", "--timeout=60s"]);
}

#[test]
fn kubectl_rollout_undo_pause_resume_restart_history_deadline_min_ready() {
    let started = Instant::now();
    let o = Orch::start("orch_rollout");

    // A Deployment whose pods never turn Ready, with a 5 s progress deadline: it times out
    // while the rest runs.
    o.apply(&json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "stuck", "namespace": "default"},
        "spec": {
            "replicas": 1, "progressDeadlineSeconds": 5,
            "selector": {"matchLabels": {"app": "stuck"}},
            "template": {"metadata": {"labels": {"app": "stuck"}}, "spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "c", "image": "busybox", "command": ["sleep", "3600"],
                    "readinessProbe": {"exec": {"command": ["false"]}, "periodSeconds": 1}}]}}
        }
    }));

    // minReadySeconds: available only once Ready for 5 s.
    o.apply(&json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "slow", "namespace": "default"},
        "spec": {
            "replicas": 1, "minReadySeconds": 5,
            "selector": {"matchLabels": {"app": "slow"}},
            "template": {"metadata": {"labels": {"app": "slow"}}, "spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "c", "image": "busybox", "command": ["sleep", "3600"]}]}}
        }
    }));
    let d = o.wait("the slow deployment's pod to be ready", || {
        let d = status(&o, "slow");
        (d["status"]["readyReplicas"].as_i64() == Some(1)).then_some(d)
    });
    let ready_at = Instant::now();
    assert_eq!(
        d["status"]["availableReplicas"].as_i64().unwrap_or(0),
        0,
        "available as soon as ready despite minReadySeconds 5: {d}"
    );
    o.wait("the slow deployment's pod to turn available", || {
        let d = status(&o, "slow");
        (d["status"]["availableReplicas"].as_i64() == Some(1)).then_some(())
    });
    let lag = ready_at.elapsed();
    assert!(
        lag >= Duration::from_secs(3) && lag <= Duration::from_secs(12),
        "availableReplicas caught up {lag:?} after readyReplicas (minReadySeconds 5)"
    );
    o.kubectl(&["rollout", "status", "deployment/slow", "--timeout=30s"]);

    // Recreate: the old pods go before the new ReplicaSet starts any.
    o.apply(&json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "rec", "namespace": "default"},
        "spec": {
            "replicas": 2, "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": {"app": "rec"}},
            "template": {"metadata": {"labels": {"app": "rec"}}, "spec": {
                "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "c", "image": "busybox", "command": ["sleep", "3600"]}]}}
        }
    }));
    o.kubectl(&["rollout", "status", "deployment/rec", "--timeout=60s"]);
    o.kubectl(&["set", "env", "deployment/rec", "V=2"]);
    o.kubectl(&["rollout", "status", "deployment/rec", "--timeout=60s"]);
    let rs = o.json(&["get", "rs", "-l", "app=rec"]);
    let sizes: BTreeSet<(i64, String)> = rs["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["spec"]["replicas"].as_i64().unwrap(),
                r["metadata"]["annotations"]["deployment.kubernetes.io/revision"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(
        sizes,
        [(0, "1".to_string()), (2, "2".to_string())].into(),
        "{rs}"
    );
    o.kubectl(&["delete", "deployment", "rec"]);

    // Revision 1 (red), revision 2 (blue).
    o.apply(&web(2, &[("COLOUR", "red")]));
    rollout_status(&o);
    assert_eq!(colours(&o), vec!["red", "red"]);
    o.kubectl(&["set", "env", "deployment/web", "COLOUR=blue"]);
    rollout_status(&o);
    assert_eq!(colours(&o), vec!["blue", "blue"]);
    let rss = replica_sets(&o);
    assert_eq!(
        rss.iter().map(|r| (r.1, r.2)).collect::<Vec<_>>(),
        vec![(0, 1), (2, 2)],
        "{rss:?}"
    );
    assert_eq!(history(&o), vec![1, 2]);
    let d = status(&o, "web");
    assert_eq!(
        d["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "2"
    );
    assert_eq!(
        progressing(&d),
        ("True".into(), "NewReplicaSetAvailable".into())
    );

    // undo: the template of revision 1 again; its ReplicaSet is reused as revision 3.
    let red_rs = rss[0].0.clone();
    o.kubectl(&["rollout", "undo", "deployment/web"]);
    rollout_status(&o);
    assert_eq!(colours(&o), vec!["red", "red"]);
    let rss = replica_sets(&o);
    assert_eq!(rss.len(), 2, "undo made a new ReplicaSet: {rss:?}");
    assert_eq!(
        (rss[1].0.as_str(), rss[1].1, rss[1].2),
        (red_rs.as_str(), 2, 3)
    );
    assert_eq!(history(&o), vec![2, 3]);
    let rs = o.json(&["get", "rs", &red_rs]);
    assert_eq!(
        rs["metadata"]["annotations"]["deployment.kubernetes.io/revision-history"],
        "1"
    );

    // pause: a template change rolls nothing out, scaling still works.
    o.kubectl(&["rollout", "pause", "deployment/web"]);
    o.kubectl(&["set", "env", "deployment/web", "COLOUR=green"]);
    o.kubectl(&["scale", "deployment/web", "--replicas=3"]);
    let d = o.wait("the paused deployment to be observed at 3 replicas", || {
        let d = status(&o, "web");
        (d["status"]["observedGeneration"] == d["metadata"]["generation"]
            && d["status"]["readyReplicas"].as_i64() == Some(3))
        .then_some(d)
    });
    assert_eq!(
        progressing(&d),
        ("Unknown".into(), "DeploymentPaused".into())
    );
    assert_eq!(replica_sets(&o).len(), 2, "a paused deployment rolled out");
    assert_eq!(colours(&o), vec!["red", "red", "red"]);

    // resume: the rollout finishes, green everywhere.
    o.kubectl(&["rollout", "resume", "deployment/web"]);
    rollout_status(&o);
    assert_eq!(colours(&o), vec!["green", "green", "green"]);
    let rss = replica_sets(&o);
    assert_eq!(rss.len(), 3, "{rss:?}");
    assert_eq!((rss[2].1, rss[2].2), (3, 4));

    // restart: new pods, same template otherwise.
    let before: BTreeSet<String> = o.web_pods().into_iter().map(|p| p.0).collect();
    o.kubectl(&["rollout", "restart", "deployment/web"]);
    rollout_status(&o);
    let after: BTreeSet<String> = o.web_pods().into_iter().map(|p| p.0).collect();
    assert_eq!(after.len(), 3);
    assert!(
        before.is_disjoint(&after),
        "restart kept pods: {before:?} {after:?}"
    );
    assert_eq!(colours(&o), vec!["green", "green", "green"]);
    assert_eq!(history(&o), vec![2, 3, 4, 5]);

    // revisionHistoryLimit 1: the oldest revisions go, one old ReplicaSet stays.
    o.kubectl(&[
        "patch",
        "deployment/web",
        "-p",
        r#"{"spec":{"revisionHistoryLimit":1}}"#,
    ]);
    let rss = o.wait("old ReplicaSets beyond the limit to go", || {
        let rss = replica_sets(&o);
        (rss.len() == 2).then_some(rss)
    });
    assert_eq!(
        rss.iter().map(|r| (r.1, r.2)).collect::<Vec<_>>(),
        vec![(0, 4), (3, 5)],
        "{rss:?}"
    );
    assert_eq!(history(&o), vec![4, 5]);
    // and undo still goes back one revision (to green, as revision 6).
    o.kubectl(&["rollout", "undo", "deployment/web"]);
    rollout_status(&o);
    assert_eq!(history(&o), vec![5, 6]);

    // The stuck deployment timed out long ago: Progressing False, and rollout status fails.
    o.wait(
        "the stuck deployment to exceed its progress deadline",
        || {
            let d = status(&o, "stuck");
            (progressing(&d) == ("False".into(), "ProgressDeadlineExceeded".into())).then_some(())
        },
    );
    let out = o.kubectl_out(&["rollout", "status", "deployment/stuck", "--timeout=30s"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("exceeded its progress deadline"),
        "rollout status of a timed-out deployment: {:?} {err}",
        out.status
    );
    eprintln!("rollout scenario took {:?}", started.elapsed());
}
