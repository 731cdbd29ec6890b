//! Service and EndpointSlice semantics shared by control, DNS and the EndpointSlice controller
//! (see README.md). Pure functions of the API objects.

use std::{collections::HashMap, net::IpAddr};

use k8s_openapi::api::{
    core::v1::{Pod, Service, ServicePort as ApiServicePort, ServiceSpec},
    discovery::v1::{EndpointConditions, EndpointSlice},
};

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// (namespace, name) of a Service.
pub type Key = (String, String);

/// The Service an EndpointSlice belongs to, from its label.
pub fn slice_service(s: &EndpointSlice) -> Option<Key> {
    let ns = s.metadata.namespace.clone()?;
    let svc = s.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)?.clone();
    Some((ns, svc))
}

/// A Service's (namespace, name).
pub fn service_key(s: &Service) -> Option<Key> {
    Some((s.metadata.namespace.clone()?, s.metadata.name.clone()?))
}

/// A Service's cluster IPs: `clusterIPs` (dual-stack) or the single `clusterIP`, parsed
/// ("None" and unallocated give none).
pub fn cluster_ips(spec: &ServiceSpec) -> Vec<IpAddr> {
    spec.cluster_ips
        .clone()
        .filter(|v| !v.is_empty())
        .or_else(|| spec.cluster_ip.clone().map(|ip| vec![ip]))
        .unwrap_or_default()
        .iter()
        .filter_map(|ip| ip.parse().ok())
        .collect()
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A virtual IP per family.
    ClusterIp(Vec<IpAddr>),
    /// `clusterIP: None`: DNS answers with the endpoints themselves; no VIP.
    Headless,
    /// A CNAME to this name; no VIP, no endpoints.
    ExternalName(String),
    /// No address allocated yet: the name exists, with nothing behind it.
    Pending,
}

/// What kind of Service this is; None for a spec-less Service or an ExternalName without a
/// name (invalid: nothing to serve).
pub fn kind(svc: &Service) -> Option<Kind> {
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return match &spec.external_name {
            Some(n) if !n.is_empty() => Some(Kind::ExternalName(n.clone())),
            _ => None,
        };
    }
    if spec.cluster_ip.as_deref() == Some("None") {
        return Some(Kind::Headless);
    }
    let ips = cluster_ips(spec);
    Some(if ips.is_empty() {
        Kind::Pending
    } else {
        Kind::ClusterIp(ips)
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// The API's protocol field: TCP when unset; None for a value the API does not define.
    pub fn parse(p: Option<&String>) -> Option<Protocol> {
        match p.map_or("TCP", String::as_str) {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// As DNS SRV names spell it (`_tcp`).
    pub fn lower(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// One service port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Port {
    /// "" when unnamed (a single-port Service).
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    pub node_port: Option<u16>,
}

/// The Service's ports that are well formed.
pub fn ports(spec: &ServiceSpec) -> Vec<Port> {
    spec.ports
        .iter()
        .flatten()
        .filter_map(|p| {
            Some(Port {
                name: p.name.clone().unwrap_or_default(),
                protocol: Protocol::parse(p.protocol.as_ref())?,
                port: u16::try_from(p.port).ok()?,
                node_port: p.node_port.and_then(|n| u16::try_from(n).ok()),
            })
        })
        .collect()
}

/// The port a service port's `targetPort` means on `pod`: a number as is, a name looked up in
/// the pod's container ports (None: the pod has no such port, so it is no endpoint for this
/// port), unset = the service port.
pub fn target_port(sp: &ApiServicePort, pod: &Pod) -> Option<i32> {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    match &sp.target_port {
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .flat_map(|c| c.ports.iter().flatten())
            .find(|cp| cp.name.as_deref() == Some(name.as_str()))
            .map(|cp| cp.container_port),
        None => Some(sp.port),
    }
}

/// An endpoint's conditions, as the API defines them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Conditions {
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
}

impl Conditions {
    /// From a slice, with the API's defaults for unset fields: ready nil = ready, serving nil =
    /// ready, terminating nil = false.
    pub fn of(c: Option<&EndpointConditions>) -> Conditions {
        let c = c.cloned().unwrap_or_default();
        let ready = c.ready.unwrap_or(true);
        Conditions {
            ready,
            serving: c.serving.unwrap_or(ready),
            terminating: c.terminating.unwrap_or(false),
        }
    }

    /// What the EndpointSlice controller writes for a pod: serving follows readiness
    /// (publishNotReadyAddresses makes every pod serving); ready is serving and not
    /// terminating.
    pub fn for_pod(pod_ready: bool, terminating: bool, publish_not_ready: bool) -> Conditions {
        let serving = pod_ready || publish_not_ready;
        Conditions {
            ready: serving && !terminating,
            serving,
            terminating,
        }
    }

    pub fn to_api(self) -> EndpointConditions {
        EndpointConditions {
            ready: Some(self.ready),
            serving: Some(self.serving),
            terminating: Some(self.terminating),
        }
    }
}

/// One endpoint's port, from its slice.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct EndpointPort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// One endpoint of a Service, with its slice's ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Parsed; at least one. Consumers that need one use the first (the API treats the others
    /// as fungible).
    pub addresses: Vec<IpAddr>,
    pub hostname: Option<String>,
    pub node: Option<String>,
    /// topology.kubernetes.io/zone, when the slice says.
    pub zone: Option<String>,
    /// The Pod it is (its targetRef), in the slice's namespace.
    pub pod: Option<String>,
    pub conditions: Conditions,
    pub ports: Vec<EndpointPort>,
}

impl Endpoint {
    /// The endpoint's port for the service port named `name` (named target ports resolve per
    /// endpoint this way).
    pub fn port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.name == name && p.protocol == protocol)
            .map(|p| p.port)
    }

    pub fn addr(&self) -> IpAddr {
        self.addresses[0]
    }
}

/// EndpointSlices → the endpoints of each Service (IPv4 and IPv6 slices; FQDN ones are not
/// addresses).
pub fn endpoints<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
) -> HashMap<Key, Vec<Endpoint>> {
    let mut out: HashMap<Key, Vec<Endpoint>> = HashMap::new();
    for s in slices {
        let Some(key) = slice_service(s) else {
            continue;
        };
        if !matches!(s.address_type.as_str(), "IPv4" | "IPv6") {
            continue;
        }
        let ports: Vec<EndpointPort> = s
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                Some(EndpointPort {
                    name: p.name.clone().unwrap_or_default(),
                    protocol: Protocol::parse(p.protocol.as_ref())?,
                    port: u16::try_from(p.port?).ok()?,
                })
            })
            .collect();
        let list = out.entry(key).or_default();
        for e in &s.endpoints {
            let addresses: Vec<IpAddr> =
                e.addresses.iter().filter_map(|a| a.parse().ok()).collect();
            if addresses.is_empty() {
                continue;
            }
            list.push(Endpoint {
                addresses,
                hostname: e.hostname.clone().filter(|h| !h.is_empty()),
                node: e.node_name.clone(),
                zone: e.zone.clone().filter(|z| !z.is_empty()),
                pod: e
                    .target_ref
                    .as_ref()
                    .filter(|r| r.kind.as_deref() == Some("Pod"))
                    .and_then(|r| r.name.clone()),
                conditions: Conditions::of(e.conditions.as_ref()),
                ports: ports.clone(),
            });
        }
    }
    out
}

/// The endpoints traffic may go to, as kube-proxy picks them: the ready ones; if there are
/// none, the serving ones that are terminating (so connections drain to pods that are shutting
/// down gracefully instead of failing; KEP-1669).
pub fn usable<'a, I>(eps: I) -> Vec<&'a Endpoint>
where
    I: IntoIterator<Item = &'a Endpoint>,
    I::IntoIter: Clone,
{
    let it = eps.into_iter();
    let ready: Vec<&Endpoint> = it.clone().filter(|e| e.conditions.ready).collect();
    if !ready.is_empty() {
        return ready;
    }
    it.filter(|e| e.conditions.serving && e.conditions.terminating)
        .collect()
}

/// The endpoints of one Service port traffic may go to, as kube-proxy picks them: of one
/// address family (`v4`), on `node` only when given (`internalTrafficPolicy: Local`), with
/// the port named `port_name` — then [`usable`] among those, so that the terminating fallback
/// is per port: a port whose ready endpoints do not have it falls back to its own terminating
/// ones. The node's load balancer and the mesh's discovery both pick by this.
pub fn usable_for<'a>(
    eps: &'a [Endpoint],
    port_name: &str,
    protocol: Protocol,
    v4: bool,
    node: Option<&str>,
) -> Vec<&'a Endpoint> {
    usable(
        eps.iter()
            .filter(move |e| e.addr().is_ipv4() == v4)
            .filter(move |e| node.is_none_or(|n| e.node.as_deref() == Some(n)))
            .filter(move |e| e.port(port_name, protocol).is_some()),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use serde_json::json;

    use super::*;

    fn slice(v: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn conditions_follow_the_api_defaults() {
        let c = |v: serde_json::Value| Conditions::of(Some(&serde_json::from_value(v).unwrap()));
        let t = |ready, serving, terminating| Conditions {
            ready,
            serving,
            terminating,
        };
        assert_eq!(Conditions::of(None), t(true, true, false));
        assert_eq!(c(json!({})), t(true, true, false));
        assert_eq!(c(json!({"ready": false})), t(false, false, false));
        assert_eq!(
            c(json!({"ready": false, "serving": true, "terminating": true})),
            t(false, true, true)
        );
        // The writer's side, each case (pod ready, terminating, publishNotReadyAddresses).
        for (ready, term, publish, want) in [
            (true, false, false, t(true, true, false)),
            (false, false, false, t(false, false, false)),
            (true, true, false, t(false, true, true)),
            (false, true, false, t(false, false, true)),
            (false, false, true, t(true, true, false)),
            (false, true, true, t(false, true, true)),
        ] {
            assert_eq!(Conditions::for_pod(ready, term, publish), want);
            // And what the writer writes reads back the same.
            assert_eq!(Conditions::of(Some(&want.to_api())), want);
        }
    }

    #[test]
    fn usable_is_ready_else_serving_terminating() {
        let ep = |ready, serving, terminating| Endpoint {
            addresses: vec!["10.0.0.1".parse().unwrap()],
            hostname: None,
            node: None,
            zone: None,
            pod: None,
            conditions: Conditions {
                ready,
                serving,
                terminating,
            },
            ports: vec![],
        };
        let (a, b, c, d) = (
            ep(true, true, false),
            ep(false, true, true),
            ep(false, false, true),
            ep(false, false, false),
        );
        assert_eq!(usable([&a, &b, &c, &d]).len(), 1);
        assert_eq!(usable([&b, &c, &d]), vec![&b]);
        assert!(usable([&c, &d]).is_empty());
    }

    #[test]
    fn slices_group_by_service_with_named_ports() {
        let s = slice(json!({
            "metadata": {"name": "web-1", "namespace": "ns",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}, {"name": "dns", "port": 53, "protocol": "UDP"},
                      {"name": "bad", "port": 1, "protocol": "QUIC"}],
            "endpoints": [{"addresses": ["10.0.0.1"], "nodeName": "n1", "hostname": "a"},
                          {"addresses": ["not-an-ip"]}],
        }));
        let fqdn = slice(json!({
            "metadata": {"name": "web-2", "namespace": "ns",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "FQDN", "endpoints": [{"addresses": ["example.com"]}],
        }));
        let orphan = slice(json!({"metadata": {"name": "x", "namespace": "ns"},
                                  "addressType": "IPv4", "endpoints": []}));
        let eps = endpoints([&s, &fqdn, &orphan]);
        assert_eq!(eps.len(), 1);
        let web = &eps[&("ns".to_string(), "web".to_string())];
        assert_eq!(web.len(), 1);
        assert_eq!(web[0].port("http", Protocol::Tcp), Some(8080));
        assert_eq!(web[0].port("dns", Protocol::Udp), Some(53));
        assert_eq!(web[0].port("dns", Protocol::Tcp), None);
        assert_eq!(web[0].ports.len(), 2, "an unknown protocol is no port");
        assert_eq!(
            (web[0].node.as_deref(), web[0].hostname.as_deref()),
            (Some("n1"), Some("a"))
        );
    }

    #[test]
    fn kinds() {
        let svc = |spec: serde_json::Value| -> Service {
            serde_json::from_value(json!({"metadata": {"name": "s"}, "spec": spec})).unwrap()
        };
        assert_eq!(
            kind(&svc(json!({"clusterIP": "10.96.0.1"}))),
            Some(Kind::ClusterIp(vec!["10.96.0.1".parse().unwrap()]))
        );
        assert_eq!(
            kind(&svc(
                json!({"clusterIP": "10.96.0.1", "clusterIPs": ["10.96.0.1", "fd00::1"]})
            )),
            Some(Kind::ClusterIp(vec![
                "10.96.0.1".parse().unwrap(),
                "fd00::1".parse().unwrap()
            ]))
        );
        assert_eq!(
            kind(&svc(json!({"clusterIP": "None"}))),
            Some(Kind::Headless)
        );
        assert_eq!(kind(&svc(json!({}))), Some(Kind::Pending));
        assert_eq!(
            kind(&svc(
                json!({"type": "ExternalName", "externalName": "db.example"})
            )),
            Some(Kind::ExternalName("db.example".into()))
        );
        assert_eq!(kind(&svc(json!({"type": "ExternalName"}))), None);
    }
}
