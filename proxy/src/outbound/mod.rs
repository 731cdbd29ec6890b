//! The outbound stack (app → proxy → peer), in linkerd2-proxy's `app/outbound` shape
//! (ARCHITECTURE.md, "The proxy"): accept → detect → HTTP by authority → discovery
//! (`resolve.rs`) → balancer (`balance.rs`) and breaker (`breaker.rs`) → an endpoint → a pooled
//! mTLS HTTP/2 session to its proxy (`endpoint.rs`), or plaintext to an endpoint outside the
//! mesh. Retries (`retry.rs`) go round the balancer.
//!
//! Until the kernel hands the proxy a connection's original destination (issue 15), apps
//! address it explicitly as an HTTP proxy: requests by their authority, and opaque TCP by
//! `CONNECT host:port`, which is tunnelled to a meshed endpoint as an HTTP/2 CONNECT stream on
//! the same mTLS session (ztunnel's HBONE shape).

pub mod balance;
pub mod breaker;
pub mod discover;
pub mod endpoint;
pub mod resolve;
pub mod retry;
mod tunnel;

use std::{
    collections::HashMap,
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
use tower::retry::budget::{Budget, TpsBudget};
use tracing::Instrument;

use crate::{
    detect::Protocol,
    drain::Watch,
    http::{error, strip_hop_by_hop, Body, CLIENT_ID, ORIG_PROTO},
    io::detect_io,
    metrics::{Direction, Metrics, Observed},
    tls::Credentials,
};
use balance::PeakEwma;
use breaker::Breaker;
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
        }
    }
}

pub struct Outbound {
    cfg: Config,
    resolver: Resolver,
    pool: Arc<Pool>,
    plain: Client<HttpConnector, Body>,
    /// Prior-knowledge HTTP/2 outside the mesh, for apps that spoke HTTP/2 (gRPC).
    plain_h2: Client<HttpConnector, Body>,
    /// Per endpoint: its load estimate and breaker (pruned to what discovery still lists).
    /// Keyed by authority too: each Service balances and ejects on its own, and routing one
    /// never prunes another's.
    endpoints: Mutex<HashMap<(String, Endpoint), (PeakEwma, Breaker)>>,
    budget: TpsBudget,
    pub metrics: Arc<Metrics>,
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

    pub fn with(
        cfg: Config,
        creds: Arc<dyn Credentials>,
        resolver: Resolver,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(cfg.connect_timeout));
        http.set_nodelay(true);
        let cfg_budget = cfg.retry.budget.clone();
        Arc::new(Outbound {
            pool: Arc::new(Pool::new(creds, cfg.connect_timeout, metrics.clone())),
            plain: Client::builder(TokioExecutor::new()).build(http.clone()),
            plain_h2: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build(http),
            cfg,
            resolver,
            endpoints: Mutex::new(HashMap::new()),
            budget: TpsBudget::new(cfg_budget.ttl, cfg_budget.min_per_sec, cfg_budget.percent),
            metrics,
        })
    }

    /// Serves `listener` until the drain begins.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, drain: Watch) {
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
        let (detected, io) = detect_io(tcp, self.cfg.detect_timeout).await?;
        let this = self.clone();
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let this = this.clone();
            async move { Ok::<_, std::convert::Infallible>(this.route(req).await) }
        });
        let io = TokioIo::new(io);
        let r = match detected.protocol() {
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
                // Needs the connection's original destination: issue 15's interception.
                tracing::info!(protocol = ?other, "outbound: only HTTP can be routed yet");
                return Ok(());
            }
        };
        if let Err(e) = r {
            crate::accept::http_error(&self.metrics, Direction::Outbound, &e);
        }
        Ok(())
    }

    /// The request's authority: its absolute-form target, else its Host header.
    fn authority(req: &Request<Incoming>) -> Option<String> {
        if let Some(a) = req.uri().authority() {
            let port = a.port_u16().unwrap_or(80);
            return Some(format!("{}:{port}", a.host()));
        }
        let host = req.headers().get(http::header::HOST)?.to_str().ok()?;
        let a: http::uri::Authority = host.parse().ok()?;
        Some(format!("{}:{}", a.host(), a.port_u16().unwrap_or(80)))
    }

    /// One request, in a span of its own, counted by its authority, status class and the
    /// server's identity, and on the tap.
    async fn route(&self, mut req: Request<Incoming>) -> http::Response<Body> {
        let started = Instant::now();
        let authority = Self::authority(&req).map(|a| a.to_ascii_lowercase());
        let trace_id = crate::trace::propagate(req.headers_mut());
        let (method, path) = (req.method().clone(), req.uri().path().to_string());
        let span = tracing::info_span!(
            "request",
            direction = "outbound",
            authority = authority.as_deref().unwrap_or(""),
            trace_id = %trace_id,
        );
        let mut peer = String::new();
        let resp = async {
            match &authority {
                None => error(StatusCode::BAD_REQUEST, "the request names no authority"),
                Some(a) if req.method() == http::Method::CONNECT => {
                    self.tunnel(req, a, &mut peer).await
                }
                Some(a) => self.forward(req, a, &mut peer).await,
            }
        }
        .instrument(span)
        .await;
        self.metrics.request(&Observed {
            direction: Direction::Outbound,
            authority: authority.as_deref().unwrap_or(""),
            method: method.as_str(),
            path: &path,
            status: Some(resp.status()),
            peer: &peer,
            elapsed: started.elapsed(),
            trace_id: &trace_id,
        });
        resp
    }

    /// The endpoints of `authority`, or the 503 that says there are none.
    async fn endpoints(&self, authority: &str) -> Result<Arc<[Endpoint]>, http::Response<Body>> {
        match self.resolver.get(authority).await {
            Some(eps) if !eps.is_empty() => Ok(eps),
            _ => Err(error(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("no endpoints for {authority}"),
            )),
        }
    }

    async fn forward(
        &self,
        req: Request<Incoming>,
        authority: &str,
        peer: &mut String,
    ) -> http::Response<Body> {
        let authority = authority.to_string();
        let eps = match self.endpoints(&authority).await {
            Ok(e) => e,
            Err(resp) => return resp,
        };
        let eps = &eps[..];
        let absolute = req.uri().authority().is_some();
        let (mut head, body) = req.into_parts();
        // Whether the body can be held for replay is read from its framing, before the
        // hop-by-hop headers (Transfer-Encoding among them) go.
        let replayable = retry::replayable(&head, body, self.cfg.retry.max_body).await;
        strip_hop_by_hop(&mut head.headers);
        // The client cannot speak for itself: only the peer's inbound proxy sets this.
        head.headers.remove(CLIENT_ID);
        head.headers.remove(ORIG_PROTO);
        // An absolute-form target's authority replaces Host (RFC 9112 §3.2.2).
        if absolute || head.headers.get(http::header::HOST).is_none() {
            if let Ok(v) = http::HeaderValue::from_str(&authority) {
                head.headers.insert(http::header::HOST, v);
            }
        }
        let path = head
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        // A retryable request's body is held for replay, up to the cap; others stream once.
        let (mut body, replay) = match replayable {
            retry::Body::Replay(b) => (None, Some(b)),
            retry::Body::Stream(b) => (Some(b), None),
            retry::Body::Failed(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    &format!("reading the request: {e}"),
                )
            }
        };
        self.budget.deposit();
        let deadline = self
            .cfg
            .request_timeout
            .map(|t| tokio::time::Instant::now() + t);
        let mut tried: Vec<Endpoint> = Vec::new();
        let mut attempt = 0u32;
        loop {
            let Some((ep, probe)) = self.pick(&authority, eps, &tried) else {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("every endpoint of {authority} is ejected"),
                );
            };
            *peer = ep
                .mesh
                .as_ref()
                .map(|m| m.identity.to_string())
                .unwrap_or_default();
            let this_body = match (&replay, body.take()) {
                (Some(b), _) => crate::http::full(b.clone()),
                (None, Some(b)) => b.boxed(),
                (None, None) => crate::http::full(bytes::Bytes::new()),
            };
            let flight = InFlight {
                out: self,
                authority: authority.clone(),
                ep: ep.clone(),
                probe,
                started: Instant::now(),
                done: false,
            };
            let attempt_fut = self.send(&ep, &authority, &head, &path, this_body);
            let result = match deadline {
                Some(at) => match tokio::time::timeout_at(at, attempt_fut).await {
                    Ok(r) => r,
                    Err(_) => {
                        flight.finish(false);
                        return error(
                            StatusCode::GATEWAY_TIMEOUT,
                            &format!("no answer from {authority} within the request timeout"),
                        );
                    }
                },
                None => attempt_fut.await,
            };
            // 5xx and transport failures count against the endpoint (Linkerd's classification).
            let ok = result.as_ref().is_ok_and(|r| !r.status().is_server_error());
            flight.finish(ok);
            let again = !ok
                && replay.is_some()
                && attempt < self.cfg.retry.limit
                && retry::retryable(&head.method, &result);
            if again {
                if self.budget.withdraw() {
                    attempt += 1;
                    self.metrics.retries.inc();
                    tracing::debug!(%authority, endpoint = %ep.addr, attempt, "retrying");
                    tried.push(ep);
                    continue;
                }
                self.metrics.budget_exhausted.inc();
            }
            return match result {
                Ok(resp) => {
                    let (mut parts, body) = resp.into_parts();
                    strip_hop_by_hop(&mut parts.headers);
                    parts.version = http::Version::HTTP_11;
                    http::Response::from_parts(parts, body.boxed())
                }
                Err(why) => {
                    tracing::info!(%authority, endpoint = %ep.addr, error = %why, "outbound request failed");
                    error(StatusCode::BAD_GATEWAY, &why)
                }
            };
        }
    }

    /// One attempt on `ep`: over its mesh session, or plaintext outside the mesh.
    async fn send(
        &self,
        ep: &Endpoint,
        authority: &str,
        head: &http::request::Parts,
        path: &str,
        body: Body,
    ) -> Result<http::Response<Incoming>, String> {
        let app_h2 = head.version == http::Version::HTTP_2;
        let (target_authority, version) = match &ep.mesh {
            Some(_) => (authority.to_string(), http::Version::HTTP_2),
            None if app_h2 => (ep.addr.to_string(), http::Version::HTTP_2),
            None => (ep.addr.to_string(), http::Version::HTTP_11),
        };
        let Some(uri) = target(&target_authority, path) else {
            return Err("invalid request target".into());
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
        match &ep.mesh {
            Some(mesh) => self
                .pool
                .send(ep.addr, mesh, req)
                .await
                .map_err(|e| match e {
                    SendError::Connect(c) => c.to_string(),
                    SendError::Request(r) => format!("request to {}: {r}", ep.addr),
                    SendError::Tunnel(t) => t,
                }),
            None => if app_h2 { &self.plain_h2 } else { &self.plain }
                .request(req)
                .await
                .map_err(|e| format!("plaintext to {}: {e}", ep.addr)),
        }
    }
}

impl Outbound {
    /// P2C over the endpoints the breaker lets through; the chosen one counts a request in
    /// flight. An ejected endpoint whose penalty is over gets the next request as its probe
    /// whatever its load: otherwise P2C, which always prefers the lighter, might never try it
    /// again.
    fn pick(
        &self,
        authority: &str,
        eps: &[Endpoint],
        tried: &[Endpoint],
    ) -> Option<(Endpoint, bool)> {
        let now = Instant::now();
        let mut all = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        // Endpoints this authority no longer lists go (their in-flight requests finish on
        // their sessions regardless); sessions no authority needs any more are let go.
        let listed_before: Vec<Endpoint> = all
            .keys()
            .filter(|(a, e)| a == authority && !eps.contains(e))
            .map(|(_, e)| e.clone())
            .collect();
        all.retain(|(a, e), _| a != authority || eps.contains(e));
        let gone: Vec<_> = listed_before
            .into_iter()
            .filter(|e| !all.keys().any(|(_, other)| other.addr == e.addr))
            .filter_map(|e| Some((e.addr, e.mesh?)))
            .collect();
        if !gone.is_empty() {
            self.pool.forget(gone);
        }
        let key = |e: &Endpoint| (authority.to_string(), e.clone());
        for e in eps {
            all.entry(key(e)).or_insert_with(|| {
                (
                    PeakEwma::new(&self.cfg.balance, now),
                    Breaker::new(self.cfg.breaker.clone()),
                )
            });
        }
        let load = |e: &Endpoint, skip_tried: bool| {
            let (ewma, breaker) = &all[&key(e)];
            (breaker.available(now) && !(skip_tried && tried.contains(e)))
                .then(|| ewma.load(&self.cfg.balance, now))
        };
        // A retry goes elsewhere when there is anywhere else to go.
        let mut loads: Vec<Option<f64>> = eps.iter().map(|e| load(e, true)).collect();
        if loads.iter().all(Option::is_none) {
            loads = eps.iter().map(|e| load(e, false)).collect();
        }
        let due = eps.iter().position(|e| {
            let b = &all[&key(e)].1;
            b.is_ejected() && b.available(now)
        });
        let i = match due {
            Some(i) => i,
            None => balance::p2c(&loads, rand::random(), rand::random())?,
        };
        let (ewma, breaker) = all.get_mut(&key(&eps[i]))?;
        let probe = match breaker.admit(now) {
            breaker::Admit::No => return None,
            breaker::Admit::Probe => true,
            breaker::Admit::Yes => false,
        };
        ewma.start();
        Some((eps[i].clone(), probe))
    }

    /// Records a request's outcome on its endpoint; None: it was dropped before it had one
    /// (the client went away), which ends its pending count and hands back a probe.
    fn done(&self, f: &InFlight<'_>, ok: Option<bool>) {
        let now = Instant::now();
        let mut all = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((ewma, breaker)) = all.get_mut(&(f.authority.clone(), f.ep.clone())) {
            match ok {
                Some(ok) => {
                    ewma.finish(&self.cfg.balance, now, now - f.started);
                    if let Some(why) = breaker.record(now, ok, f.probe, rand::random()) {
                        self.metrics.ejections.inc();
                        tracing::info!(endpoint = %f.ep.addr, reason = ?why, "endpoint ejected");
                    }
                }
                None => {
                    ewma.cancel();
                    breaker.cancel(now, f.probe);
                }
            }
        }
    }
}

/// A request in flight on an endpoint: its outcome is recorded exactly once, also when the
/// request future is dropped first.
struct InFlight<'a> {
    out: &'a Outbound,
    authority: String,
    ep: Endpoint,
    /// It is the endpoint's probe.
    probe: bool,
    started: Instant,
    done: bool,
}

impl InFlight<'_> {
    fn finish(mut self, ok: bool) {
        self.done = true;
        self.out.done(&self, Some(ok));
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.out.done(self, None);
        }
    }
}

/// `http://<authority><path>`.
fn target(authority: &str, path: &str) -> Option<Uri> {
    Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query(path)
        .build()
        .ok()
}
