//! Discovery from the node's control agent (`Destination.Get`, destination-api/): one stream
//! per authority in use, all on one connection, opened by the authority's first request and
//! let go after `IDLE` without requests; each update is the authority's whole set. While the
//! agent is away the last set stays in use and the stream reopens with back-off (100 ms
//! doubling to 5 s, jittered), as Linkerd's proxy keeps its last resolution. Entries given
//! statically (`--endpoint`) answer first and never ask the agent.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use meshwork_destination_api::{
    pb::{self, destination_client::DestinationClient},
    routes::Routes,
};
use meshwork_identity::spiffe::SpiffeId;
use tokio::sync::watch;

use super::discover::{Endpoint, Mesh, Static};
use crate::metrics::Metrics;

/// An authority's endpoints; None: not known yet.
pub type Set = Option<Arc<[Endpoint]>>;

/// An authority's routes for the metrics (its Service's `config.meshwork.io/routes`); None:
/// none, or not known yet.
type RouteSet = Option<Arc<Routes>>;

pub struct Resolver {
    statics: Static,
    api: Option<Api>,
    metrics: Arc<Metrics>,
}

struct Api {
    /// One lazily connected channel to the agent, every authority's stream on it.
    channel: tonic::transport::Channel,
    /// How long a first request waits for its authority's first set; past it the authority
    /// fails fast (503 at once) until a set arrives (Linkerd's failfast).
    first: Duration,
    streams: Mutex<Streams>,
    /// Authorities whose current set has routes: while none has, a request's route is known
    /// to be none without a look at the streams (the common case, on every request).
    routed: Arc<AtomicUsize>,
    /// An authority no request asked for in this long lets its stream go.
    idle: Duration,
}

/// An authority's routes as its stream sets them, counted in [`Api::routed`].
struct RouteFeed {
    tx: watch::Sender<RouteSet>,
    routed: Arc<AtomicUsize>,
}

impl RouteFeed {
    fn set(&self, r: RouteSet) {
        match (self.tx.borrow().is_some(), r.is_some()) {
            (false, true) => {
                self.routed.fetch_add(1, Ordering::Relaxed);
            }
            (true, false) => {
                self.routed.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
        self.tx.send_replace(r);
    }
}

impl Drop for RouteFeed {
    fn drop(&mut self) {
        if self.tx.borrow().is_some() {
            self.routed.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[derive(Default)]
struct Streams {
    by_authority: HashMap<String, Entry>,
}

impl Streams {
    /// Lets go of authorities not asked for in `idle`, and unknown ones past their time.
    /// Dropping an entry's receiver ends its stream (`follow` sees no one left).
    fn sweep(&mut self, now: Instant, idle: Duration) {
        self.by_authority
            .retain(|_, e| now - e.used < idle && !e.expired(now));
    }

    /// Lets go of the oldest address said to be outside the mesh (its stream ended already;
    /// it is asked again at its next connection): what a full table gives up first, so that
    /// an app reaching many outside addresses at once is not refused, nor its connections
    /// closed as if discovery were away. Whether one was let go.
    fn evict_unknown_address(&mut self) -> bool {
        let oldest = self
            .by_authority
            .iter()
            .filter(|(_, e)| e.address && e.unknown.load(Ordering::Relaxed))
            .min_by_key(|(_, e)| e.asked)
            .map(|(k, _)| k.clone());
        oldest.is_some_and(|k| self.by_authority.remove(&k).is_some())
    }
}

struct Entry {
    rx: watch::Receiver<Set>,
    routes: watch::Receiver<RouteSet>,
    failfast: Arc<AtomicBool>,
    /// The agent says no Service (or pod) answers to the authority: requests to it are
    /// answered at once. A name's stream stays (`UNKNOWN_NAME_TTL` from `asked`), and the
    /// flag goes when one appears; an address's stream ends, and the answer stands for
    /// `UNKNOWN_TTL` from `asked`.
    unknown: Arc<AtomicBool>,
    /// The authority is an address (an intercepted connection's destination), not a name.
    address: bool,
    asked: Instant,
    used: Instant,
}

/// An authority no request asked for in this long lets its stream go, by default
/// (`--discovery-idle-timeout`).
pub const IDLE: Duration = Duration::from_secs(60);
/// How long "nothing at this address" stands before the agent is asked again. Such an
/// address keeps no stream: an app connecting to many addresses outside the cluster (each
/// intercepted connection is looked up) must not hold one on the agent per address. Short:
/// a pod the agent had not seen yet gets plaintext passed through until it is asked again.
const UNKNOWN_TTL: Duration = Duration::from_secs(2);
/// How long an unknown name keeps its stream (a Service created meanwhile is seen at once)
/// before it is let go and asked again at its next request: made-up Host headers hold a
/// stream each for this long at most, and a full table lets them go first.
const UNKNOWN_NAME_TTL: Duration = Duration::from_secs(10);
/// Authorities followed at once; past it, new ones get a 503 (a client sending random Host
/// headers must not open a stream each on the agent, which serves at most 4,096 for its
/// whole node: `control/src/destination/server.rs`).
const MAX_AUTHORITIES: usize = 1_000;

/// The largest discovery update a proxy takes (`stream`).
const MAX_UPDATE_BYTES: usize = 32 << 20;

impl Resolver {
    pub fn fixed(statics: Static, metrics: Arc<Metrics>) -> Self {
        Resolver {
            statics,
            api: None,
            metrics,
        }
    }

    /// Static entries, then the control agent at `addr` (`host:port`), over `tls` (mutual
    /// TLS, the agent's identity checked by its verifier) or, without, plaintext.
    pub fn api(
        statics: Static,
        addr: &str,
        tls: Option<rustls::ClientConfig>,
        first: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("--destination-addr {addr}: {e}"))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true);
        // The identity client's connector type: one copy of tonic's channel code.
        let channel =
            endpoint.connect_with_connector_lazy(meshwork_identity::transport::connector(
                tls,
                "meshwork-control",
                Duration::from_secs(1),
            ));
        Ok(Resolver {
            statics,
            api: Some(Api {
                channel,
                first,
                streams: Mutex::new(Streams::default()),
                routed: Arc::new(AtomicUsize::new(0)),
                idle: IDLE,
            }),
            metrics,
        })
    }

    /// Lets an authority's stream go after `idle` without requests (Linkerd's discovery
    /// idle timeout).
    pub fn idle_after(mut self, idle: Duration) -> Self {
        if let Some(api) = &mut self.api {
            api.idle = idle;
        }
        self
    }

    /// How long an unused authority is followed.
    pub fn idle(&self) -> Duration {
        self.api.as_ref().map_or(IDLE, |a| a.idle)
    }

    /// The endpoints of `authority` (lower-case `host:port`) now, without waiting.
    pub fn current(&self, authority: &str) -> Option<Arc<[Endpoint]>> {
        if let Some(eps) = self.statics.get(authority) {
            return Some(eps.clone());
        }
        let api = self.api.as_ref()?;
        let streams = api.streams.lock().unwrap_or_else(|p| p.into_inner());
        let set = streams.by_authority.get(authority)?.rx.borrow().clone();
        set
    }

    /// The routes `authority`'s requests are named by in the metrics, as discovery last said.
    pub fn routes(&self, authority: &str) -> RouteSet {
        let api = self.api.as_ref()?;
        if api.routed.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let streams = api.streams.lock().unwrap_or_else(|p| p.into_inner());
        let routes = streams.by_authority.get(authority)?.routes.borrow().clone();
        routes
    }

    /// Resolves when discovery replaces `seen` as `authority`'s set (never for a static
    /// entry, an authority not followed, or once its stream is let go).
    pub async fn changed(&self, authority: &str, seen: Option<Arc<[Endpoint]>>) {
        let rx = match &self.api {
            Some(api) if self.statics.get(authority).is_none() => api
                .streams
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .by_authority
                .get(authority)
                .map(|e| e.rx.clone()),
            _ => None,
        };
        let Some(mut rx) = rx else {
            return std::future::pending().await;
        };
        let other = |s: &Set| match (s, &seen) {
            (Some(now), Some(seen)) => !Arc::ptr_eq(now, seen),
            (now, seen) => now.is_some() != seen.is_some(),
        };
        if rx.wait_for(other).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Lets go of what was not asked for lately (the outbound proxy's clock calls it).
    pub fn sweep(&self) {
        if let Some(api) = &self.api {
            api.streams
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .sweep(Instant::now(), api.idle);
        }
    }

    /// Whether `authority` is still followed (a static entry, or a stream not let go): a
    /// balancer for one that is not can go too.
    pub fn follows(&self, authority: &str) -> bool {
        self.statics.get(authority).is_some()
            || self.api.as_ref().is_some_and(|api| {
                api.streams
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .by_authority
                    .contains_key(authority)
            })
    }

    /// The endpoints of `authority` (lower-case `host:port`); None: nobody knows it (the
    /// agent says no Service answers to it, or it did not answer in time).
    pub async fn get(&self, authority: &str) -> Option<Arc<[Endpoint]>> {
        match self.lookup(authority).await {
            Lookup::Found(eps) => Some(eps),
            Lookup::Unknown | Lookup::Unavailable => None,
        }
    }

    /// What discovery says of `authority`, telling "outside the mesh" from "no answer".
    pub async fn lookup(&self, authority: &str) -> Lookup {
        if let Some(eps) = self.statics.get(authority) {
            return Lookup::Found(eps.clone());
        }
        let Some(api) = self.api.as_ref() else {
            // No discovery: only the static table knows anything.
            return Lookup::Unknown;
        };
        let now = Instant::now();
        let fed = {
            let mut streams = api.streams.lock().unwrap_or_else(|p| p.into_inner());
            // Looked up before anything is inserted: no copy of the authority per request.
            let fresh = streams
                .by_authority
                .get(authority)
                .is_some_and(|e| !e.expired(now));
            if !fresh {
                streams.by_authority.remove(authority);
                if streams.by_authority.len() >= MAX_AUTHORITIES {
                    // Full: first let go of the answers that ran out since the last sweep
                    // (an app reaching many outside addresses fills the table with them).
                    streams.sweep(now, api.idle);
                }
                if streams.by_authority.len() >= MAX_AUTHORITIES && !streams.evict_unknown_address()
                {
                    self.metrics.refuse("discovery_limit");
                    return Lookup::Unavailable;
                }
                let (tx, rx) = watch::channel(None);
                let (routes_tx, routes) = watch::channel(None);
                let unknown = Arc::new(AtomicBool::new(false));
                tokio::spawn(follow(
                    api.channel.clone(),
                    authority.to_string(),
                    (
                        tx,
                        RouteFeed {
                            tx: routes_tx,
                            routed: api.routed.clone(),
                        },
                    ),
                    unknown.clone(),
                    self.metrics.clone(),
                ));
                let e = Entry {
                    rx,
                    routes,
                    failfast: Arc::new(AtomicBool::new(false)),
                    unknown,
                    address: is_address(authority),
                    asked: now,
                    used: now,
                };
                streams.by_authority.insert(authority.to_string(), e);
            }
            let Some(e) = streams.by_authority.get_mut(authority) else {
                return Lookup::Unavailable;
            };
            e.used = now;
            if let Some(set) = e.rx.borrow().clone() {
                return Lookup::of(set, &e.unknown);
            }
            (e.rx.clone(), e.failfast.clone(), e.unknown.clone())
        };
        let (mut rx, failfast, unknown) = fed;
        if failfast.load(Ordering::Relaxed) {
            return Lookup::Unavailable;
        }
        let first = tokio::time::timeout(api.first, async {
            rx.wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|s| s.clone())
        })
        .await;
        match first {
            // Flagged before the set is sent: read after it arrived, it is current.
            Ok(Some(set)) => Lookup::of(set, &unknown),
            Ok(None) => Lookup::Unavailable,
            Err(_) => {
                failfast.store(true, Ordering::Relaxed);
                Lookup::Unavailable
            }
        }
    }
}

/// What discovery says of an authority.
#[derive(Debug)]
pub enum Lookup {
    /// Its endpoints (none, for a Service scaled to zero).
    Found(Arc<[Endpoint]>),
    /// No Service or pod answers to it: outside the mesh (or discovery is not configured).
    Unknown,
    /// Discovery did not answer in time, or this proxy follows all it may: nothing is known,
    /// which is not "outside the mesh".
    Unavailable,
}

impl Lookup {
    fn of(set: Arc<[Endpoint]>, unknown: &AtomicBool) -> Self {
        if unknown.load(Ordering::Relaxed) {
            Lookup::Unknown
        } else {
            Lookup::Found(set)
        }
    }
}

impl Entry {
    /// An unknown authority past its time: let go, and asked again at its next request.
    fn expired(&self, now: Instant) -> bool {
        let ttl = if self.address {
            UNKNOWN_TTL
        } else {
            UNKNOWN_NAME_TTL
        };
        self.unknown.load(Ordering::Relaxed) && now - self.asked > ttl
    }
}

/// Whether `authority` (`host:port`) names an address rather than a name.
fn is_address(authority: &str) -> bool {
    authority.rsplit_once(':').is_some_and(|(host, _)| {
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok()
    })
}

/// Keeps `tx` at the agent's latest set (and routes) for `authority` until no one holds a
/// receiver.
async fn follow(
    channel: tonic::transport::Channel,
    authority: String,
    (tx, routes): (watch::Sender<Set>, RouteFeed),
    unknown: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut answered = false;
        let r = tokio::select! {
            r = stream(channel.clone(), &authority, (&tx, &routes), &unknown, &metrics, &mut answered) => r,
            _ = tx.closed() => return,
        };
        // A stream that worked starts the back-off afresh: an agent that restarts after
        // hours is asked again at once, not at the back-off of an outage long past.
        if answered {
            backoff = Duration::from_millis(100);
        }
        match r {
            // Nothing at an address: the answer stands for a while, without a stream.
            Ok(true) => return,
            // The agent ended the stream (it is stopping): reopen at once.
            Ok(false) => backoff = Duration::from_millis(100),
            Err(e) => {
                metrics.discovery_errors.inc();
                tracing::info!(%authority, error = %e, retry_in = ?backoff, "discovery: keeping the last endpoints");
            }
        }
        let jitter = 0.75 + rand::random::<f64>() * 0.5;
        tokio::select! {
            _ = tokio::time::sleep(backoff.mul_f64(jitter)) => {}
            _ = tx.closed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn stream(
    channel: tonic::transport::Channel,
    authority: &str,
    (tx, routes): (&watch::Sender<Set>, &RouteFeed),
    unknown: &AtomicBool,
    metrics: &Metrics,
    answered: &mut bool,
) -> Result<bool, String> {
    // An update carries the whole set (about 100 bytes an endpoint): tonic's default 4 MiB
    // would refuse a Service of some 40,000 endpoints, and its clients would keep their last
    // set for good. The agent is trusted (its certificate's identity is checked), so the
    // limit is only against a runaway: about 300,000 endpoints, twice Kubernetes' 150,000
    // pods per cluster.
    let mut client = DestinationClient::new(channel).max_decoding_message_size(MAX_UPDATE_BYTES);
    let mut updates = client
        .get(pb::GetDestination {
            authority: authority.to_string(),
        })
        .await
        .map_err(|s| s.message().to_string())?
        .into_inner();
    metrics.discovery_streams.inc();
    let _open = scopeguard(|| {
        metrics.discovery_streams.dec();
    });
    // What the routes were read from (also when they did not read): parsed again only when
    // it changes, not on every update of the endpoints.
    let mut raw = routes
        .tx
        .borrow()
        .as_ref()
        .map_or_else(String::new, |r| r.source().to_string());
    loop {
        match updates.message().await {
            Ok(Some(u)) => {
                *answered = true;
                metrics.discovery_updates.inc();
                let set = endpoints(&u);
                // Routes first: a request the new endpoints let through is named by them.
                if u.routes != raw {
                    routes.set(route_set(authority, &u.routes));
                    raw = u.routes;
                }
                // Flagged before the set is sent: a reader woken by it sees the flag.
                unknown.store(u.unknown, Ordering::Relaxed);
                if u.unknown {
                    tx.send_replace(Some(Vec::new().into()));
                    if is_address(authority) {
                        return Ok(true);
                    }
                    continue;
                }
                tx.send_replace(Some(set.into()));
            }
            Ok(None) => return Ok(false),
            Err(s) => return Err(s.message().to_string()),
        }
    }
}

/// Runs `f` when dropped (a stream's gauge goes down however it ends).
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

/// An update's routes; ones the proxy cannot read (the agent checks them: an agent of another
/// version) are left out with a log line.
fn route_set(authority: &str, s: &str) -> RouteSet {
    match Routes::parse(s) {
        Ok(r) if r.is_empty() => None,
        Ok(r) => Some(Arc::new(r)),
        Err(why) => {
            tracing::warn!(%authority, %why, "discovery: routes left out");
            None
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_answers_expire_addresses_first_names_later_known_ones_never() {
        let entry = |address: bool, unknown: bool| Entry {
            rx: watch::channel(None).1,
            routes: watch::channel(None).1,
            failfast: Arc::new(AtomicBool::new(false)),
            unknown: Arc::new(AtomicBool::new(unknown)),
            address,
            asked: Instant::now(),
            used: Instant::now(),
        };
        let at = |e: &Entry, d: Duration| e.expired(e.asked + d);
        let (addr, name, known) = (entry(true, true), entry(false, true), entry(false, false));
        assert!(!at(&addr, UNKNOWN_TTL / 2) && at(&addr, UNKNOWN_TTL * 2));
        assert!(!at(&name, UNKNOWN_TTL * 2) && at(&name, UNKNOWN_NAME_TTL * 2));
        assert!(!at(&known, IDLE * 10));
    }

    #[test]
    fn addresses_and_names() {
        assert!(super::is_address("10.96.0.7:80"));
        assert!(super::is_address("[fd00::7]:80"));
        assert!(!super::is_address("web.shop.svc.cluster.local:80"));
        assert!(!super::is_address("web:80"));
    }
}
