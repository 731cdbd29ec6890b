//! API conformance over HTTPS with kube-rs as the client, run on SQLite and on a real etcd
//! through one macro, so each case runs on both stores.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: panics are the report"
)]

mod common;

use std::{collections::BTreeMap, time::Duration};

use common::{Backend, Cluster};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::{
    apps::v1::{DaemonSet, Deployment},
    coordination::v1::Lease,
    core::v1::{ConfigMap, Event, Pod, Service},
};
use kube::{
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams},
    runtime::{reflector, watcher, WatchStreamExt},
    Api, ResourceExt,
};
use serde_json::{json, Value};

fn cm(name: &str, labels: &[(&str, &str)]) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>()},
        "data": {"k": "v"},
    }))
    .unwrap()
}

fn deployment(name: &str) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [
                    {"name": "a", "image": "busybox", "env": [{"name": "X", "value": "1"}],
                     "ports": [{"containerPort": 80}]},
                    {"name": "b", "image": "busybox"}
                ]}
            }
        }
    }))
    .unwrap()
}

fn daemonset(name: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "agent", "image": "busybox"}]}
            }
        }
    })
}

/// The causes of a 422, as (field, message).
fn causes(st: &Value) -> Vec<(String, String)> {
    st["details"]["causes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c["field"].as_str().unwrap_or("").to_string(),
                c["message"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn api_code(e: kube::Error) -> (u16, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason),
        other => panic!("expected an API Status error, got {other:?}"),
    }
}

async fn next_event<K>(
    s: &mut (impl futures::Stream<Item = kube::Result<WatchEvent<K>>> + Unpin),
) -> WatchEvent<K> {
    tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .expect("event within 10 s")
        .expect("stream open")
        .expect("event decodes")
}

fn rv<K: ResourceExt>(k: &K) -> i64 {
    k.resource_version().unwrap().parse().unwrap()
}

macro_rules! conformance {
    ($backend:ident, $b:expr) => {
        mod $backend {
            use super::*;

            #[tokio::test]
            async fn crud_conflicts_and_noop_updates() {
                let c = Cluster::start($b).await;
                let api: Api<ConfigMap> = Api::namespaced(c.client.clone(), "default");
                let created = api.create(&PostParams::default(), &cm("a", &[])).await.unwrap();
                assert!(created.uid().is_some());
                assert!(created.metadata.creation_timestamp.is_some());
                let (code, reason) = api_code(api.create(&PostParams::default(), &cm("a", &[])).await.unwrap_err());
                assert_eq!((code, reason.as_str()), (409, "AlreadyExists"));

                let got = api.get("a").await.unwrap();
                assert_eq!(got.resource_version(), created.resource_version());
                let mut changed = got.clone();
                changed.data = Some([("k".to_string(), "w".to_string())].into());
                let updated = api.replace("a", &PostParams::default(), &changed).await.unwrap();
                assert!(rv(&updated) > rv(&got));
                // Replacing with the old resourceVersion is a conflict, never a lost update.
                let (code, reason) = api_code(api.replace("a", &PostParams::default(), &changed).await.unwrap_err());
                assert_eq!((code, reason.as_str()), (409, "Conflict"));
                // A write that changes nothing keeps the resourceVersion (kubectl re-apply).
                let same = api.replace("a", &PostParams::default(), &updated).await.unwrap();
                assert_eq!(same.resource_version(), updated.resource_version());

                let deleted = api.delete("a", &DeleteParams::default()).await.unwrap();
                assert!(deleted.is_left(), "the deleted object is returned");
                let (code, reason) = api_code(api.get("a").await.unwrap_err());
                assert_eq!((code, reason.as_str()), (404, "NotFound"));
                // Objects in a namespace that does not exist are refused.
                let missing: Api<ConfigMap> = Api::namespaced(c.client.clone(), "nope");
                let (code, _) = api_code(missing.create(&PostParams::default(), &cm("a", &[])).await.unwrap_err());
                assert_eq!(code, 404);
            }

            #[tokio::test]
            async fn services_get_cluster_ips_and_node_ports() {
                let c = Cluster::start($b).await;
                let api: Api<Service> = Api::namespaced(c.client.clone(), "default");
                let svc = |name: &str, extra: Value| -> Service {
                    let mut v = json!({"metadata": {"name": name}, "spec": {"ports": [{"port": 80}]}});
                    if let (Some(spec), Some(extra)) = (v["spec"].as_object_mut(), extra.as_object()) {
                        spec.extend(extra.clone());
                    }
                    serde_json::from_value(v).unwrap()
                };
                let mut ips = std::collections::BTreeSet::new();
                for i in 0..20 {
                    let s = api.create(&PostParams::default(), &svc(&format!("s{i}"), json!({}))).await.unwrap();
                    let ip: std::net::Ipv4Addr = s.spec.as_ref().unwrap().cluster_ip.as_ref().unwrap().parse().unwrap();
                    let net: ipnet::Ipv4Net = "10.96.0.0/12".parse().unwrap();
                    assert!(net.contains(&ip), "{ip}");
                    assert_ne!(ip.to_string(), "10.96.0.10", "the DNS address is reserved");
                    assert!(ips.insert(ip), "{ip} handed out twice");
                    assert_eq!(s.spec.as_ref().unwrap().cluster_ips.as_ref().unwrap(), &vec![ip.to_string()]);
                }
                // The reserved DNS address goes to the Service asking for it, once.
                let dns = api.create(&PostParams::default(), &svc("kube-dns", json!({"clusterIP": "10.96.0.10"}))).await.unwrap();
                assert_eq!(dns.spec.unwrap().cluster_ip.as_deref(), Some("10.96.0.10"));
                let (code, _) = api_code(api.create(&PostParams::default(), &svc("again", json!({"clusterIP": "10.96.0.10"}))).await.unwrap_err());
                assert_eq!(code, 422);
                let (code, _) = api_code(api.create(&PostParams::default(), &svc("outside", json!({"clusterIP": "192.168.1.1"}))).await.unwrap_err());
                assert_eq!(code, 422);
                // Deleting frees the address for a new request.
                api.delete("kube-dns", &DeleteParams::default()).await.unwrap();
                api.create(&PostParams::default(), &svc("kube-dns2", json!({"clusterIP": "10.96.0.10"}))).await.unwrap();
                // Headless keeps None; an update that omits the clusterIP keeps it.
                let h = api.create(&PostParams::default(), &svc("headless", json!({"clusterIP": "None"}))).await.unwrap();
                assert_eq!(h.spec.unwrap().cluster_ip.as_deref(), Some("None"));
                let s0 = api.get("s0").await.unwrap();
                let mut again = s0.clone();
                again.spec.as_mut().unwrap().cluster_ip = None;
                again.spec.as_mut().unwrap().cluster_ips = None;
                let kept = api.replace("s0", &PostParams::default(), &again).await.unwrap();
                assert_eq!(kept.spec.unwrap().cluster_ip, s0.spec.unwrap().cluster_ip);
                // IPv6 and dual-stack from the IPv6 service range.
                let v6 = api.create(&PostParams::default(), &svc("v6", json!({"ipFamilies": ["IPv6"]}))).await.unwrap();
                let v6ip: std::net::Ipv6Addr = v6.spec.as_ref().unwrap().cluster_ip.as_ref().unwrap().parse().unwrap();
                assert!("fd00::/108".parse::<ipnet::Ipv6Net>().unwrap().contains(&v6ip), "{v6ip}");
                let ds = api.create(&PostParams::default(), &svc("ds", json!({"ipFamilyPolicy": "RequireDualStack"}))).await.unwrap();
                let ds = ds.spec.unwrap();
                assert_eq!(ds.cluster_ips.as_ref().unwrap().len(), 2, "{ds:?}");
                assert_eq!(ds.ip_families.unwrap(), vec!["IPv4".to_string(), "IPv6".to_string()]);
                // NodePorts: allocated in range, distinct, and a taken one is refused.
                let np1 = api.create(&PostParams::default(), &svc("np1", json!({"type": "NodePort"}))).await.unwrap();
                let p1 = np1.spec.unwrap().ports.unwrap()[0].node_port.unwrap();
                assert!((30000..=32767).contains(&p1), "{p1}");
                let np2 = api.create(&PostParams::default(), &svc("np2", json!({"type": "NodePort"}))).await.unwrap();
                assert_ne!(np2.spec.unwrap().ports.unwrap()[0].node_port.unwrap(), p1);
                let taken = svc("np3", json!({"type": "NodePort", "ports": [{"port": 80, "nodePort": p1}]}));
                let (code, _) = api_code(api.create(&PostParams::default(), &taken).await.unwrap_err());
                assert_eq!(code, 422);
            }

            #[tokio::test]
            async fn bound_pods_delete_gracefully_and_orphan_deletes_keep_dependents() {
                let c = Cluster::start($b).await;
                let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
                let pod: Pod = serde_json::from_value(json!({
                    "metadata": {"name": "p"},
                    "spec": {"terminationGracePeriodSeconds": 20, "containers": [{"name": "c", "image": "busybox"}]}
                })).unwrap();
                // Unbound: goes at once.
                pods.create(&PostParams::default(), &pod).await.unwrap();
                pods.delete("p", &DeleteParams::default()).await.unwrap();
                assert_eq!(api_code(pods.get("p").await.unwrap_err()).0, 404);
                // Bound through pods/binding; a second binding is a conflict.
                pods.create(&PostParams::default(), &pod).await.unwrap();
                let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "p"}, "target": {"kind": "Node", "name": "n1"}});
                let _: Value = pods.create_subresource("binding", "p", &PostParams::default(), &binding).await.unwrap();
                let bound = pods.get("p").await.unwrap();
                assert_eq!(bound.spec.as_ref().unwrap().node_name.as_deref(), Some("n1"));
                let e = pods.create_subresource::<_, Value>("binding", "p", &PostParams::default(), &binding).await.unwrap_err();
                assert_eq!(api_code(e).0, 409);
                // Bound: marked with its grace period, stays for the node to stop it.
                pods.delete("p", &DeleteParams::default()).await.unwrap();
                let marked = pods.get("p").await.unwrap();
                assert!(marked.metadata.deletion_timestamp.is_some());
                assert_eq!(marked.metadata.deletion_grace_period_seconds, Some(20));
                // Status writes during the grace period do not delete it.
                pods.patch_status("p", &PatchParams::default(), &Patch::Merge(json!({"status": {"phase": "Running"}}))).await.unwrap();
                assert!(pods.get("p").await.is_ok());
                // The node's final delete (grace 0) removes it.
                pods.delete("p", &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await.unwrap();
                assert_eq!(api_code(pods.get("p").await.unwrap_err()).0, 404);

                // Orphan: the owner gets the orphan finalizer (the garbage collector's cue).
                let deps: Api<Deployment> = Api::namespaced(c.client.clone(), "default");
                deps.create(&PostParams::default(), &deployment("o")).await.unwrap();
                deps.delete("o", &DeleteParams::orphan()).await.unwrap();
                let d = deps.get("o").await.unwrap();
                assert!(d.metadata.deletion_timestamp.is_some());
                assert_eq!(d.metadata.finalizers, Some(vec!["orphan".to_string()]));
                // A repeated delete of a terminating object is accepted and changes nothing.
                deps.delete("o", &DeleteParams::default()).await.unwrap();
                assert_eq!(deps.get("o").await.unwrap().metadata.finalizers, Some(vec!["orphan".to_string()]));
            }

            #[tokio::test]
            async fn patches_merge_json_and_strategic() {
                let c = Cluster::start($b).await;
                let api: Api<Deployment> = Api::namespaced(c.client.clone(), "default");
                let d = api.create(&PostParams::default(), &deployment("web")).await.unwrap();
                assert_eq!(d.metadata.generation, Some(1));
                let pp = PatchParams::default();

                // Merge patch of a label: metadata only, generation unchanged.
                let p = api.patch("web", &pp, &Patch::Merge(json!({"metadata": {"labels": {"tier": "front"}}}))).await.unwrap();
                assert_eq!(p.labels()["tier"], "front");
                assert_eq!(p.metadata.generation, Some(1));

                // Strategic merge: containers merge by name, env by name; container b stays.
                let smp = json!({"spec": {"template": {"spec": {
                    "$setElementOrder/containers": [{"name": "a"}, {"name": "b"}],
                    "containers": [{"name": "a", "env": [{"name": "Y", "value": "2"}],
                                    "$setElementOrder/env": [{"name": "X"}, {"name": "Y"}]}]}}}});
                let p = api.patch("web", &pp, &Patch::Strategic(smp)).await.unwrap();
                let spec = p.spec.unwrap().template.spec.unwrap();
                assert_eq!(spec.containers.len(), 2, "containers merged by name, not replaced");
                let env: Vec<_> = spec.containers[0].env.clone().unwrap().into_iter().map(|e| e.name).collect();
                assert_eq!(env, ["X", "Y"]);
                assert_eq!(p.metadata.generation, Some(2), "a spec change bumps generation");

                // JSON patch, and a merge patch that would replace the list wholesale.
                let jp: json_patch_ops::Ops = serde_json::from_value(json!([
                    {"op": "replace", "path": "/spec/replicas", "value": 4}])).unwrap();
                let p = api.patch("web", &pp, &Patch::Json::<()>(jp.0)).await.unwrap();
                assert_eq!(p.spec.as_ref().unwrap().replicas, Some(4));
                let p = api.patch("web", &pp, &Patch::Merge(json!({"spec": {"template": {"spec": {"containers": [{"name": "only", "image": "x"}]}}}}))).await.unwrap();
                assert_eq!(p.spec.unwrap().template.spec.unwrap().containers.len(), 1);

                // A patch pinned to an old resourceVersion is a conflict.
                let stale = json!({"metadata": {"resourceVersion": d.resource_version().unwrap()}, "spec": {"replicas": 1}});
                let (code, _) = api_code(api.patch("web", &pp, &Patch::Merge(stale)).await.unwrap_err());
                assert_eq!(code, 409);
                // A JSON patch test that fails is 422; a malformed patch 400.
                let (code, _, _) = c.raw("PATCH", "/apis/apps/v1/namespaces/default/deployments/web", "application/json-patch+json",
                    br#"[{"op":"test","path":"/spec/replicas","value":99}]"#.to_vec()).await;
                assert_eq!(code, 422);
                let (code, _, body) = c.raw("PATCH", "/apis/apps/v1/namespaces/default/deployments/web", "application/merge-patch+json", b"{nope".to_vec()).await;
                assert_eq!((code, body["kind"].as_str()), (400, Some("Status")));
                // Server-side apply is not implemented: a clean 415.
                let (code, _, body) = c.raw("PATCH", "/apis/apps/v1/namespaces/default/deployments/web", "application/apply-patch+yaml", b"{}".to_vec()).await;
                assert_eq!((code, body["reason"].as_str()), (415, Some("UnsupportedMediaType")));

                // Protobuf bodies: bad ones are a 400 naming the problem and create nothing.
                const PB: &str = "application/vnd.kubernetes.protobuf";
                let cms = "/api/v1/namespaces/default/configmaps";
                for (bad, says) in [
                    (&b"k8s\0\x0a\xff"[..], "runtime.Unknown"),
                    (&br#"{"kind":"ConfigMap"}"#[..], "envelope prefix"),
                    (&b""[..], "empty"),
                ] {
                    let (code, _, body) = c.raw("POST", cms, PB, bad.to_vec()).await;
                    let msg = body["message"].as_str().unwrap_or_default();
                    assert!(code == 400 && msg.contains(says), "{code} {body}");
                }
                let good = meshwork_kube_protobuf::encode_object(&json!({
                    "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "pb"}, "data": {"a": "1"}
                })).unwrap();
                let (code, _, body) = c.raw("POST", cms, PB, good).await;
                assert_eq!((code, &body["data"]["a"]), (201, &json!("1")), "{body}");
                let (_, _, list) = c.raw("GET", cms, "application/json", Vec::new()).await;
                let names: Vec<&str> = list["items"].as_array().unwrap().iter()
                    .map(|i| i["metadata"]["name"].as_str().unwrap()).collect();
                assert_eq!(names, ["pb"]);
            }

            #[tokio::test]
            async fn status_and_scale_subresources() {
                let c = Cluster::start($b).await;
                let api: Api<Deployment> = Api::namespaced(c.client.clone(), "default");
                api.create(&PostParams::default(), &deployment("web")).await.unwrap();
                let st = api.patch_status("web", &PatchParams::default(),
                    &Patch::Merge(json!({"status": {"replicas": 2, "readyReplicas": 1}, "spec": {"replicas": 9}}))).await.unwrap();
                assert_eq!(st.status.as_ref().unwrap().ready_replicas, Some(1));
                assert_eq!(st.spec.as_ref().unwrap().replicas, Some(2), "status writes ignore spec");
                let mut d = api.get("web").await.unwrap();
                d.status = None;
                let d = api.replace("web", &PostParams::default(), &d).await.unwrap();
                assert_eq!(d.status.unwrap().ready_replicas, Some(1), "main writes keep status");

                let scale = api.get_scale("web").await.unwrap();
                assert_eq!(scale.spec.unwrap().replicas, Some(2));
                assert_eq!(scale.status.unwrap().selector.as_deref(), Some("app=web"));
                api.patch_scale("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": 5}}))).await.unwrap();
                assert_eq!(api.get("web").await.unwrap().spec.unwrap().replicas, Some(5));
                let (code, _, _) = c.raw("PATCH", "/apis/apps/v1/namespaces/default/deployments/web/scale",
                    "application/merge-patch+json", br#"{"spec":{"replicas":-1}}"#.to_vec()).await;
                assert_eq!(code, 422);
            }

            #[tokio::test]
            async fn daemonsets_defaults_validation_status_and_tables() {
                let c = Cluster::start($b).await;
                let api: Api<DaemonSet> = Api::namespaced(c.client.clone(), "default");
                let ds = api.create(&PostParams::default(), &serde_json::from_value(daemonset("agent")).unwrap()).await.unwrap();
                // kube-apiserver's defaults.
                assert_eq!(ds.metadata.generation, Some(1));
                let spec = ds.spec.clone().unwrap();
                let strategy = spec.update_strategy.clone().unwrap();
                assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
                let ru = strategy.rolling_update.unwrap();
                use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
                assert_eq!((ru.max_unavailable, ru.max_surge), (Some(IntOrString::Int(1)), Some(IntOrString::Int(0))));
                assert_eq!(spec.revision_history_limit, Some(10));
                let pod = spec.template.spec.clone().unwrap();
                assert_eq!((pod.restart_policy.as_deref(), pod.dns_policy.as_deref()), (Some("Always"), Some("ClusterFirst")));
                assert_eq!(pod.termination_grace_period_seconds, Some(30));
                assert_eq!(pod.containers[0].image_pull_policy.as_deref(), Some("Always"));
                // OnDelete gets no rollingUpdate block.
                let mut on_delete = daemonset("od");
                on_delete["spec"]["updateStrategy"] = json!({"type": "OnDelete"});
                let od = api.create(&PostParams::default(), &serde_json::from_value(on_delete).unwrap()).await.unwrap();
                assert_eq!(od.spec.unwrap().update_strategy.unwrap().rolling_update, None);

                // Validation: 422 Invalid naming each field.
                let path = "/apis/apps/v1/namespaces/default/daemonsets";
                let invalid = |mut body: Value, edit: &dyn Fn(&mut Value)| { edit(&mut body); serde_json::to_vec(&body).unwrap() };
                let (code, _, st) = c.raw("POST", path, "application/json",
                    invalid(daemonset("bad"), &|b| b["spec"]["template"]["metadata"]["labels"] = json!({"app": "other"}))).await;
                assert_eq!((code, st["reason"].as_str()), (422, Some("Invalid")), "{st}");
                assert_eq!(causes(&st), [("spec.template.metadata.labels".to_string(),
                    r#"Invalid value: {"app": "other"}: `selector` does not match template `labels`"#.to_string())]);
                assert!(st["message"].as_str().unwrap().starts_with(r#"DaemonSet.apps "bad" is invalid: "#), "{st}");
                let (code, _, st) = c.raw("POST", path, "application/json",
                    invalid(daemonset("bad"), &|b| b["spec"]["template"]["spec"]["restartPolicy"] = json!("Never"))).await;
                assert_eq!(code, 422);
                assert_eq!(causes(&st), [("spec.template.spec.restartPolicy".to_string(),
                    r#"Unsupported value: "Never": supported values: "Always""#.to_string())]);
                let (code, _, st) = c.raw("POST", path, "application/json",
                    invalid(daemonset("bad"), &|b| b["spec"]["selector"] = json!({}))).await;
                assert_eq!(code, 422);
                assert!(causes(&st)[0].1.ends_with("empty selector is invalid for daemonset"), "{st}");
                let (code, _, st) = c.raw("POST", path, "application/json",
                    invalid(daemonset("bad"), &|b| b["spec"]["updateStrategy"] = json!({"rollingUpdate": {"maxUnavailable": 0}}))).await;
                assert_eq!(code, 422);
                assert_eq!(causes(&st), [("spec.updateStrategy.rollingUpdate.maxUnavailable".to_string(),
                    "Required value: cannot be 0 when maxSurge is 0".to_string())]);
                let (code, _, st) = c.raw("POST", path, "application/json",
                    invalid(daemonset("bad"), &|b| b["spec"]["updateStrategy"] = json!({"type": "Recreate"}))).await;
                assert_eq!(code, 422);
                assert_eq!(causes(&st)[0].0, "spec.updateStrategy");
                assert_eq!(api_code(api.get("bad").await.unwrap_err()).0, 404, "nothing invalid was stored");

                // Generation follows the spec only; the selector is immutable.
                let p = api.patch("agent", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"tier": "node"}}}))).await.unwrap();
                assert_eq!(p.metadata.generation, Some(1));
                let p = api.patch("agent", &PatchParams::default(), &Patch::Strategic(json!({"spec": {"template": {"spec": {
                    "containers": [{"name": "agent", "image": "nginx"}]}}}}))).await.unwrap();
                assert_eq!(p.metadata.generation, Some(2));
                let (code, _) = api_code(api.patch("agent", &PatchParams::default(), &Patch::Merge(json!({"spec": {"selector": {"matchLabels": {"app": "x"}}}}))).await.unwrap_err());
                assert_eq!(code, 422);

                // The status subresource: status writes ignore spec, main writes keep status.
                let st = api.patch_status("agent", &PatchParams::default(), &Patch::Merge(json!({
                    "status": {"desiredNumberScheduled": 3, "currentNumberScheduled": 2, "numberReady": 1,
                               "updatedNumberScheduled": 2, "numberAvailable": 1, "numberMisscheduled": 0},
                    "spec": {"minReadySeconds": 9}}))).await.unwrap();
                assert_eq!(st.status.as_ref().unwrap().number_ready, 1);
                assert_eq!(st.spec.as_ref().unwrap().min_ready_seconds, None, "status writes ignore spec");
                assert_eq!(st.metadata.generation, Some(2));
                let mut d = api.get("agent").await.unwrap();
                d.status = None;
                let d = api.replace("agent", &PostParams::default(), &d).await.unwrap();
                assert_eq!(d.status.unwrap().desired_number_scheduled, 3, "main writes keep status");
                // No scale subresource.
                let (code, _, _) = c.raw("GET", &format!("{path}/agent/scale"), "application/json", Vec::new()).await;
                assert_eq!(code, 404);

                // kubectl get's columns, from the server.
                api.patch("od", &PatchParams::default(), &Patch::Merge(json!({"spec": {"template": {"spec": {"nodeSelector": {"disk": "ssd", "zone": "a"}}}}}))).await.unwrap();
                let req = http::Request::get(path)
                    .header("accept", "application/json;as=Table;v=v1;g=meta.k8s.io,application/json")
                    .body(Vec::new()).unwrap();
                let t: Value = c.client.request(req).await.unwrap();
                let cols: Vec<(&str, i64)> = t["columnDefinitions"].as_array().unwrap().iter()
                    .map(|c| (c["name"].as_str().unwrap(), c["priority"].as_i64().unwrap())).collect();
                assert_eq!(cols, [("Name", 0), ("Desired", 0), ("Current", 0), ("Ready", 0), ("Up-to-date", 0), ("Available", 0),
                    ("Node Selector", 0), ("Age", 0), ("Containers", 1), ("Images", 1), ("Selector", 1)]);
                let rows = t["rows"].as_array().unwrap();
                let cells = |name: &str| rows.iter().find(|r| r["cells"][0] == name).unwrap()["cells"].as_array().unwrap().clone();
                let agent = cells("agent");
                assert_eq!(agent[1..7], [json!(3), json!(2), json!(1), json!(2), json!(1), json!("<none>")]);
                assert_eq!(agent[8..], [json!("agent"), json!("nginx"), json!("app=agent")]);
                assert_eq!(cells("od")[6], "disk=ssd,zone=a");

                // Discovery and openapi.
                let apps = c.client.list_api_group_resources("apps/v1").await.unwrap();
                let r = apps.resources.iter().find(|r| r.name == "daemonsets").unwrap();
                assert_eq!((r.kind.as_str(), r.namespaced, r.singular_name.as_str()), ("DaemonSet", true, "daemonset"));
                assert_eq!(r.short_names.as_deref(), Some(&["ds".to_string()][..]));
                assert_eq!(r.categories.as_deref(), Some(&["all".to_string()][..]));
                assert!(apps.resources.iter().any(|r| r.name == "daemonsets/status"));
                assert!(!apps.resources.iter().any(|r| r.name == "daemonsets/scale"));
                let doc: Value = c.client.request(http::Request::get("/openapi/v3/apis/apps/v1").body(Vec::new()).unwrap()).await.unwrap();
                assert_eq!(doc["paths"]["/apis/apps/v1/namespaces/{namespace}/daemonsets/{name}"]["patch"]["x-kubernetes-group-version-kind"]["kind"], "DaemonSet");
            }

            #[tokio::test]
            async fn validation_and_bad_input() {
                let c = Cluster::start($b).await;
                let path = "/apis/apps/v1/namespaces/default/deployments";
                let mut body = serde_json::to_value(deployment("web")).unwrap();
                body["spec"]["bogus"] = json!(1);
                body["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = json!("x");
                let (code, _, st) = c.raw("POST", &format!("{path}?fieldValidation=Strict"), "application/json", serde_json::to_vec(&body).unwrap()).await;
                assert_eq!(code, 400, "{st}");
                let msg = st["message"].as_str().unwrap();
                assert!(msg.contains(r#"unknown field "spec.bogus""#) && msg.contains(r#"unknown field "spec.template.spec.containers[0].imagePullPolicyy""#), "{msg}");
                // Warn: created, with the same findings as Warning headers; Ignore: silent.
                let (code, warnings, _) = c.raw("POST", &format!("{path}?fieldValidation=Warn"), "application/json", serde_json::to_vec(&body).unwrap()).await;
                assert_eq!(code, 201);
                assert_eq!(warnings.len(), 2, "{warnings:?}");
                body["metadata"]["name"] = json!("web2");
                let (code, warnings, _) = c.raw("POST", &format!("{path}?fieldValidation=Ignore"), "application/json", serde_json::to_vec(&body).unwrap()).await;
                assert_eq!((code, warnings.len()), (201, 0));
                // Type errors name the field.
                let (code, _, st) = c.raw("POST", path, "application/json", br#"{"metadata":{"name":"x"},"spec":{"replicas":"three"}}"#.to_vec()).await;
                assert_eq!(code, 400);
                assert!(st["message"].as_str().unwrap().contains("spec.replicas"), "{st}");
                // Semantic validation: 422 Invalid with causes.
                let (code, _, st) = c.raw("POST", "/api/v1/namespaces/default/configmaps", "application/json", br#"{"metadata":{"name":"Bad_Name","labels":{"a":"-x"}}}"#.to_vec()).await;
                assert_eq!((code, st["reason"].as_str()), (422, Some("Invalid")));
                assert_eq!(st["details"]["causes"].as_array().unwrap().len(), 2, "{st}");
                let svc = json!({"metadata": {"name": "s"}, "spec": {"ports": [{"port": 70000}], "type": "Weird"}});
                let (code, _, st) = c.raw("POST", "/api/v1/namespaces/default/services", "application/json", serde_json::to_vec(&svc).unwrap()).await;
                assert_eq!(code, 422);
                let fields: Vec<_> = st["details"]["causes"].as_array().unwrap().iter().map(|c| c["field"].as_str().unwrap().to_string()).collect();
                assert_eq!(fields, ["spec.type", "spec.ports[0].port", "spec.ports[0].targetPort"]);
                // Wrong kind for the URL, broken JSON, an oversized body, unknown paths.
                let (code, _, _) = c.raw("POST", path, "application/json", br#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"}}"#.to_vec()).await;
                assert_eq!(code, 400);
                let (code, _, st) = c.raw("POST", path, "application/json", b"{\"metadata\":".to_vec()).await;
                assert_eq!((code, st["kind"].as_str()), (400, Some("Status")));
                let big = vec![b' '; 4 * 1024 * 1024];
                let (code, _, st) = c.raw("POST", path, "application/json", big).await;
                assert_eq!((code, st["reason"].as_str()), (413, Some("RequestEntityTooLarge")));
                for p in ["/api/v2/pods", "/apis/apps/v1/namespaces/default/widgets", "/nothing", "/api/v1/namespaces/default/pods/a/b/c"] {
                    let (code, _, st) = c.raw("GET", p, "application/json", Vec::new()).await;
                    assert_eq!((code, st["kind"].as_str()), (404, Some("Status")), "{p}");
                }
                // The server still answers after all of that.
                let api: Api<Deployment> = Api::namespaced(c.client.clone(), "default");
                assert_eq!(api.list(&ListParams::default()).await.unwrap().items.len(), 2);
            }

            #[tokio::test]
            async fn anonymous_requests_are_rejected() {
                let c = Cluster::start($b).await;
                let mut cfg = c.config.clone();
                cfg.auth_info = Default::default();
                let anon = kube::Client::try_from(cfg.clone()).unwrap();
                let (code, _, st) = common::raw_with(&anon, "GET", "/api/v1/namespaces", "", Vec::new()).await;
                assert_eq!((code, st["reason"].as_str()), (401, Some("Unauthorized")));
                cfg.auth_info.token = Some("not-a-token".to_string().into());
                let forged = kube::Client::try_from(cfg).unwrap();
                let (code, _, _) = common::raw_with(&forged, "GET", "/api/v1/namespaces", "", Vec::new()).await;
                assert_eq!(code, 401);
                let (code, _, _) = common::raw_with(&anon, "GET", "/readyz", "", Vec::new()).await;
                assert_eq!(code, 200, "health is public");
            }

            #[tokio::test]
            async fn list_selectors_tables_and_deletecollection() {
                let c = Cluster::start($b).await;
                let api: Api<ConfigMap> = Api::namespaced(c.client.clone(), "default");
                for (n, app) in [("a", "web"), ("b", "web"), ("c", "db")] {
                    api.create(&PostParams::default(), &cm(n, &[("app", app)])).await.unwrap();
                }
                let names = |l: kube::core::ObjectList<ConfigMap>| l.items.iter().map(|o| o.name_any()).collect::<Vec<_>>();
                let l = api.list(&ListParams::default().labels("app=web")).await.unwrap();
                assert!(l.metadata.resource_version.as_deref().is_some_and(|r| !r.is_empty()));
                assert_eq!(names(l), ["a", "b"]);
                assert_eq!(names(api.list(&ListParams::default().labels("app notin (web)")).await.unwrap()), ["c"]);
                assert_eq!(names(api.list(&ListParams::default().fields("metadata.name=b")).await.unwrap()), ["b"]);
                let (code, _, st) = c.raw("GET", "/api/v1/namespaces/default/configmaps?fieldSelector=data.k%3Dv", "", Vec::new()).await;
                assert_eq!(code, 400, "{st}");

                // Pods: spec.nodeName and status.phase; events: involvedObject.*.
                let pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
                for (n, node) in [("p1", "n1"), ("p2", "n2")] {
                    let p: Pod = serde_json::from_value(json!({"metadata": {"name": n}, "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]}})).unwrap();
                    pods.create(&PostParams::default(), &p).await.unwrap();
                }
                let l = pods.list(&ListParams::default().fields("spec.nodeName=n2,status.phase=Pending")).await.unwrap();
                assert_eq!(l.items.iter().map(|p| p.name_any()).collect::<Vec<_>>(), ["p2"]);
                let events: Api<Event> = Api::namespaced(c.client.clone(), "default");
                let ev: Event = serde_json::from_value(json!({"metadata": {"name": "e1"}, "involvedObject": {"kind": "Pod", "name": "p1", "namespace": "default"}, "reason": "Started", "message": "hi", "type": "Normal"})).unwrap();
                events.create(&PostParams::default(), &ev).await.unwrap();
                assert_eq!(events.list(&ListParams::default().fields("involvedObject.name=p1,involvedObject.kind=Pod")).await.unwrap().items.len(), 1);
                assert_eq!(events.list(&ListParams::default().fields("involvedObject.name=p2")).await.unwrap().items.len(), 0);

                // The Table kubectl asks for.
                let req = http::Request::get("/api/v1/namespaces/default/pods")
                    .header("accept", "application/json;as=Table;v=v1;g=meta.k8s.io,application/json")
                    .body(Vec::new()).unwrap();
                let t: Value = c.client.request(req).await.unwrap();
                assert_eq!(t["kind"], "Table");
                let cols: Vec<_> = t["columnDefinitions"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
                assert_eq!(&cols[..5], ["Name", "Ready", "Status", "Restarts", "Age"]);
                assert_eq!(t["rows"][0]["cells"][1], "0/1");
                assert_eq!(t["rows"][0]["cells"][2], "Pending");
                assert_eq!(t["rows"][1]["cells"][6], "n2");
                assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");

                // deletecollection with a selector leaves the rest.
                api.delete_collection(&DeleteParams::default(), &ListParams::default().labels("app=web")).await.unwrap();
                assert_eq!(names(api.list(&ListParams::default()).await.unwrap()), ["c"]);
            }

            #[tokio::test]
            async fn watch_from_a_revision_with_selector_transitions() {
                let c = Cluster::start($b).await;
                let api: Api<ConfigMap> = Api::namespaced(c.client.clone(), "default");
                let start = api.list(&ListParams::default()).await.unwrap().metadata.resource_version.unwrap();
                let mut all = api.watch(&WatchParams::default(), &start).await.unwrap().boxed();
                let mut web = api.watch(&WatchParams::default().labels("app=web"), &start).await.unwrap().boxed();
                let a = api.create(&PostParams::default(), &cm("a", &[("app", "web")])).await.unwrap();
                api.patch("a", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"app": "db"}}}))).await.unwrap();
                api.patch("a", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"app": "web"}}}))).await.unwrap();
                let (_, gone) = (api.delete("a", &DeleteParams::default()).await.unwrap(), ());
                let _ = gone;

                let mut seen = Vec::new();
                for _ in 0..4 {
                    seen.push(match next_event(&mut all).await {
                        WatchEvent::Added(o) => ("ADDED", rv(&o)),
                        WatchEvent::Modified(o) => ("MODIFIED", rv(&o)),
                        WatchEvent::Deleted(o) => ("DELETED", rv(&o)),
                        other => panic!("{other:?}"),
                    });
                }
                assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), ["ADDED", "MODIFIED", "MODIFIED", "DELETED"]);
                assert_eq!(seen[0].1, rv(&a));
                assert!(seen.windows(2).all(|w| w[0].1 < w[1].1), "revisions increase: {seen:?}");
                // Through the selector: leaving it is DELETED, coming back ADDED.
                let mut kinds = Vec::new();
                for _ in 0..4 {
                    kinds.push(match next_event(&mut web).await {
                        WatchEvent::Added(_) => "ADDED",
                        WatchEvent::Modified(_) => "MODIFIED",
                        WatchEvent::Deleted(_) => "DELETED",
                        other => panic!("{other:?}"),
                    });
                }
                assert_eq!(kinds, ["ADDED", "DELETED", "ADDED", "DELETED"]);
            }

            #[tokio::test]
            async fn watch_initial_events_bookmarks_and_timeout() {
                let c = Cluster::start($b).await;
                let api: Api<ConfigMap> = Api::namespaced(c.client.clone(), "default");
                api.create(&PostParams::default(), &cm("a", &[])).await.unwrap();
                api.create(&PostParams::default(), &cm("b", &[])).await.unwrap();
                // resourceVersion=0 with a name selector (kubectl get NAME -w): synthetic ADDED.
                let (code, lines) = c.raw_lines("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion=0&fieldSelector=metadata.name%3Db&timeoutSeconds=1").await;
                assert_eq!(code, 200);
                assert_eq!(lines.len(), 1, "{lines:?}");
                assert_eq!((lines[0]["type"].as_str(), lines[0]["object"]["metadata"]["name"].as_str()), (Some("ADDED"), Some("b")));
                // Streaming list: ADDED for each, then the initial-events-end bookmark; then
                // idle bookmarks (apiVersion and kind set) until timeoutSeconds ends it cleanly.
                let (code, lines) = c.raw_lines("/api/v1/namespaces/default/configmaps?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=1").await;
                assert_eq!(code, 200);
                let types: Vec<_> = lines.iter().map(|l| l["type"].as_str().unwrap()).collect();
                assert_eq!(&types[..3], ["ADDED", "ADDED", "BOOKMARK"]);
                assert_eq!(lines[2]["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"], "true");
                assert!(types[3..].iter().all(|t| *t == "BOOKMARK") && types.len() > 3, "{types:?}");
                assert_eq!((lines[3]["object"]["kind"].as_str(), lines[3]["object"]["apiVersion"].as_str()), (Some("ConfigMap"), Some("v1")));
            }

            #[tokio::test]
            async fn watch_too_old_is_410_in_stream() {
                let c = Cluster::start_with($b, 20).await;
                let api: Api<ConfigMap> = Api::namespaced(c.client.clone(), "default");
                for i in 0..60 {
                    api.create(&PostParams::default(), &cm(&format!("c{i}"), &[])).await.unwrap();
                }
                let (code, lines) = c.raw_lines("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion=2").await;
                assert_eq!(code, 200, "the 410 is in the stream, not the HTTP status");
                assert_eq!(lines.len(), 1, "{lines:?}");
                assert_eq!(lines[0]["type"], "ERROR");
                assert_eq!((lines[0]["object"]["code"].as_i64(), lines[0]["object"]["reason"].as_str()), (Some(410), Some("Expired")));
                // kube-rs's watcher treats that as a desync: it relists and carries on.
                let stream = watcher(api.clone(), watcher::Config::default()).applied_objects();
                futures::pin_mut!(stream);
                let first = tokio::time::timeout(Duration::from_secs(10), stream.try_next()).await.unwrap().unwrap();
                assert!(first.is_some());
            }

            #[tokio::test]
            async fn kube_rs_reflector_follows_the_server() {
                let c = Cluster::start($b).await;
                let api: Api<Service> = Api::namespaced(c.client.clone(), "default");
                let (reader, writer) = reflector::store();
                let stream = reflector(writer, watcher(api.clone(), watcher::Config::default().labels("mesh=yes")))
                    .applied_objects();
                let task = tokio::spawn(stream.for_each(|_| async {}));
                let svc = |n: &str, mesh: &str| -> Service {
                    serde_json::from_value(json!({"metadata": {"name": n, "labels": {"mesh": mesh}}, "spec": {"ports": [{"port": 80}], "selector": {"app": n}}})).unwrap()
                };
                api.create(&PostParams::default(), &svc("a", "yes")).await.unwrap();
                api.create(&PostParams::default(), &svc("b", "yes")).await.unwrap();
                api.create(&PostParams::default(), &svc("c", "no")).await.unwrap();
                assert_eventually!(reader.state().len() == 2, "reflector sees a and b");
                api.patch("b", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"mesh": "no"}}}))).await.unwrap();
                api.patch("c", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"labels": {"mesh": "yes"}}}))).await.unwrap();
                api.delete("a", &DeleteParams::default()).await.unwrap();
                let names = || { let mut v: Vec<_> = reader.state().iter().map(|s| s.name_any()).collect(); v.sort(); v };
                assert_eventually!(names() == ["c"], format!("reflector state {:?}", names()));
                let defaulted = reader.state()[0].clone();
                assert_eq!(defaulted.spec.as_ref().unwrap().type_.as_deref(), Some("ClusterIP"));
                task.abort();
            }

            #[tokio::test]
            async fn finalizers_hold_deletion() {
                let c = Cluster::start($b).await;
                let api: Api<ConfigMap> = Api::namespaced(c.client.clone(), "default");
                let mut o = cm("f", &[]);
                o.metadata.finalizers = Some(vec!["meshwork.io/test".into()]);
                let created = api.create(&PostParams::default(), &o).await.unwrap();
                let mut w = api.watch(&WatchParams::default(), &created.resource_version().unwrap()).await.unwrap().boxed();
                api.delete("f", &DeleteParams::default()).await.unwrap();
                let held = api.get("f").await.unwrap();
                assert!(held.metadata.deletion_timestamp.is_some());
                assert!(matches!(next_event(&mut w).await, WatchEvent::Modified(_)));
                api.patch("f", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}}))).await.unwrap();
                assert!(matches!(next_event(&mut w).await, WatchEvent::Deleted(_)));
                assert_eq!(api_code(api.get("f").await.unwrap_err()).0, 404);
            }

            #[tokio::test]
            async fn kube_rs_finalizer_helper_round_trip() {
                use kube::runtime::{controller::Action, finalizer::{finalizer, Event as Fin}};
                let c = Cluster::start($b).await;
                let api: Api<ConfigMap> = Api::namespaced(c.client.clone(), "default");
                api.create(&PostParams::default(), &cm("f", &[])).await.unwrap();
                let cleaned = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                let run = |obj: ConfigMap| {
                    let (api, cleaned) = (api.clone(), cleaned.clone());
                    async move {
                        finalizer(&api, "meshwork.io/test", std::sync::Arc::new(obj), |ev| async move {
                            if let Fin::Cleanup(_) = ev {
                                cleaned.store(true, std::sync::atomic::Ordering::SeqCst);
                            }
                            Ok::<_, std::convert::Infallible>(Action::await_change())
                        })
                        .await
                    }
                };
                // First pass: the helper adds its finalizer (JSON patch `test null` + `add`).
                run(api.get("f").await.unwrap()).await.unwrap();
                assert_eq!(api.get("f").await.unwrap().finalizers(), ["meshwork.io/test"]);
                api.delete("f", &DeleteParams::default()).await.unwrap();
                // Second pass: cleanup runs, the helper removes the finalizer, the object goes.
                run(api.get("f").await.unwrap()).await.unwrap();
                assert!(cleaned.load(std::sync::atomic::Ordering::SeqCst));
                assert_eq!(api_code(api.get("f").await.unwrap_err()).0, 404);
            }

            #[tokio::test]
            async fn namespace_lifecycle_and_scoping() {
                let c = Cluster::start($b).await;
                let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(c.client.clone());
                nss.create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "t"}})).unwrap()).await.unwrap();
                let api: Api<ConfigMap> = Api::namespaced(c.client.clone(), "t");
                let mut held = cm("held", &[]);
                held.metadata.finalizers = Some(vec!["meshwork.io/x".into()]);
                api.create(&PostParams::default(), &held).await.unwrap();
                api.create(&PostParams::default(), &cm("free", &[])).await.unwrap();
                nss.delete("t", &DeleteParams::default()).await.unwrap();
                let t = nss.get("t").await.unwrap();
                assert_eq!(t.status.unwrap().phase.as_deref(), Some("Terminating"));
                assert_eq!(api_code(api.get("free").await.unwrap_err()).0, 404);
                let (code, reason) = api_code(api.create(&PostParams::default(), &cm("new", &[])).await.unwrap_err());
                assert_eq!((code, reason.as_str()), (403, "Forbidden"));
                api.patch("held", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}}))).await.unwrap();
                assert_eq!(api_code(nss.get("t").await.unwrap_err()).0, 404, "empty terminating namespace goes");
                let (code, _) = api_code(nss.delete("default", &DeleteParams::default()).await.unwrap_err());
                assert_eq!(code, 403);
                // Namespaced kinds are written inside a namespace; subresources are not deletable.
                let (code, _, _) = c.raw("POST", "/api/v1/configmaps", "application/json", br#"{"metadata":{"name":"x","namespace":"default"}}"#.to_vec()).await;
                assert_eq!(code, 405);
                let (code, _, _) = c.raw("DELETE", "/api/v1/configmaps", "application/json", Vec::new()).await;
                assert_eq!(code, 405);
                let deploys: Api<Deployment> = Api::namespaced(c.client.clone(), "default");
                deploys.create(&PostParams::default(), &deployment("web")).await.unwrap();
                let (code, _, _) = c.raw("DELETE", "/apis/apps/v1/namespaces/default/deployments/web/scale", "application/json", Vec::new()).await;
                assert_eq!(code, 405);
                let (code, _, _) = c.raw("PUT", "/apis/apps/v1/namespaces/default/deployments/web/scale", "application/json",
                    br#"{"apiVersion":"autoscaling/v1","kind":"Scale","metadata":{"name":"web"},"spec":{"replicas":"3"}}"#.to_vec()).await;
                assert_eq!(code, 400, "a non-integer replica count is refused, not read as 0");
                assert!(deploys.get("web").await.is_ok());
            }

            #[tokio::test]
            async fn node_credentials_are_limited() {
                let c = Cluster::start($b).await;
                let kc = c.dir.path().join("node-n1.kubeconfig");
                meshwork_orchestrator::server::issue_kubeconfig(c.dir.path(), &c.running.url, "system:node:n1", &["system:nodes".into()], &kc).unwrap();
                let node = kube::Client::try_from(common::client_config(&kc).await).unwrap();
                let pods: Api<Pod> = Api::namespaced(node.clone(), "default");
                let admin_pods: Api<Pod> = Api::namespaced(c.client.clone(), "default");
                let p: Pod = serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "busybox"}]}})).unwrap();
                // A node creates no pods (kube: mirror pods only) ...
                let (code, _) = api_code(pods.create(&PostParams::default(), &p).await.unwrap_err());
                assert_eq!(code, 403);
                admin_pods.create(&PostParams::default(), &p).await.unwrap();
                let q: Pod = serde_json::from_value(json!({"metadata": {"name": "q"}, "spec": {"nodeName": "n2", "containers": [{"name": "c", "image": "busybox"}]}})).unwrap();
                admin_pods.create(&PostParams::default(), &q).await.unwrap();
                // ... and writes the status of its own pods only.
                pods.patch_status("p", &PatchParams::default(), &Patch::Merge(json!({"status": {"phase": "Running"}}))).await.unwrap();
                let (code, _) = api_code(pods.patch_status("q", &PatchParams::default(), &Patch::Merge(json!({"status": {"phase": "Running"}}))).await.unwrap_err());
                assert_eq!(code, 403, "node n1 wrote the status of a pod on n2");
                let svcs: Api<Service> = Api::namespaced(node.clone(), "default");
                let names: Vec<String> = svcs.list(&ListParams::default()).await.unwrap().items.iter().map(|s| s.name_any()).collect();
                assert_eq!(names, ["kubernetes"], "nodes read everything");
                let s: Service = serde_json::from_value(json!({"metadata": {"name": "s"}, "spec": {"ports": [{"port": 80}]}})).unwrap();
                let (code, reason) = api_code(svcs.create(&PostParams::default(), &s).await.unwrap_err());
                assert_eq!((code, reason.as_str()), (403, "Forbidden"));
                // Its heartbeat Lease in kube-node-lease: its own, created and renewed; another
                // node's, or one elsewhere, refused.
                let leases: Api<Lease> = Api::namespaced(node.clone(), "kube-node-lease");
                let lease = |name: &str| -> Lease {
                    serde_json::from_value(json!({"metadata": {"name": name},
                        "spec": {"holderIdentity": name, "leaseDurationSeconds": 40,
                                 "renewTime": "2026-01-01T00:00:00.000000Z"}})).unwrap()
                };
                let mut mine = leases.create(&PostParams::default(), &lease("n1")).await.unwrap();
                mine.spec.as_mut().unwrap().renew_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(k8s_openapi::jiff::Timestamp::now()));
                leases.replace("n1", &PostParams::default(), &mine).await.unwrap();
                let (code, _) = api_code(leases.create(&PostParams::default(), &lease("n2")).await.unwrap_err());
                assert_eq!(code, 403, "node n1 wrote node n2's lease");
                let elsewhere: Api<Lease> = Api::namespaced(node.clone(), "default");
                let (code, _) = api_code(elsewhere.create(&PostParams::default(), &lease("n1")).await.unwrap_err());
                assert_eq!(code, 403, "a node lease outside kube-node-lease");
                let mut bad = lease("n1");
                bad.metadata.name = Some("n1-bad".into());
                bad.spec.as_mut().unwrap().lease_duration_seconds = Some(0);
                let admin_leases: Api<Lease> = Api::namespaced(c.client.clone(), "kube-node-lease");
                let (code, _) = api_code(admin_leases.create(&PostParams::default(), &bad).await.unwrap_err());
                assert_eq!(code, 422, "leaseDurationSeconds 0 is invalid");
            }

            #[tokio::test]
            async fn discovery_version_and_openapi() {
                let c = Cluster::start($b).await;
                let v = c.client.apiserver_version().await.unwrap();
                assert_eq!((v.major.as_str(), v.minor.as_str()), ("1", "33"));
                let core = c.client.list_core_api_resources("v1").await.unwrap();
                let pods = core.resources.iter().find(|r| r.name == "pods").unwrap();
                assert_eq!(pods.short_names.as_deref(), Some(&["po".to_string()][..]));
                assert_eq!(pods.categories.as_deref(), Some(&["all".to_string()][..]));
                assert!(core.resources.iter().any(|r| r.name == "pods/status"));
                let apps = c.client.list_api_group_resources("apps/v1").await.unwrap();
                let scale = apps.resources.iter().find(|r| r.name == "deployments/scale").unwrap();
                assert_eq!((scale.kind.as_str(), scale.group.as_deref()), ("Scale", Some("autoscaling")));
                let groups = c.client.list_api_groups().await.unwrap();
                assert!(groups.groups.iter().any(|g| g.name == "discovery.k8s.io"));
                // openapi/v3: each PATCH declares fieldValidation and its group/version/kind.
                let root: Value = c.client.request(http::Request::get("/openapi/v3").body(Vec::new()).unwrap()).await.unwrap();
                let url = root["paths"]["apis/apps/v1"]["serverRelativeURL"].as_str().unwrap();
                let doc: Value = c.client.request(http::Request::get(url).body(Vec::new()).unwrap()).await.unwrap();
                let patch = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
                assert_eq!(patch["x-kubernetes-group-version-kind"]["kind"], "Deployment");
                assert!(patch["parameters"].as_array().unwrap().iter().any(|p| p["name"] == "fieldValidation"));
            }
        }
    };
}

/// JSON patch operations in the json_patch types kube-rs takes.
mod json_patch_ops {
    #[derive(serde::Deserialize)]
    #[serde(transparent)]
    pub struct Ops(pub json_patch_kube::Patch);
}

conformance!(sqlite, Backend::Sqlite);
conformance!(etcd, Backend::Etcd);
