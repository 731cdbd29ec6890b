//! What a container is started with: its environment (`$(VAR)` expansion, fieldRef values,
//! service variables), the pod's resolv.conf, its spec hash (a changed spec restarts it) and the
//! pod's termination grace period. Pure functions of the pod and its sandbox.

use std::{net::IpAddr, time::Duration};

use jiff::Timestamp;
use k8s_openapi::{
    api::core::v1::{Container as CSpec, Pod},
    apimachinery::pkg::apis::meta::v1::Time,
};
use kube::ResourceExt;

use super::{
    kubelet::Settings,
    runtime::{ContainerConfig, Sandbox},
};
use crate::api::kind::now_seconds;

/// The pod's /etc/resolv.conf for dnsPolicy ClusterFirst: the cluster DNS address and the
/// search path `<ns>.svc.<domain> svc.<domain> <domain>`, ndots 5 (as the kubelet writes it).
pub fn resolv_conf(dns: IpAddr, domain: &str, ns: &str) -> String {
    format!("search {ns}.svc.{domain} svc.{domain} {domain}\nnameserver {dns}\noptions ndots:5\n")
}

pub(crate) fn pod_resolv_conf(s: &Settings, pod: &Pod) -> String {
    let spec = pod.spec.clone().unwrap_or_default();
    let ns = pod.namespace().unwrap_or_default();
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    let host_net = spec.host_network == Some(true);
    let mut text = match policy {
        "Default" => std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        "None" => String::new(),
        "ClusterFirstWithHostNet" => resolv_conf(s.cluster_dns, &s.cluster_domain, &ns),
        _ if host_net => std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        _ => resolv_conf(s.cluster_dns, &s.cluster_domain, &ns),
    };
    if let Some(cfg) = &spec.dns_config {
        for n in cfg.nameservers.iter().flatten() {
            text.push_str(&format!("nameserver {n}\n"));
        }
        if let Some(search) = &cfg.searches {
            text.push_str(&format!("search {}\n", search.join(" ")));
        }
        for o in cfg.options.iter().flatten() {
            match &o.value {
                Some(v) => text.push_str(&format!(
                    "options {}:{v}\n",
                    o.name.clone().unwrap_or_default()
                )),
                None => text.push_str(&format!("options {}\n", o.name.clone().unwrap_or_default())),
            }
        }
    }
    text
}

/// `$(VAR)` references expanded from `env` (`$$` escapes), as the kubelet does for env values,
/// command and args.
pub fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('(') {
            match body.find(')') {
                Some(end) => {
                    let name = &body[..end];
                    match env.iter().rev().find(|(k, _)| k == name) {
                        Some((_, v)) => out.push_str(v),
                        None => out.push_str(&format!("$({name})")),
                    }
                    rest = &body[end + 1..];
                }
                None => {
                    out.push('$');
                    rest = after;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

pub(crate) fn field_ref(pod: &Pod, sb: &Sandbox, path: &str, node_ip: IpAddr) -> String {
    let spec = pod.spec.clone().unwrap_or_default();
    match path {
        "metadata.name" => pod.name_any(),
        "metadata.namespace" => pod.namespace().unwrap_or_default(),
        "metadata.uid" => pod.uid().unwrap_or_default(),
        "spec.nodeName" => spec.node_name.unwrap_or_default(),
        "spec.serviceAccountName" => spec.service_account_name.unwrap_or_default(),
        "status.podIP" => sb.ip.map(|i| i.to_string()).unwrap_or_default(),
        "status.hostIP" => node_ip.to_string(),
        other => {
            if let Some(k) = other
                .strip_prefix("metadata.labels['")
                .and_then(|k| k.strip_suffix("']"))
            {
                return pod.labels().get(k).cloned().unwrap_or_default();
            }
            String::new()
        }
    }
}

pub(crate) fn container_config(
    pod: &Pod,
    sb: &Sandbox,
    c: &CSpec,
    attempt: u32,
    node_ip: IpAddr,
    service_env: &[(String, String)],
    mounts: Vec<String>,
) -> ContainerConfig {
    // Service variables come first: the container's own env may refer to them, and wins.
    let mut env: Vec<(String, String)> = service_env.to_vec();
    for e in c.env.iter().flatten() {
        let v = match (&e.value, &e.value_from) {
            (Some(v), _) => expand(v, &env),
            (None, Some(from)) => from
                .field_ref
                .as_ref()
                .map(|f| field_ref(pod, sb, &f.field_path, node_ip))
                .unwrap_or_default(),
            _ => String::new(),
        };
        env.push((e.name.clone(), v));
    }
    ContainerConfig {
        name: c.name.clone(),
        image: c.image.clone().unwrap_or_default(),
        command: c
            .command
            .iter()
            .flatten()
            .map(|a| expand(a, &env))
            .collect(),
        args: c.args.iter().flatten().map(|a| expand(a, &env)).collect(),
        env,
        workdir: c.working_dir.clone(),
        attempt,
        mounts,
    }
}

pub(crate) fn time(secs: i64) -> Time {
    Time(Timestamp::from_second(secs).unwrap_or_else(|_| now_seconds()))
}

pub(crate) fn spec_hash(c: &CSpec) -> String {
    crate::controllers::template_hash(&serde_json::to_value(c).unwrap_or_default())
}

pub(crate) fn grace_of(pod: &Pod) -> Duration {
    let secs = pod
        .metadata
        .deletion_grace_period_seconds
        .or_else(|| pod.spec.as_ref()?.termination_grace_period_seconds)
        .unwrap_or(30)
        .max(0);
    Duration::from_secs(secs as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollar_references_expand() {
        let env = vec![
            ("A".to_string(), "x".to_string()),
            ("B".to_string(), "y".to_string()),
        ];
        assert_eq!(expand("$(A)-$(B)", &env), "x-y");
        assert_eq!(expand("$$(A) $(C)", &env), "$(A) $(C)");
        assert_eq!(expand("cost $5", &env), "cost $5");
    }

    #[test]
    fn resolv_conf_has_the_kubernetes_search_path() {
        let text = resolv_conf("10.96.0.10".parse().unwrap(), "cluster.local", "web");
        assert!(text.contains("nameserver 10.96.0.10\n"));
        assert!(text.contains("search web.svc.cluster.local svc.cluster.local cluster.local\n"));
        assert!(text.contains("options ndots:5"));
    }
}
