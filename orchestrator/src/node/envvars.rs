//! Service environment variables, as the kubelet gives them to every container
//! (`pkg/kubelet/envvars` upstream, Docker-links style): for each Service with a cluster IP in
//! the pod's namespace (when `enableServiceLinks` is on) and always for the `kubernetes`
//! Service in `default` — which is how in-cluster clients find the API server
//! (`KUBERNETES_SERVICE_HOST`/`KUBERNETES_SERVICE_PORT`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service;
use kube::ResourceExt;

const MASTER_NAMESPACE: &str = "default";
const MASTER_SERVICE: &str = "kubernetes";

fn env_name(s: &str) -> String {
    s.to_uppercase().replace('-', "_")
}

fn from_service(svc: &Service, out: &mut Vec<(String, String)>) {
    let spec = svc.spec.clone().unwrap_or_default();
    let Some(ip) = spec.cluster_ip.filter(|ip| !ip.is_empty() && ip != "None") else {
        return;
    };
    let ports = spec.ports.unwrap_or_default();
    let Some(first) = ports.first() else {
        return;
    };
    let name = env_name(&svc.name_any());
    // An IPv6 address goes in brackets in the URL-style variables.
    let host = if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.clone()
    };
    out.push((format!("{name}_SERVICE_HOST"), ip.clone()));
    out.push((format!("{name}_SERVICE_PORT"), first.port.to_string()));
    for p in &ports {
        if let Some(pn) = p.name.as_deref().filter(|n| !n.is_empty()) {
            out.push((
                format!("{name}_SERVICE_PORT_{}", env_name(pn)),
                p.port.to_string(),
            ));
        }
    }
    let proto = |p: &k8s_openapi::api::core::v1::ServicePort| {
        p.protocol.clone().unwrap_or_else(|| "TCP".into())
    };
    out.push((
        format!("{name}_PORT"),
        format!("{}://{host}:{}", proto(first).to_lowercase(), first.port),
    ));
    for p in &ports {
        let pr = proto(p);
        let prefix = format!("{name}_PORT_{}_{}", p.port, pr.to_uppercase());
        out.push((
            prefix.clone(),
            format!("{}://{host}:{}", pr.to_lowercase(), p.port),
        ));
        out.push((format!("{prefix}_PROTO"), pr.to_lowercase()));
        out.push((format!("{prefix}_PORT"), p.port.to_string()));
        out.push((format!("{prefix}_ADDR"), ip.clone()));
    }
}

/// The service variables for a pod in `ns`, in a stable order.
pub fn service_env<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    ns: &str,
    links: bool,
) -> Vec<(String, String)> {
    let mut chosen: BTreeMap<String, &Service> = BTreeMap::new();
    for s in services {
        let (sns, name) = (s.namespace().unwrap_or_default(), s.name_any());
        if sns == MASTER_NAMESPACE && name == MASTER_SERVICE {
            chosen.entry(name).or_insert(s);
        } else if links && sns == ns {
            // The pod's own namespace wins over the master service of the same name.
            chosen.insert(name, s);
        }
    }
    let mut out = Vec::new();
    for s in chosen.values() {
        from_service(s, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};

    fn svc(ns: &str, name: &str, ip: &str, ports: &[(&str, i32)]) -> Service {
        Service {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some(ip.into()),
                ports: Some(
                    ports
                        .iter()
                        .map(|(n, p)| ServicePort {
                            name: (!n.is_empty()).then(|| n.to_string()),
                            port: *p,
                            protocol: Some("TCP".into()),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn master_service_always_and_links_by_namespace() {
        let k = svc("default", "kubernetes", "10.96.0.1", &[("https", 443)]);
        let web = svc("app", "my-web", "10.96.0.20", &[("", 80)]);
        let other = svc("elsewhere", "db", "10.96.0.30", &[("", 5432)]);
        let headless = svc("app", "h", "None", &[("", 80)]);
        let env: BTreeMap<String, String> = service_env([&k, &web, &other, &headless], "app", true)
            .into_iter()
            .collect();
        assert_eq!(env["KUBERNETES_SERVICE_HOST"], "10.96.0.1");
        assert_eq!(env["KUBERNETES_SERVICE_PORT"], "443");
        assert_eq!(env["KUBERNETES_SERVICE_PORT_HTTPS"], "443");
        assert_eq!(env["KUBERNETES_PORT"], "tcp://10.96.0.1:443");
        assert_eq!(env["KUBERNETES_PORT_443_TCP_ADDR"], "10.96.0.1");
        assert_eq!(env["MY_WEB_SERVICE_HOST"], "10.96.0.20");
        assert_eq!(env["MY_WEB_PORT_80_TCP"], "tcp://10.96.0.20:80");
        assert!(!env.contains_key("DB_SERVICE_HOST"));
        assert!(!env.contains_key("H_SERVICE_HOST"));
        let off: BTreeMap<String, String> =
            service_env([&k, &web], "app", false).into_iter().collect();
        assert!(off.contains_key("KUBERNETES_SERVICE_HOST"));
        assert!(!off.contains_key("MY_WEB_SERVICE_HOST"));
    }
}
