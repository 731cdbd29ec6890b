//! The agent's own mesh identity, which the discovery listener serves mutual TLS with
//! (ARCHITECTURE.md, "Discovery over mTLS"): proxies check that the agent proves
//! `spiffe://<td>/ns/kube-system/sa/meshwork-control` (their `--destination-identity`), so
//! nothing else at the node's address can pass as it; the agent answers only clients with a
//! certificate of the trust domain (authentication, not authorization: any pod can get one
//! for its own ServiceAccount).
//!
//! The certificate comes from the identity service like a proxy's (`meshwork_identity::client`:
//! a projected token, rotation at 70 % of the life). The service is usually a ClusterIP Service
//! that this agent itself makes reachable, so its address is read from the agent's Service
//! store at each connection, and the first request waits until the Service has a ready
//! endpoint (a cluster coming up starts the agent first; asking earlier would only back off).
//! Nothing here stops the datapath: until a certificate is there, connections are refused
//! and proxies keep their last answers and retry.

use std::{net::IpAddr, path::PathBuf, sync::Arc, time::Duration};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::runtime::reflector::{ObjectRef, Store};
use meshwork_identity::{client, spiffe::SpiffeId};
use tokio::sync::broadcast;

use super::Changed;
use crate::config::Config;

/// Where the identity service is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Addr {
    Fixed(String),
    /// A Service's ClusterIP and this port.
    Service {
        namespace: String,
        name: String,
        port: u16,
    },
}

impl Addr {
    /// `ip:port`, `[v6]:port`, or `name.namespace.svc[.<cluster_domain>]:port`.
    pub fn parse(s: &str, cluster_domain: &str) -> Result<Addr, String> {
        let bad = |why: &str| format!("--identity-addr {s:?}: {why}");
        if s.parse::<std::net::SocketAddr>().is_ok() {
            return Ok(Addr::Fixed(s.to_string()));
        }
        let (host, port) = s.rsplit_once(':').ok_or_else(|| bad("not host:port"))?;
        let port: u16 = port.parse().map_err(|_| bad("the port is not a number"))?;
        let host = host.trim_end_matches('.');
        let rest = host
            .strip_suffix(cluster_domain)
            .and_then(|h| h.strip_suffix('.'))
            .unwrap_or(host);
        match rest.split('.').collect::<Vec<_>>()[..] {
            [name, namespace, "svc"] if !name.is_empty() && !namespace.is_empty() => {
                Ok(Addr::Service {
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                    port,
                })
            }
            _ => Err(bad(
                "neither ip:port nor a Service name.namespace.svc:port (the agent does not use DNS)",
            )),
        }
    }

    /// `ip:port` now: the Service's ClusterIP from `services`; Err: why not.
    fn find(&self, services: &Store<Service>) -> Result<String, String> {
        match self {
            Addr::Fixed(a) => Ok(a.clone()),
            Addr::Service {
                namespace,
                name,
                port,
            } => {
                let svc = services
                    .get(&ObjectRef::new(name).within(namespace))
                    .ok_or_else(|| {
                        format!("Service {namespace}/{name} is not in the agent's store (yet)")
                    })?;
                let ip = svc.spec.as_ref().and_then(|s| s.cluster_ip.as_deref());
                let ip: IpAddr = ip.and_then(|ip| ip.parse().ok()).ok_or_else(|| {
                    format!("Service {namespace}/{name} has no ClusterIP ({ip:?})")
                })?;
                Ok(std::net::SocketAddr::new(ip, *port).to_string())
            }
        }
    }

    /// Whether a change may have made the Service's endpoints ready.
    fn concerns(&self, c: &Changed) -> bool {
        match (self, c) {
            (Addr::Fixed(_), _) => false,
            (_, Changed::All) => true,
            (
                Addr::Service {
                    namespace, name, ..
                },
                Changed::Slice(Some((ns, n))) | Changed::Service((ns, n)),
            ) => ns == namespace && n == name,
            _ => false,
        }
    }

    /// Whether a slice of the Service lists a ready endpoint (always, for a fixed address).
    fn has_ready_endpoint(&self, slices: &Store<EndpointSlice>) -> bool {
        let Addr::Service {
            namespace, name, ..
        } = self
        else {
            return true;
        };
        slices.state().iter().any(|s| {
            s.metadata.namespace.as_deref() == Some(namespace)
                && s.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("kubernetes.io/service-name"))
                    == Some(name)
                && s.endpoints
                    .iter()
                    .any(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
        })
    }
}

/// What the agent's identity is made of, checked at start (a wrong flag fails the agent at
/// once, as any other flag does).
pub struct Settings {
    pub addr: Addr,
    /// `trust_anchors_pem` is read from `anchors` when the identity is made.
    pub client: client::Config,
    pub anchors: PathBuf,
}

impl Settings {
    pub fn from(cfg: &Config) -> Result<Settings, String> {
        let td = &cfg.trust_domain;
        let id = |flag: &str, s: &str| SpiffeId::parse(s).map_err(|e| format!("{flag} {s:?}: {e}"));
        let service_id = cfg
            .identity_service_id
            .clone()
            .unwrap_or_else(|| format!("spiffe://{td}/ns/meshwork-system/sa/meshwork-identity"));
        let own = format!(
            "spiffe://{td}/ns/{}/sa/{}",
            cfg.namespace, cfg.service_account
        );
        Ok(Settings {
            addr: Addr::parse(&cfg.identity_addr, &cfg.cluster_domain)?,
            client: client::Config {
                addr: cfg.identity_addr.clone(),
                service_identity: id("--identity-service-id", &service_id)?,
                identity: id("--namespace/--service-account", &own)?,
                token_path: cfg.identity_token.clone(),
                trust_anchors_pem: String::new(),
                trust_anchors_path: Some(cfg.trust_anchors.clone()),
            },
            anchors: cfg.trust_anchors.clone(),
        })
    }

    /// The identity (no certificate yet), once the trust anchors can be read: retried every
    /// 5 s, since a node may be given them after the agent starts.
    pub async fn identity(&self, services: Store<Service>) -> client::Identity {
        loop {
            let made = std::fs::read_to_string(&self.anchors)
                .map_err(|e| format!("{}: {e}", self.anchors.display()))
                .and_then(|pem| {
                    client::Identity::new(client::Config {
                        trust_anchors_pem: pem,
                        ..self.client.clone()
                    })
                    .map_err(|e| e.to_string())
                });
            match made {
                Ok(id) => {
                    let (addr, services) = (self.addr.clone(), services.clone());
                    return id.with_lookup(Arc::new(move || addr.find(&services)));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "discovery: no trust anchors for the agent's identity yet; retrying in 5 s");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            }
        }
    }
}

/// Keeps `identity` certified until the future is dropped: the first Certify once the
/// identity Service has a ready endpoint, then the client library's rotation.
pub async fn keep_certified(
    identity: client::Identity,
    addr: Addr,
    slices: Store<EndpointSlice>,
    mut changed: broadcast::Receiver<Changed>,
) {
    let since = tokio::time::Instant::now();
    let mut tell = since;
    while !addr.has_ready_endpoint(&slices) {
        if tokio::time::Instant::now() >= tell {
            // Usual for a moment while a cluster comes up (the agent starts first); worth a
            // warning when it lasts.
            if tell == since {
                tracing::info!(
                    ?addr,
                    "discovery: waiting for a ready identity service endpoint"
                );
            } else {
                tracing::warn!(?addr, waited = ?since.elapsed(), "discovery: still no ready identity service endpoint; proxies cannot get discovery from this agent until there is one");
            }
            tell += Duration::from_secs(30);
        }
        // A change to that Service or its slices, or a relist; else look again now and then
        // (a store still listing sends nothing). A scan per change of the whole cluster
        // would cost an agent starting on a large one a scan per object listed.
        let deadline = tokio::time::sleep(Duration::from_secs(2));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                c = changed.recv() => match c {
                    Ok(c) if addr.concerns(&c) => break,
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => {
                        (&mut deadline).await;
                        break;
                    }
                },
                _ = &mut deadline => break,
            }
        }
    }
    tracing::info!(id = %identity.id(), "discovery: asking for the agent's certificate");
    // In this task: dropping it (the agent stopping discovery) ends the rotation.
    identity.rotate().await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use kube::runtime::{reflector, watcher};
    use serde_json::json;

    use super::*;

    /// The identity Service's address and readiness as the agent's stores see them: not
    /// there, no ClusterIP, there without a ready endpoint, ready; recreated with another
    /// ClusterIP (read again at the next connection).
    #[test]
    fn the_identity_service_is_read_from_the_stores() {
        let addr = Addr::parse(
            "meshwork-identity.meshwork-system.svc:8080",
            "cluster.local",
        )
        .unwrap();
        let (services, mut sw) = reflector::store::<Service>();
        let (slices, mut lw) = reflector::store::<EndpointSlice>();
        let svc = |ip: Option<&str>| -> Service {
            serde_json::from_value(json!({
                "metadata": {"name": "meshwork-identity", "namespace": "meshwork-system"},
                "spec": {"clusterIP": ip, "ports": [{"port": 8080}]},
            }))
            .unwrap()
        };
        let slice = |ready: bool, service: &str| -> EndpointSlice {
            serde_json::from_value(json!({
                "metadata": {"name": "meshwork-identity-1", "namespace": "meshwork-system",
                             "labels": {"kubernetes.io/service-name": service}},
                "addressType": "IPv4",
                "endpoints": [{"addresses": ["10.244.0.9"], "conditions": {"ready": ready}}],
            }))
            .unwrap()
        };
        let err = addr.find(&services).unwrap_err();
        assert!(err.contains("not in the agent's store"), "{err}");
        sw.apply_watcher_event(&watcher::Event::Apply(svc(None)));
        let err = addr.find(&services).unwrap_err();
        assert!(err.contains("no ClusterIP"), "{err}");
        sw.apply_watcher_event(&watcher::Event::Apply(svc(Some("10.96.0.20"))));
        assert_eq!(addr.find(&services), Ok("10.96.0.20:8080".into()));

        assert!(!addr.has_ready_endpoint(&slices));
        lw.apply_watcher_event(&watcher::Event::Apply(slice(true, "other")));
        assert!(!addr.has_ready_endpoint(&slices), "another Service's slice");
        lw.apply_watcher_event(&watcher::Event::Apply(slice(false, "meshwork-identity")));
        assert!(!addr.has_ready_endpoint(&slices), "a not-ready endpoint");
        lw.apply_watcher_event(&watcher::Event::Apply(slice(true, "meshwork-identity")));
        assert!(addr.has_ready_endpoint(&slices));

        sw.apply_watcher_event(&watcher::Event::Delete(svc(Some("10.96.0.20"))));
        sw.apply_watcher_event(&watcher::Event::Apply(svc(Some("10.96.0.21"))));
        assert_eq!(addr.find(&services), Ok("10.96.0.21:8080".into()));

        let key = |n: &str| ("meshwork-system".to_string(), n.to_string());
        assert!(addr.concerns(&Changed::Slice(Some(key("meshwork-identity")))));
        assert!(addr.concerns(&Changed::Service(key("meshwork-identity"))));
        assert!(addr.concerns(&Changed::All));
        assert!(!addr.concerns(&Changed::Slice(Some(key("other")))));
        assert!(!addr.concerns(&Changed::Slice(None)));
        let fixed = Addr::parse("10.0.0.1:8080", "cluster.local").unwrap();
        assert_eq!(fixed.find(&services), Ok("10.0.0.1:8080".into()));
        assert!(fixed.has_ready_endpoint(&slices));
    }

    #[test]
    fn addresses() {
        let p = |s: &str| Addr::parse(s, "cluster.local");
        assert_eq!(p("10.0.0.1:8080"), Ok(Addr::Fixed("10.0.0.1:8080".into())));
        assert_eq!(
            p("[fd00::1]:8080"),
            Ok(Addr::Fixed("[fd00::1]:8080".into()))
        );
        let svc = Addr::Service {
            namespace: "meshwork-system".into(),
            name: "meshwork-identity".into(),
            port: 8080,
        };
        assert_eq!(
            p("meshwork-identity.meshwork-system.svc:8080").as_ref(),
            Ok(&svc)
        );
        assert_eq!(
            p("meshwork-identity.meshwork-system.svc.cluster.local:8080").as_ref(),
            Ok(&svc)
        );
        assert_eq!(
            p("meshwork-identity.meshwork-system.svc.cluster.local.:8080").as_ref(),
            Ok(&svc)
        );
        for bad in [
            "identity.example.com:8080",
            "meshwork-identity:8080",
            "meshwork-identity.meshwork-system.svc",
            "meshwork-identity.meshwork-system.svc:http",
            ".meshwork-system.svc:8080",
        ] {
            assert!(p(bad).is_err(), "{bad}");
        }
    }
}
