//! Which pods are intercepted, and how (issue 15; ARCHITECTURE.md, "Meshing a pod"): a pod
//! the injector marked (`meshwork.io/injected`) with its proxy container gets the eBPF
//! interception when its sandbox is made, before any of its containers runs: outbound on its
//! cgroup, switched on with the proxy container's cgroup exempt just before that container
//! starts (the first of the pod: the injector puts it first); inbound on its network
//! namespace, dropping connections to app ports until the kubelet has handed the proxy's
//! listening socket over (`register_inbound`, before any app container starts). Removed with
//! the sandbox. The programs' links are pinned, so they outlive this process like the pods
//! do.
//!
//! The mechanism is `meshwork_ebpf::mesh`; the policy (annotations, ports) is here.

use k8s_openapi::api::core::v1::Pod;
use serde::{Deserialize, Serialize};

/// Linkerd's name for the same setting (`config.linkerd.io/skip-outbound-ports`).
pub const SKIP_OUTBOUND_PORTS: &str = "config.meshwork.io/skip-outbound-ports";
/// Ports one pod may exclude.
const MAX_SKIPPED: usize = 1024;
/// The proxy's outbound listener (proxy/src/config.rs).
pub const OUTBOUND_PORT: u16 = 4140;

/// Linkerd's `config.linkerd.io/skip-inbound-ports`.
pub const SKIP_INBOUND_PORTS: &str = "config.meshwork.io/skip-inbound-ports";
/// Destination subnets (IPv4 CIDRs, comma-separated) that bypass the proxy: Linkerd's
/// `config.linkerd.io/skip-subnets`, Istio's `traffic.sidecar.istio.io/excludeOutboundIPRanges`.
pub const SKIP_SUBNETS: &str = "config.meshwork.io/skip-subnets";
/// Subnets one pod may exclude.
const MAX_SUBNETS: usize = 64;

/// A meshed pod's interception, as its sandbox records it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MeshSpec {
    pub proxy_container: String,
    pub outbound_port: u16,
    pub skip_outbound_ports: Vec<u16>,
    pub inbound_port: u16,
    pub admin_port: u16,
    pub skip_inbound_ports: Vec<u16>,
    /// (network address, prefix length).
    #[serde(default)]
    pub skip_subnets: Vec<(std::net::Ipv4Addr, u8)>,
    /// Filled in by the runtime: the pod network namespace's cookie.
    #[serde(default)]
    pub netns_cookie: u64,
    /// Filled in by the runtime: the pod's address, which inbound steering keys on.
    #[serde(default)]
    pub addr: Option<std::net::Ipv4Addr>,
}

/// The ports of annotation `key`, expanded; None when absent.
fn ports(ann: &std::collections::BTreeMap<String, String>, key: &str) -> Result<Vec<u16>, String> {
    let mut out: Vec<u16> = Vec::new();
    if let Some(list) = ann.get(key) {
        let ranges = meshwork_destination_api::parse_ports(list)
            .map_err(|e| format!("annotation {key}: {e}"))?;
        for r in ranges {
            out.extend(r);
            // One map entry per port, in a map all pods share.
            if out.len() > MAX_SKIPPED {
                return Err(format!("annotation {key}: more than {MAX_SKIPPED} ports"));
            }
        }
    }
    Ok(out)
}

/// The subnets of annotation [`SKIP_SUBNETS`].
fn subnets(
    ann: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<(std::net::Ipv4Addr, u8)>, String> {
    let Some(list) = ann.get(SKIP_SUBNETS) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let net: ipnet::Ipv4Net = item.parse().map_err(|_| {
            format!("annotation {SKIP_SUBNETS}: {item:?} is not an IPv4 CIDR (like 10.0.0.0/8)")
        })?;
        out.push((net.network(), net.prefix_len()));
    }
    if out.len() > MAX_SUBNETS {
        return Err(format!(
            "annotation {SKIP_SUBNETS}: more than {MAX_SUBNETS} subnets"
        ));
    }
    Ok(out)
}

/// The interception `pod` asks for, or None. A bad port list is an error the pod shows
/// (it must not run unintercepted by mistake, nor intercepted against its wish).
pub fn spec_of(pod: &Pod) -> Result<Option<MeshSpec>, String> {
    let ann = pod.metadata.annotations.clone().unwrap_or_default();
    let inits = pod
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.as_deref())
        .unwrap_or_default();
    let at = inits
        .iter()
        .position(|c| c.name == meshwork_inject::PROXY_CONTAINER);
    if !ann.contains_key(meshwork_inject::INJECTED) || at.is_none() {
        return Ok(None);
    }
    // Nothing of the pod may run before its proxy: an init container ahead of it would be
    // neither intercepted correctly nor ever started (the apps wait for the proxy).
    if at != Some(0) {
        return Err(format!(
            "the {} container must be the first init container of a meshed pod (something \
             moved it after injection)",
            meshwork_inject::PROXY_CONTAINER
        ));
    }
    Ok(Some(MeshSpec {
        proxy_container: meshwork_inject::PROXY_CONTAINER.into(),
        outbound_port: OUTBOUND_PORT,
        skip_outbound_ports: ports(&ann, SKIP_OUTBOUND_PORTS)?,
        inbound_port: meshwork_inject::INBOUND_PORT,
        admin_port: meshwork_inject::ADMIN_PORT,
        skip_inbound_ports: ports(&ann, SKIP_INBOUND_PORTS)?,
        skip_subnets: subnets(&ann)?,
        netns_cookie: 0,
        addr: None,
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use serde_json::json;

    use super::*;

    fn pod(ann: serde_json::Value, proxy: bool) -> Pod {
        let inits = if proxy {
            json!([{"name": "meshwork-proxy", "image": "p"}])
        } else {
            json!([{"name": "other", "image": "p"}])
        };
        serde_json::from_value(json!({"metadata": {"name": "p", "annotations": ann},
            "spec": {"initContainers": inits, "containers": [{"name": "c", "image": "i"}]}}))
        .unwrap()
    }

    #[test]
    fn only_injected_pods_with_their_proxy_and_valid_ports() {
        let injected = json!({"meshwork.io/injected": "meshwork-proxy"});
        assert!(spec_of(&pod(json!({}), true)).unwrap().is_none());
        assert!(spec_of(&pod(injected.clone(), false)).unwrap().is_none());
        let s = spec_of(&pod(injected, true)).unwrap().unwrap();
        assert_eq!(s.outbound_port, 4140);
        assert!(s.skip_outbound_ports.is_empty());
        let skip = json!({"meshwork.io/injected": "x", SKIP_OUTBOUND_PORTS: "25, 3306-3307"});
        let s = spec_of(&pod(skip, true)).unwrap().unwrap();
        assert_eq!(s.skip_outbound_ports, [25, 3306, 3307]);
        let bad = json!({"meshwork.io/injected": "x", SKIP_OUTBOUND_PORTS: "http"});
        assert!(spec_of(&pod(bad, true)).is_err());
        let nets =
            json!({"meshwork.io/injected": "x", SKIP_SUBNETS: "10.96.0.0/12, 192.168.1.7/32"});
        let s = spec_of(&pod(nets, true)).unwrap().unwrap();
        assert_eq!(
            s.skip_subnets,
            [
                ("10.96.0.0".parse().unwrap(), 12),
                ("192.168.1.7".parse().unwrap(), 32)
            ]
        );
        for bad in ["10.0.0.0/33", "fd00::/8", "ten"] {
            let e = spec_of(&pod(
                json!({"meshwork.io/injected": "x", SKIP_SUBNETS: bad}),
                true,
            ))
            .unwrap_err();
            assert!(e.contains(SKIP_SUBNETS), "{e}");
        }
        let huge = json!({"meshwork.io/injected": "x", SKIP_OUTBOUND_PORTS: "1-65535"});
        assert!(spec_of(&pod(huge, true)).is_err());
        // The proxy not first: refused, not run half-meshed.
        let mut p = pod(json!({"meshwork.io/injected": "x"}), true);
        let spec = p.spec.as_mut().unwrap();
        let first: k8s_openapi::api::core::v1::Container =
            serde_json::from_value(json!({"name": "early", "image": "i"})).unwrap();
        spec.init_containers.as_mut().unwrap().insert(0, first);
        assert!(spec_of(&p).unwrap_err().contains("first init container"));
    }
}
