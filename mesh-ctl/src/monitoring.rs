//! `mesh-ctl up --monitoring`: Prometheus's configuration, and the pods it scrapes.
//!
//! Debian's Prometheus is built without Kubernetes service discovery (`kubernetes_sd_configs`
//! is refused as an unknown field), so the supervisor watches the cluster's pods and keeps a
//! `file_sd` file per pod job ([`POD_JOBS`]): every meshed pod's proxy admin endpoint (its
//! `mw-admin` port, 4191) and the identity service's (`admin`, 9990), each labelled with the
//! pod's namespace and name, as Linkerd's Prometheus labels its proxies' targets. On a real
//! cluster the same jobs are `kubernetes_sd_configs` pod roles kept to those containers' ports
//! (deploy/README.md).

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::Pod;
use kube::{runtime::watcher, Api, Client};
use meshwork_lab::Node;
use serde_json::{json, Value};

use crate::bringup::DNS_VIP;

/// Pods Prometheus scrapes, found by the supervisor's pod watch.
pub struct PodJob {
    pub job: &'static str,
    /// The `file_sd` file, in [`SD_DIR`].
    pub file: &'static str,
    /// Which pods: those `wanted` says, at their container of this name's port of this name.
    container: &'static str,
    port: &'static str,
    wanted: fn(&Pod) -> bool,
}

fn meshed(p: &Pod) -> bool {
    meshwork_destination_api::is_meshed(p.metadata.annotations.as_ref())
}

/// deploy/addons/meshwork-identity.yaml's pods.
fn identity_service(p: &Pod) -> bool {
    p.metadata.namespace.as_deref() == Some("meshwork-system")
        && p.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("app"))
            .is_some_and(|a| a == "meshwork-identity")
}

pub const PROXIES: PodJob = PodJob {
    job: "meshwork-proxy",
    file: "proxies.json",
    // The injected proxy (inject/src/lib.rs).
    container: meshwork_inject::PROXY_CONTAINER,
    port: "mw-admin",
    wanted: meshed,
};

pub const IDENTITY: PodJob = PodJob {
    job: "meshwork-identity",
    file: "identity.json",
    // deploy/addons/meshwork-identity.yaml.
    container: "identity",
    port: "admin",
    wanted: identity_service,
};

pub const POD_JOBS: [PodJob; 2] = [PROXIES, IDENTITY];

/// The `file_sd` files' directory in the state dir (`down` removes it whole, a half-written
/// file included).
pub const SD_DIR: &str = "prometheus-sd";

/// Scrape targets: every node's agent and runtime (on their nodes' addresses, reached over the
/// host link), DNS through its Service (a pod that may move), and the [`POD_JOBS`] from their
/// files in `dir` (pod addresses, routed to the pod network over the host link).
pub fn prometheus_config(nodes: &[Node], dir: &Path) -> String {
    // A JSON string is a YAML double-quoted scalar: any path, escaped.
    let quoted = |p: &Path| serde_json::to_string(&p.to_string_lossy()).unwrap_or_default();
    let list = |port: u16| {
        nodes
            .iter()
            .map(|n| format!("'{}:{port}'", n.underlay_ip))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut cfg = format!(
        "global:\n  scrape_interval: 5s\n  evaluation_interval: 5s\n\
         scrape_configs:\n\
         - job_name: meshwork-control\n  static_configs:\n  - targets: [{}]\n\
         - job_name: meshwork-node\n  static_configs:\n  - targets: [{}]\n\
         - job_name: meshwork-dns\n  static_configs:\n  - targets: ['{DNS_VIP}:9153']\n",
        list(10256),
        list(10250),
    );
    for j in &POD_JOBS {
        cfg.push_str(&format!(
            "- job_name: {}\n  file_sd_configs:\n  - files: [{}]\n    refresh_interval: 5s\n",
            j.job,
            quoted(&dir.join(j.file))
        ));
    }
    cfg
}

/// `job`'s `file_sd` target groups among `pods`: one per running pod it wants that has an
/// address and the named port, in a stable order (so an unchanged set writes nothing).
pub fn targets<'a>(job: &PodJob, pods: impl IntoIterator<Item = &'a Pod>) -> Value {
    let mut groups: Vec<(String, String, String)> = pods
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none() && (job.wanted)(p))
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
                .filter(|c| c.name == job.container)
                .flat_map(|c| c.ports.iter().flatten())
                .find(|cp| cp.name.as_deref() == Some(job.port))?
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

/// Makes `dir` with an empty target list for each of [`POD_JOBS`], so that Prometheus finds
/// its files at start; [`keep_pod_targets`] fills them.
pub fn init_pod_targets(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for j in &POD_JOBS {
        write_targets(&dir.join(j.file), &json!([]))?;
    }
    Ok(())
}

/// Follows every pod and rewrites a job's file in `dir` when its targets change. Runs until
/// the supervisor's runtime ends; a failed write is logged and tried again on the next change.
pub async fn keep_pod_targets(client: Client, dir: PathBuf) {
    let changes = meshwork_kube_watch::Changes::new();
    let mut changed = changes.subscribe();
    let (pods, _task) =
        meshwork_kube_watch::reflect(Api::<Pod>::all(client), watcher::Config::default(), changes);
    let mut last = vec![json!([]); POD_JOBS.len()];
    while changed.changed().await.is_ok() {
        let state = pods.state();
        for (j, last) in POD_JOBS.iter().zip(&mut last) {
            let now = targets(j, state.iter().map(|p| &**p));
            if now == *last {
                continue;
            }
            let path = dir.join(j.file);
            match write_targets(&path, &now) {
                Ok(()) => {
                    let n = now.as_array().map_or(0, Vec::len);
                    tracing::info!(job = j.job, targets = n, "Prometheus targets");
                    *last = now;
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "writing Prometheus targets")
                }
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
            targets(&PROXIES, &pods),
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
        assert_eq!(targets(&PROXIES, &[gone, bare]), json!([]));
    }

    #[test]
    fn the_identity_service_is_found_by_its_label_container_and_port() {
        let mut v = pod_json(
            "meshwork-identity-5d9f",
            false,
            "Running",
            Some("10.244.1.4"),
        );
        v["metadata"]["labels"] = json!({"app": "meshwork-identity"});
        v["metadata"]["namespace"] = json!("meshwork-system");
        v["spec"]["containers"] = json!([{"name": "identity", "ports": [
            {"name": "grpc", "containerPort": 8080}, {"name": "admin", "containerPort": 9990}]}]);
        let identity: Pod = serde_json::from_value(v.clone()).unwrap();
        let other = pod("a", true, "Running", Some("10.244.1.3"));
        // The same labels elsewhere are somebody else's.
        v["metadata"]["namespace"] = json!("shop");
        let lookalike: Pod = serde_json::from_value(v).unwrap();
        assert_eq!(
            targets(&IDENTITY, [&identity, &other, &lookalike]),
            json!([{"targets": ["10.244.1.4:9990"],
                    "labels": {"namespace": "meshwork-system", "pod": "meshwork-identity-5d9f"}}])
        );
        assert_eq!(targets(&PROXIES, [&identity]), json!([]));
    }

    #[test]
    fn the_config_scrapes_the_pod_jobs_files() {
        let cfg = prometheus_config(&[], Path::new("/s/it's"));
        for want in [
            "- job_name: meshwork-proxy\n  file_sd_configs:\n  - files: [\"/s/it's/proxies.json\"]",
            "- job_name: meshwork-identity\n  file_sd_configs:\n  - files: [\"/s/it's/identity.json\"]",
        ] {
            assert!(cfg.contains(want), "{cfg}");
        }
    }
}
