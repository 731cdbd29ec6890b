//! The outbound stack (app → proxy → peer), in linkerd2-proxy's `app/outbound` shape
//! (ARCHITECTURE.md, "The proxy"): accept → detect → HTTP by authority → discovery
//! (`resolve.rs`) → balancer (`balance.rs`) and breaker (`breaker.rs`) → an endpoint → a pooled
//! mTLS HTTP/2 session to its proxy (`endpoint.rs`), or plaintext to an endpoint outside the
//! mesh. Retries (`retry.rs`) go round the balancer. A request that no endpoint can take
//! waits for one, at most the fail-fast timeout (`wait_for_endpoint`, Linkerd's queue).
//!
//! A connection intercepted in the kernel (issue 15, `intercept.rs`) is routed by its
//! original destination. Apps that are not intercepted address the proxy explicitly as an HTTP
//! proxy: requests by their authority, and opaque TCP by `CONNECT host:port`. Opaque TCP to a
//! meshed endpoint goes as an HTTP/2 CONNECT stream on the same mTLS session (ztunnel's HBONE
//! shape).

pub mod balance;
mod balancers;
pub mod breaker;
mod classify;
pub mod discover;
pub mod endpoint;
mod intercept;
pub mod resolve;
pub mod retry;
mod tunnel;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use http::{Request, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioIo},
};
use tokio::net::{TcpListener, TcpStream};
use tower::retry::budget::Budget;
use tracing::Instrument;

use crate::{
    detect::Protocol,
    drain::Watch,
    http::{error, strip_hop_by_hop, Body, ORIG_PROTO},
    io::detect_io,
    metrics::{Direction, Metrics, Observed},
    tls::Credentials,
};
use balancers::InFlight;
use discover::{Endpoint, Static};
use endpoint::{Pool, SendError};
use resolve::Resolver;

#[derive(Clone, Debug)]
pub struct Config {
    pub detect_timeout: Duration,
    pub connect_timeout: Duration,
    pub balance: balance::Config,
    pub breaker: breaker::Config,
    pub retry: retry::Config,
    /// Per request, each attempt included (None: no limit, Linkerd's default); past it the
    /// client gets a 504 and the endpoint a failure.
    pub request_timeout: Option<Duration>,
    /// How long the app may take to send a request's headers.
    pub header_read_timeout: Duration,
    /// How long a request may wait for an endpoint when none can take it (each in its
    /// reconnect back-off or ejected, or the only one left just failed it before the request
    /// reached its app) before it is answered with the reason and the authority fails fast
    /// (Linkerd's outbound failfast timeout, 3 s).
    pub failfast: Duration,
    /// Requests that may wait at once, over all authorities; past it a request that finds no
    /// endpoint is answered at once (Linkerd's outbound HTTP queue capacity, 10,000): a dead
    /// Service under load must not pile up requests and their bodies.
    pub queue_capacity: usize,
    /// The pod's namespace: a one-label host (`web:80`) means `web.<it>.svc.<domain>:80`, as
    /// the pod's resolv.conf search path makes it.
    pub namespace: Option<String>,
    pub cluster_domain: String,
    /// Spans of sampled requests to a collector (`otlp.rs`); None: none kept.
    pub tracer: Option<crate::otlp::Exporter>,
}

impl Default for Config {
    fn default() -> Self {
        // Linkerd's outbound defaults (linkerd/app/src/env.rs): detection 10 s, connect 1 s.
        Config {
            detect_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(1),
            balance: balance::Config::default(),
            breaker: breaker::Config::default(),
            retry: retry::Config::default(),
            request_timeout: None,
            header_read_timeout: crate::accept::HEADER_READ_TIMEOUT,
            failfast: Duration::from_secs(3),
            queue_capacity: 10_000,
            namespace: None,
            cluster_domain: "cluster.local".into(),
            tracer: None,
        }
    }
}

pub struct Outbound {
    cfg: Config,
    resolver: Resolver,
    pool: Arc<Pool>,
    plain: Client<HttpConnector, Body>,
    /// Per endpoint: its load estimate and breaker (pruned to what discovery still lists).
    /// Keyed by authority too: each Service balances and ejects on its own, and routing one
    /// never prunes another's.
    endpoints: Mutex<balancers::Balancers>,
    /// Told when an endpoint becomes available with no clock to say so (a probe answered):
    /// requests waiting for one look again.
    available: tokio::sync::Notify,
    pub metrics: Arc<Metrics>,
    /// The drain the listener serves under, for what outlives a request (tunnels).
    drain: std::sync::OnceLock<Watch>,
    /// Itself, for what outlives a request's handling (a gRPC answer judged at its end).
    me: std::sync::Weak<Outbound>,
}

impl Outbound {
    /// With a fixed table and metrics of its own (tests).
    pub fn new(cfg: Config, creds: Arc<dyn Credentials>, discovery: Static) -> Arc<Self> {
        let metrics = Metrics::new();
        Self::with(
            cfg,
            creds,
            Resolver::fixed(discovery, metrics.clone()),
            metrics,
        )
    }

    /// Its discovery (the tests wait on it for an update to arrive).
    pub fn resolver(&self) -> &Resolver {
        &self.resolver
    }

    pub fn with(
        cfg: Config,
        creds: Arc<dyn Credentials>,
        resolver: Resolver,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(cfg.connect_timeout));
        http.set_nodelay(true);
        // As `io::keepalive`: 10 s idle, 3 probes 10 s apart.
        http.set_keepalive(Some(Duration::from_secs(10)));
        http.set_keepalive_interval(Some(Duration::from_secs(10)));
        http.set_keepalive_retries(Some(3));
        Arc::new_cyclic(|me| Outbound {
            me: me.clone(),
            pool: Arc::new(Pool::new(creds, cfg.connect_timeout, metrics.clone())),
            plain: Client::builder(TokioExecutor::new()).build(http),
            cfg,
            resolver,
            endpoints: Mutex::new(Default::default()),
            available: tokio::sync::Notify::new(),
            metrics,
            drain: std::sync::OnceLock::new(),
        })
    }

    /// Serves `listener` until the drain begins.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, drain: Watch) {
        // Tunnels and upgrades outlive their HTTP connection: they hold this (as the inbound
        // stack's do), or the drain would end under them.
        let _ = self.drain.set(drain.clone());
        // Discovery streams and balancers of authorities no longer asked for are let go on
        // a clock, so that a proxy whose app went quiet gives them back too. (Held weakly:
        // the task ends with the proxy.)
        let weak = Arc::downgrade(&self);
        let period = balancers::SWEEP
            .min(self.resolver.idle() / 2)
            .max(Duration::from_millis(10));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(this) = weak.upgrade() else { return };
                this.resolver.sweep();
                this.sweep_balancers();
            }
        });
        let metrics = self.metrics.clone();
        crate::accept::serve(
            listener,
            Direction::Outbound,
            metrics,
            drain,
            move |tcp, d| self.clone().connection(tcp, d),
        )
        .await
    }

    async fn connection(self: Arc<Self>, tcp: TcpStream, drain: Watch) -> std::io::Result<()> {
        // Intercepted in the kernel (issue 15): where the app was going.
        if let Some(orig) = intercept::original_dst(&tcp) {
            return self.intercepted(tcp, orig, drain).await;
        }
        let tcp = crate::io::Counted::new(tcp, &self.metrics, Direction::Outbound);
        let (detected, io) = detect_io(tcp, self.cfg.detect_timeout).await?;
        self.serve_http(detected.protocol(), io, None, drain).await
    }

    /// Serves HTTP on a detected connection; `forced`: the authority to route every request
    /// by (an intercepted connection's original destination), else each request's own.
    async fn serve_http<I>(
        self: Arc<Self>,
        protocol: Protocol,
        io: I,
        forced: Option<String>,
        drain: Watch,
    ) -> std::io::Result<()>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let this = self.clone();
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let this = this.clone();
            let forced = forced.clone();
            async move { Ok::<_, std::convert::Infallible>(this.route(req, forced).await) }
        });
        let io = TokioIo::new(Box::new(io) as crate::io::BoxedIo);
        let r = match protocol {
            Protocol::Http1 => {
                // Upgrades: CONNECT tunnels.
                let b = crate::accept::h1(self.cfg.header_read_timeout);
                crate::accept::http(b.serve_connection(io, svc).with_upgrades(), drain).await
            }
            Protocol::Http2 => {
                let b = crate::accept::h2();
                crate::accept::http(b.serve_connection(io, svc), drain).await
            }
            other => {
                // Opaque bytes reach here only when addressed explicitly (no original
                // destination to send them to): the app must CONNECT.
                tracing::info!(protocol = ?other, "outbound: not HTTP and not intercepted: use CONNECT");
                return Ok(());
            }
        };
        if let Err(e) = r {
            crate::accept::http_error(&self.metrics, Direction::Outbound, &e);
        }
        Ok(())
    }

    /// The request's authority: its absolute-form target, else its Host header; lower case,
    /// with its port, a one-label name qualified by the pod's namespace.
    fn authority(&self, req: &Request<Incoming>) -> Option<String> {
        let a = match req.uri().authority() {
            Some(a) => a.clone(),
            None => req
                .headers()
                .get(http::header::HOST)?
                .to_str()
                .ok()?
                .parse::<http::uri::Authority>()
                .ok()?,
        };
        let host = a.host();
        let port =
            a.port_u16()
                .unwrap_or(if req.uri().scheme() == Some(&http::uri::Scheme::HTTPS) {
                    443
                } else {
                    80
                });
        let is_ip = host.starts_with('[') || host.parse::<std::net::IpAddr>().is_ok();
        // Built in one buffer, folded in place: one allocation per request.
        let mut out = String::with_capacity(host.len() + 64);
        out.push_str(host);
        out.make_ascii_lowercase();
        use std::fmt::Write;
        match &self.cfg.namespace {
            Some(ns) if !is_ip && !host.contains('.') && out != "localhost" => {
                let _ = write!(out, ".{ns}.svc.{}:{port}", self.cfg.cluster_domain);
            }
            _ => {
                let _ = write!(out, ":{port}");
            }
        }
        // The namespace and domain as configured may carry upper case; discovery and the
        // static table are keyed in lower case.
        out.make_ascii_lowercase();
        Some(out)
    }

    /// One request, in a span of its own, counted by its authority, status class and the
    /// server's identity, and on the tap.
    async fn route(
        &self,
        mut req: Request<Incoming>,
        forced: Option<String>,
    ) -> http::Response<Body> {
        let started = Instant::now();
        let authority = forced.or_else(|| self.authority(&req));
        let traced = self
            .cfg
            .tracer
            .as_ref()
            .and_then(|t| t.start(req.headers_mut()));
        // A traced request's header was read once already.
        let trace_id = match &traced {
            Some(t) => t.incoming.trace_id(),
            None => crate::trace::trace_id(req.headers()),
        };
        // The target shares its bytes: cloning it copies no path.
        let (method, target) = (req.method().clone(), req.uri().clone());
        // Debug level, as linkerd2-proxy's per-request spans are: at the injected default
        // (`info`) a span per request is formatted and stored for nothing, a measurable share
        // of the pair's CPU (BENCHMARKS.md, "The proxy pair"); MESHWORK_LOG=debug shows them.
        let span = tracing::debug_span!(
            "request",
            direction = "outbound",
            authority = authority.as_deref().unwrap_or(""),
            trace_id = %trace_id,
        );
        let mut peer = String::new();
        let bad = crate::http::bad_authority(req.uri(), req.headers());
        let mut resp = async {
            if let Some(why) = bad {
                return error(StatusCode::BAD_REQUEST, why);
            }
            match &authority {
                None => error(StatusCode::BAD_REQUEST, "the request names no authority"),
                Some(a) if req.method() == http::Method::CONNECT => {
                    self.tunnel(req, a, &mut peer).await
                }
                Some(a) if crate::upgrade::is_upgrade(&req) => {
                    self.upgrade(req, a, &mut peer).await
                }
                Some(a) => self.forward(req, a, &mut peer).await,
            }
        }
        .instrument(span)
        .await;
        let routes = authority.as_deref().and_then(|a| self.resolver.routes(a));
        let observed = Observed {
            direction: Direction::Outbound,
            authority: authority.as_deref().unwrap_or(""),
            route: routes
                .as_ref()
                .and_then(|r| r.find(method.as_str(), target.path())),
            routed: routes.as_ref().is_some_and(|r| !r.is_empty()),
            method: method.as_str(),
            path: target.path(),
            status: Some(resp.status()),
            peer: &peer,
            elapsed: started.elapsed(),
            trace_id: &trace_id,
        };
        self.metrics.response(&observed, &mut resp);
        if let (Some(tracer), Some(t)) = (&self.cfg.tracer, traced) {
            tracer.finish(t, &observed);
        }
        resp
    }

    async fn forward(
        &self,
        req: Request<Incoming>,
        authority: &str,
        peer: &mut String,
    ) -> http::Response<Body> {
        let authority = authority.to_string();
        if req.version() == http::Version::HTTP_2
            && req.headers().contains_key(http::header::UPGRADE)
            && !crate::upgrade::h2c_only(&req)
        {
            // HTTP/1.1 upgrades go by `upgrade`; one in HTTP/2 is not an upgrade (RFC 9113
            // §8.6), and stripping the header would hand the server a plain GET it answers
            // with a puzzling 400: say so instead. (HTTP/1.0's is ignored, RFC 9110 §7.8: the
            // header goes with the other hop-by-hop ones.)
            self.metrics.refuse("upgrade");
            return error(
                StatusCode::NOT_IMPLEMENTED,
                "protocol upgrades (WebSocket) are proxied for HTTP/1.1 requests only",
            );
        }
        // The request timeout runs from here: discovery's first answer for a new authority
        // is part of the request's time too, and so is a client that stalls in a body being
        // held, as one whose body streams is.
        let deadline = self
            .cfg
            .request_timeout
            .map(|t| tokio::time::Instant::now() + t);
        // An authority nobody knows is answered at once; one whose set is empty (a Recreate
        // rollout, a scale from zero) waits for endpoints like any request that finds none.
        let resolved = match deadline {
            Some(at) => match tokio::time::timeout_at(at, self.resolver.get(&authority)).await {
                Ok(r) => r,
                Err(_) => return timed_out(&authority),
            },
            None => self.resolver.get(&authority).await,
        };
        let Some(eps) = resolved else {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("no endpoints for {authority}"),
            );
        };
        let absolute = req.uri().authority().is_some();
        // The authority as the app wrote it goes on the wire (the server sees what its client
        // named); the qualified `authority` is for discovery and the metrics.
        let wire = crate::http::named_authority(req.uri(), req.headers())
            .map_or_else(|| authority.clone(), str::to_string);
        let (mut head, body) = req.into_parts();
        // Whether the body can be held for replay is read from its framing, before the
        // hop-by-hop headers (Transfer-Encoding among them) go.
        let held = retry::replayable(&head, body, self.cfg.retry.max_body);
        let replayable = match deadline {
            Some(at) => match tokio::time::timeout_at(at, held).await {
                Ok(b) => b,
                Err(_) => {
                    return error(
                        StatusCode::REQUEST_TIMEOUT,
                        "the request body did not arrive within the request timeout",
                    )
                }
            },
            None => held.await,
        };
        strip_hop_by_hop(&mut head.headers);
        // The client cannot speak for itself: only the peer's inbound proxy sets this.
        crate::http::remove_client_id(&mut head.headers);
        head.headers.remove(ORIG_PROTO);
        // An absolute-form target's authority replaces Host (RFC 9112 §3.2.2); in HTTP/2
        // `:authority` carries it, and a Host beside it must not differ (RFC 9113 §8.3.1).
        if head.version == http::Version::HTTP_2 {
            head.headers.remove(http::header::HOST);
        } else if absolute || head.headers.get(http::header::HOST).is_none() {
            if let Ok(v) = http::HeaderValue::from_str(&wire) {
                head.headers.insert(http::header::HOST, v);
            }
        }
        // Parsed once per request, not per attempt: each attempt's target shares them. Only
        // what goes on as `:authority` (to a meshed endpoint, or HTTP/2) must parse: plaintext
        // HTTP/1.1 targets the endpoint's address and passes Host on as the app wrote it.
        let wire_authority = http::uri::Authority::try_from(wire.as_str()).ok();
        if wire_authority.is_none()
            && (head.version == http::Version::HTTP_2 || eps.iter().any(|e| e.mesh.is_some()))
        {
            return error(StatusCode::BAD_REQUEST, "invalid request authority");
        }
        let path = head
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        // A body within the cap is held (sent again when unprocessed; retried after a failure
        // when its method is idempotent); others stream once.
        let (mut body, replay) = match replayable {
            retry::Body::Replay(b) => (None, Some(b)),
            retry::Body::Stream(b) => (Some(b.boxed()), None),
            retry::Body::Failed(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("reading the request: {e}"),
                )
            }
        };
        let budget = self.budget(&authority);
        budget.deposit();
        let mut tried: Vec<Endpoint> = Vec::new();
        let mut attempt = 0u32;
        // How long the request has waited for an endpoint, all waits together.
        let mut waited = Duration::ZERO;
        // Why the last attempt reached nothing, for the answer if the wait for another ends.
        let mut unsent_why: Option<String> = None;
        loop {
            let Some(picked) = self.pick(&authority, &eps, &tried) else {
                if self
                    .wait_for_endpoint(&authority, &mut waited, deadline)
                    .await
                {
                    continue;
                }
                return self.no_endpoint(&authority, unsent_why, deadline);
            };
            let ep = picked.ep();
            *peer = ep
                .mesh
                .as_ref()
                .map(|m| m.identity.to_string())
                .unwrap_or_default();
            let this_body = match (&replay, body.take()) {
                (Some(b), _) => b.body(),
                (None, Some(b)) => b,
                (None, None) => crate::http::full(bytes::Bytes::new()),
            };
            let flight = InFlight::new(self, &authority, &picked);
            let attempt_started = tokio::time::Instant::now();
            let attempt_fut = self.send(ep, &wire_authority, &head, &path, this_body);
            let result = match deadline {
                Some(at) => match tokio::time::timeout_at(at, attempt_fut).await {
                    Ok(r) => r,
                    Err(_) => {
                        flight.finish(false);
                        return timed_out(&authority);
                    }
                },
                None => attempt_fut.await,
            };
            // 5xx, gRPC errors and transport failures count against the endpoint (Linkerd's
            // classification, `classify.rs`); a gRPC status still to come is judged when the
            // response's stream ends.
            let ok = result.as_ref().is_ok_and(|r| !classify::failed(r));
            let later = ok && result.as_ref().is_ok_and(classify::status_in_trailers);
            if result.is_err() {
                flight.failed_transport();
            } else if later {
                flight.finish_judged_later();
            } else {
                flight.finish(ok);
            }
            let result = match result {
                Err(failed) if failed.unsent => {
                    // Nothing reached the endpoint's app (no connection, or its proxy handed
                    // the request back unprocessed): the endpoint sits out its reconnect
                    // back-off, and the request goes to another one without counting as a
                    // retry (Linkerd never dispatches to an endpoint it is not connected to) —
                    // when it can be sent again: its body held for replay, or handed back
                    // unread (no session to the endpoint). With nowhere else to go it waits,
                    // as in Linkerd's queue, for the back-off to end or discovery to list
                    // another (a rolling update: the old pod's app is gone before the
                    // client's proxy hears of the new pod).
                    self.reconnect_failed(&authority, &picked);
                    // Time spent reaching nothing is time waiting for an endpoint that can
                    // take the request (Linkerd's balancer holds a request in its queue
                    // while it connects), so it counts toward the fail-fast wait.
                    waited += attempt_started.elapsed();
                    let left = self
                        .resolver
                        .current(&authority)
                        .map_or(eps.len(), |e| e.len());
                    body = failed.body;
                    let again = replay.is_some() || body.is_some();
                    if again && tried.len() + 1 < left {
                        tried.push(ep.clone());
                        continue;
                    }
                    let why = failed.why;
                    if again
                        && self
                            .wait_for_endpoint(&authority, &mut waited, deadline)
                            .await
                    {
                        unsent_why = Some(why);
                        continue;
                    }
                    // Nowhere else to go: the client hears why the connect failed (or that
                    // its timeout ended the wait).
                    tracing::info!(%authority, endpoint = %ep.addr, error = %why, "outbound connect failed");
                    return self.no_endpoint(&authority, Some(why), deadline);
                }
                other => other,
            };
            let again = !ok
                && replay.is_some()
                && attempt < self.cfg.retry.limit
                && retry::retryable(&head.method, &result);
            if again {
                if budget.withdraw() {
                    attempt += 1;
                    self.metrics.retries.inc();
                    tracing::debug!(%authority, endpoint = %ep.addr, attempt, "retrying");
                    tried.push(ep.clone());
                    continue;
                }
                self.metrics.budget_exhausted.inc();
            }
            return match result {
                Ok(resp) => {
                    let (mut parts, body) = resp.into_parts();
                    strip_hop_by_hop(&mut parts.headers);
                    parts.version = http::Version::HTTP_11;
                    // Only a gRPC answer whose status is still to come pays for the wrapper
                    // (and the reference count of `me`).
                    let me = if later { self.me.upgrade() } else { None };
                    let body = match me {
                        Some(me) => classify::judged(body.boxed(), me, &authority, picked),
                        None => body.boxed(),
                    };
                    http::Response::from_parts(parts, body)
                }
                Err(Failed { why, .. }) => {
                    tracing::info!(%authority, endpoint = %ep.addr, error = %why, "outbound request failed");
                    error(StatusCode::BAD_GATEWAY, &why)
                }
            };
        }
    }

    /// The answer to a request that waited for an endpoint in vain: 504 if its own timeout
    /// ended the wait, else why the last attempt reached nothing (502), else that there is
    /// no endpoint (503).
    fn no_endpoint(
        &self,
        authority: &str,
        unsent_why: Option<String>,
        deadline: Option<tokio::time::Instant>,
    ) -> http::Response<Body> {
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
            return error(
                StatusCode::GATEWAY_TIMEOUT,
                &format!("no endpoint of {authority} took the request within its timeout"),
            );
        }
        if let Some(why) = unsent_why {
            return error(StatusCode::BAD_GATEWAY, &why);
        }
        if self
            .resolver
            .current(authority)
            .is_some_and(|e| e.is_empty())
        {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("no endpoints for {authority}"),
            );
        }
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("no endpoint of {authority} is available (ejected or reconnecting)"),
        )
    }

    /// Linkerd's queue, for a request no endpoint of `authority` can take now: waits until
    /// one may (a back-off or ejection ends, a probe answers) or discovery changes the set,
    /// then true (pick again). False once the request has waited `failfast` in all (`waited`:
    /// its waits and its attempts that reached no app, summed; an attempt an app answered is
    /// not waiting; never past its deadline), which sets the authority failing fast, or at
    /// once while it is. The request holds a place in the queue only while it waits, not while
    /// an attempt is in flight.
    async fn wait_for_endpoint(
        &self,
        authority: &str,
        waited: &mut Duration,
        deadline: Option<tokio::time::Instant>,
    ) -> bool {
        // Before the state is read, so that an endpoint coming up in between still wakes us.
        let up = self.available.notified();
        let seen = self.resolver.current(authority);
        let Ok(next) = self.next_up(authority) else {
            return false;
        };
        let now = tokio::time::Instant::now();
        let failfast_at = now + self.cfg.failfast.saturating_sub(*waited);
        let until = deadline.map_or(failfast_at, |d| d.min(failfast_at));
        if now >= until {
            // Only the fail-fast timeout says the authority is down; a request's own shorter
            // timeout says nothing about the next request.
            if now >= failfast_at {
                self.fail_fast(authority);
            }
            return false;
        }
        let Some(_queued) = Queued::enter(&self.metrics, self.cfg.queue_capacity) else {
            self.metrics.refuse("queue_full");
            return false;
        };
        let wake = next.map_or(until, |n| tokio::time::Instant::from_std(n).min(until));
        tokio::select! {
            () = tokio::time::sleep_until(wake) => {}
            () = up => {}
            () = self.resolver.changed(authority, seen) => {}
        }
        *waited += now.elapsed();
        true
    }

    /// One attempt on `ep`: over its mesh session, or plaintext outside the mesh.
    /// `wire`: the authority the app named, which the server sees.
    async fn send(
        &self,
        ep: &Endpoint,
        wire: &Option<http::uri::Authority>,
        head: &http::request::Parts,
        path: &http::uri::PathAndQuery,
        body: Body,
    ) -> Result<http::Response<Incoming>, Failed> {
        let app_h2 = head.version == http::Version::HTTP_2;
        // HTTP/1.1 outside the mesh goes through hyper's pooled client, which connects to the
        // URI's address (Host keeps the name); HTTP/2 keeps the name in `:authority` and a
        // session per endpoint address.
        let (target_authority, version) = match &ep.mesh {
            Some(_) => (wire.clone().ok_or(()), http::Version::HTTP_2),
            None if app_h2 => (wire.clone().ok_or(()), http::Version::HTTP_2),
            None => (
                http::uri::Authority::try_from(ep.addr.to_string()).map_err(|_| ()),
                http::Version::HTTP_11,
            ),
        };
        let Some(uri) = target_authority.ok().and_then(|a| target(a, path.clone())) else {
            return Err(Failed::request("invalid request target".into()));
        };
        let mut req = Request::new(body);
        *req.method_mut() = head.method.clone();
        *req.uri_mut() = uri;
        *req.version_mut() = version;
        *req.headers_mut() = head.headers.clone();
        if ep.mesh.is_some() && !app_h2 {
            req.headers_mut()
                .insert(ORIG_PROTO, http::HeaderValue::from_static("HTTP/1.1"));
        }
        // HTTP/1.1 outside the mesh: `TE: trailers` needs `Connection: TE` beside it (RFC
        // 9110 §10.1.4; the inbound's hop to its app does the same).
        if version == http::Version::HTTP_11 && req.headers().contains_key(http::header::TE) {
            req.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("te"),
            );
        }
        match &ep.mesh {
            Some(mesh) => self
                .pool
                .send(ep.addr, mesh, req)
                .await
                .map_err(|(e, unsent)| {
                    let body = unsent.map(Request::into_body);
                    match e {
                        SendError::Connect(c) => Failed::unsent(c.to_string(), body),
                        SendError::NotReady(r) => Failed::unsent(
                            format!("the session to {} is closing: {r}", ep.addr),
                            body,
                        ),
                        SendError::Request(r) if crate::http::unprocessed(&r) => Failed::unsent(
                            format!(
                                "{} refused the request unprocessed (its app is not accepting \
                                 connections, or its proxy is shutting down)",
                                ep.addr
                            ),
                            None,
                        ),
                        SendError::Request(r) => {
                            Failed::request(format!("request to {}: {r}", ep.addr))
                        }
                        SendError::Tunnel(t) => Failed::request(t),
                    }
                }),
            None if app_h2 => {
                let addr = ep.addr;
                let mut send = match self.pool.plaintext(addr).await {
                    Ok(s) => s,
                    Err(e) => return Err(Failed::unsent(e.to_string(), Some(req.into_body()))),
                };
                // A session that is closing takes nothing: the request was not sent.
                if let Err(e) = send.ready().await {
                    return Err(Failed::unsent(
                        format!("plaintext HTTP/2 to {addr}: {e}"),
                        Some(req.into_body()),
                    ));
                }
                send.send_request(req).await.map_err(|e| Failed {
                    unsent: crate::http::unprocessed(&e),
                    why: format!("plaintext HTTP/2 to {addr}: {e}"),
                    body: None,
                })
            }
            // hyper's pooled client keeps a request it could not connect for: its body is
            // gone with it.
            None => self.plain.request(req).await.map_err(|e| Failed {
                why: format!("plaintext to {}: {e}", ep.addr),
                unsent: e.is_connect(),
                body: None,
            }),
        }
    }
}

/// A request's place in the queue of those waiting for an endpoint: counted in the
/// `outbound_queued_requests` gauge while it waits.
struct Queued<'a> {
    gauge: &'a prometheus_client::metrics::gauge::Gauge,
}

impl<'a> Queued<'a> {
    /// A place, unless `capacity` requests wait already.
    fn enter(metrics: &'a Metrics, capacity: usize) -> Option<Self> {
        let gauge = &metrics.queued;
        if usize::try_from(gauge.inc()).unwrap_or(usize::MAX) >= capacity {
            gauge.dec();
            return None;
        }
        Some(Queued { gauge })
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// Why an attempt failed; `unsent`: before anything reached the endpoint's app (no
/// connection, or the peer's proxy refused the stream unprocessed: the app there refused it,
/// or the proxy is going away).
#[derive(Debug)]
struct Failed {
    why: String,
    unsent: bool,
    /// An unsent request's body, unread: what a request that cannot be replayed goes to
    /// another endpoint with.
    body: Option<Body>,
}

impl Failed {
    fn request(why: String) -> Self {
        Failed {
            why,
            unsent: false,
            body: None,
        }
    }

    /// Nothing reached the endpoint: `body` comes back when it was not read.
    fn unsent(why: String, body: Option<Body>) -> Self {
        Failed {
            why,
            unsent: true,
            body,
        }
    }
}

/// `http://<authority><path>`.
fn target(authority: http::uri::Authority, path: http::uri::PathAndQuery) -> Option<Uri> {
    Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(path)
        .build()
        .ok()
}

/// The 504 for a request (or an upgrade's handshake) its `--request-timeout` ended.
fn timed_out(authority: &str) -> http::Response<Body> {
    error(
        StatusCode::GATEWAY_TIMEOUT,
        &format!("no answer from {authority} within the request timeout"),
    )
}
