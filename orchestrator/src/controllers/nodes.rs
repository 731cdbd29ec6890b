//! Nodes: each gets a pod CIDR from the cluster CIDR (spec.podCIDR), and a node whose runtime
//! stops reporting turns Ready=Unknown and its pods' Ready condition False — which takes their
//! endpoints out of service. A node reports by renewing its Lease in `kube-node-lease` or by
//! writing its Ready condition; the newer of the two counts (kube's node lifecycle
//! controller).

use std::collections::HashSet;

use anyhow::Context;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{
    api::{Api, Patch, PatchParams},
    runtime::reflector::ObjectRef,
    Client, ResourceExt,
};
use serde_json::json;

use super::{util::pod_ready, Caches, ControllerConfig};
use crate::api::{kind::now_seconds, noderestriction::NODE_LEASE_NAMESPACE};

pub struct Controller {
    client: Client,
    caches: Caches,
    cfg: ControllerConfig,
}

/// The first `prefix`-sized subnet of `cluster` not in `used`.
pub fn next_cidr(cluster: Ipv4Net, prefix: u8, used: &HashSet<Ipv4Net>) -> Option<Ipv4Net> {
    cluster.subnets(prefix).ok()?.find(|n| {
        !used
            .iter()
            .any(|u| u.contains(&n.network()) || n.contains(&u.network()))
    })
}

impl Controller {
    pub fn new(client: Client, caches: Caches, cfg: ControllerConfig) -> Self {
        Controller {
            client,
            caches,
            cfg,
        }
    }

    pub async fn reconcile_all(&mut self) -> anyhow::Result<()> {
        let nodes = self.caches.nodes.state();
        let api: Api<Node> = Api::all(self.client.clone());
        let mut used: HashSet<Ipv4Net> = nodes
            .iter()
            .filter_map(|n| n.spec.as_ref()?.pod_cidr.as_ref()?.parse().ok())
            .collect();
        let mut sorted = nodes.clone();
        sorted.sort_by_key(|n| n.name_any());
        for n in &sorted {
            if n.spec.as_ref().and_then(|s| s.pod_cidr.as_ref()).is_some() {
                continue;
            }
            let cidr = next_cidr(self.cfg.cluster_cidr, self.cfg.node_cidr_prefix, &used)
                .context("cluster CIDR exhausted")?;
            used.insert(cidr);
            api.patch(
                &n.name_any(),
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"spec": {"podCIDR": cidr.to_string(), "podCIDRs": [cidr.to_string()]}}),
                ),
            )
            .await
            .with_context(|| format!("assigning {cidr} to node {}", n.name_any()))?;
            tracing::info!(node = %n.name_any(), %cidr, "pod CIDR assigned");
        }
        let now = now_seconds();
        let grace = self.cfg.node_monitor_grace.as_secs() as i64;
        for n in &sorted {
            let conds = n
                .status
                .as_ref()
                .and_then(|s| s.conditions.clone())
                .unwrap_or_default();
            let Some(ready) = conds.iter().find(|c| c.type_ == "Ready") else {
                continue;
            };
            let status_beat = ready
                .last_heartbeat_time
                .as_ref()
                .map(|t| t.0.as_second())
                .unwrap_or(0);
            let lease_beat = self
                .caches
                .leases
                .get(&ObjectRef::new(&n.name_any()).within(NODE_LEASE_NAMESPACE))
                .and_then(|l| {
                    l.spec
                        .as_ref()?
                        .renew_time
                        .as_ref()
                        .map(|t| t.0.as_second())
                })
                .unwrap_or(0);
            let beat = status_beat.max(lease_beat);
            let silent = now.as_second() - beat > grace;
            if silent && ready.status != "Unknown" {
                let mut c = ready.clone();
                c.status = "Unknown".into();
                c.reason = Some("NodeStatusUnknown".into());
                c.message = Some("Kubelet stopped posting node status.".into());
                c.last_transition_time =
                    Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now));
                let others: Vec<_> = conds
                    .iter()
                    .filter(|x| x.type_ != "Ready")
                    .cloned()
                    .collect();
                let mut all = others;
                all.push(c);
                api.patch_status(
                    &n.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {"conditions": all}})),
                )
                .await
                .with_context(|| format!("marking node {} unknown", n.name_any()))?;
                tracing::warn!(node = %n.name_any(), "node stopped reporting: Ready=Unknown");
            }
            if silent || ready.status == "Unknown" {
                self.mark_pods_not_ready(&n.name_any()).await?;
            }
        }
        Ok(())
    }

    /// kube's MarkPodsNotReady: the node can no longer vouch for its pods.
    async fn mark_pods_not_ready(&self, node: &str) -> anyhow::Result<()> {
        for p in self.caches.pods.state() {
            if p.spec.as_ref().and_then(|s| s.node_name.as_deref()) != Some(node) || !pod_ready(&p)
            {
                continue;
            }
            let mut conds = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.clone())
                .unwrap_or_default();
            for c in conds.iter_mut().filter(|c| c.type_ == "Ready") {
                c.status = "False".into();
                c.reason = Some("NodeNotReady".into());
                c.last_transition_time = Some(
                    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now_seconds()),
                );
            }
            let api: Api<Pod> =
                Api::namespaced(self.client.clone(), &p.namespace().unwrap_or_default());
            match api
                .patch_status(
                    &p.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {"conditions": conds}})),
                )
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e).context(format!("marking pod {} not ready", p.name_any())),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_do_not_overlap() {
        let cluster: Ipv4Net = "10.244.0.0/16".parse().unwrap();
        let mut used: HashSet<Ipv4Net> = ["10.244.0.0/24".parse().unwrap()].into_iter().collect();
        let a = next_cidr(cluster, 24, &used).unwrap();
        assert_eq!(a.to_string(), "10.244.1.0/24");
        used.insert(a);
        used.insert("10.244.2.0/23".parse().unwrap());
        assert_eq!(
            next_cidr(cluster, 24, &used).unwrap().to_string(),
            "10.244.4.0/24"
        );
        let full: HashSet<Ipv4Net> = [cluster].into_iter().collect();
        assert!(next_cidr(cluster, 24, &full).is_none());
    }
}
