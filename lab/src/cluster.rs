//! A cluster of lab nodes wired the way a real node is: VXLAN overlay between nodes (what the
//! control agent programs from Node objects in a real cluster) and pods added by the CNI plugin
//! exactly as a runtime calls it, from the example conflist. The e2e tests build on it;
//! `mesh-ctl up` uses only the example conflist from here.

use std::path::Path;

use crate::{Lab, Node, PodNs};
use anyhow::{anyhow, Context, Result};
use ipnet::IpNet;
use meshwork_cni_spec::{invoke::RuntimeConf, CniResult, NetConfList};
use meshwork_netlink::Netlink;
use meshwork_overlay::{Overlay, OverlayConfig, RemoteNode};
use serde_json::{json, Value};

pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
pub const CLUSTER_CIDR6: &str = "fd00:10:244::/48";
/// The example conflist from cni-plugin/examples, compiled in so the binary is self-contained.
pub const EXAMPLE_CONFLIST: &str = include_str!("../../cni-plugin/examples/10-meshwork.conflist");

pub struct ClusterNode {
    pub node: Node,
    pub pod_cidrs: Vec<IpNet>,
    pub conflist: NetConfList,
    pub overlay: Overlay,
}

pub struct Pod {
    pub ns: PodNs,
    pub node: usize,
    pub container_id: String,
    pub result: CniResult,
}

impl Pod {
    pub fn ip(&self) -> std::net::IpAddr {
        self.result.ips[0].address.addr()
    }
    pub fn ip6(&self) -> Option<std::net::IpAddr> {
        self.result.ips.get(1).map(|i| i.address.addr())
    }
}

pub struct LabCluster {
    pub lab: Lab,
    pub nodes: Vec<ClusterNode>,
}

/// The example conflist with this node's pod CIDRs and a state dir inside the lab.
pub fn node_conflist(pod_cidrs: &[IpNet], state_dir: &Path) -> Result<NetConfList> {
    let mut v: Value = serde_json::from_str(EXAMPLE_CONFLIST).context("example conflist")?;
    let plugin = &mut v["plugins"][0];
    plugin["dataDir"] = json!(state_dir);
    plugin["ipam"]["subnet"] = json!(pod_cidrs[0]);
    plugin["ipam"]["subnet6"] = json!(pod_cidrs[1]);
    // Replies to NodePort clients on the lab underlay go back through the node; still no
    // default route, so nothing can leave the lab.
    if let Some(routes) = plugin["ipam"]["routes"].as_array_mut() {
        routes.push(json!({"dst": crate::UNDERLAY_SUBNET}));
    }
    Ok(serde_json::from_value(v)?)
}

impl LabCluster {
    /// `n` nodes named n1..nN, node i owning 10.244.i.0/24 and fd00:10:244:i::/64.
    pub async fn new(lab: Lab, n: u8) -> Result<LabCluster> {
        let mut nodes = Vec::new();
        for i in 1..=n {
            let node = lab.node(&format!("n{i}"));
            let pod_cidrs: Vec<IpNet> = vec![
                format!("10.244.{i}.0/24").parse()?,
                format!("fd00:10:244:{i}::/64").parse()?,
            ];
            let nl = Netlink::connect_in(&lab.open(&node.netns))?;
            let overlay = Overlay::ensure(
                nl,
                &OverlayConfig::new(&node.uplink, node.underlay_ip, pod_cidrs.clone()),
            )
            .await
            .with_context(|| format!("overlay on {}", node.name))?;
            let conflist =
                node_conflist(&pod_cidrs, &lab.dir().join("cni-state").join(&node.name))?;
            nodes.push(ClusterNode {
                node,
                pod_cidrs,
                conflist,
                overlay,
            });
        }
        let c = LabCluster { lab, nodes };
        c.sync_overlay(&(0..c.nodes.len()).collect::<Vec<_>>())
            .await?;
        Ok(c)
    }

    /// Programs every node's overlay for the nodes in `members` (indexes) other than itself —
    /// what the control agent does from Node objects.
    pub async fn sync_overlay(&self, members: &[usize]) -> Result<()> {
        for (i, n) in self.nodes.iter().enumerate() {
            let remotes: Vec<RemoteNode> = members
                .iter()
                .filter(|&&j| j != i)
                .map(|&j| RemoteNode {
                    name: self.nodes[j].node.name.clone(),
                    underlay_ip: self.nodes[j].node.underlay_ip,
                    pod_cidrs: self.nodes[j].pod_cidrs.clone(),
                })
                .collect();
            n.overlay
                .sync(&remotes)
                .await
                .with_context(|| format!("syncing overlay on {}", n.node.name))?;
        }
        Ok(())
    }

    /// Creates a pod namespace on node `node` and ADDs it through the CNI plugin.
    pub fn add_pod(&self, node: usize, name: &str) -> Result<Pod> {
        let n = self
            .nodes
            .get(node)
            .ok_or_else(|| anyhow!("no node #{node}"))?;
        let ns = self.lab.pod_netns(&n.node, name);
        let container_id = format!("{}-{name}", n.node.name);
        let result = self
            .lab
            .invoker(&n.node)
            .add(&n.conflist, &self.runtime_conf(&container_id, &ns))
            .with_context(|| format!("CNI ADD for pod {name}"))?;
        Ok(Pod {
            ns,
            node,
            container_id,
            result,
        })
    }

    pub fn del_pod(&self, pod: &Pod) -> Result<()> {
        let n = &self.nodes[pod.node];
        self.lab
            .invoker(&n.node)
            .del(
                &n.conflist,
                &self.runtime_conf(&pod.container_id, &pod.ns),
                Some(&pod.result),
            )
            .with_context(|| format!("CNI DEL for pod {}", pod.ns.name))
    }

    fn runtime_conf(&self, container_id: &str, ns: &PodNs) -> RuntimeConf {
        RuntimeConf {
            container_id: container_id.to_string(),
            netns: ns.path_str(),
            ifname: "eth0".into(),
            args: vec![
                ("K8S_POD_NAMESPACE".into(), "default".into()),
                ("K8S_POD_NAME".into(), ns.name.clone()),
                (
                    "K8S_POD_INFRA_CONTAINER_ID".into(),
                    container_id.to_string(),
                ),
            ],
            ..Default::default()
        }
    }
}
