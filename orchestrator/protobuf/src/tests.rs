use prost::Message;
use prost_reflect::{DynamicMessage, Value as PValue};
use serde_json::json;

use super::*;

fn round_trip(v: Value) {
    let bytes = encode_object(&v).unwrap();
    assert!(bytes.starts_with(MAGIC));
    assert_eq!(decode_body(&bytes).unwrap(), v);
}

#[test]
fn objects_survive_json_to_protobuf_and_back() {
    round_trip(json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "demo", "labels": {"a": "b"},
                     "creationTimestamp": "2026-12-06T10:00:00Z"},
        "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}
    }));
    round_trip(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "s", "namespace": "default"},
        "data": {"k": "aGVsbG8="}, "type": "Opaque"
    }));
    round_trip(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"},
                           {"port": 81, "targetPort": 8081, "protocol": "TCP"}],
                 "selector": {"app": "web"}, "clusterIP": "10.96.0.20"},
        "status": {"loadBalancer": {}}
    }));
    round_trip(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default", "generation": 3,
                     "annotations": {"deployment.kubernetes.io/revision": "2"}},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "web"}},
                 "strategy": {"type": "RollingUpdate",
                              "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 1}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                              "spec": {"containers": [{"name": "c", "image": "busybox",
                                        "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}}}],
                                       "terminationGracePeriodSeconds": 0}}},
        "status": {}
    }));
    round_trip(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-1", "namespace": "default"},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.244.1.5"],
                       "conditions": {"ready": false, "serving": true, "terminating": false}}],
        "ports": [{"name": "", "port": 0, "protocol": "TCP"}]
    }));
    round_trip(json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": "e", "namespace": "default"},
        "involvedObject": {"kind": "Pod", "name": "p"},
        "reason": "Started", "count": 2,
        "eventTime": "2026-12-06T10:00:00.123456Z",
        "firstTimestamp": "2026-12-06T10:00:00Z",
        "source": {}
    }));
    round_trip(json!({
        "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
        "message": "pods \"x\" not found", "reason": "NotFound",
        "details": {"name": "x", "kind": "pods"}, "code": 404
    }));
    round_trip(json!({
        "apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "12"},
        "items": [{"metadata": {"name": "a", "namespace": "default",
                                "managedFields": [{"manager": "kubectl", "operation": "Update",
                                                   "fieldsType": "FieldsV1",
                                                   "fieldsV1": {"f:metadata": {}}}]},
                   "spec": {"containers": [{"name": "c", "image": "i"}]},
                   "status": {"containerStatuses": [{"name": "c", "ready": false,
                       "restartCount": 0, "image": "i", "imageID": "",
                       "state": {"running": {"startedAt": "2026-12-06T10:00:01Z"}}}]}}]
    }));
}

/// What `kubectl rollout undo` reads back (a ReplicaSet's template) must be the template stored:
/// named probe ports, fieldRef env, ints and bools that are not zero-omitted.
#[test]
fn pod_templates_survive() {
    round_trip(json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": "web-1", "namespace": "default", "generation": 1,
                     "labels": {"app": "web", "pod-template-hash": "abc"},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web",
                                          "uid": "u1", "controller": true, "blockOwnerDeletion": true}]},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
                 "template": {"metadata": {"labels": {"app": "web"}},
                   "spec": {"terminationGracePeriodSeconds": 2, "restartPolicy": "Always",
                            "volumes": [{"name": "conf", "configMap": {"name": "cm", "defaultMode": 420}},
                                        {"name": "tok", "projected": {"sources": [
                                            {"serviceAccountToken": {"audience": "mesh", "expirationSeconds": 3600, "path": "token"}},
                                            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}}]}},
                                        {"name": "scratch", "emptyDir": {}}],
                            "dnsPolicy": "ClusterFirst", "schedulerName": "default-scheduler",
                            "securityContext": {},
                            "containers": [{
                     "name": "web", "image": "busybox:1.36", "imagePullPolicy": "IfNotPresent",
                     "command": ["sh", "-c", "exec httpd -f -p 8080 -h /www"],
                     "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}},
                             {"name": "COLOUR", "value": "red"},
                             {"name": "A", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "a"}}},
                             {"name": "B", "valueFrom": {"secretKeyRef": {"name": "s", "key": "b", "optional": false}}}],
                     "envFrom": [{"configMapRef": {"name": "cm"}}],
                     "volumeMounts": [{"name": "conf", "mountPath": "/conf"}],
                     "lifecycle": {"preStop": {"exec": {"command": ["sleep", "1"]}}},
                     "livenessProbe": {"exec": {"command": ["true"]}},
                     "startupProbe": {"tcpSocket": {"port": 8080}},
                     "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                     "resources": {},
                     "terminationMessagePath": "/dev/termination-log",
                     "terminationMessagePolicy": "File",
                     "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http", "scheme": "HTTP"},
                                        "periodSeconds": 1, "timeoutSeconds": 2, "failureThreshold": 3,
                                        "successThreshold": 1}}]}}},
        "status": {"replicas": 2, "readyReplicas": 2, "availableReplicas": 2,
                   "fullyLabeledReplicas": 2, "observedGeneration": 1}
    }));
}

#[test]
fn renamed_fields_use_their_json_names() {
    round_trip(json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "metadata": {"name": "default", "namespace": "default"},
        "spec": {"audiences": ["mesh"], "expirationSeconds": 600,
                 "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "p", "uid": "u-1"}},
        "status": {"token": "x.y.z", "expirationTimestamp": "2026-12-06T11:00:00Z"}
    }));
}

/// What a Go client writes: every non-pointer field, zero or not, and a zero Time as an empty
/// message. JSON would carry none of the zeros, but keeps required fields and set pointers.
#[test]
fn go_zero_values_read_as_json_would_have_them() {
    let pool = &*POOL;
    let ns_desc = pool.get_message_by_name("api.core.v1.Namespace").unwrap();
    let meta_desc = pool
        .get_message_by_name("apimachinery.pkg.apis.meta.v1.ObjectMeta")
        .unwrap();
    let time_desc = pool
        .get_message_by_name("apimachinery.pkg.apis.meta.v1.Time")
        .unwrap();
    let mut meta = DynamicMessage::new(meta_desc);
    meta.set_field_by_name("name", PValue::String("demo".into()));
    for f in [
        "generateName",
        "namespace",
        "uid",
        "resourceVersion",
        "selfLink",
    ] {
        meta.set_field_by_name(f, PValue::String(String::new()));
    }
    meta.set_field_by_name("generation", PValue::I64(0));
    meta.set_field_by_name(
        "creationTimestamp",
        PValue::Message(DynamicMessage::new(time_desc)),
    );
    let mut ns = DynamicMessage::new(ns_desc);
    ns.set_field_by_name("metadata", PValue::Message(meta));
    let body = envelope("v1", "Namespace", ns.encode_to_vec());
    assert_eq!(
        decode_body(&body).unwrap(),
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "demo"}})
    );

    // A required zero (restartCount, ready) and a pointer zero (replicas) stay.
    let cs = message_for("v1", "Pod")
        .unwrap()
        .parent_pool()
        .get_message_by_name("api.core.v1.ContainerStatus")
        .unwrap();
    let mut m = DynamicMessage::new(cs);
    m.set_field_by_name("restartCount", PValue::I32(0));
    m.set_field_by_name("ready", PValue::Bool(false));
    m.set_field_by_name("started", PValue::Bool(false));
    let j = to_json(&m).unwrap();
    assert_eq!(j["restartCount"], 0);
    assert_eq!(j["ready"], false);
    assert!(j.get("started").is_none(), "optional *bool not listed: {j}");
    let d = from_json(
        &message_for("apps/v1", "Deployment").unwrap(),
        &json!({"spec": {"replicas": 0}}),
    )
    .unwrap();
    assert_eq!(to_json(&d).unwrap(), json!({"spec": {"replicas": 0}}));
}

fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
    let mut env = DynamicMessage::new(ENVELOPE.unknown.clone());
    let mut tm = DynamicMessage::new(
        POOL.get_message_by_name("apimachinery.pkg.runtime.TypeMeta")
            .unwrap(),
    );
    tm.set_field_by_name("apiVersion", PValue::String(api_version.into()));
    tm.set_field_by_name("kind", PValue::String(kind.into()));
    env.set_field_by_name("typeMeta", PValue::Message(tm));
    env.set_field_by_name("raw", PValue::Bytes(raw.into()));
    let mut out = MAGIC.to_vec();
    out.extend(env.encode_to_vec());
    out
}

#[test]
fn bad_bodies_get_clear_errors() {
    assert_eq!(decode_body(b"{\"kind\":\"Pod\"}"), Err(Error::NoEnvelope));
    assert!(matches!(
        decode_body(b"k8s\0\x0a\xff"),
        Err(Error::Envelope(_))
    ));
    assert_eq!(decode_body(&envelope("", "", vec![])), Err(Error::NoKind));
    assert_eq!(
        decode_body(&envelope("example.com/v1", "Widget", vec![])),
        Err(Error::UnknownKind {
            api_version: "example.com/v1".into(),
            kind: "Widget".into()
        })
    );
    let e = decode_body(&envelope("v1", "Pod", vec![0x0a, 0x05, 0x01])).unwrap_err();
    assert!(
        matches!(e, Error::Decode { ref kind, .. } if kind == "Pod"),
        "{e}"
    );
    // A time out of range is a decode error, not a panic.
    let t = POOL
        .get_message_by_name("apimachinery.pkg.apis.meta.v1.Time")
        .unwrap();
    let mut tm = DynamicMessage::new(t);
    tm.set_field_by_name("seconds", PValue::I64(i64::MAX));
    assert!(to_json(&tm).is_err());
    assert!(encode_object(&json!({"apiVersion": "v1", "kind": "Pod", "spec": 3})).is_err());
}

#[test]
fn kinds_map_to_their_messages() {
    for (av, kind, name) in [
        ("v1", "ConfigMap", "api.core.v1.ConfigMap"),
        ("apps/v1", "DaemonSet", "api.apps.v1.DaemonSet"),
        (
            "rbac.authorization.k8s.io/v1",
            "ClusterRole",
            "api.rbac.v1.ClusterRole",
        ),
        (
            "authentication.k8s.io/v1",
            "TokenRequest",
            "api.authentication.v1.TokenRequest",
        ),
        (
            "authorization.k8s.io/v1",
            "SelfSubjectAccessReview",
            "api.authorization.v1.SelfSubjectAccessReview",
        ),
        ("batch/v1", "Job", "api.batch.v1.Job"),
        (
            "networking.k8s.io/v1",
            "Ingress",
            "api.networking.v1.Ingress",
        ),
        ("v1", "Status", "apimachinery.pkg.apis.meta.v1.Status"),
        (
            "meta.k8s.io/v1",
            "DeleteOptions",
            "apimachinery.pkg.apis.meta.v1.DeleteOptions",
        ),
    ] {
        assert_eq!(
            message_for(av, kind)
                .map(|d| d.full_name().to_string())
                .as_deref(),
            Some(name)
        );
    }
}

#[test]
fn accept_negotiation() {
    assert!(prefers_protobuf(
        "application/vnd.kubernetes.protobuf, application/json"
    ));
    assert!(prefers_protobuf("application/vnd.kubernetes.protobuf"));
    assert!(!prefers_protobuf(
        "application/json, application/vnd.kubernetes.protobuf"
    ));
    assert!(!prefers_protobuf(
        "application/vnd.kubernetes.protobuf;as=Table;v=v1;g=meta.k8s.io"
    ));
    assert!(!prefers_protobuf(""));
}

#[test]
fn go_durations() {
    for (ns, s) in [
        (0, "0s"),
        (1_500_000_000, "1.5s"),
        (300_000_000, "300ms"),
        (3_600_000_000_000, "1h0m0s"),
        (61_000_000_000, "1m1s"),
        (-2_000, "-2µs"),
    ] {
        assert_eq!(transcode::go_duration(ns), s);
        assert_eq!(transcode::parse_go_duration(s).unwrap(), ns, "{s}");
    }
    assert!(transcode::parse_go_duration("5 parsecs").is_err());
}

#[test]
fn required_list_is_sorted_and_nonempty() {
    let r = transcode::REQUIRED;
    assert!(r.windows(2).all(|w| w[0] < w[1]));
    assert!(r.contains(&"api.core.v1.Container.name"));
    assert!(!r.contains(&"apimachinery.pkg.apis.meta.v1.ObjectMeta.namespace"));
}
