//! Node-local settings an agent finds for itself when it runs as a DaemonSet pod, where one
//! manifest serves every node (deploy/addons/meshwork-control.yaml): `auto` devices are the
//! link holding the node's address, the overlay's pod CIDR is the Node's `spec.podCIDRs`, and
//! `--cgroup auto` is the cgroup the node runtime puts pods under.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use k8s_openapi::api::core::v1::Node;

use crate::{app::Error, config::Config};

pub const AUTO: &str = "auto";

/// Fills in every `auto` or missing node-local setting of `cfg`.
pub async fn resolve(mut cfg: Config, client: &kube::Client) -> Result<Config, Error> {
    if cfg.cgroup.as_os_str() == AUTO {
        let own = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(|e| Error::Config(format!("--cgroup auto: reading /proc/self/cgroup: {e}")))?;
        cfg.cgroup = pods_cgroup(&cgroup2_mount(), &own).ok_or_else(|| {
            Error::Config(format!(
                "--cgroup auto: {own:?} is not a pod's cgroup (<root>/pod<uid>/<container>)"
            ))
        })?;
    }
    if cfg.overlay_uplink.is_some() && cfg.overlay_ip.is_none() {
        cfg.overlay_ip = cfg.node_ips.iter().find_map(|ip| match ip {
            IpAddr::V4(a) => Some(*a),
            IpAddr::V6(_) => None,
        });
    }
    if cfg.uplink.as_deref() == Some(AUTO) {
        let ip =
            cfg.node_ips.first().copied().ok_or_else(|| {
                Error::Config("--uplink auto needs --node-ip (or NODE_IP)".into())
            })?;
        cfg.uplink = Some(link_with(ip).await?);
    }
    if cfg.overlay_uplink.as_deref() == Some(AUTO) {
        let ip = cfg.overlay_ip.ok_or_else(|| {
            Error::Config("--overlay-uplink auto needs --overlay-ip or an IPv4 --node-ip".into())
        })?;
        cfg.overlay_uplink = Some(link_with(IpAddr::V4(ip)).await?);
    }
    if cfg.overlay_uplink.is_some() && cfg.pod_cidrs.is_empty() {
        cfg.pod_cidrs = node_pod_cidrs(client, &cfg.node().map_err(Error::Config)?).await?;
    }
    Ok(cfg)
}

/// The link holding `ip` in this network namespace.
async fn link_with(ip: IpAddr) -> Result<String, Error> {
    let nl = meshwork_netlink::Netlink::connect()?;
    let index = nl
        .addresses(None)
        .await?
        .into_iter()
        .find(|(_, net)| net.addr() == ip)
        .map(|(i, _)| i)
        .ok_or_else(|| Error::Config(format!("no link holds the node address {ip}")))?;
    nl.link_by_index(index)
        .await?
        .map(|l| l.name)
        .ok_or_else(|| Error::Config(format!("link {index} of {ip} vanished")))
}

/// The Node's pod CIDRs, waiting (bounded) for the controller to assign them: a fresh node's
/// agent starts before that.
async fn node_pod_cidrs(client: &kube::Client, node: &str) -> Result<Vec<ipnet::IpNet>, Error> {
    let nodes: kube::Api<Node> = kube::Api::all(client.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(Some(n)) = nodes.get_opt(node).await {
            let spec = n.spec.unwrap_or_default();
            let cidrs: Vec<String> = match spec.pod_cidrs {
                Some(c) if !c.is_empty() => c,
                _ => spec.pod_cidr.into_iter().collect(),
            };
            if !cidrs.is_empty() {
                return cidrs
                    .iter()
                    .map(|c| {
                        c.parse()
                            .map_err(|e| Error::Config(format!("Node {node} podCIDR {c:?}: {e}")))
                    })
                    .collect();
            }
        }
        if tokio::time::Instant::now() > deadline {
            return Err(Error::Config(format!(
                "Node {node} got no spec.podCIDR within 120 s (is the node controller running?)"
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn cgroup2_mount() -> PathBuf {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[2] == "cgroup2")
        .map_or_else(|| PathBuf::from("/sys/fs/cgroup"), |f| PathBuf::from(f[1]))
}

/// `<mount>/<root>` from this process's cgroup line `0::/<root>/pod<uid>/<container>`: the
/// directory every pod of the node lives under (the node runtime's `--cgroup-root`).
fn pods_cgroup(mount: &std::path::Path, proc_self_cgroup: &str) -> Option<PathBuf> {
    let path = proc_self_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))?
        .trim();
    let mut parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let _container = parts.pop()?;
    if !parts.pop()?.starts_with("pod") {
        return None;
    }
    Some(parts.iter().fold(mount.to_path_buf(), |p, c| p.join(c)))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::pods_cgroup;

    #[test]
    fn pods_cgroup_is_above_the_pod() {
        let m = Path::new("/sys/fs/cgroup");
        assert_eq!(
            pods_cgroup(m, "0::/mwl-mesh-n1/pods/pod1234-ab/agent\n"),
            Some("/sys/fs/cgroup/mwl-mesh-n1/pods".into())
        );
        assert_eq!(pods_cgroup(m, "0::/user.slice/session-1.scope\n"), None);
        assert_eq!(pods_cgroup(m, "0::/\n"), None);
        assert_eq!(pods_cgroup(m, "1:name=systemd:/x\n"), None);
    }
}
