//! The DaemonSet controller in-process against the API server, with Node objects written as a
//! node runtime writes them (Ready condition, heartbeat) and the test playing each node's part
//! for the pods (marking them Ready, finishing their deletion): one pod per eligible node,
//! bound there; a rolling update one node at a time; pods leaving NotReady and deleted nodes;
//! the garbage collector taking the pods with the DaemonSet; `kubectl get ds` and
//! `kubectl rollout status` on the status it writes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: panics are the report"
)]

mod common;

use std::{collections::BTreeMap, time::Duration};

use common::{kubectl::Kubectl, Backend, Cluster};
use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{Node, Pod},
};
use kube::{
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
    Api, ResourceExt,
};
use meshwork_orchestrator::controllers::ControllerConfig;
use serde_json::json;

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

fn ready_condition(ready: bool) -> serde_json::Value {
    json!({"type": "Ready", "status": if ready { "True" } else { "False" },
           "reason": if ready { "KubeletReady" } else { "KubeletNotReady" },
           "lastHeartbeatTime": now(), "lastTransitionTime": now()})
}

async fn add_node(nodes: &Api<Node>, name: &str, ready: bool) {
    let n: Node = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
        "status": {"conditions": [ready_condition(ready)]}
    }))
    .unwrap();
    nodes.create(&PostParams::default(), &n).await.unwrap();
}

async fn set_node_ready(nodes: &Api<Node>, name: &str, ready: bool) {
    nodes
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"conditions": [ready_condition(ready)]}})),
        )
        .await
        .unwrap();
}

/// The DaemonSet's pods: node → pods there (terminating ones included).
async fn pods_by_node(pods: &Api<Pod>) -> BTreeMap<String, Vec<Pod>> {
    let mut out: BTreeMap<String, Vec<Pod>> = BTreeMap::new();
    for p in pods
        .list(&ListParams::default().labels("app=agent"))
        .await
        .unwrap()
        .items
    {
        let node = p
            .spec
            .as_ref()
            .unwrap()
            .node_name
            .clone()
            .unwrap_or_default();
        out.entry(node).or_default().push(p);
    }
    out
}

fn live(ps: &[Pod]) -> Vec<&Pod> {
    ps.iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

fn hash_of(p: &Pod) -> String {
    p.labels()["controller-revision-hash"].clone()
}

/// What a node runtime does for its pods: running ones turn Ready, deleted ones go.
async fn play_nodes(pods: &Api<Pod>) {
    for ps in pods_by_node(pods).await.into_values() {
        for p in ps {
            if p.metadata.deletion_timestamp.is_some() {
                let dp = DeleteParams {
                    grace_period_seconds: Some(0),
                    ..Default::default()
                };
                let _ = pods.delete(&p.name_any(), &dp).await;
            } else if !meshwork_orchestrator::controllers::pod_ready(&p) {
                pods.patch_status(
                    &p.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {"phase": "Running", "conditions": [
                        {"type": "Ready", "status": "True", "lastTransitionTime": now()}]}})),
                )
                .await
                .unwrap();
            }
        }
    }
}

async fn kubectl(c: &Cluster, args: &[&str]) -> (bool, String, String) {
    let kubeconfig = c.running.admin_kubeconfig.clone();
    let home = c.dir.path().join("home");
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&home).unwrap();
        let k = Kubectl {
            kubeconfig: &kubeconfig,
            home: &home,
        };
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        k.run_in(&a, "")
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_pod_per_ready_node_rolled_and_collected() {
    let c = Cluster::start(Backend::Sqlite).await;
    let cfg = ControllerConfig {
        // Far past the test: every step must follow from watch events, not the safety net.
        resync: Duration::from_secs(600),
        // The test's nodes post no heartbeats: the node controller must not step in.
        node_monitor_grace: Duration::from_secs(3600),
        ..ControllerConfig::default()
    };
    let tasks = meshwork_orchestrator::controllers::start(c.client.clone(), cfg).await;
    let nodes: Api<Node> = Api::all(c.client.clone());
    let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
    let dss: Api<DaemonSet> = Api::namespaced(c.client.clone(), "default");
    add_node(&nodes, "n1", true).await;
    add_node(&nodes, "n2", true).await;
    add_node(&nodes, "n3", false).await;

    let ds: DaemonSet = serde_json::from_value(json!({
        "metadata": {"name": "agent"},
        "spec": {
            "selector": {"matchLabels": {"app": "agent"}},
            "template": {
                "metadata": {"labels": {"app": "agent"}},
                "spec": {"containers": [{"name": "agent", "image": "busybox"}]}
            }
        }
    }))
    .unwrap();
    let ds = dss.create(&PostParams::default(), &ds).await.unwrap();

    // One pod on each Ready node, bound by the controller, none on the NotReady one.
    assert_eventually!(
        {
            let by = pods_by_node(&pods).await;
            by.keys().cloned().collect::<Vec<_>>() == ["n1", "n2"]
                && by.values().all(|ps| ps.len() == 1)
        },
        "a pod on n1 and on n2 only"
    );
    let by = pods_by_node(&pods).await;
    let first = &by["n1"][0];
    assert!(first.name_any().starts_with("agent-") && first.name_any().len() == "agent-".len() + 5);
    let owner = &first.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (
            owner.kind.as_str(),
            owner.uid.as_str(),
            owner.controller,
            owner.block_owner_deletion
        ),
        (
            "DaemonSet",
            ds.uid().unwrap().as_str(),
            Some(true),
            Some(true)
        )
    );
    assert_eq!(first.labels()["pod-template-generation"], "1");
    let hash1 = hash_of(first);
    assert_eq!(hash_of(&by["n2"][0]), hash1);
    assert_eq!(
        first.spec.as_ref().unwrap().node_name.as_deref(),
        Some("n1")
    );
    // Not ready yet: desired 2, nothing available.
    assert_eventually!(
        {
            let st = dss.get("agent").await.unwrap().status.unwrap_or_default();
            (
                st.desired_number_scheduled,
                st.current_number_scheduled,
                st.number_ready,
                st.number_unavailable,
                st.observed_generation,
            ) == (2, 2, 0, Some(2), Some(1))
        },
        "status counts the unready pods"
    );

    // The nodes start the pods: the rollout is complete for kubectl.
    play_nodes(&pods).await;
    let (ok, out, err) = kubectl(
        &c,
        &["rollout", "status", "daemonset/agent", "--timeout=20s"],
    )
    .await;
    assert!(
        ok && out.contains(r#"daemon set "agent" successfully rolled out"#),
        "{out}\n{err}"
    );
    let (ok, out, err) = kubectl(&c, &["get", "ds"]).await;
    assert!(ok, "{err}");
    let lines: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines[0],
        [
            "NAME",
            "DESIRED",
            "CURRENT",
            "READY",
            "UP-TO-DATE",
            "AVAILABLE",
            "NODE",
            "SELECTOR",
            "AGE"
        ],
        "{out}"
    );
    assert_eq!(
        lines[1][..7],
        ["agent", "2", "2", "2", "2", "2", "<none>"],
        "{out}"
    );

    // n3 turns Ready: it gets its pod.
    set_node_ready(&nodes, "n3", true).await;
    assert_eventually!(
        pods_by_node(&pods)
            .await
            .get("n3")
            .is_some_and(|ps| ps.len() == 1),
        "a pod on n3 once it is Ready"
    );
    play_nodes(&pods).await;
    assert_eventually!(
        dss.get("agent")
            .await
            .unwrap()
            .status
            .unwrap_or_default()
            .number_available
            == Some(3),
        "three available"
    );

    // A new template rolls one node at a time (maxUnavailable 1): one old pod goes, its
    // replacement starts beside it, and the next waits until that one is Ready.
    let patched = dss
        .patch(
            "agent",
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"template": {"spec": {
                "containers": [{"name": "agent", "image": "nginx"}]}}}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.metadata.generation, Some(2));
    let mut replaced = Vec::new();
    for step in 0..3 {
        assert_eventually!(
            {
                let by = pods_by_node(&pods).await;
                let going: Vec<_> = by
                    .iter()
                    .filter(|(_, ps)| ps.iter().any(|p| p.metadata.deletion_timestamp.is_some()))
                    .map(|(n, _)| n.clone())
                    .collect();
                going.len() == 1
                    && by[&going[0]]
                        .iter()
                        .any(|p| p.metadata.deletion_timestamp.is_none() && hash_of(p) != hash1)
            },
            format!("step {step}: one old pod terminating, its replacement created")
        );
        let by = pods_by_node(&pods).await;
        let old_left = by
            .values()
            .flat_map(|ps| live(ps))
            .filter(|p| hash_of(p) == hash1)
            .count();
        assert_eq!(
            old_left,
            2 - step,
            "step {step}: only one node at a time: {by:#?}"
        );
        for (n, ps) in &by {
            if ps.iter().any(|p| p.metadata.deletion_timestamp.is_some()) {
                replaced.push(n.clone());
            }
        }
        play_nodes(&pods).await;
    }
    replaced.sort();
    assert_eq!(replaced, ["n1", "n2", "n3"]);
    let (ok, out, err) = kubectl(
        &c,
        &["rollout", "status", "daemonset/agent", "--timeout=20s"],
    )
    .await;
    assert!(
        ok && out.contains("successfully rolled out"),
        "{out}\n{err}"
    );
    let by = pods_by_node(&pods).await;
    assert_eq!(by.len(), 3);
    for ps in by.values() {
        assert_eq!(ps.len(), 1, "{by:#?}");
        assert_eq!(ps[0].labels()["pod-template-generation"], "2");
        assert_eq!(
            ps[0].spec.as_ref().unwrap().containers[0].image.as_deref(),
            Some("nginx")
        );
    }
    let st = dss.get("agent").await.unwrap().status.unwrap();
    assert_eq!(
        (
            st.desired_number_scheduled,
            st.updated_number_scheduled,
            st.number_available,
            st.observed_generation
        ),
        (3, Some(3), Some(3), Some(2))
    );

    // n2 turns NotReady and n1 goes away: their pods are deleted.
    set_node_ready(&nodes, "n2", false).await;
    nodes.delete("n1", &DeleteParams::default()).await.unwrap();
    assert_eventually!(
        {
            let by = pods_by_node(&pods).await;
            ["n1", "n2"]
                .iter()
                .all(|n| by.get(*n).is_none_or(|ps| live(ps).is_empty()))
                && by.get("n3").is_some_and(|ps| live(ps).len() == 1)
        },
        "the pods on n1 and n2 terminating, n3's kept"
    );
    play_nodes(&pods).await;
    assert_eventually!(
        {
            let st = dss.get("agent").await.unwrap().status.unwrap_or_default();
            (
                st.desired_number_scheduled,
                st.current_number_scheduled,
                st.number_misscheduled,
            ) == (1, 1, 0)
        },
        "status follows the nodes"
    );

    // kubectl rollout restart: a template annotation, so a rollout of its own.
    let (ok, out, err) = kubectl(&c, &["rollout", "restart", "daemonset/agent"]).await;
    assert!(ok && out.contains("restarted"), "{out}\n{err}");
    assert_eventually!(
        {
            let by = pods_by_node(&pods).await;
            by.get("n3").is_some_and(|ps| {
                live(ps)
                    .iter()
                    .any(|p| p.labels()["pod-template-generation"] == "3")
            })
        },
        "n3's pod replaced at generation 3"
    );
    play_nodes(&pods).await;
    let (ok, out, err) = kubectl(
        &c,
        &["rollout", "status", "daemonset/agent", "--timeout=20s"],
    )
    .await;
    assert!(
        ok && out.contains("successfully rolled out"),
        "{out}\n{err}"
    );

    // Deleting the DaemonSet deletes its pods (garbage collection by ownerReference).
    dss.delete("agent", &DeleteParams::default()).await.unwrap();
    assert_eventually!(
        pods_by_node(&pods)
            .await
            .values()
            .all(|ps| live(ps).is_empty()),
        "the pods go with the DaemonSet"
    );
    for t in tasks {
        t.abort();
    }
}
