//! Node objects → the overlay's remote nodes (pure): every other node with an IPv4
//! InternalIP and pod CIDRs. A node without them is not (yet) reachable over the overlay.

use k8s_openapi::api::core::v1::Node;
use meshwork_overlay::RemoteNode;

pub fn remotes(me: &str, nodes: &[&Node]) -> Vec<RemoteNode> {
    let mut out: Vec<RemoteNode> = nodes
        .iter()
        .filter_map(|n| {
            let name = n.metadata.name.clone()?;
            if name == me || n.metadata.deletion_timestamp.is_some() {
                return None;
            }
            let underlay_ip = n
                .status
                .as_ref()?
                .addresses
                .iter()
                .flatten()
                .filter(|a| a.type_ == "InternalIP")
                .find_map(|a| a.address.parse().ok())?;
            let spec = n.spec.as_ref()?;
            let cidrs: Vec<String> = spec
                .pod_cidrs
                .clone()
                .filter(|v| !v.is_empty())
                .or_else(|| spec.pod_cidr.clone().map(|c| vec![c]))?;
            let pod_cidrs: Vec<_> = cidrs.iter().filter_map(|c| c.parse().ok()).collect();
            (!pod_cidrs.is_empty()).then_some(RemoteNode {
                name,
                underlay_ip,
                pod_cidrs,
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(v: serde_json::Value) -> Node {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn remotes_from_nodes() {
        let nodes = [
            node(
                json!({"metadata": {"name": "n1"}, "spec": {"podCIDRs": ["10.244.1.0/24"]},
                        "status": {"addresses": [{"type": "InternalIP", "address": "198.18.0.1"}]}}),
            ),
            node(
                json!({"metadata": {"name": "n2"}, "spec": {"podCIDRs": ["10.244.2.0/24", "fd00:10:244:2::/64"]},
                        "status": {"addresses": [{"type": "Hostname", "address": "n2"}, {"type": "InternalIP", "address": "fd00::2"}, {"type": "InternalIP", "address": "198.18.0.2"}]}}),
            ),
            node(
                json!({"metadata": {"name": "n3"}, "spec": {"podCIDR": "10.244.3.0/24"},
                        "status": {"addresses": [{"type": "InternalIP", "address": "198.18.0.3"}]}}),
            ),
            node(json!({"metadata": {"name": "no-cidr"}, "spec": {},
                        "status": {"addresses": [{"type": "InternalIP", "address": "198.18.0.4"}]}})),
            node(
                json!({"metadata": {"name": "no-ip"}, "spec": {"podCIDRs": ["10.244.5.0/24"]}, "status": {}}),
            ),
            node(
                json!({"metadata": {"name": "going", "deletionTimestamp": "2026-01-01T00:00:00Z"}, "spec": {"podCIDRs": ["10.244.6.0/24"]},
                        "status": {"addresses": [{"type": "InternalIP", "address": "198.18.0.6"}]}}),
            ),
        ];
        let got = remotes("n1", &nodes.iter().collect::<Vec<_>>());
        let names: Vec<_> = got
            .iter()
            .map(|r| {
                (
                    r.name.as_str(),
                    r.underlay_ip.to_string(),
                    r.pod_cidrs.len(),
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                ("n2", "198.18.0.2".to_string(), 2),
                ("n3", "198.18.0.3".to_string(), 1)
            ]
        );
    }
}
