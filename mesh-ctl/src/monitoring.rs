//! `mesh-ctl up --monitoring`: Prometheus's configuration, and the list of meshed pods' proxies
//! it scrapes.
//!
//! Debian's Prometheus is built without Kubernetes service discovery (`kubernetes_sd_configs`
//! is refused as an unknown field), so the supervisor watches the cluster's pods and keeps a
//! `file_sd` file with every meshed pod's proxy admin endpoint (its `mw-admin` port, 4191),
//! labelled with the pod's namespace and name, as Linkerd's Prometheus labels its proxies'
//! targets. On a real cluster the same job is a `kubernetes_sd_configs` pod role kept to the
//! `meshwork-proxy` container's `mw-admin` port (deploy/README.md).

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;
use kube::{runtime::watcher, Api, Client};
use meshwork_lab::Node;
use serde_json::{json, Value};

use crate::bringup::DNS_VIP;

/// The `file_sd` file next to `prometheus.yml`.
pub const PROXIES_FILE: &str = "prometheus-proxies.json";
/// The admin port's name in the injected proxy container (inject/src/lib.rs).
const ADMIN_PORT_NAME: &str = "mw-admin";

/// Scrape targets: every node's agent and runtime (on their nodes' addresses, reached over the
/// host link), DNS through its Service (a pod that may move), and the meshed pods' proxies
/// from `proxies` (their pod addresses, routed to the pod network over the host link).
pub fn prometheus_config(nodes: &[Node], proxies: &Path) -> String {
    let list = |port: u16| {
        nodes
            .iter()
            .map(|n| format!("'{}:{port}'", n.underlay_ip))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "global:\n  scrape_interval: 5s\n  evaluation_interval: 5s\n\
         scrape_configs:\n\
         - job_name: meshwork-control\n  static_configs:\n  - targets: [{}]\n\
         - job_name: meshwork-node\n  static_configs:\n  - targets: [{}]\n\
         - job_name: meshwork-dns\n  static_configs:\n  - targets: ['{DNS_VIP}:9153']\n\
         - job_name: meshwork-proxy\n  file_sd_configs:\n  - files: ['{}']\n    refresh_interval: 5s\n",
        list(10256),
        list(10250),
        proxies.display(),
    )
}

/// The `file_sd` target groups for `pods`: one per running meshed pod with an address and the
/// injected proxy's admin port, in a stable order (so an unchanged set writes nothing).
pub fn proxy_targets<'a>(pods: impl IntoIterator<Item = &'a Pod>) -> Value {
    let mut groups: Vec<(String, String, String)> =
        pods.into_iter()
            .filter(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && p.metadata.annotations.as_ref().is_some_and(|a| {
                        a.contains_key(meshwork_destination_api::PROXY_INBOUND_PORT)
                    })
            })
            .filter_map(|p| {
                let status = p.status.as_ref()?;
                if status.phase.as_deref() != Some("Running") {
                    return None;
                }
                let ip = status.pod_ip.as_deref()?;
                let spec = p.spec.as_ref()?;
                let port = spec
                    .init_containers
                    .iter()
                    .flatten()
                    .chain(&spec.containers)
                    .filter(|c| c.name == meshwork_inject::PROXY_CONTAINER)
                    .flat_map(|c| c.ports.iter().flatten())
                    .find(|cp| cp.name.as_deref() == Some(ADMIN_PORT_NAME))?
                    .container_port;
                let target = if ip.contains(':') {
                    format!("[{ip}]:{port}")
                } else {
                    format!("{ip}:{port}")
                };
                Some((
                    p.metadata.namespace.clone().unwrap_or_default(),
                    p.metadata.name.clone().unwrap_or_default(),
                    target,
                ))
            })
            .collect();
    groups.sort();
    Value::Array(
        groups
            .into_iter()
            .map(|(namespace, pod, target)| {
                json!({"targets": [target], "labels": {"namespace": namespace, "pod": pod}})
            })
            .collect(),
    )
}

/// Writes `v` to `path` whole (a temporary file renamed over it): Prometheus never reads half.
pub fn write_targets(path: &Path, v: &Value) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, format!("{v:#}\n"))?;
    std::fs::rename(&tmp, path)
}

/// Follows every pod and rewrites `path` when the proxies to scrape change. Runs until the
/// supervisor's runtime ends; a failed write is logged and tried again on the next change.
pub async fn keep_proxy_targets(client: Client, path: PathBuf) {
    let changes = meshwork_kube_watch::Changes::new();
    let mut changed = changes.subscribe();
    let (pods, _task) =
        meshwork_kube_watch::reflect(Api::<Pod>::all(client), watcher::Config::default(), changes);
    let mut last = Value::Null;
    while changed.changed().await.is_ok() {
        let now = proxy_targets(pods.state().iter().map(|p| &**p));
        if now == last {
            continue;
        }
        match write_targets(&path, &now) {
            Ok(()) => {
                tracing::info!(
                    proxies = now.as_array().map_or(0, Vec::len),
                    "Prometheus proxy targets"
                );
                last = now;
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "writing Prometheus proxy targets")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;

    fn pod_json(name: &str, meshed: bool, phase: &str, ip: Option<&str>) -> Value {
        let annotations = if meshed {
            json!({"meshwork.io/proxy-inbound-port": "4143"})
        } else {
            json!({})
        };
        json!({
            "metadata": {"name": name, "namespace": "shop", "annotations": annotations},
            "spec": {
                "initContainers": [{"name": "meshwork-proxy", "ports": [
                    {"name": "mw-inbound", "containerPort": 4143},
                    {"name": "mw-admin", "containerPort": 4191}]}],
                "containers": [{"name": "app", "ports": [{"name": "mw-admin", "containerPort": 9}]}]
            },
            "status": {"phase": phase, "podIP": ip}
        })
    }

    fn pod(name: &str, meshed: bool, phase: &str, ip: Option<&str>) -> Pod {
        serde_json::from_value(pod_json(name, meshed, phase, ip)).unwrap()
    }

    #[test]
    fn running_meshed_pods_become_targets_at_their_proxy_admin_port() {
        let pods = [
            pod("b", true, "Running", Some("10.244.0.7")),
            pod("a", true, "Running", Some("10.244.1.3")),
            pod("plain", false, "Running", Some("10.244.0.8")),
            pod("starting", true, "Pending", None),
            pod("done", true, "Succeeded", Some("10.244.0.9")),
        ];
        assert_eq!(
            proxy_targets(&pods),
            json!([
                {"targets": ["10.244.1.3:4191"], "labels": {"namespace": "shop", "pod": "a"}},
                {"targets": ["10.244.0.7:4191"], "labels": {"namespace": "shop", "pod": "b"}},
            ])
        );
    }

    #[test]
    fn a_terminating_pod_and_one_without_the_admin_port_are_left_out() {
        let mut gone = pod_json("gone", true, "Running", Some("10.244.0.7"));
        gone["metadata"]["deletionTimestamp"] = json!("2026-12-07T10:00:00Z");
        let gone: Pod = serde_json::from_value(gone).unwrap();
        let mut bare = pod_json("bare", true, "Running", Some("10.244.0.8"));
        bare["spec"]["initContainers"] = json!([]);
        let bare: Pod = serde_json::from_value(bare).unwrap();
        assert_eq!(proxy_targets(&[gone, bare]), json!([]));
    }

    #[test]
    fn the_config_scrapes_the_targets_file() {
        let cfg = prometheus_config(&[], Path::new("/s/prometheus-proxies.json"));
        assert!(
            cfg.contains("- job_name: meshwork-proxy\n  file_sd_configs:\n  - files: ['/s/prometheus-proxies.json']"),
            "{cfg}"
        );
    }
}
