//! Putting `meshwork-proxy` into a pod spec and taking it out again: one function for the
//! admission webhook (`webhook.rs`, what a cluster registers) and for `mesh-ctl inject` /
//! `uninject` (offline, on manifests), so both write the same pod.
//!
//! The proxy goes in as a Kubernetes native sidecar (an init container with
//! `restartPolicy: Always`, first in the list), with a startupProbe on its `/ready`: the
//! node runtime starts the other init containers and the app only once the proxy has its
//! certificate and serves (ARCHITECTURE.md, "Meshing a pod"). Its identity comes from a
//! projected ServiceAccount token for the identity service's audience and the trust roots
//! ConfigMap; its discovery from the node's control agent at `$(HOST_IP):8086`.

pub mod manifest;
pub mod pki;
pub mod webhook;

use serde_json::{json, Map, Value};

/// The annotation (namespace or pod template) that asks for injection: `enabled` or
/// `disabled` (a pod's own value wins over its namespace's), as `linkerd.io/inject`.
pub const INJECT: &str = "meshwork.io/inject";
/// On a pod or its namespace (the pod's wins): `strict` makes its proxy refuse plaintext from
/// outside the mesh; `permissive`, the default, as Linkerd's. Read at injection, like
/// Linkerd's `config.linkerd.io/default-inbound-policy`: a change reaches pods made after it.
pub const INBOUND_POLICY: &str = "meshwork.io/inbound-policy";
/// On a pod or its namespace (the pod's wins): `host:port` of an OpenTelemetry collector's
/// OTLP/HTTP receiver, where the proxy sends spans of sampled requests, as Linkerd's
/// `config.linkerd.io/trace-collector`.
pub const TRACE_COLLECTOR: &str = "config.meshwork.io/trace-collector";
/// Set on injected pods: what injected them (the proxy image), so a second pass is a no-op
/// and `uninject` knows what to remove.
pub const INJECTED: &str = "meshwork.io/injected";
pub const PROXY_CONTAINER: &str = "meshwork-proxy";
const TOKEN_VOLUME: &str = "meshwork-identity-token";
const ROOTS_VOLUME: &str = "meshwork-trust-roots";
/// The identity service's token audience and where the proxy reads token and roots (the
/// proxy's defaults, `proxy/src/config.rs`).
pub const IDENTITY_AUDIENCE: &str = "identity.meshwork.io";
const TOKEN_DIR: &str = "/var/run/secrets/meshwork.io/identity";
const ROOTS_DIR: &str = "/var/run/meshwork.io/trust-roots";
pub const TRUST_ROOTS_CONFIGMAP: &str = "meshwork-identity-trust-roots";
pub const INBOUND_PORT: u16 = 4143;
pub const ADMIN_PORT: u16 = 4191;

/// What the injected proxy is configured with.
#[derive(Clone, Debug)]
pub struct Config {
    pub proxy_image: String,
    /// The identity service (host:port) the proxy asks for its certificate.
    pub identity_addr: String,
    pub log: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            proxy_image: "meshwork-proxy".into(),
            identity_addr: "meshwork-identity.meshwork-system.svc:8080".into(),
            log: "info".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("annotation {key}: {why}")]
    Annotation { key: &'static str, why: String },
    #[error("{0} is not a kind that carries a pod template")]
    NotAWorkload(String),
    #[error("{0}: no pod spec at {1}")]
    NoPodSpec(String, &'static str),
}

/// Where a kind keeps its pod template's metadata and spec (JSON pointers), or None.
fn template_of(kind: &str) -> Option<(&'static str, &'static str)> {
    Some(match kind {
        "Pod" => ("/metadata", "/spec"),
        "Deployment"
        | "ReplicaSet"
        | "StatefulSet"
        | "DaemonSet"
        | "Job"
        | "ReplicationController" => ("/spec/template/metadata", "/spec/template/spec"),
        "CronJob" => (
            "/spec/jobTemplate/spec/template/metadata",
            "/spec/jobTemplate/spec/template/spec",
        ),
        _ => return None,
    })
}

/// Whether this pod (by its own annotations and its namespace's) asks for the proxy.
/// `disabled` on the pod wins; host-network pods are never meshed (their traffic is the
/// node's).
pub fn wants_injection(pod_meta: &Value, pod_spec: &Value, ns_meta: Option<&Value>) -> bool {
    let ann = |m: Option<&Value>| {
        m.and_then(|m| m["annotations"][INJECT].as_str())
            .map(str::to_string)
    };
    if pod_spec["hostNetwork"] == true {
        return false;
    }
    match ann(Some(pod_meta)).as_deref() {
        Some("enabled") => true,
        Some(_) => false,
        None => ann(ns_meta).as_deref() == Some("enabled"),
    }
}

/// Whether `spec` already carries the proxy.
pub fn injected(spec: &Value) -> bool {
    ["initContainers", "containers"].iter().any(|list| {
        spec[list]
            .as_array()
            .is_some_and(|cs| cs.iter().any(|c| c["name"] == PROXY_CONTAINER))
    })
}

fn array<'a>(v: &'a mut Value, key: &str) -> &'a mut Vec<Value> {
    if !v[key].is_array() {
        v[key] = json!([]);
    }
    match &mut v[key] {
        Value::Array(a) => a,
        _ => unreachable!("just made an array"),
    }
}

fn object<'a>(v: &'a mut Value, key: &str) -> &'a mut Map<String, Value> {
    if !v[key].is_object() {
        v[key] = json!({});
    }
    match &mut v[key] {
        Value::Object(m) => m,
        _ => unreachable!("just made an object"),
    }
}

/// The proxy container.
pub fn proxy_container(cfg: &Config) -> Value {
    let field = |path: &str| json!({"fieldRef": {"fieldPath": path}});
    json!({
        "name": PROXY_CONTAINER,
        "image": cfg.proxy_image,
        "restartPolicy": "Always",
        "env": [
            {"name": "POD_NAMESPACE", "valueFrom": field("metadata.namespace")},
            {"name": "SERVICE_ACCOUNT", "valueFrom": field("spec.serviceAccountName")},
            {"name": "HOST_IP", "valueFrom": field("status.hostIP")},
            {"name": "MESHWORK_PROXY_IDENTITY_ADDR", "value": cfg.identity_addr},
            {"name": "MESHWORK_PROXY_DESTINATION_ADDR",
             "value": format!("$(HOST_IP):{}", meshwork_destination_api::DEFAULT_PORT)},
            {"name": "MESHWORK_LOG", "value": cfg.log},
        ],
        "ports": [
            {"name": "mw-inbound", "containerPort": INBOUND_PORT},
            {"name": "mw-admin", "containerPort": ADMIN_PORT},
        ],
        "volumeMounts": [
            {"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true},
            {"name": ROOTS_VOLUME, "mountPath": ROOTS_DIR, "readOnly": true},
        ],
        // Certified and serving: the app starts after this (the node runtime's sidecar
        // order), so its first request finds the proxy ready.
        "startupProbe": {"httpGet": {"path": "/ready", "port": ADMIN_PORT},
                         "periodSeconds": 1, "failureThreshold": 120},
        "readinessProbe": {"httpGet": {"path": "/ready", "port": ADMIN_PORT}, "periodSeconds": 2},
        "livenessProbe": {"httpGet": {"path": "/live", "port": ADMIN_PORT}, "periodSeconds": 10},
    })
}

/// The proxy's settings that annotations on the pod, else on its namespace, ask for: env
/// entries of its container. A value the proxy would refuse at start is refused here, so the
/// pod's creation fails with the reason instead of its proxy crash-looping.
fn annotated_env(meta: &Value, ns_meta: Option<&Value>) -> Result<Vec<Value>, Error> {
    let get = |key: &str| {
        meta["annotations"][key]
            .as_str()
            .or_else(|| ns_meta.and_then(|n| n["annotations"][key].as_str()))
    };
    let mut env = Vec::new();
    if let Some(p) = get(INBOUND_POLICY) {
        if !matches!(p, "strict" | "permissive") {
            return Err(Error::Annotation {
                key: INBOUND_POLICY,
                why: format!("{p:?} is neither strict nor permissive"),
            });
        }
        env.push(json!({"name": "MESHWORK_PROXY_INBOUND_POLICY", "value": p}));
    }
    let opaque = meshwork_destination_api::OPAQUE_PORTS;
    if let Some(p) = get(opaque) {
        meshwork_destination_api::parse_ports(p)
            .map_err(|why| Error::Annotation { key: opaque, why })?;
        env.push(json!({"name": "MESHWORK_PROXY_INBOUND_OPAQUE_PORTS", "value": p}));
    }
    let routes = meshwork_destination_api::routes::ROUTES;
    if let Some(r) = get(routes) {
        meshwork_destination_api::routes::Routes::parse(r)
            .map_err(|why| Error::Annotation { key: routes, why })?;
        env.push(json!({"name": "MESHWORK_PROXY_INBOUND_ROUTES", "value": r}));
    }
    if let Some(c) = get(TRACE_COLLECTOR) {
        meshwork_destination_api::check_host_port(c).map_err(|why| Error::Annotation {
            key: TRACE_COLLECTOR,
            why,
        })?;
        env.push(json!({"name": "MESHWORK_PROXY_TRACE_COLLECTOR", "value": c}));
    }
    Ok(env)
}

/// The pod's plain-HTTP probe targets (`PORT:/path`, space-separated; named ports resolved),
/// for its proxy to let through under `strict` policy: kubelet probes come from outside the
/// mesh. HTTPS probes are left out (TLS from outside the mesh is not one of them).
fn probe_paths(spec: &Value) -> String {
    let mut out: Vec<(u16, String)> = Vec::new();
    for list in ["containers", "initContainers"] {
        for c in spec[list].as_array().into_iter().flatten() {
            for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
                let get = &c[probe]["httpGet"];
                let https = get["scheme"]
                    .as_str()
                    .is_some_and(|s| !s.eq_ignore_ascii_case("http"));
                if !get.is_object() || https {
                    continue;
                }
                let port = match &get["port"] {
                    Value::Number(n) => n.as_u64(),
                    Value::String(name) => name.parse().ok().or_else(|| {
                        c["ports"].as_array()?.iter().find(|p| p["name"] == *name)?["containerPort"]
                            .as_u64()
                    }),
                    _ => None,
                };
                let Some(port) = port.and_then(|p| u16::try_from(p).ok()) else {
                    continue;
                };
                let path = get["path"].as_str().unwrap_or("/");
                let path = if path.starts_with('/') {
                    path.to_string()
                } else {
                    format!("/{path}")
                };
                if !out.contains(&(port, path.clone())) {
                    out.push((port, path));
                }
            }
        }
    }
    meshwork_destination_api::write_probe_paths(out.iter().map(|(p, s)| (*p, s.as_str())))
}

/// Adds the proxy to a pod's metadata and spec, configured by the pod's annotations and
/// its namespace's (`ns_meta`, when known); false when it was there already.
pub fn inject_pod(
    meta: &mut Value,
    spec: &mut Value,
    ns_meta: Option<&Value>,
    cfg: &Config,
) -> Result<bool, Error> {
    if injected(spec) {
        return Ok(false);
    }
    let mut proxy = proxy_container(cfg);
    array(&mut proxy, "env").extend(annotated_env(meta, ns_meta)?);
    let probes = probe_paths(spec);
    if !probes.is_empty() {
        array(&mut proxy, "env")
            .push(json!({"name": "MESHWORK_PROXY_INBOUND_PROBE_PATHS", "value": probes}));
    }
    array(spec, "initContainers").insert(0, proxy);
    let vols = array(spec, "volumes");
    vols.push(json!({"name": TOKEN_VOLUME, "projected": {"sources": [
        {"serviceAccountToken": {"audience": IDENTITY_AUDIENCE, "expirationSeconds": 3600, "path": "token"}}]}}));
    vols.push(json!({"name": ROOTS_VOLUME, "configMap": {"name": TRUST_ROOTS_CONFIGMAP}}));
    // The namespace's opaque ports go onto the pod too (Linkerd's injector copies them): the
    // agent's discovery reads a pod's annotations, not its namespace's, and its clients would
    // otherwise detect on those ports, waiting out the detection timeout for a server that
    // speaks first.
    let ns_opaque = ns_meta
        .and_then(|n| n["annotations"][meshwork_destination_api::OPAQUE_PORTS].as_str())
        .map(str::to_string);
    let ann = object(meta, "annotations");
    if let Some(p) = ns_opaque {
        ann.entry(meshwork_destination_api::OPAQUE_PORTS)
            .or_insert_with(|| json!(p));
    }
    ann.insert(INJECTED.into(), json!(cfg.proxy_image));
    ann.insert(
        meshwork_destination_api::PROXY_INBOUND_PORT.into(),
        json!(INBOUND_PORT.to_string()),
    );
    Ok(true)
}

/// Takes out what `inject_pod` put in; false when there was nothing.
pub fn uninject_pod(meta: &mut Value, spec: &mut Value) -> bool {
    let mut changed = false;
    for list in ["initContainers", "containers"] {
        if let Some(cs) = spec[list].as_array_mut() {
            let n = cs.len();
            cs.retain(|c| c["name"] != PROXY_CONTAINER);
            changed |= cs.len() != n;
            if cs.is_empty() && list == "initContainers" {
                if let Some(m) = spec.as_object_mut() {
                    m.remove(list);
                }
            }
        }
    }
    if let Some(vs) = spec["volumes"].as_array_mut() {
        vs.retain(|v| v["name"] != TOKEN_VOLUME && v["name"] != ROOTS_VOLUME);
        if vs.is_empty() {
            if let Some(m) = spec.as_object_mut() {
                m.remove("volumes");
            }
        }
    }
    if let Some(ann) = meta["annotations"].as_object_mut() {
        changed |= ann.remove(INJECTED).is_some();
        ann.remove(meshwork_destination_api::PROXY_INBOUND_PORT);
        if ann.is_empty() {
            if let Some(m) = meta.as_object_mut() {
                m.remove("annotations");
            }
        }
    }
    changed
}

/// `inject_pod` or `uninject_pod` on the pod template of a workload object (Pod,
/// Deployment, ReplicaSet, StatefulSet, DaemonSet, Job, CronJob, ReplicationController).
/// Whether it changed. An object of any other kind is an error the caller may pass over.
pub fn apply_to_object(obj: &mut Value, cfg: Option<&Config>) -> Result<bool, Error> {
    let kind = obj["kind"].as_str().unwrap_or("").to_string();
    let (meta_at, spec_at) = template_of(&kind).ok_or_else(|| Error::NotAWorkload(kind.clone()))?;
    if obj.pointer(spec_at).is_none_or(|s| !s.is_object()) {
        return Err(Error::NoPodSpec(kind, spec_at));
    }
    // The template's metadata may be absent: make it.
    if obj.pointer(meta_at).is_none() {
        let (parent, key) = meta_at.rsplit_once('/').unwrap_or(("", "metadata"));
        if let Some(Value::Object(p)) = obj.pointer_mut(parent) {
            p.insert(key.into(), json!({}));
        }
    }
    let mut meta = obj.pointer(meta_at).cloned().unwrap_or_else(|| json!({}));
    let mut spec = obj.pointer(spec_at).cloned().unwrap_or_else(|| json!({}));
    let changed = match cfg {
        Some(cfg) => inject_pod(&mut meta, &mut spec, None, cfg)?,
        None => uninject_pod(&mut meta, &mut spec),
    };
    if changed {
        if let Some(m) = obj.pointer_mut(meta_at) {
            *m = meta;
        }
        if let Some(s) = obj.pointer_mut(spec_at) {
            *s = spec;
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;

    fn deployment() -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"},
               "spec": {"template": {"spec": {
                   "initContainers": [{"name": "migrate", "image": "busybox"}],
                   "containers": [{"name": "web", "image": "nginx"}]}}}})
    }

    #[test]
    fn inject_is_idempotent_and_uninject_restores_the_object() {
        let cfg = Config::default();
        let orig = deployment();
        let mut d = orig.clone();
        assert!(apply_to_object(&mut d, Some(&cfg)).unwrap());
        let spec = &d["spec"]["template"]["spec"];
        // First among the init containers, as a native sidecar with a startup probe.
        assert_eq!(spec["initContainers"][0]["name"], PROXY_CONTAINER);
        assert_eq!(spec["initContainers"][0]["restartPolicy"], "Always");
        assert!(spec["initContainers"][0]["startupProbe"]["httpGet"].is_object());
        assert_eq!(spec["initContainers"][1]["name"], "migrate");
        assert_eq!(spec["volumes"].as_array().unwrap().len(), 2);
        let ann = &d["spec"]["template"]["metadata"]["annotations"];
        assert_eq!(ann[meshwork_destination_api::PROXY_INBOUND_PORT], "4143");
        // Twice is once.
        let once = d.clone();
        assert!(!apply_to_object(&mut d, Some(&cfg)).unwrap());
        assert_eq!(d, once);
        // Uninject gives back the original, metadata included.
        assert!(apply_to_object(&mut d, None).unwrap());
        let mut want = orig;
        want["spec"]["template"]["metadata"] = json!({});
        assert_eq!(d, want);
        assert!(!apply_to_object(&mut d, None).unwrap());
    }

    #[test]
    fn kinds_and_opt_in() {
        let cfg = Config::default();
        let mut svc = json!({"kind": "Service", "spec": {}});
        assert!(matches!(
            apply_to_object(&mut svc, Some(&cfg)),
            Err(Error::NotAWorkload(_))
        ));
        let mut cj = json!({"kind": "CronJob", "spec": {"jobTemplate": {"spec": {"template": {
            "spec": {"containers": [{"name": "c", "image": "i"}]}}}}}});
        assert!(apply_to_object(&mut cj, Some(&cfg)).unwrap());
        let mut broken = json!({"kind": "Deployment", "spec": {}});
        assert!(matches!(
            apply_to_object(&mut broken, Some(&cfg)),
            Err(Error::NoPodSpec(..))
        ));

        let on = json!({"annotations": {INJECT: "enabled"}});
        let off = json!({"annotations": {INJECT: "disabled"}});
        let none = json!({});
        let spec = json!({});
        assert!(wants_injection(&on, &spec, None));
        assert!(wants_injection(&none, &spec, Some(&on)));
        assert!(!wants_injection(&off, &spec, Some(&on)));
        assert!(!wants_injection(&none, &spec, Some(&none)));
        assert!(!wants_injection(&on, &json!({"hostNetwork": true}), None));
    }

    #[test]
    fn http_probes_are_handed_to_the_proxy() {
        let spec = json!({"containers": [
            {"name": "web", "ports": [{"name": "http", "containerPort": 8080}],
             "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}},
             "livenessProbe": {"httpGet": {"port": 8080}},
             "startupProbe": {"httpGet": {"path": "/ready", "port": 8080}}},
            {"name": "tls", "readinessProbe": {"httpGet": {"port": 8443, "scheme": "HTTPS"}}},
            {"name": "tcp", "readinessProbe": {"tcpSocket": {"port": 5432}}},
        ]});
        let parsed = meshwork_destination_api::parse_probe_paths(&probe_paths(&spec)).unwrap();
        assert_eq!(
            parsed,
            [(8080, "/ready".to_string()), (8080, "/".to_string())]
        );
        let (mut meta, mut spec) = (json!({}), spec);
        assert!(inject_pod(&mut meta, &mut spec, None, &Config::default()).unwrap());
        let env = spec["initContainers"][0]["env"].to_string();
        assert!(
            env.contains(r#""MESHWORK_PROXY_INBOUND_PROBE_PATHS","value":"8080:/ready 8080:/""#),
            "{env}"
        );
    }

    #[test]
    fn policy_opaque_ports_and_routes_come_from_the_pod_else_its_namespace() {
        let cfg = Config::default();
        let opaque = meshwork_destination_api::OPAQUE_PORTS;
        let env_of = |meta: Value, ns: Option<Value>| {
            let (mut meta, mut spec) = (meta, json!({"containers": [{"name": "c"}]}));
            inject_pod(&mut meta, &mut spec, ns.as_ref(), &cfg).map(|_| {
                spec["initContainers"][0]["env"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(|e| Some((e["name"].as_str()?.to_string(), e["value"].clone())))
                    .filter(|(n, _)| n.starts_with("MESHWORK_PROXY_INBOUND"))
                    .collect::<Vec<_>>()
            })
        };
        let ann = |a: Value| json!({ "annotations": a });
        let ns = ann(json!({INBOUND_POLICY: "strict", opaque: "9000-9010"}));
        // The namespace's opaque ports are copied onto the pod, for discovery's hint to its
        // clients; a pod's own stay.
        for (pod, want) in [
            (json!({}), "9000-9010"),
            (ann(json!({opaque: "7000"})), "7000"),
        ] {
            let (mut meta, mut spec) = (pod, json!({"containers": [{"name": "c"}]}));
            inject_pod(&mut meta, &mut spec, Some(&ns), &cfg).unwrap();
            assert_eq!(meta["annotations"][opaque], want, "{meta}");
        }
        // The namespace's, when the pod says nothing.
        assert_eq!(
            env_of(json!({}), Some(ns.clone())).unwrap(),
            [
                ("MESHWORK_PROXY_INBOUND_POLICY".into(), json!("strict")),
                (
                    "MESHWORK_PROXY_INBOUND_OPAQUE_PORTS".into(),
                    json!("9000-9010")
                ),
            ]
        );
        // The pod's wins, key by key.
        assert_eq!(
            env_of(ann(json!({INBOUND_POLICY: "permissive"})), Some(ns)).unwrap(),
            [
                ("MESHWORK_PROXY_INBOUND_POLICY".into(), json!("permissive")),
                (
                    "MESHWORK_PROXY_INBOUND_OPAQUE_PORTS".into(),
                    json!("9000-9010")
                ),
            ]
        );
        // Routes for the pod's inbound metrics, the same way.
        let routes = meshwork_destination_api::routes::ROUTES;
        assert_eq!(
            env_of(json!({}), Some(ann(json!({routes: "GET /books/{id}"})))).unwrap(),
            [(
                "MESHWORK_PROXY_INBOUND_ROUTES".into(),
                json!("GET /books/{id}")
            )]
        );
        // Neither: the proxy's defaults.
        assert!(env_of(json!({}), None).unwrap().is_empty());
        // The trace collector, the same way.
        let (mut meta, mut spec) = (
            ann(json!({TRACE_COLLECTOR: "otel-collector.observability:4318"})),
            json!({"containers": [{"name": "c"}]}),
        );
        inject_pod(&mut meta, &mut spec, None, &cfg).unwrap();
        assert!(
            spec["initContainers"][0]["env"]
                .as_array()
                .unwrap()
                .contains(&json!({"name": "MESHWORK_PROXY_TRACE_COLLECTOR",
                                  "value": "otel-collector.observability:4318"})),
            "{spec}"
        );
        // What the proxy would refuse at start is refused here, by name.
        for bad in [
            ann(json!({INBOUND_POLICY: "Strict"})),
            ann(json!({opaque: "80-70"})),
            ann(json!({opaque: "http"})),
            ann(json!({meshwork_destination_api::routes::ROUTES: "GET books"})),
            ann(json!({TRACE_COLLECTOR: "otel-collector"})),
            ann(json!({TRACE_COLLECTOR: "otel-collector:otlp"})),
        ] {
            let e = env_of(bad.clone(), None).unwrap_err().to_string();
            assert!(e.starts_with("annotation "), "{bad}: {e}");
        }
    }
}
