//! Node registration and heartbeats, the kubelet's way since Kubernetes 1.17: the heartbeat is
//! a coordination.k8s.io Lease in `kube-node-lease` renewed every interval, and the Node's
//! status is written only when it changes or every `STATUS_REPORT` (kube's
//! nodeStatusReportFrequency, 5 minutes). Every Node write wakes every watcher of Nodes (each
//! node's agent, the controllers); a Lease renewal wakes only the node lifecycle controller.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::Context;
use k8s_openapi::{
    api::{
        coordination::v1::{Lease, LeaseSpec},
        core::v1::{
            DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeStatus,
            NodeSystemInfo,
        },
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time},
    },
};
use kube::{
    api::{Api, Patch, PatchParams, PostParams},
    Resource,
};

use super::{
    kubelet::{Kubelet, Settings},
    runtime::{find_cni_config, PodRuntime},
};
use crate::api::{kind::now_seconds, noderestriction::NODE_LEASE_NAMESPACE};

/// The Node status is written at least this often even when nothing changed.
pub const STATUS_REPORT: Duration = Duration::from_secs(300);

/// What was last written, to write again only on change.
#[derive(Default)]
pub(crate) struct Reported {
    status: Option<NodeStatus>,
    at: Option<Instant>,
    lease: Option<Lease>,
    node_uid: Option<String>,
}

/// The status with heartbeat times cleared: two statuses that differ only in those are the
/// same report.
fn without_heartbeats(s: &NodeStatus) -> NodeStatus {
    let mut s = s.clone();
    for c in s.conditions.iter_mut().flatten() {
        c.last_heartbeat_time = None;
    }
    s
}

/// The Node status this node reports now: its conditions (Ready follows the CNI config, as
/// the kubelet's NetworkReady), addresses, capacity and system info. `old` keeps transition
/// times of conditions that did not change.
pub(crate) fn node_status(
    s: &Settings,
    network: bool,
    old: &[NodeCondition],
    now: Time,
) -> NodeStatus {
    let cond = |type_: &str, status: &str, reason: &str, message: &str| {
        let prev = old.iter().find(|c| c.type_ == type_);
        NodeCondition {
            type_: type_.into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(message.into()),
            last_heartbeat_time: Some(now.clone()),
            last_transition_time: match prev {
                Some(p) if p.status == status => p.last_transition_time.clone(),
                _ => Some(now.clone()),
            },
        }
    };
    let ready = if network {
        cond(
            "Ready",
            "True",
            "KubeletReady",
            "kubelet is posting ready status",
        )
    } else {
        cond(
            "Ready",
            "False",
            "KubeletNotReady",
            "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:Network plugin returns error: cni plugin not initialized",
        )
    };
    let capacity: BTreeMap<String, Quantity> = [
        ("cpu".to_string(), Quantity(s.cpu.clone())),
        ("memory".to_string(), Quantity(s.memory.clone())),
        ("pods".to_string(), Quantity(s.max_pods.to_string())),
    ]
    .into();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    NodeStatus {
        addresses: Some(vec![
            NodeAddress {
                type_: "InternalIP".into(),
                address: s.node_ip.to_string(),
            },
            NodeAddress {
                type_: "Hostname".into(),
                address: s.node_name.clone(),
            },
        ]),
        allocatable: Some(capacity.clone()),
        capacity: Some(capacity),
        conditions: Some(vec![
            cond(
                "MemoryPressure",
                "False",
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
            ),
            cond(
                "DiskPressure",
                "False",
                "KubeletHasNoDiskPressure",
                "kubelet has no disk pressure",
            ),
            cond(
                "PIDPressure",
                "False",
                "KubeletHasSufficientPID",
                "kubelet has sufficient PID available",
            ),
            ready,
        ]),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(DaemonEndpoint {
                port: s.port as i32,
            }),
        }),
        node_info: Some(NodeSystemInfo {
            architecture: std::env::consts::ARCH.replace("x86_64", "amd64"),
            container_runtime_version: format!("meshwork://{}", env!("CARGO_PKG_VERSION")),
            kernel_version: kernel,
            kubelet_version: format!("v1.{}.0-meshwork", crate::api::KUBE_MINOR),
            kube_proxy_version: String::new(),
            operating_system: "linux".into(),
            os_image: "Meshwork node runtime".into(),
            boot_id: String::new(),
            machine_id: String::new(),
            system_uuid: String::new(),
            swap: None,
        }),
        ..Default::default()
    }
}

impl<R: PodRuntime> Kubelet<R> {
    /// Registers the Node if it is not there and writes its status when it changed, when
    /// `force`d, or when the last write is older than [`STATUS_REPORT`].
    pub(crate) async fn report_node(&self, rep: &mut Reported, force: bool) -> anyhow::Result<()> {
        let s = &self.inner.s;
        let api: Api<Node> = Api::all(self.inner.client.clone());
        let existing = match api.get_opt(&s.node_name).await? {
            Some(n) => n,
            None => {
                let n = Node {
                    metadata: ObjectMeta {
                        name: Some(s.node_name.clone()),
                        labels: Some(s.labels.clone()),
                        ..Default::default()
                    },
                    ..Default::default()
                };
                match api.create(&PostParams::default(), &n).await {
                    Ok(n) => n,
                    Err(kube::Error::Api(e)) if e.code == 409 => api.get(&s.node_name).await?,
                    Err(e) => return Err(e.into()),
                }
            }
        };
        rep.node_uid = existing.metadata.uid.clone();
        let network = find_cni_config(&s.cni_conf_dir).is_some();
        let old = existing
            .status
            .as_ref()
            .and_then(|st| st.conditions.clone())
            .unwrap_or_default();
        let status = node_status(s, network, &old, Time(now_seconds()));
        let same = rep
            .status
            .as_ref()
            .is_some_and(|last| without_heartbeats(last) == without_heartbeats(&status));
        let fresh = rep.at.is_some_and(|t| t.elapsed() < STATUS_REPORT);
        if same && fresh && !force {
            return Ok(());
        }
        api.patch_status(
            &s.node_name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "status": status })),
        )
        .await
        .context("node status")?;
        rep.status = Some(status);
        rep.at = Some(Instant::now());
        Ok(())
    }

    /// Renews this node's Lease (creating it, owned by the Node, on first use).
    pub(crate) async fn renew_lease(&self, rep: &mut Reported) -> anyhow::Result<()> {
        let s = &self.inner.s;
        let api: Api<Lease> = Api::namespaced(self.inner.client.clone(), NODE_LEASE_NAMESPACE);
        let now = MicroTime(jiff::Timestamp::now());
        // The lease says how long it is good for: four renewals, as kube's 40 s to 10 s.
        let duration = i32::try_from(s.heartbeat.as_secs() * 4)
            .unwrap_or(40)
            .max(4);
        let lease = match rep.lease.take() {
            Some(l) => Some(l),
            None => api.get_opt(&s.node_name).await?,
        };
        let res = match lease {
            Some(mut l) => {
                let spec = l.spec.get_or_insert_with(LeaseSpec::default);
                spec.holder_identity = Some(s.node_name.clone());
                spec.lease_duration_seconds = Some(duration);
                spec.renew_time = Some(now);
                api.replace(&s.node_name, &PostParams::default(), &l).await
            }
            None => {
                let owner = rep.node_uid.clone().map(|uid| OwnerReference {
                    api_version: "v1".into(),
                    kind: Node::kind(&()).into(),
                    name: s.node_name.clone(),
                    uid,
                    ..Default::default()
                });
                let l = Lease {
                    metadata: ObjectMeta {
                        name: Some(s.node_name.clone()),
                        namespace: Some(NODE_LEASE_NAMESPACE.into()),
                        owner_references: owner.map(|o| vec![o]),
                        ..Default::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(s.node_name.clone()),
                        lease_duration_seconds: Some(duration),
                        renew_time: Some(now),
                        ..Default::default()
                    }),
                };
                api.create(&PostParams::default(), &l).await
            }
        };
        match res {
            Ok(l) => {
                rep.lease = Some(l);
                Ok(())
            }
            // Someone else wrote it (or it was deleted): read it again on the next renewal.
            Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => Ok(()),
            Err(e) => Err(anyhow::Error::new(e).context("node lease")),
        }
    }
}
