//! The datapath this node should have, as a pure function of the watched Services and
//! EndpointSlices (Service semantics as kube-proxy honours them; ARCHITECTURE.md lists them):
//!
//! - frontends: every ClusterIP (dual-stack), NodePort on this node's addresses, ExternalIPs
//!   and LoadBalancer ingress IPs, per service port (TCP/UDP);
//! - backends: the endpoints whose slice port has the service port's name (named target
//!   ports resolve per endpoint this way), ready ones, else serving+terminating ones;
//!   `internalTrafficPolicy: Local` (ClusterIP) and `externalTrafficPolicy: Local` (the rest)
//!   keep this node's endpoints only, with the same fallback among them;
//! - backends on another node (endpoint nodeName) are marked remote: tc SNATs flows from
//!   outside the node to them (externalTrafficPolicy Cluster, ClusterIP from outside);
//! - sessionAffinity ClientIP with its timeout (default 10800 s);
//! - no VIP for headless and ExternalName services; services labelled
//!   `service.kubernetes.io/service-proxy-name` belong to another proxy unless it names us.

use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use meshwork_ebpf::{Algorithm, Backend, Frontend, Proto, Service as LbService};
use meshwork_service_model::{
    endpoints, kind, ports, service_key, usable_for, Endpoint, Kind, Port, Protocol,
};

pub const PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";

pub const DEFAULT_AFFINITY_SECONDS: u64 = 10_800;

/// This node as the rules need it.
#[derive(Clone, Debug, Default)]
pub struct NodeInfo {
    pub name: String,
    /// Addresses NodePorts answer on.
    pub addresses: Vec<IpAddr>,
}

#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Our `service-proxy-name` (None: only unlabelled services are ours).
    pub proxy_name: Option<String>,
    pub algorithm: Algorithm,
}

pub type Desired = BTreeMap<Frontend, LbService>;

/// The socket hooks and tc balance TCP and UDP; SCTP is not load balanced.
fn proto(p: Protocol) -> Option<Proto> {
    match p {
        Protocol::Tcp => Some(Proto::Tcp),
        Protocol::Udp => Some(Proto::Udp),
        Protocol::Sctp => None,
    }
}

/// The usable endpoints (the model's rule: ready, else serving and terminating) of one family
/// that have the service port's name; `local` keeps this node's only.
fn select(eps: &[Endpoint], node: &str, local: bool, port: &Port, family_v4: bool) -> Vec<Backend> {
    let mut b: Vec<Backend> = usable_for(
        eps,
        &port.name,
        port.protocol,
        family_v4,
        local.then_some(node),
    )
    .into_iter()
    .filter_map(|e| {
        let p = e.port(&port.name, port.protocol)?;
        Some(Backend::new(e.addr(), p).with_remote(remote(e, node)))
    })
    .collect();
    b.sort();
    b.dedup();
    b
}

/// On another node (by the endpoint's nodeName; hostNetwork endpoints at another node's
/// address too): flows from outside to it are SNATed by tc so replies return through this
/// node. An endpoint without nodeName counts as local (no SNAT), as before SNAT existed.
fn remote(e: &Endpoint, node: &str) -> bool {
    e.node.as_deref().is_some_and(|n| n != node)
}

fn ours(svc: &Service, opts: &Options) -> bool {
    match svc
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(PROXY_NAME_LABEL))
    {
        None => true,
        Some(name) => opts.proxy_name.as_deref() == Some(name.as_str()),
    }
}

pub fn desired(
    node: &NodeInfo,
    opts: &Options,
    services: &[&Service],
    slices: &[&EndpointSlice],
) -> Desired {
    let eps = endpoints(slices.iter().copied());
    let mut out = Desired::new();
    for svc in services {
        let Some(spec) = &svc.spec else { continue };
        let Some(key) = service_key(svc) else {
            continue;
        };
        // No VIP for headless, ExternalName or not-yet-allocated Services.
        let Some(Kind::ClusterIp(cluster_ips)) = kind(svc) else {
            continue;
        };
        if !ours(svc, opts) {
            continue;
        }
        let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
        let external: Vec<IpAddr> = spec
            .external_ips
            .iter()
            .flatten()
            .chain(
                svc.status
                    .as_ref()
                    .and_then(|s| s.load_balancer.as_ref())
                    .and_then(|lb| lb.ingress.as_ref())
                    .into_iter()
                    .flatten()
                    .filter(|_| ty == "LoadBalancer")
                    .filter_map(|i| i.ip.as_ref()),
            )
            .filter_map(|ip| ip.parse().ok())
            .collect();
        let internal_local = spec.internal_traffic_policy.as_deref() == Some("Local");
        let external_local = spec.external_traffic_policy.as_deref() == Some("Local");
        let affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
            let secs = spec
                .session_affinity_config
                .as_ref()
                .and_then(|c| c.client_ip.as_ref())
                .and_then(|c| c.timeout_seconds)
                .and_then(|t| u64::try_from(t).ok())
                .unwrap_or(DEFAULT_AFFINITY_SECONDS);
            Duration::from_secs(secs)
        });
        let svc_eps = eps.get(&key).map(Vec::as_slice).unwrap_or(&[]);
        for sp in ports(spec) {
            let Some(p) = proto(sp.protocol) else {
                continue;
            };
            let mut add = |addr: IpAddr, port: u16, local: bool| {
                let frontend = Frontend {
                    addr,
                    port,
                    proto: p,
                };
                let backends = select(svc_eps, &node.name, local, &sp, addr.is_ipv4());
                out.insert(
                    frontend,
                    LbService {
                        frontend,
                        backends,
                        algorithm: opts.algorithm,
                        affinity,
                    },
                );
            };
            for ip in &cluster_ips {
                add(*ip, sp.port, internal_local);
            }
            for ip in &external {
                add(*ip, sp.port, external_local);
            }
            let node_port = sp.node_port.filter(|_| ty != "ClusterIP");
            if let Some(np) = node_port {
                for ip in &node.addresses {
                    add(*ip, np, external_local);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn svc(v: Value) -> Service {
        let mut v = v;
        v["metadata"]["namespace"] = json!("default");
        serde_json::from_value(v).unwrap()
    }

    fn slice(svc: &str, ports: Value, eps: Value) -> EndpointSlice {
        slice_af(svc, "IPv4", ports, eps)
    }

    fn slice_af(svc: &str, af: &str, ports: Value, eps: Value) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": format!("{svc}-{af}"), "namespace": "default",
                         "labels": {"kubernetes.io/service-name": svc}},
            "addressType": af, "ports": ports, "endpoints": eps,
        }))
        .unwrap()
    }

    fn node() -> NodeInfo {
        NodeInfo {
            name: "n1".into(),
            addresses: vec!["198.18.0.1".parse().unwrap()],
        }
    }

    fn run(services: &[Service], slices: &[EndpointSlice]) -> Desired {
        run_opts(&Options::default(), services, slices)
    }

    fn run_opts(opts: &Options, services: &[Service], slices: &[EndpointSlice]) -> Desired {
        desired(
            &node(),
            opts,
            &services.iter().collect::<Vec<_>>(),
            &slices.iter().collect::<Vec<_>>(),
        )
    }

    /// frontend "ip:port/proto" → sorted backends "ip:port".
    fn table(d: &Desired) -> Vec<(String, Vec<String>)> {
        d.values()
            .map(|s| {
                let f = &s.frontend;
                let proto = if f.proto == Proto::Tcp { "tcp" } else { "udp" };
                let fe = match f.addr {
                    IpAddr::V6(a) => format!("[{a}]:{}/{proto}", f.port),
                    IpAddr::V4(a) => format!("{a}:{}/{proto}", f.port),
                };
                let be = s.backends.iter().map(|b| match b.addr {
                    IpAddr::V6(a) => format!("[{a}]:{}", b.port),
                    IpAddr::V4(a) => format!("{a}:{}", b.port),
                });
                (fe, be.collect())
            })
            .collect()
    }

    fn web(spec: Value) -> Service {
        let mut s = json!({"clusterIP": "10.96.0.5", "ports": [{"name": "http", "port": 80, "targetPort": "http"}]});
        if let (Some(base), Some(extra)) = (s.as_object_mut(), spec.as_object()) {
            base.extend(extra.clone());
        }
        svc(json!({"metadata": {"name": "web"}, "spec": s}))
    }

    fn ep(ip: &str, node: &str, conditions: Value) -> Value {
        json!({"addresses": [ip], "nodeName": node, "conditions": conditions})
    }

    const HTTP: &str = r#"[{"name": "http", "port": 8080, "protocol": "TCP"}]"#;

    fn http() -> Value {
        serde_json::from_str(HTTP).unwrap()
    }

    fn rows(v: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
        v.iter()
            .map(|(f, b)| (f.to_string(), b.iter().map(|s| s.to_string()).collect()))
            .collect()
    }

    #[test]
    fn endpoint_conditions_and_fallback() {
        let cases: Vec<(&str, Value, &[&str])> = vec![
            (
                "ready nil counts as ready",
                json!([ep("10.244.1.2", "n1", json!({}))]),
                &["10.244.1.2:8080"],
            ),
            (
                "not ready left out",
                json!([
                    ep("10.244.1.2", "n1", json!({"ready": true})),
                    ep("10.244.1.3", "n1", json!({"ready": false}))
                ]),
                &["10.244.1.2:8080"],
            ),
            (
                "none ready: serving+terminating",
                json!([
                    ep(
                        "10.244.1.2",
                        "n1",
                        json!({"ready": false, "serving": true, "terminating": true})
                    ),
                    ep(
                        "10.244.1.3",
                        "n1",
                        json!({"ready": false, "serving": false, "terminating": true})
                    )
                ]),
                &["10.244.1.2:8080"],
            ),
            (
                "ready wins over terminating",
                json!([
                    ep(
                        "10.244.1.2",
                        "n1",
                        json!({"ready": false, "serving": true, "terminating": true})
                    ),
                    ep("10.244.1.3", "n2", json!({"ready": true}))
                ]),
                &["10.244.1.3:8080"],
            ),
            ("no endpoints: empty (refused at once)", json!([]), &[]),
        ];
        for (what, eps, want) in cases {
            let d = run(&[web(json!({}))], &[slice("web", http(), eps)]);
            assert_eq!(table(&d), rows(&[("10.96.0.5:80/tcp", want)]), "{what}");
        }
    }

    #[test]
    fn named_target_ports_resolve_per_slice() {
        let a = slice("web", http(), json!([ep("10.244.1.2", "n1", json!({}))]));
        let mut b = slice(
            "web",
            json!([{"name": "http", "port": 9090}]),
            json!([ep("10.244.2.2", "n2", json!({}))]),
        );
        b.metadata.name = Some("web-b".into());
        let other = slice(
            "web",
            json!([{"name": "metrics", "port": 9100}]),
            json!([ep("10.244.3.2", "n3", json!({}))]),
        );
        let d = run(&[web(json!({}))], &[a, b, other]);
        assert_eq!(
            table(&d),
            rows(&[("10.96.0.5:80/tcp", &["10.244.1.2:8080", "10.244.2.2:9090"])])
        );
    }

    #[test]
    fn service_kinds_and_frontends() {
        let eps = || {
            slice(
                "web",
                http(),
                json!([
                    ep("10.244.1.2", "n1", json!({})),
                    ep("10.244.2.2", "n2", json!({}))
                ]),
            )
        };
        let both: &[&str] = &["10.244.1.2:8080", "10.244.2.2:8080"];
        let local: &[&str] = &["10.244.1.2:8080"];
        type Case<'a> = (&'a str, Value, Vec<(&'a str, &'a [&'a str])>);
        let cases: Vec<Case> = vec![
            ("headless: no VIP", json!({"clusterIP": "None"}), vec![]),
            (
                "ExternalName: no VIP",
                json!({"type": "ExternalName", "externalName": "x.example", "clusterIP": null}),
                vec![],
            ),
            (
                "internal Local: this node only",
                json!({"internalTrafficPolicy": "Local"}),
                vec![("10.96.0.5:80/tcp", local)],
            ),
            (
                "NodePort on the node address, external Local applies there only",
                json!({"type": "NodePort", "externalTrafficPolicy": "Local",
                       "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}),
                vec![("10.96.0.5:80/tcp", both), ("198.18.0.1:30080/tcp", local)],
            ),
            (
                "ExternalIPs",
                json!({"externalIPs": ["192.0.2.50"]}),
                vec![("10.96.0.5:80/tcp", both), ("192.0.2.50:80/tcp", both)],
            ),
            (
                "UDP port; SCTP ignored",
                json!({"ports": [{"name": "http", "port": 53, "protocol": "UDP"}, {"name": "s", "port": 9, "protocol": "SCTP"}]}),
                vec![("10.96.0.5:53/udp", &[])],
            ),
        ];
        for (what, spec, want) in cases {
            let d = run(&[web(spec)], &[eps()]);
            assert_eq!(table(&d), rows(&want), "{what}");
        }
    }

    #[test]
    fn load_balancer_ingress_and_affinity() {
        let mut s = web(
            json!({"type": "LoadBalancer", "sessionAffinity": "ClientIP",
                                "ports": [{"name": "http", "port": 80, "nodePort": 30081}]}),
        );
        s.status =
            serde_json::from_value(json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.60"}]}}))
                .unwrap();
        let d = run(
            &[s],
            &[slice(
                "web",
                http(),
                json!([ep("10.244.1.2", "n1", json!({}))]),
            )],
        );
        let fronts: Vec<String> = table(&d).into_iter().map(|r| r.0).collect();
        assert_eq!(
            fronts,
            [
                "10.96.0.5:80/tcp",
                "192.0.2.60:80/tcp",
                "198.18.0.1:30081/tcp"
            ]
        );
        assert!(d
            .values()
            .all(|s| s.affinity == Some(Duration::from_secs(DEFAULT_AFFINITY_SECONDS))));
        let s = web(
            json!({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}),
        );
        let d = run(&[s], &[]);
        assert_eq!(
            d.values().next().unwrap().affinity,
            Some(Duration::from_secs(60))
        );
    }

    #[test]
    fn proxy_name_label() {
        let mut s = web(json!({}));
        s.metadata.labels = Some([(PROXY_NAME_LABEL.to_string(), "other".to_string())].into());
        assert!(run(&[s.clone()], &[]).is_empty(), "another proxy's service");
        let opts = Options {
            proxy_name: Some("other".into()),
            ..Options::default()
        };
        assert_eq!(run_opts(&opts, &[s], &[]).len(), 1, "ours by name");
    }

    #[test]
    fn dual_stack_keeps_families_apart() {
        let s =
            web(json!({"clusterIPs": ["10.96.0.5", "fd00:96::5"], "ipFamilies": ["IPv4", "IPv6"]}));
        let v4 = slice("web", http(), json!([ep("10.244.1.2", "n1", json!({}))]));
        let v6 = slice_af(
            "web",
            "IPv6",
            http(),
            json!([ep("fd00:10:244:1::2", "n1", json!({}))]),
        );
        let d = run(&[s], &[v4, v6]);
        assert_eq!(
            table(&d),
            rows(&[
                ("10.96.0.5:80/tcp", &["10.244.1.2:8080"]),
                ("[fd00:96::5]:80/tcp", &["[fd00:10:244:1::2]:8080"])
            ])
        );
    }

    #[test]
    fn backends_on_other_nodes_are_remote() {
        let sl = slice(
            "web",
            http(),
            json!([
                ep("10.244.1.2", "n1", json!({})),
                ep("10.244.2.2", "n2", json!({})),
                // hostNetwork endpoints: at this node's address (local) and another's.
                ep("198.18.0.1", "n1", json!({})),
                ep("198.18.0.2", "n2", json!({})),
                {"addresses": ["10.244.9.9"]}
            ]),
        );
        let s = web(
            json!({"type": "NodePort", "externalTrafficPolicy": "Cluster",
                            "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}),
        );
        let d = run(&[s], &[sl]);
        let remote = |f: &str| -> Vec<(String, bool)> {
            let s = d
                .values()
                .find(|s| s.frontend.addr.to_string() == f)
                .unwrap();
            s.backends
                .iter()
                .map(|b| (b.addr.to_string(), b.remote))
                .collect()
        };
        let want: Vec<(String, bool)> = [
            ("10.244.1.2", false),
            ("10.244.2.2", true),
            ("10.244.9.9", false),
            ("198.18.0.1", false),
            ("198.18.0.2", true),
        ]
        .iter()
        .map(|(a, r)| (a.to_string(), *r))
        .collect();
        assert_eq!(remote("10.96.0.5"), want, "ClusterIP");
        assert_eq!(
            remote("198.18.0.1"),
            want,
            "NodePort, externalTrafficPolicy Cluster"
        );
    }

    #[test]
    fn unnamed_single_port() {
        let s = svc(
            json!({"metadata": {"name": "one"}, "spec": {"clusterIP": "10.96.0.9", "ports": [{"port": 80, "targetPort": 8000}]}}),
        );
        let sl = slice(
            "one",
            json!([{"port": 8000, "protocol": "TCP"}]),
            json!([ep("10.244.1.9", "n1", json!({}))]),
        );
        assert_eq!(
            table(&run(&[s], &[sl])),
            rows(&[("10.96.0.9:80/tcp", &["10.244.1.9:8000"])])
        );
    }
}
