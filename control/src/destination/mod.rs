//! The proxies' discovery service (Linkerd's destination controller role, served per node as
//! ztunnel's xDS is): `Destination.Get(authority)` streams the authority's endpoints, each with
//! the identity its proxy must prove, its proxy port and a protocol hint, the whole set again
//! on every change (destination-api/proto/meshwork/destination/v1/destination.proto).
//!
//! `resolve` is the pure part: a Service found by ClusterIP or DNS name, its slices' usable
//! endpoints for the port (the rule kube-proxy uses, from `meshwork-service-model`), and each
//! endpoint's pod: meshed when it carries `meshwork.io/proxy-inbound-port`, its identity from
//! its ServiceAccount (`spiffe://<trust domain>/ns/<ns>/sa/<sa>`, as the identity service
//! issues it), opaque when the Service port's `appProtocol` is `meshwork.io/opaque` (or
//! Linkerd's `linkerd.io/opaque`), else when the pod's `config.meshwork.io/opaque-ports`
//! holds the target port, else the Service's holds the Service port, else when Linkerd's
//! default list holds the target port.
//!
//! The API is served over mutual TLS 1.3 (`identity.rs`; ARCHITECTURE.md, "Discovery over
//! mTLS").

use std::{net::IpAddr, sync::Arc};

use k8s_openapi::api::{
    core::v1::{Pod, Service},
    discovery::v1::EndpointSlice,
};
use meshwork_destination_api::{
    parse_ports, pb, DEFAULT_OPAQUE_PORTS, OPAQUE_APP_PROTOCOLS, OPAQUE_PORTS, PROXY_INBOUND_PORT,
};
use meshwork_service_model::{endpoints, service_key, usable_for, Key};

mod fair;
pub mod identity;
mod index;
mod server;
pub use fair::Streams;
pub use index::{Index, Objects, Scan, SharedIndex};
pub use server::{serve, Changed, Server, MAX_STREAMS, MAX_STREAMS_PER_CALLER};

/// What names a Service's authority in this cluster.
#[derive(Clone, Debug)]
pub struct Naming {
    pub cluster_domain: String,
    pub trust_domain: String,
    /// The agent's node: a Service with `internalTrafficPolicy: Local` is answered with its
    /// endpoints here only, as the node's own load balancer picks them (its callers are this
    /// node's proxies).
    pub node: String,
}

/// What an authority names: an address (a ClusterIP, or a pod's) or a Service by name.
#[derive(Debug)]
enum Target {
    Ip(IpAddr),
    Name(Key),
}

/// An authority's target and port; None: not `host:port` of either kind.
fn target(authority: &str, naming: &Naming) -> Option<(Target, u16)> {
    let (host, port) = authority.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some((Target::Ip(ip), port));
    }
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let suffix = format!(".svc.{}", naming.cluster_domain);
    let short = host
        .strip_suffix(&suffix)
        .or_else(|| host.strip_suffix(".svc"))
        .unwrap_or(&host);
    let (name, ns) = short.split_once('.')?;
    if ns.contains('.') {
        return None;
    }
    Some((Target::Name((ns.to_string(), name.to_string())), port))
}

/// What an answer reads: the reflectors' stores through their index (`index.rs`), or, in
/// tests, plain lists.
pub trait Lookup {
    fn service_named(&self, key: &Key) -> Option<Arc<Service>>;
    /// The Service with ClusterIP `ip`.
    fn service_at(&self, ip: IpAddr) -> Option<Arc<Service>>;
    /// The slices that belong to the Service `key`.
    fn slices_of(&self, key: &Key) -> Vec<Arc<EndpointSlice>>;
    fn pod(&self, ns: &str, name: &str) -> Option<Arc<Pod>>;
    /// The pod owning `ip` (see [`pod_at`]).
    fn pod_at(&self, ip: IpAddr) -> Option<Arc<Pod>>;
}

/// The Service `t` names.
fn find(t: &Target, objs: &dyn Lookup) -> Option<Arc<Service>> {
    match t {
        Target::Ip(ip) => objs.service_at(*ip),
        Target::Name(k) => objs.service_named(k),
    }
}

/// What an authority's answer was computed from, so that its stream is computed again only
/// when one of these changes (not on every change in the cluster).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Deps {
    /// The Service it named (found or not: its creation matters too) and so its slices.
    service: Option<Key>,
    /// A ClusterIP no Service has yet: any Service may come to have it.
    any_service: bool,
    /// The pods its endpoints are, read for their mesh identity and annotations.
    pods: std::collections::BTreeSet<Key>,
    /// A pod address: whichever pod comes to own it.
    ip: Option<IpAddr>,
}

impl Deps {
    /// Whether `c` may change the answer these were read for.
    pub fn touched_by(&self, c: &Changed) -> bool {
        match c {
            Changed::All => true,
            Changed::Service(k) => self.any_service || self.service.as_ref() == Some(k),
            Changed::Slice(k) => k.is_some() && self.service.as_ref() == k.as_ref(),
            Changed::Pod { key, ips } => {
                self.pods.contains(key) || self.ip.is_some_and(|ip| ips.contains(&ip))
            }
        }
    }
}

fn opaque(annotations: Option<&std::collections::BTreeMap<String, String>>) -> Option<String> {
    annotations.and_then(|a| a.get(OPAQUE_PORTS)).cloned()
}

fn in_list(list: &str, port: u16) -> bool {
    parse_ports(list).is_ok_and(|r| r.iter().any(|r| r.contains(&port)))
}

/// A pod's inbound ports that bypass its proxy (the node runtime's reading of the same
/// annotation: orchestrator/src/node/mesh.rs).
const SKIP_INBOUND_PORTS: &str = "config.meshwork.io/skip-inbound-ports";
/// The injected proxy's admin port: never an app's.
const PROXY_ADMIN_PORT: u16 = 4191;

/// How a pod's `port` is reached: through its proxy, with its identity, if it is meshed and
/// the port is not one it keeps away from the proxy (skip-inbound-ports, the proxy's own).
fn mesh_of(
    pod: Option<&Arc<Pod>>,
    namespace: &str,
    naming: &Naming,
    port: u16,
) -> Option<pb::Mesh> {
    let annotations = pod.and_then(|p| p.metadata.annotations.as_ref());
    if annotations
        .and_then(|a| a.get(SKIP_INBOUND_PORTS))
        .is_some_and(|l| in_list(l, port))
    {
        return None;
    }
    annotations
        .and_then(|a| a.get(PROXY_INBOUND_PORT))
        .and_then(|p| p.parse::<u16>().ok())
        .filter(|proxy_port| port != *proxy_port && port != PROXY_ADMIN_PORT)
        .map(|proxy_port| {
            let sa = pod
                .and_then(|p| p.spec.as_ref())
                .and_then(|s| s.service_account_name.clone())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "default".into());
            pb::Mesh {
                identity: format!("spiffe://{}/ns/{namespace}/sa/{sa}", naming.trust_domain),
                proxy_port: u32::from(proxy_port),
            }
        })
}

/// The pod at `ip` as an authority of its own (`ip:port`, what an app connecting to a pod
/// address, a headless Service's or a StatefulSet's, ends up at): one endpoint, meshed if the
/// pod is, as Linkerd's destination service answers for a pod IP. Host-network pods share
/// their node's address and are never meshed: not found here.
fn resolve_pod(pod: &Arc<Pod>, ip: IpAddr, port: u16, naming: &Naming) -> pb::Update {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let annotations = pod.metadata.annotations.as_ref();
    let is_opaque = match opaque(annotations) {
        Some(list) => in_list(&list, port),
        None => DEFAULT_OPAQUE_PORTS.contains(&port),
    };
    pb::Update {
        unknown: false,
        routes: String::new(),
        endpoints: vec![pb::Endpoint {
            addr: std::net::SocketAddr::new(ip, port).to_string(),
            weight: 10_000,
            zone: String::new(),
            mesh: mesh_of(Some(pod), &ns, naming, port),
            protocol: if is_opaque {
                pb::ProtocolHint::Opaque
            } else {
                pb::ProtocolHint::Unknown
            } as i32,
        }],
    }
}

/// Whether `pod` is a pod-network owner of `ip`: running or starting (a terminating pod
/// still serves through its proxy until it is gone; [`pod_at`] prefers one that is not).
pub fn owns_ip(pod: &Pod, ip: IpAddr) -> bool {
    let ip = ip.to_string();
    pod.spec.as_ref().and_then(|s| s.host_network) != Some(true)
        && pod.status.as_ref().is_some_and(|st| {
            matches!(st.phase.as_deref(), Some("Running" | "Pending"))
                && (st.pod_ip.as_deref() == Some(ip.as_str())
                    || st.pod_ips.iter().flatten().any(|p| p.ip == ip))
        })
}

/// The pod owning `ip` among `pods`: one not terminating if there is one (an address the
/// old pod has not yet given up may already be the new one's).
pub fn pod_at(pods: impl IntoIterator<Item = Arc<Pod>>, ip: IpAddr) -> Option<Arc<Pod>> {
    let mut owners: Vec<Arc<Pod>> = pods.into_iter().filter(|p| owns_ip(p, ip)).collect();
    owners.sort_by_key(|p| p.metadata.deletion_timestamp.is_some());
    owners.into_iter().next()
}

/// The update for `authority` from the cluster's objects, and what it was read from.
pub fn resolve(authority: &str, objs: &dyn Lookup, naming: &Naming) -> (pb::Update, Deps) {
    let mut deps = Deps::default();
    let unknown = pb::Update {
        unknown: true,
        ..Default::default()
    };
    let Some((t, port)) = target(authority, naming) else {
        return (unknown, deps);
    };
    // An address asked for answers in its own family (a dual-stack Service's IPv4 ClusterIP:
    // its IPv4 endpoints).
    let asked = match &t {
        Target::Ip(ip) => Some(*ip),
        Target::Name(_) => None,
    };
    let Some(svc) = find(&t, objs) else {
        match t {
            Target::Name(k) => deps.service = Some(k),
            Target::Ip(ip) => {
                deps.any_service = true;
                deps.ip = Some(ip);
                if let Some(p) = objs.pod_at(ip) {
                    deps.pods
                        .extend(p.metadata.namespace.clone().zip(p.metadata.name.clone()));
                    return (resolve_pod(&p, ip, port, naming), deps);
                }
            }
        }
        return (unknown, deps);
    };
    let Some(key): Option<Key> = service_key(&svc) else {
        // A Service without a name or namespace: nothing to follow it by but any change.
        deps.any_service = true;
        return (pb::Update::default(), deps);
    };
    deps.service = Some(key.clone());
    if svc.spec.as_ref().and_then(|s| s.type_.as_deref()) == Some("ExternalName") {
        // A DNS alias outside the cluster: no endpoints of ours, and the proxy should go
        // where the app was going (Linkerd's destination refuses such names too).
        return (unknown, deps);
    }
    let mut read_pod = |ns: &str, name: &str| {
        deps.pods.insert((ns.to_string(), name.to_string()));
        objs.pod(ns, name)
    };
    let slices = objs.slices_of(&key);
    let update = for_service(&svc, &key, (asked, port), &slices, &mut read_pod, naming);
    (update, deps)
}

/// The endpoints of `svc` (its key `key`) for `port`, asked for by address (`asked`) or by
/// name, from its `slices`.
fn for_service(
    svc: &Service,
    key: &Key,
    (asked, port): (Option<IpAddr>, u16),
    slices: &[Arc<EndpointSlice>],
    pod: &mut dyn FnMut(&str, &str) -> Option<Arc<Pod>>,
    naming: &Naming,
) -> pb::Update {
    let Some(sp) = svc
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .and_then(|ps| {
            ps.iter().find(|p| {
                p.port == i32::from(port) && p.protocol.as_deref().unwrap_or("TCP") == "TCP"
            })
        })
    else {
        // The Service exists but not on this port: nothing answers there.
        return pb::Update::default();
    };
    let port_name = sp.name.clone().unwrap_or_default();
    // The Service's word on its port, read once per answer: its `appProtocol`, then its
    // annotation, which lists Service ports (as Linkerd's does: the port clients use; a
    // pod's lists its own, target, ports).
    let app_protocol_opaque = sp
        .app_protocol
        .as_deref()
        .is_some_and(|p| OPAQUE_APP_PROTOCOLS.contains(&p));
    let svc_opaque = opaque(svc.metadata.annotations.as_ref()).map(|l| in_list(&l, port));
    let spec = svc.spec.as_ref();
    // One family, as the node's load balancer answers each ClusterIP in its own: a
    // dual-stack Service's pods would otherwise each be listed twice. The asked address's;
    // for a name, IPv4 when the Service has it (the proxies' inbound listener is IPv4).
    let v4 = asked.map_or_else(
        || {
            let families = spec.and_then(|s| s.ip_families.as_ref());
            let ips = spec.and_then(|s| s.cluster_ips.as_ref());
            match (families, ips) {
                (Some(f), _) if !f.is_empty() => f.iter().any(|f| f == "IPv4"),
                (_, Some(ips)) if !ips.is_empty() => ips
                    .iter()
                    .any(|ip| ip.parse::<IpAddr>().is_ok_and(|ip| ip.is_ipv4())),
                _ => true,
            }
        },
        |ip| ip.is_ipv4(),
    );
    let local = spec.and_then(|s| s.internal_traffic_policy.as_deref()) == Some("Local");
    let mine = slices.iter().map(|s| &**s);
    let all = endpoints(mine).remove(key).unwrap_or_default();
    let tcp = meshwork_service_model::Protocol::Tcp;
    let mut out = Vec::new();
    for ep in usable_for(
        &all,
        &port_name,
        tcp,
        v4,
        local.then_some(naming.node.as_str()),
    ) {
        let Some(target) = ep.port(&port_name, tcp) else {
            continue;
        };
        let pod = match ep.pod.as_deref() {
            Some(name) => match pod(&key.0, name) {
                Some(p) => Some(p),
                // The Pod it names is gone from the store (force-deleted, or not seen yet)
                // while the slice still lists it: left out, as Linkerd does. Listed without
                // a Pod it would be plaintext, to what may be a meshed pod still running or
                // another pod given its address.
                None => continue,
            },
            None => None,
        };
        let annotations = pod.as_ref().and_then(|p| p.metadata.annotations.as_ref());
        let mesh = mesh_of(pod.as_ref(), &key.0, naming, target);
        // An `appProtocol` says what the port is, whatever the pod lists; else the pod's
        // list, the Service's, Linkerd's defaults.
        let is_opaque = app_protocol_opaque
            || match opaque(annotations) {
                Some(l) => in_list(&l, target),
                None => svc_opaque.unwrap_or_else(|| DEFAULT_OPAQUE_PORTS.contains(&target)),
            };
        out.push(pb::Endpoint {
            addr: std::net::SocketAddr::new(ep.addr(), target).to_string(),
            weight: 10_000,
            zone: ep.zone.clone().unwrap_or_default(),
            mesh,
            protocol: if is_opaque {
                pb::ProtocolHint::Opaque
            } else {
                pb::ProtocolHint::Unknown
            } as i32,
        });
    }
    // One address in two slices (the spec allows it while slices are reshuffled) is one
    // endpoint: listed twice, it would get twice the traffic.
    out.sort_by(|a, b| a.addr.cmp(&b.addr));
    out.dedup_by(|a, b| a.addr == b.addr);
    pb::Update {
        unknown: false,
        endpoints: out,
        routes: routes(svc, key),
    }
}

/// The Service's routes annotation for its clients' metrics, if it reads; one that does not
/// is left out with a warning (the proxies would refuse it), rather than failing the answer.
fn routes(svc: &Service, key: &Key) -> String {
    let Some(v) = svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(meshwork_destination_api::routes::ROUTES))
    else {
        return String::new();
    };
    match meshwork_destination_api::routes::Routes::parse(v) {
        Ok(_) => v.clone(),
        Err(why) => {
            tracing::warn!(service = %format!("{}/{}", key.0, key.1), %why, "ignoring the routes annotation");
            String::new()
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use std::collections::HashMap;

    use serde_json::json;

    use super::*;

    fn res(
        authority: &str,
        svcs: &[Arc<Service>],
        slices: &[Arc<EndpointSlice>],
        pods: &HashMap<(String, String), Arc<Pod>>,
    ) -> pb::Update {
        resolve(authority, &Scan { svcs, slices, pods }, &naming()).0
    }

    fn deps(authority: &str, (svcs, slices, pods): &Objects) -> Deps {
        resolve(authority, &Scan { svcs, slices, pods }, &naming()).1
    }

    #[test]
    fn an_answer_depends_on_what_it_was_read_from_only() {
        let objs = objects();
        let key = |ns: &str, n: &str| (ns.to_string(), n.to_string());
        let pod = |n: &str, ip: &str| Changed::Pod {
            key: key("shop", n),
            ips: vec![ip.parse().unwrap()],
        };
        // A Service's authority: that Service, its slices, the pods of its usable endpoints.
        let web = deps("web.shop.svc.cluster.local:80", &objs);
        assert_eq!(deps("10.96.0.7:80", &objs), web, "by ClusterIP or by name");
        for (c, hit) in [
            (Changed::Service(key("shop", "web")), true),
            (Changed::Service(key("shop", "api")), false),
            (Changed::Slice(Some(key("shop", "web"))), true),
            (Changed::Slice(Some(key("shop", "api"))), false),
            (Changed::Slice(None), false),
            (pod("web-a", "10.244.1.5"), true),
            (pod("web-b", "10.244.2.6"), true),
            // Not ready: not an endpoint, so not read (its readiness comes as a slice change).
            (pod("web-c", "10.244.2.9"), false),
            (pod("other", "10.244.1.5"), false),
            (Changed::All, true),
        ] {
            assert_eq!(web.touched_by(&c), hit, "{c:?}");
        }
        // A Service not there yet: its coming.
        let api = deps("api.shop.svc:80", &objs);
        assert!(api.touched_by(&Changed::Service(key("shop", "api"))));
        assert!(api.touched_by(&Changed::Slice(Some(key("shop", "api")))));
        assert!(!api.touched_by(&Changed::Service(key("shop", "web"))));
        // A pod's address: whichever pod owns it, and any Service (one may take the address).
        let at = deps("10.244.1.5:8080", &objs);
        assert!(at.touched_by(&pod("web-a", "10.244.1.5")));
        assert!(at.touched_by(&pod("newcomer", "10.244.1.5")));
        assert!(!at.touched_by(&pod("other", "10.244.7.7")));
        assert!(at.touched_by(&Changed::Service(key("shop", "api"))));
        // Nobody's address yet: the pod that comes to own it.
        let nobody = deps("10.244.9.9:8080", &objs);
        assert!(nobody.touched_by(&pod("late", "10.244.9.9")));
        assert!(!nobody.touched_by(&pod("web-a", "10.244.1.5")));
    }

    fn naming() -> Naming {
        Naming {
            cluster_domain: "cluster.local".into(),
            trust_domain: "cluster.local".into(),
            node: "node-a".into(),
        }
    }

    type Objects = (
        Vec<Arc<Service>>,
        Vec<Arc<EndpointSlice>>,
        HashMap<(String, String), Arc<Pod>>,
    );

    fn objects() -> Objects {
        let svc: Service = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"clusterIP": "10.96.0.7", "ports": [
                {"name": "http", "port": 80, "targetPort": 8080},
                {"name": "db", "port": 5432}]},
        }))
        .unwrap();
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "web-1", "namespace": "shop",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"},
                      {"name": "db", "port": 5432, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.244.1.5"], "conditions": {"ready": true}, "zone": "a",
                 "targetRef": {"kind": "Pod", "name": "web-a", "namespace": "shop"}},
                {"addresses": ["10.244.2.6"], "conditions": {"ready": true},
                 "targetRef": {"kind": "Pod", "name": "web-b", "namespace": "shop"}},
                {"addresses": ["10.244.2.9"], "conditions": {"ready": false},
                 "targetRef": {"kind": "Pod", "name": "web-c", "namespace": "shop"}},
            ],
        }))
        .unwrap();
        let pod = |name: &str, ann: serde_json::Value, ip: &str| -> Arc<Pod> {
            Arc::new(
                serde_json::from_value(json!({
                    "metadata": {"name": name, "namespace": "shop", "annotations": ann},
                    "spec": {"serviceAccountName": "web", "containers": []},
                    "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
                }))
                .unwrap(),
            )
        };
        let pods = [
            pod("web-a", json!({PROXY_INBOUND_PORT: "4143"}), "10.244.1.5"),
            pod("web-b", json!({}), "10.244.2.6"),
            pod("web-c", json!({PROXY_INBOUND_PORT: "4143"}), "10.244.2.9"),
        ]
        .into_iter()
        .map(|p| (("shop".to_string(), p.metadata.name.clone().unwrap()), p))
        .collect();
        (vec![Arc::new(svc)], vec![Arc::new(slice)], pods)
    }

    /// The endpoints of a port are picked as the node's load balancer picks them, and none
    /// is listed in a way that would send it plaintext or twice.
    #[test]
    fn endpoints_are_picked_per_port_family_and_node_and_listed_once() {
        let (mut svcs, _, mut pods) = objects();
        let ep = |ip: &str, pod: &str, ready: bool, node: &str, port: &str| {
            json!({"addresses": [ip],
                   "conditions": {"ready": ready, "serving": true, "terminating": !ready},
                   "nodeName": node, "port": port,
                   "targetRef": {"kind": "Pod", "name": pod, "namespace": "shop"}})
        };
        let slice = |name: &str, family: &str, port: &str, eps: Vec<serde_json::Value>| {
            let num = if port == "http" { 8080 } else { 5432 };
            Arc::new(
                serde_json::from_value::<EndpointSlice>(json!({
                    "metadata": {"name": name, "namespace": "shop",
                                 "labels": {"kubernetes.io/service-name": "web"}},
                    "addressType": family,
                    "ports": [{"name": port, "port": num, "protocol": "TCP"}],
                    "endpoints": eps,
                }))
                .unwrap(),
            )
        };
        let slices = vec![
            // Pods of kind B: ready, the http port only; one listed in two slices.
            slice(
                "b-1",
                "IPv4",
                "http",
                vec![ep("10.244.2.6", "web-b", true, "node-b", "http")],
            ),
            slice(
                "b-2",
                "IPv4",
                "http",
                vec![
                    ep("10.244.2.6", "web-b", true, "node-b", "http"),
                    ep("10.244.1.5", "web-a", true, "node-a", "http"),
                ],
            ),
            // Kind A's only db pod, terminating but serving.
            slice(
                "a-1",
                "IPv4",
                "db",
                vec![ep("10.244.2.9", "web-c", false, "node-b", "db")],
            ),
            // An IPv6 copy, and an endpoint whose Pod the agent does not have.
            slice(
                "v6",
                "IPv6",
                "http",
                vec![ep("fd00::6", "web-b", true, "node-b", "http")],
            ),
            slice(
                "ghost",
                "IPv4",
                "http",
                vec![ep("10.244.7.7", "web-gone", true, "node-a", "http")],
            ),
        ];
        let addrs = |u: &pb::Update| {
            u.endpoints
                .iter()
                .map(|e| e.addr.clone())
                .collect::<Vec<_>>()
        };
        let http = res("10.96.0.7:80", &svcs, &slices, &pods);
        assert_eq!(
            addrs(&http),
            ["10.244.1.5:8080", "10.244.2.6:8080"],
            "{http:?}"
        );
        // The db port's ready endpoints do not have it: its own terminating one serves.
        let db = res("10.96.0.7:5432", &svcs, &slices, &pods);
        assert_eq!(addrs(&db), ["10.244.2.9:5432"], "{db:?}");
        // internalTrafficPolicy Local: this node's (node-a) only.
        let mut local = (*svcs[0]).clone();
        local.spec.as_mut().unwrap().internal_traffic_policy = Some("Local".into());
        svcs[0] = Arc::new(local);
        let here = res("10.96.0.7:80", &svcs, &slices, &pods);
        assert_eq!(addrs(&here), ["10.244.1.5:8080"], "{here:?}");
        // The ghost's Pod comes: it is listed (meshed or not, as the Pod says).
        pods.insert(
            ("shop".into(), "web-gone".into()),
            pods[&("shop".to_string(), "web-b".to_string())].clone(),
        );
        let all = res("10.96.0.7:80", &svcs, &slices, &pods);
        assert_eq!(
            addrs(&all),
            ["10.244.1.5:8080", "10.244.7.7:8080"],
            "{all:?}"
        );
        // Dual-stack, IPv6 first: each address answers in its own family, a name in IPv4.
        let mut dual = (*svcs[0]).clone();
        let spec = dual.spec.as_mut().unwrap();
        spec.internal_traffic_policy = None;
        spec.cluster_ip = Some("fd00::7".into());
        spec.cluster_ips = Some(vec!["fd00::7".into(), "10.96.0.7".into()]);
        spec.ip_families = Some(vec!["IPv6".into(), "IPv4".into()]);
        svcs[0] = Arc::new(dual);
        for authority in ["10.96.0.7:80", "web.shop.svc.cluster.local:80"] {
            let u = res(authority, &svcs, &slices, &pods);
            assert_eq!(
                addrs(&u),
                ["10.244.1.5:8080", "10.244.2.6:8080", "10.244.7.7:8080"],
                "{authority}: {u:?}"
            );
        }
        let v6 = res("[fd00::7]:80", &svcs, &slices, &pods);
        assert_eq!(addrs(&v6), ["[fd00::6]:8080"], "{v6:?}");
        // An ExternalName Service has none of ours: unknown, so the proxy passes it on.
        let ext: Service = serde_json::from_value(json!({
            "metadata": {"name": "ext", "namespace": "shop"},
            "spec": {"type": "ExternalName", "externalName": "example.org",
                     "ports": [{"port": 80}]},
        }))
        .unwrap();
        svcs.push(Arc::new(ext));
        assert!(res("ext.shop.svc.cluster.local:80", &svcs, &slices, &pods).unknown);
    }

    #[test]
    fn a_pod_address_resolves_to_that_pod_meshed_or_not() {
        let (svcs, slices, pods) = objects();
        let a = res("10.244.1.5:8080", &svcs, &slices, &pods);
        assert!(!a.unknown);
        assert_eq!(a.endpoints.len(), 1);
        assert_eq!(a.endpoints[0].addr, "10.244.1.5:8080");
        let mesh = a.endpoints[0].mesh.as_ref().unwrap();
        assert_eq!(mesh.identity, "spiffe://cluster.local/ns/shop/sa/web");
        assert_eq!(mesh.proxy_port, 4143);
        // Not meshed: found, plaintext.
        let b = res("10.244.2.6:8080", &svcs, &slices, &pods);
        assert!(!b.unknown && b.endpoints[0].mesh.is_none());
        // A port the pod keeps away from its proxy, and the proxy's own: not through it.
        let mut skipping = pods.clone();
        let mut p = (*skipping[&("shop".to_string(), "web-a".to_string())]).clone();
        p.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(SKIP_INBOUND_PORTS.into(), "9000-9100".into());
        skipping.insert(("shop".into(), "web-a".into()), Arc::new(p));
        for port in [9050, 4191, 4143] {
            let r = res(&format!("10.244.1.5:{port}"), &svcs, &slices, &skipping);
            assert!(r.endpoints[0].mesh.is_none(), "{port}: {r:?}");
        }
        // A server-speaks-first port is opaque by default, as for Services.
        let db = res("10.244.1.5:5432", &svcs, &slices, &pods);
        assert_eq!(db.endpoints[0].protocol, pb::ProtocolHint::Opaque as i32);
        // Nobody's address, and a finished pod's: unknown (the proxy passes them through).
        assert!(res("10.244.9.9:8080", &svcs, &slices, &pods).unknown);
        let mut gone = pods.clone();
        let mut done = (*gone[&("shop".to_string(), "web-a".to_string())]).clone();
        done.status.as_mut().unwrap().phase = Some("Succeeded".into());
        gone.insert(("shop".into(), "web-a".into()), Arc::new(done));
        assert!(res("10.244.1.5:8080", &svcs, &slices, &gone).unknown);
        // Terminating, it still owns its address (its proxy serves until it is gone)...
        let mut ending = pods.clone();
        let mut old = (*ending[&("shop".to_string(), "web-a".to_string())]).clone();
        old.metadata.deletion_timestamp =
            Some(serde_json::from_value(json!("2026-01-01T00:00:00Z")).unwrap());
        ending.insert(("shop".into(), "web-a".into()), Arc::new(old.clone()));
        let r = res("10.244.1.5:8080", &svcs, &slices, &ending);
        assert!(r.endpoints[0].mesh.is_some(), "{r:?}");
        // ...unless a live pod already has it: that one wins.
        let mut new = old;
        new.metadata.deletion_timestamp = None;
        new.metadata.name = Some("web-z".into());
        new.metadata.annotations = None;
        ending.insert(("shop".into(), "web-z".into()), Arc::new(new));
        let r = res("10.244.1.5:8080", &svcs, &slices, &ending);
        assert!(r.endpoints[0].mesh.is_none(), "{r:?}");
    }

    #[test]
    fn an_authority_resolves_to_usable_endpoints_with_identity_and_hint() {
        let (svcs, slices, pods) = objects();
        let by_ip = res("10.96.0.7:80", &svcs, &slices, &pods);
        for name in [
            "web.shop:80",
            "web.shop.svc:80",
            "web.shop.svc.cluster.local.:80",
            "WEB.shop.svc.cluster.local:80",
        ] {
            assert_eq!(res(name, &svcs, &slices, &pods), by_ip, "{name}");
        }
        assert!(!by_ip.unknown);
        // The unready pod is left out; the meshed one carries its identity.
        assert_eq!(by_ip.endpoints.len(), 2);
        let a = &by_ip.endpoints[0];
        assert_eq!(a.addr, "10.244.1.5:8080");
        assert_eq!(a.zone, "a");
        assert_eq!(
            a.mesh,
            Some(pb::Mesh {
                identity: "spiffe://cluster.local/ns/shop/sa/web".into(),
                proxy_port: 4143
            })
        );
        assert_eq!(a.protocol, pb::ProtocolHint::Unknown as i32);
        assert_eq!(by_ip.endpoints[1].mesh, None);
        // 5432 is among Linkerd's default opaque ports.
        let db = res("web.shop:5432", &svcs, &slices, &pods);
        assert!(db
            .endpoints
            .iter()
            .all(|e| e.protocol == pb::ProtocolHint::Opaque as i32));
    }

    /// A Service's list names Service ports (port 80 here, whose target is 8080), as
    /// Linkerd's does; it replaces the default list.
    #[test]
    fn annotations_override_the_default_opaque_ports() {
        let (svcs, slices, pods) = objects();
        let hints = |svcs: &[Arc<Service>], authority: &str| -> Vec<i32> {
            res(authority, svcs, &slices, &pods)
                .endpoints
                .iter()
                .map(|e| e.protocol)
                .collect()
        };
        let (opaque, unknown) = (
            pb::ProtocolHint::Opaque as i32,
            pb::ProtocolHint::Unknown as i32,
        );
        let annotated = |list: &str| {
            let mut svc = (*svcs[0]).clone();
            svc.metadata.annotations = Some([(OPAQUE_PORTS.to_string(), list.to_string())].into());
            let mut all = svcs.clone();
            all[0] = Arc::new(svc);
            all
        };
        let by_service_port = annotated("80,9000");
        assert_eq!(hints(&by_service_port, "web.shop:80"), [opaque, opaque]);
        assert_eq!(hints(&by_service_port, "web.shop:5432"), [unknown, unknown]);
        // The target port listed on the Service says nothing.
        let by_target = annotated("8080");
        assert_eq!(hints(&by_target, "web.shop:80"), [unknown, unknown]);
    }

    /// A Service port's `appProtocol: meshwork.io/opaque` (or Linkerd's) makes it opaque,
    /// whatever the pods list.
    #[test]
    fn an_opaque_app_protocol_makes_the_service_port_opaque() {
        let (mut svcs, slices, mut pods) = objects();
        for app_protocol in ["meshwork.io/opaque", "linkerd.io/opaque", "http"] {
            let mut svc = (*svcs[0]).clone();
            svc.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].app_protocol =
                Some(app_protocol.into());
            svcs[0] = Arc::new(svc);
            // A pod that lists some other port: its list does not override the Service's
            // word on this one.
            for p in pods.values_mut() {
                let mut pod = (**p).clone();
                pod.metadata
                    .annotations
                    .get_or_insert_with(Default::default)
                    .insert(OPAQUE_PORTS.into(), "9999".into());
                *p = Arc::new(pod);
            }
            let u = res("web.shop:80", &svcs, &slices, &pods);
            let want = if app_protocol == "http" {
                pb::ProtocolHint::Unknown
            } else {
                pb::ProtocolHint::Opaque
            } as i32;
            assert!(
                !u.endpoints.is_empty() && u.endpoints.iter().all(|e| e.protocol == want),
                "{app_protocol}: {u:?}"
            );
        }
    }

    #[test]
    fn a_services_routes_go_to_its_clients_and_bad_ones_are_left_out() {
        let (mut svcs, slices, pods) = objects();
        let with = |svcs: &mut Vec<Arc<Service>>, v: &str| {
            let mut svc = (*svcs[0]).clone();
            svc.metadata.annotations = Some(
                [(
                    meshwork_destination_api::routes::ROUTES.to_string(),
                    v.to_string(),
                )]
                .into(),
            );
            svcs[0] = Arc::new(svc);
        };
        assert_eq!(res("web.shop:80", &svcs, &slices, &pods).routes, "");
        with(&mut svcs, "GET /books/{id}; /healthz");
        let u = res("web.shop:80", &svcs, &slices, &pods);
        assert_eq!(u.routes, "GET /books/{id}; /healthz");
        assert_eq!(u.endpoints.len(), 2);
        with(&mut svcs, "books/{id}");
        let u = res("web.shop:80", &svcs, &slices, &pods);
        assert_eq!(u.routes, "");
        assert_eq!(u.endpoints.len(), 2, "the endpoints still come");
    }

    #[test]
    fn unknown_authorities_and_ports_say_so() {
        let (svcs, slices, pods) = objects();
        assert!(res("10.96.0.8:80", &svcs, &slices, &pods).unknown);
        assert!(res("web.other:80", &svcs, &slices, &pods).unknown);
        assert!(res("web.shop.svc.elsewhere:80", &svcs, &slices, &pods).unknown);
        assert!(res("web.shop", &svcs, &slices, &pods).unknown);
        let no_port = res("web.shop:81", &svcs, &slices, &pods);
        assert!(!no_port.unknown && no_port.endpoints.is_empty());
    }
}
