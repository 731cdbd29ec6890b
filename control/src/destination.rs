//! The proxies' discovery service (Linkerd's destination controller role, served per node as
//! ztunnel's xDS is): `Destination.Get(authority)` streams the authority's endpoints, each with
//! the identity its proxy must prove, its proxy port and a protocol hint, the whole set again
//! on every change (destination-api/proto/meshwork/destination/v1/destination.proto).
//!
//! `resolve` is the pure part: a Service found by ClusterIP or DNS name, its slices' usable
//! endpoints for the port (the rule kube-proxy uses, from `meshwork-service-model`), and each
//! endpoint's pod: meshed when it carries `meshwork.io/proxy-inbound-port`, its identity from
//! its ServiceAccount (`spiffe://<trust domain>/ns/<ns>/sa/<sa>`, as the identity service
//! issues it), opaque when the pod's or Service's `config.meshwork.io/opaque-ports`
//! (else Linkerd's default list) holds the target port.
//!
//! The API is plaintext on the node's address: the proxies on this node are its only callers.
//! Linkerd runs it over mTLS; see ARCHITECTURE.md ("The proxy", known gaps).

use std::{net::IpAddr, pin::Pin, sync::Arc};

use k8s_openapi::api::{
    core::v1::{Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::runtime::reflector::{ObjectRef, Store};
use meshwork_destination_api::{
    parse_ports,
    pb::{self, destination_server},
    DEFAULT_OPAQUE_PORTS, OPAQUE_PORTS, PROXY_INBOUND_PORT,
};
use meshwork_service_model::{cluster_ips, endpoints, service_key, slice_service, usable, Key};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

/// What names a Service's authority in this cluster.
#[derive(Clone, Debug)]
pub struct Naming {
    pub cluster_domain: String,
    pub trust_domain: String,
}

/// Where an authority points: a Service and one of its ports.
fn find<'a>(
    authority: &str,
    services: &'a [Arc<Service>],
    naming: &Naming,
) -> Option<(&'a Arc<Service>, u16)> {
    let (host, port) = authority.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let svc = if let Ok(ip) = host.parse::<IpAddr>() {
        services.iter().find(|s| {
            s.spec
                .as_ref()
                .is_some_and(|spec| cluster_ips(spec).contains(&ip))
        })?
    } else {
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
        services.iter().find(|s| {
            s.metadata.name.as_deref() == Some(name) && s.metadata.namespace.as_deref() == Some(ns)
        })?
    };
    Some((svc, port))
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

/// The update for `authority` from the reflectors' objects.
/// `pod(namespace, name)` looks a pod up and `pod_at(ip)` finds the pod owning an address
/// (the reflector's store: no copy of all pods).
pub fn resolve(
    authority: &str,
    services: &[Arc<Service>],
    slices: &[Arc<EndpointSlice>],
    pod: &dyn Fn(&str, &str) -> Option<Arc<Pod>>,
    pod_at: &dyn Fn(IpAddr) -> Option<Arc<Pod>>,
    naming: &Naming,
) -> pb::Update {
    let Some((svc, port)) = find(authority, services, naming) else {
        let at = authority.rsplit_once(':').and_then(|(h, p)| {
            let ip = h
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<IpAddr>()
                .ok()?;
            Some((ip, p.parse::<u16>().ok()?))
        });
        if let Some((ip, port)) = at {
            if let Some(p) = pod_at(ip) {
                return resolve_pod(&p, ip, port, naming);
            }
        }
        return pb::Update {
            unknown: true,
            endpoints: vec![],
        };
    };
    let Some(key): Option<Key> = service_key(svc) else {
        return pb::Update::default();
    };
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
    let svc_opaque = opaque(svc.metadata.annotations.as_ref());
    let mine = slices
        .iter()
        .filter(|s| slice_service(s).as_ref() == Some(&key))
        .map(|s| &**s);
    let all = endpoints(mine).remove(&key).unwrap_or_default();
    let mut out = Vec::new();
    for ep in usable(&all) {
        let Some(target) = ep.port(&port_name, meshwork_service_model::Protocol::Tcp) else {
            continue;
        };
        let pod = ep.pod.as_deref().and_then(|p| pod(&key.0, p));
        let annotations = pod.as_ref().and_then(|p| p.metadata.annotations.as_ref());
        let mesh = mesh_of(pod.as_ref(), &key.0, naming, target);
        let is_opaque = match opaque(annotations).or_else(|| svc_opaque.clone()) {
            Some(list) => in_list(&list, target),
            None => DEFAULT_OPAQUE_PORTS.contains(&target),
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
    out.sort_by(|a, b| a.addr.cmp(&b.addr));
    pb::Update {
        unknown: false,
        endpoints: out,
    }
}

/// The reflectors the service reads, and the counter they bump on any change.
#[derive(Clone)]
pub struct Server {
    pub services: Store<Service>,
    pub slices: Store<EndpointSlice>,
    pub pods: Store<Pod>,
    pub changes: watch::Receiver<u64>,
    pub naming: Naming,
    pub streams: prometheus_client::metrics::gauge::Gauge,
}

impl Server {
    fn update(&self, authority: &str) -> pb::Update {
        let pod = |ns: &str, name: &str| self.pods.get(&ObjectRef::new(name).within(ns));
        let pod_at = |ip: IpAddr| pod_at(self.pods.state(), ip);
        resolve(
            authority,
            &self.services.state(),
            &self.slices.state(),
            &pod,
            &pod_at,
            &self.naming,
        )
    }
}

/// Streams open at once, over all callers: each costs a recomputation on every change.
pub const MAX_STREAMS: i64 = 4096;

type UpdateStream = Pin<Box<dyn futures::Stream<Item = Result<pb::Update, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl destination_server::Destination for Server {
    type GetStream = UpdateStream;

    async fn get(
        &self,
        req: tonic::Request<pb::GetDestination>,
    ) -> Result<tonic::Response<UpdateStream>, tonic::Status> {
        let authority = req.into_inner().authority;
        if !authority.contains(':') || authority.len() > 512 {
            return Err(tonic::Status::invalid_argument(
                "the authority is host:port (a ClusterIP or a Service's DNS name)",
            ));
        }
        if self.streams.get() >= MAX_STREAMS {
            return Err(tonic::Status::resource_exhausted(format!(
                "{MAX_STREAMS} discovery streams are open on this node"
            )));
        }
        let this = self.clone();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            // A partial view would tell a proxy that endpoints are gone.
            let _ = this.services.wait_until_ready().await;
            let _ = this.slices.wait_until_ready().await;
            let _ = this.pods.wait_until_ready().await;
            this.streams.inc();
            let mut changes = this.changes.clone();
            let mut last = None;
            loop {
                changes.borrow_and_update();
                let u = this.update(&authority);
                if last.as_ref() != Some(&u) {
                    last = Some(u.clone());
                    if tx.send(Ok(u)).await.is_err() {
                        break;
                    }
                }
                tokio::select! {
                    r = changes.changed() => if r.is_err() { break },
                    _ = tx.closed() => break,
                }
            }
            this.streams.dec();
        });
        Ok(tonic::Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Serves the API on `listener` until the task is dropped.
pub async fn serve(server: Server, listener: tokio::net::TcpListener) {
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    if let Err(e) = tonic::transport::Server::builder()
        .add_service(destination_server::DestinationServer::new(server))
        .serve_with_incoming(incoming)
        .await
    {
        tracing::error!(error = %e, "destination API stopped");
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
        let pod = |ns: &str, name: &str| pods.get(&(ns.to_string(), name.to_string())).cloned();
        let pod_at = |ip: IpAddr| pod_at(pods.values().cloned(), ip);
        resolve(authority, svcs, slices, &pod, &pod_at, &naming())
    }

    fn naming() -> Naming {
        Naming {
            cluster_domain: "cluster.local".into(),
            trust_domain: "cluster.local".into(),
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

    #[test]
    fn annotations_override_the_default_opaque_ports() {
        let (mut svcs, slices, pods) = objects();
        let mut svc = (*svcs[0]).clone();
        svc.metadata.annotations =
            Some([(OPAQUE_PORTS.to_string(), "8000-8080".to_string())].into());
        svcs[0] = Arc::new(svc);
        let http = res("web.shop:80", &svcs, &slices, &pods);
        assert!(http
            .endpoints
            .iter()
            .all(|e| e.protocol == pb::ProtocolHint::Opaque as i32));
        let db = res("web.shop:5432", &svcs, &slices, &pods);
        assert!(db
            .endpoints
            .iter()
            .all(|e| e.protocol == pb::ProtocolHint::Unknown as i32));
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
