//! Discovery from the node's control agent (`Destination.Get`, destination-api/): one stream
//! per authority in use, opened by its first request, each update the authority's whole set.
//! While the agent is away the last set stays in use and the stream reopens with back-off
//! (100 ms doubling to 5 s, jittered), as Linkerd's proxy keeps its last resolution.
//! Entries given statically (`--endpoint`) answer first and never ask the agent.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use meshwork_destination_api::pb::{self, destination_client::DestinationClient};
use meshwork_identity::spiffe::SpiffeId;
use tokio::sync::watch;

use super::discover::{Endpoint, Mesh, Static};
use crate::metrics::Metrics;

/// An authority's endpoints; None: not known yet.
pub type Set = Option<Arc<[Endpoint]>>;

pub struct Resolver {
    statics: Static,
    api: Option<Api>,
    metrics: Arc<Metrics>,
}

struct Api {
    /// `http://host:port` of the control agent.
    url: String,
    /// How long a first request waits for its authority's first set (Linkerd's
    /// fail-fast: the request then gets a 503 instead of queueing).
    first: Duration,
    streams: Mutex<HashMap<String, watch::Receiver<Set>>>,
}

impl Resolver {
    pub fn fixed(statics: Static, metrics: Arc<Metrics>) -> Self {
        Resolver {
            statics,
            api: None,
            metrics,
        }
    }

    /// Static entries, then the control agent at `addr` (`host:port`).
    pub fn api(statics: Static, addr: &str, first: Duration, metrics: Arc<Metrics>) -> Self {
        Resolver {
            statics,
            api: Some(Api {
                url: format!("http://{addr}"),
                first,
                streams: Mutex::new(HashMap::new()),
            }),
            metrics,
        }
    }

    /// The endpoints of `authority` (lower-case `host:port`); None: nobody knows it.
    pub async fn get(&self, authority: &str) -> Option<Arc<[Endpoint]>> {
        if let Some(eps) = self.statics.get(authority) {
            return Some(eps.into());
        }
        let api = self.api.as_ref()?;
        let mut rx = {
            let mut streams = api.streams.lock().unwrap_or_else(|p| p.into_inner());
            streams
                .entry(authority.to_string())
                .or_insert_with(|| {
                    let (tx, rx) = watch::channel(None);
                    tokio::spawn(follow(
                        api.url.clone(),
                        authority.to_string(),
                        tx,
                        self.metrics.clone(),
                    ));
                    rx
                })
                .clone()
        };
        if let Some(set) = rx.borrow().clone() {
            return Some(set);
        }
        let first = tokio::time::timeout(api.first, async {
            rx.wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|s| s.clone())
        })
        .await;
        first.ok().flatten()
    }
}

/// Keeps `tx` at the agent's latest set for `authority` until every receiver is gone.
async fn follow(url: String, authority: String, tx: watch::Sender<Set>, metrics: Arc<Metrics>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match stream(&url, &authority, &tx, &metrics).await {
            // The agent ended the stream (it is stopping): reopen at once.
            Ok(()) => backoff = Duration::from_millis(100),
            Err(e) => {
                metrics.discovery_errors.inc();
                tracing::info!(%authority, error = %e, retry_in = ?backoff, "discovery: keeping the last endpoints");
            }
        }
        if tx.is_closed() {
            return;
        }
        let jitter = 0.75 + rand::random::<f64>() * 0.5;
        tokio::time::sleep(backoff.mul_f64(jitter)).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn stream(
    url: &str,
    authority: &str,
    tx: &watch::Sender<Set>,
    metrics: &Metrics,
) -> Result<(), String> {
    let endpoint = tonic::transport::Endpoint::from_shared(url.to_string())
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let mut client = DestinationClient::new(channel);
    let mut updates = client
        .get(pb::GetDestination {
            authority: authority.to_string(),
        })
        .await
        .map_err(|s| s.message().to_string())?
        .into_inner();
    metrics.discovery_streams.inc();
    let r = loop {
        match updates.message().await {
            Ok(Some(u)) => {
                metrics.discovery_updates.inc();
                tx.send_replace(Some(endpoints(&u).into()));
            }
            Ok(None) => break Ok(()),
            Err(s) => break Err(s.message().to_string()),
        }
        if tx.is_closed() {
            break Ok(());
        }
    };
    metrics.discovery_streams.dec();
    r
}

/// An update's endpoints; one the proxy cannot use (a bad address or identity) is left out
/// with a log line rather than failing the set.
pub fn endpoints(u: &pb::Update) -> Vec<Endpoint> {
    u.endpoints
        .iter()
        .filter_map(|e| {
            let addr: SocketAddr = e
                .addr
                .parse()
                .map_err(|_| tracing::warn!(addr = %e.addr, "discovery: not ip:port"))
                .ok()?;
            let mesh = match &e.mesh {
                None => None,
                Some(m) => Some(Mesh {
                    identity: SpiffeId::parse(&m.identity)
                        .map_err(|_| tracing::warn!(id = %m.identity, "discovery: not a SPIFFE ID"))
                        .ok()?,
                    proxy_port: u16::try_from(m.proxy_port).ok()?,
                }),
            };
            Some(Endpoint {
                addr,
                mesh,
                opaque: e.protocol == pb::ProtocolHint::Opaque as i32,
            })
        })
        .collect()
}
