//! Golden cases: PATCH bodies shaped exactly as kubectl 1.33 sends them, applied to live objects
//! shaped as the API server stores them (defaulted fields, status, server-added elements).
//!
//! Where the bodies come from: client-side `apply` sends the three-way strategic patch built by
//! apimachinery's `CreateThreeWayMergePatch` (additions/changes ordered as in the new config,
//! `$patch: delete` entries after them, a `$setElementOrder/<list>` for every merging list that
//! changed, `$retainKeys` for `retainKeys` fields, and the new
//! `kubectl.kubernetes.io/last-applied-configuration`); `set image` and `rollout restart` send the
//! two-way strategic patch of the edited object; `label`, `annotate` and `scale` (on the `/scale`
//! subresource) send JSON merge patches; `patch --type json` sends RFC 6902. Keys are sorted as Go's
//! encoder writes them.

use meshwork_orchestrator_patch::{apply, PatchType, Schema};
use serde_json::{json, Value};

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

fn patch(kind: (&str, &str), ty: PatchType, live: &Value, body: &str) -> Value {
    match apply(live, body.as_bytes(), ty, Schema::for_kind(kind.0, kind.1)) {
        Ok(v) => v,
        Err(err) => panic!("{kind:?} {ty:?}: {err}"),
    }
}

fn deployment() -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "web", "namespace": "default", "resourceVersion": "1042", "generation": 3,
            "annotations": {"deployment.kubernetes.io/revision": "2", LAST_APPLIED: "{\"old\":true}\n"},
            "labels": {"app": "web"}
        },
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "containers": [{
                        "name": "web",
                        "image": "nginx:1.25",
                        "imagePullPolicy": "IfNotPresent",
                        "env": [{"name": "LOG_LEVEL", "value": "info"}],
                        "ports": [{"containerPort": 80, "protocol": "TCP"}],
                        "resources": {},
                        "terminationMessagePath": "/dev/termination-log"
                    }, {
                        "name": "log-shipper",
                        "image": "fluent-bit:3.0",
                        "terminationMessagePath": "/dev/termination-log"
                    }],
                    "volumes": [{"name": "data", "emptyDir": {}}],
                    "restartPolicy": "Always",
                    "dnsPolicy": "ClusterFirst"
                }
            }
        },
        "status": {"replicas": 2, "conditions": [{"type": "Available", "status": "True"}]}
    })
}

fn containers(obj: &Value) -> &Value {
    &obj["spec"]["template"]["spec"]["containers"]
}

/// `kubectl apply -f` after the config changed the web container's port 80 -> 8080, set
/// LOG_LEVEL=debug and added FEATURE_X.
#[test]
fn apply_changes_container_port_and_env() {
    let body = r#"{"metadata":{"annotations":{"kubectl.kubernetes.io/last-applied-configuration":"{\"new\":true}\n"}},"spec":{"template":{"spec":{"$setElementOrder/containers":[{"name":"web"},{"name":"log-shipper"}],"containers":[{"$setElementOrder/env":[{"name":"LOG_LEVEL"},{"name":"FEATURE_X"}],"$setElementOrder/ports":[{"containerPort":8080}],"env":[{"name":"LOG_LEVEL","value":"debug"},{"name":"FEATURE_X","value":"on"}],"name":"web","ports":[{"containerPort":8080},{"$patch":"delete","containerPort":80}]}]}}}}"#;
    let live = deployment();
    let got = patch(
        ("apps", "Deployment"),
        PatchType::StrategicMerge,
        &live,
        body,
    );

    let web = &containers(&got)[0];
    assert_eq!(
        web["env"],
        json!([{"name": "LOG_LEVEL", "value": "debug"}, {"name": "FEATURE_X", "value": "on"}])
    );
    assert_eq!(web["ports"], json!([{"containerPort": 8080}]));
    assert_eq!(
        web["image"], "nginx:1.25",
        "fields the patch does not name are kept"
    );
    assert_eq!(web["terminationMessagePath"], "/dev/termination-log");
    assert_eq!(
        containers(&got)[1],
        containers(&live)[1],
        "other containers untouched"
    );
    assert_eq!(
        got["metadata"]["annotations"][LAST_APPLIED],
        "{\"new\":true}\n"
    );
    assert_eq!(
        got["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "2"
    );
    assert_eq!(got["status"], live["status"]);
    assert_eq!(got["spec"]["strategy"], live["spec"]["strategy"]);
}

/// `kubectl apply -f` after the log-shipper container was removed from the config.
#[test]
fn apply_removes_a_container() {
    let body = r#"{"metadata":{"annotations":{"kubectl.kubernetes.io/last-applied-configuration":"{}\n"}},"spec":{"template":{"spec":{"$setElementOrder/containers":[{"name":"web"}],"containers":[{"$patch":"delete","name":"log-shipper"}]}}}}"#;
    let got = patch(
        ("apps", "Deployment"),
        PatchType::StrategicMerge,
        &deployment(),
        body,
    );
    let names: Vec<&Value> = containers(&got)
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["name"])
        .collect();
    assert_eq!(names, ["web"]);
}

/// `kubectl apply -f` renaming env B to C while a webhook-injected X sits after B. The order
/// follows apimachinery's algorithm, including its view of the live list after the deletion
/// (cf. its "add map and delete map from merging list with conflict" case): X stays before C.
#[test]
fn apply_renames_env_next_to_server_added_env() {
    let live = json!({"spec": {"template": {"spec": {"containers": [{
        "name": "web",
        "env": [{"name": "A", "value": "a"}, {"name": "B", "value": "b"}, {"name": "X", "value": "injected"}]
    }]}}}});
    let body = r#"{"spec":{"template":{"spec":{"$setElementOrder/containers":[{"name":"web"}],"containers":[{"$setElementOrder/env":[{"name":"A"},{"name":"C"}],"env":[{"name":"C","value":"c"},{"$patch":"delete","name":"B"}],"name":"web"}]}}}}"#;
    let got = patch(
        ("apps", "Deployment"),
        PatchType::StrategicMerge,
        &live,
        body,
    );
    assert_eq!(
        containers(&got)[0]["env"],
        json!([{"name": "A", "value": "a"}, {"name": "X", "value": "injected"}, {"name": "C", "value": "c"}])
    );
}

/// `kubectl apply -f` switching volume `data` from emptyDir to a configMap: Volume's source is
/// `retainKeys`, so kubectl sends `$retainKeys` and a null for the old source.
#[test]
fn apply_switches_volume_source_with_retain_keys() {
    let body = r#"{"spec":{"template":{"spec":{"$setElementOrder/volumes":[{"name":"data"}],"volumes":[{"$retainKeys":["configMap","name"],"configMap":{"name":"web-config"},"emptyDir":null,"name":"data"}]}}}}"#;
    let got = patch(
        ("apps", "Deployment"),
        PatchType::StrategicMerge,
        &deployment(),
        body,
    );
    assert_eq!(
        got["spec"]["template"]["spec"]["volumes"],
        json!([{"name": "data", "configMap": {"name": "web-config"}}])
    );
}

/// `kubectl apply -f` on a Service whose port changed from 80 to 443 (merge key `port`).
#[test]
fn apply_changes_service_port() {
    let live = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {
            "clusterIP": "10.96.0.12", "clusterIPs": ["10.96.0.12"], "type": "ClusterIP",
            "selector": {"app": "web"},
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]
        },
        "status": {"loadBalancer": {}}
    });
    let body = r#"{"metadata":{"annotations":{"kubectl.kubernetes.io/last-applied-configuration":"{}\n"}},"spec":{"$setElementOrder/ports":[{"port":443}],"ports":[{"name":"https","port":443,"targetPort":8443},{"$patch":"delete","port":80}]}}"#;
    let got = patch(("", "Service"), PatchType::StrategicMerge, &live, body);
    assert_eq!(
        got["spec"]["ports"],
        json!([{"name": "https", "port": 443, "targetPort": 8443}])
    );
    assert_eq!(got["spec"]["clusterIP"], "10.96.0.12");
}

/// `kubectl apply -f` on a ConfigMap: a key added, a key removed (null), no lists involved.
#[test]
fn apply_configmap_data() {
    let live = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "cfg"}, "data": {"keep": "1", "old": "2"}});
    let body = r#"{"data":{"new":"3","old":null},"metadata":{"annotations":{"kubectl.kubernetes.io/last-applied-configuration":"{}\n"}}}"#;
    let got = patch(("", "ConfigMap"), PatchType::StrategicMerge, &live, body);
    assert_eq!(got["data"], json!({"keep": "1", "new": "3"}));
}

/// `kubectl apply -f` adding then removing a finalizer next to one a controller added.
#[test]
fn apply_finalizers_merge_as_a_set() {
    let live = json!({"metadata": {"name": "cfg", "finalizers": ["example.com/controller", "example.com/a"]}});
    let add = r#"{"metadata":{"$setElementOrder/finalizers":["example.com/a","example.com/b"],"finalizers":["example.com/b"]}}"#;
    let got = patch(("", "ConfigMap"), PatchType::StrategicMerge, &live, add);
    assert_eq!(
        got["metadata"]["finalizers"],
        json!(["example.com/controller", "example.com/a", "example.com/b"])
    );

    let remove = r#"{"metadata":{"$deleteFromPrimitiveList/finalizers":["example.com/a"],"$setElementOrder/finalizers":["example.com/b"]}}"#;
    let got = patch(("", "ConfigMap"), PatchType::StrategicMerge, &got, remove);
    assert_eq!(
        got["metadata"]["finalizers"],
        json!(["example.com/controller", "example.com/b"])
    );
}

/// `kubectl set image deployment/web web=nginx:1.27`.
#[test]
fn set_image() {
    let body = r#"{"spec":{"template":{"spec":{"$setElementOrder/containers":[{"name":"web"},{"name":"log-shipper"}],"containers":[{"image":"nginx:1.27","name":"web"}]}}}}"#;
    let live = deployment();
    let got = patch(
        ("apps", "Deployment"),
        PatchType::StrategicMerge,
        &live,
        body,
    );
    assert_eq!(containers(&got)[0]["image"], "nginx:1.27");
    assert_eq!(containers(&got)[0]["env"], containers(&live)[0]["env"]);
    assert_eq!(containers(&got)[1], containers(&live)[1]);
}

/// `kubectl rollout restart deployment/web`.
#[test]
fn rollout_restart() {
    let body = r#"{"spec":{"template":{"metadata":{"annotations":{"kubectl.kubernetes.io/restartedAt":"2025-06-01T12:00:00Z"}}}}}"#;
    let live = deployment();
    let got = patch(
        ("apps", "Deployment"),
        PatchType::StrategicMerge,
        &live,
        body,
    );
    assert_eq!(
        got["spec"]["template"]["metadata"],
        json!({"labels": {"app": "web"}, "annotations": {"kubectl.kubernetes.io/restartedAt": "2025-06-01T12:00:00Z"}})
    );
    assert_eq!(
        got["spec"]["template"]["spec"],
        live["spec"]["template"]["spec"]
    );
}

/// `kubectl label deployment web tier=frontend`, then `kubectl label deployment web app-`.
#[test]
fn label_add_and_remove() {
    let got = patch(
        ("apps", "Deployment"),
        PatchType::Merge,
        &deployment(),
        r#"{"metadata":{"labels":{"tier":"frontend"}}}"#,
    );
    assert_eq!(
        got["metadata"]["labels"],
        json!({"app": "web", "tier": "frontend"})
    );
    let got = patch(
        ("apps", "Deployment"),
        PatchType::Merge,
        &got,
        r#"{"metadata":{"labels":{"app":null}}}"#,
    );
    assert_eq!(got["metadata"]["labels"], json!({"tier": "frontend"}));
}

/// `kubectl annotate deployment web owner=team-a`.
#[test]
fn annotate() {
    let got = patch(
        ("apps", "Deployment"),
        PatchType::Merge,
        &deployment(),
        r#"{"metadata":{"annotations":{"owner":"team-a"}}}"#,
    );
    assert_eq!(got["metadata"]["annotations"]["owner"], "team-a");
    assert_eq!(
        got["metadata"]["annotations"]["deployment.kubernetes.io/revision"],
        "2"
    );
}

/// `kubectl scale deployment web --replicas=5`: a merge patch on the `/scale` subresource.
#[test]
fn scale_subresource() {
    let live = json!({
        "kind": "Scale", "apiVersion": "autoscaling/v1",
        "metadata": {"name": "web", "namespace": "default", "resourceVersion": "1042"},
        "spec": {"replicas": 2},
        "status": {"replicas": 2, "selector": "app=web"}
    });
    let got = patch(
        ("autoscaling", "Scale"),
        PatchType::Merge,
        &live,
        r#"{"spec":{"replicas":5}}"#,
    );
    assert_eq!(got["spec"], json!({"replicas": 5}));
    assert_eq!(got["status"], live["status"]);
}

/// `kubectl patch --type merge` replaces lists whole: why apply must not use merge patch.
#[test]
fn merge_patch_replaces_container_list() {
    let body =
        r#"{"spec":{"template":{"spec":{"containers":[{"name":"web","image":"nginx:1.27"}]}}}}"#;
    let got = patch(
        ("apps", "Deployment"),
        PatchType::Merge,
        &deployment(),
        body,
    );
    assert_eq!(
        *containers(&got),
        json!([{"name": "web", "image": "nginx:1.27"}])
    );
}

/// `kubectl patch --type json` with an escaped label key and a guarded replace.
#[test]
fn json_patch_from_kubectl_patch() {
    let body = r#"[{"op":"test","path":"/spec/replicas","value":2},{"op":"replace","path":"/spec/replicas","value":3},{"op":"add","path":"/metadata/labels/app.kubernetes.io~1name","value":"web"},{"op":"remove","path":"/spec/template/spec/containers/1"}]"#;
    let got = patch(("apps", "Deployment"), PatchType::Json, &deployment(), body);
    assert_eq!(got["spec"]["replicas"], 3);
    assert_eq!(got["metadata"]["labels"]["app.kubernetes.io/name"], "web");
    assert_eq!(containers(&got).as_array().map(Vec::len), Some(1));
}
