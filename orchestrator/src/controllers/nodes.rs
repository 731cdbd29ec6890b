//! Nodes: each gets a pod CIDR from the cluster CIDR (spec.podCIDR), and a node whose runtime
//! stops reporting turns Ready=Unknown and its pods' Ready condition False — which takes their
//! endpoints out of service. A node reports by renewing its Lease in `kube-node-lease` or by
//! writing its Ready condition; the newer of the two counts (kube's node lifecycle
//! controller).

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use anyhow::Context;
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{
    api::{Api, Patch, PatchParams},
    runtime::reflector::ObjectRef,
    Client, ResourceExt,
};
use serde_json::json;

use super::{
    runner::{keys, Event, Key, Obj, Reconcile},
    util::pod_ready,
    Caches, ControllerConfig,
};
use crate::api::{kind::now_seconds, noderestriction::NODE_LEASE_NAMESPACE};

pub struct Controller {
    client: Client,
    caches: Caches,
    cfg: ControllerConfig,
    /// CIDRs written that the cache may not show yet, by node.
    assigned: HashMap<String, Ipv4Net>,
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
            assigned: HashMap::new(),
        }
    }
}

impl Reconcile for Controller {
    type Key = Key;
    const NAME: &'static str = "node";

    fn all(&self) -> Vec<Key> {
        keys(&self.caches.nodes)
    }

    fn triggers(&self, ev: &Event, out: &mut Vec<Key>) {
        if let Some(Obj::Node(n)) = ev.obj() {
            out.push(Key::of(n.as_ref()));
        }
    }

    /// Again when the node's grace runs out if it does not report before (lease renewals
    /// wake nothing).
    async fn reconcile(&mut self, key: &Key) -> anyhow::Result<Option<Duration>> {
        let Some(n) = self.caches.nodes.get(&ObjectRef::new(&key.name)) else {
            self.assigned.remove(&key.name);
            return Ok(None);
        };
        self.assign_cidr(&n).await?;
        self.lifecycle(&n).await
    }
}

impl Controller {
    /// A pod CIDR for a node without one: the first not held by another node, nor handed out
    /// by this controller to a node the cache does not show with it yet.
    async fn assign_cidr(&mut self, n: &Node) -> anyhow::Result<()> {
        if n.spec.as_ref().and_then(|s| s.pod_cidr.as_ref()).is_some() {
            self.assigned.remove(&n.name_any());
            return Ok(());
        }
        let nodes = self.caches.nodes.state();
        // Nodes gone meanwhile (also while the watch was down) hold nothing any more.
        self.assigned
            .retain(|name, _| nodes.iter().any(|n| n.name_any() == *name));
        // Patched before but not shown by the cache yet: the same CIDR again, never a second.
        let cidr = match self.assigned.get(&n.name_any()) {
            Some(c) => *c,
            None => {
                let mut used: HashSet<Ipv4Net> = nodes
                    .iter()
                    .filter_map(|n| n.spec.as_ref()?.pod_cidr.as_ref()?.parse().ok())
                    .collect();
                used.extend(self.assigned.values().copied());
                next_cidr(self.cfg.cluster_cidr, self.cfg.node_cidr_prefix, &used)
                    .context("cluster CIDR exhausted")?
            }
        };
        let api: Api<Node> = Api::all(self.client.clone());
        api.patch(
            &n.name_any(),
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"podCIDR": cidr.to_string(), "podCIDRs": [cidr.to_string()]}}),
            ),
        )
        .await
        .with_context(|| format!("assigning {cidr} to node {}", n.name_any()))?;
        self.assigned.insert(n.name_any(), cidr);
        tracing::info!(node = %n.name_any(), %cidr, "pod CIDR assigned");
        Ok(())
    }

    /// Ready=Unknown for a node silent past the grace, and its pods not Ready; otherwise, how
    /// long until it would be.
    async fn lifecycle(&self, n: &Node) -> anyhow::Result<Option<Duration>> {
        let api: Api<Node> = Api::all(self.client.clone());
        let now = now_seconds();
        let grace = self.cfg.node_monitor_grace.as_secs() as i64;
        let conds = n
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        let Some(ready) = conds.iter().find(|c| c.type_ == "Ready") else {
            return Ok(None);
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
            let mut all: Vec<_> = conds
                .iter()
                .filter(|x| x.type_ != "Ready")
                .cloned()
                .collect();
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
            return Ok(None);
        }
        let left = (beat + grace + 1 - now.as_second()).max(1) as u64;
        Ok(Some(Duration::from_secs(left)))
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
