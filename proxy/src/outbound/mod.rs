//! The outbound stack (app → proxy → peer), in linkerd2-proxy's `app/outbound` shape
//! (ARCHITECTURE.md, "The proxy"): accept → detect → HTTP by authority → discovery → an
//! endpoint → a pooled mTLS HTTP/2 session to its proxy (`endpoint.rs`), or plaintext to an
//! endpoint outside the mesh. The breaker (`breaker.rs`) and the balancer will sit between
//! discovery and the endpoint. Until the kernel hands the proxy a connection's original
//! destination (issue 15), apps address it explicitly as an HTTP proxy, so only HTTP is routed.

pub mod balance;
pub mod breaker;
pub mod discover;
pub mod endpoint;

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

use crate::{
    detect::Protocol,
    http::{error, strip_hop_by_hop, Body, CLIENT_ID},
    io::detect_io,
    tls::Credentials,
};
use balance::PeakEwma;
use breaker::Breaker;
use discover::{Endpoint, Static};
use endpoint::{Pool, SendError};

#[derive(Clone, Debug)]
pub struct Config {
    pub detect_timeout: Duration,
    pub connect_timeout: Duration,
    pub balance: balance::Config,
    pub breaker: breaker::Config,
}

impl Default for Config {
    fn default() -> Self {
        // Linkerd's outbound defaults (linkerd/app/src/env.rs): detection 10 s, connect 1 s.
        Config {
            detect_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(1),
            balance: balance::Config::default(),
            breaker: breaker::Config::default(),
        }
    }
}

pub struct Outbound {
    cfg: Config,
    discovery: Static,
    pool: Pool,
    plain: Client<HttpConnector, Body>,
    /// Per endpoint: its load estimate and breaker (pruned to what discovery still lists).
    endpoints: Mutex<HashMap<Endpoint, (PeakEwma, Breaker)>>,
}

impl Outbound {
    pub fn new(cfg: Config, creds: Arc<dyn Credentials>, discovery: Static) -> Arc<Self> {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(cfg.connect_timeout));
        http.set_nodelay(true);
        Arc::new(Outbound {
            pool: Pool::new(creds, cfg.connect_timeout),
            plain: Client::builder(TokioExecutor::new()).build(http),
            cfg,
            discovery,
            endpoints: Mutex::new(HashMap::new()),
        })
    }

    /// Serves `listener` until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        crate::accept::serve(listener, "outbound", move |tcp| {
            self.clone().connection(tcp)
        })
        .await
    }

    async fn connection(self: Arc<Self>, tcp: TcpStream) -> std::io::Result<()> {
        let (detected, io) = detect_io(tcp, self.cfg.detect_timeout).await?;
        let this = self.clone();
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let this = this.clone();
            async move { Ok::<_, std::convert::Infallible>(this.route(req).await) }
        });
        let io = TokioIo::new(io);
        let r = match detected.protocol() {
            Protocol::Http1 => {
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .await
            }
            Protocol::Http2 => {
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(io, svc)
                    .await
            }
            other => {
                // Needs the connection's original destination: issue 15's interception.
                tracing::info!(protocol = ?other, "outbound: only HTTP can be routed yet");
                return Ok(());
            }
        };
        if let Err(e) = r {
            tracing::debug!(error = %e, "outbound HTTP connection");
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

    async fn route(&self, req: Request<Incoming>) -> http::Response<Body> {
        let Some(authority) = Self::authority(&req) else {
            return error(StatusCode::BAD_REQUEST, "the request names no authority");
        };
        let Some(eps) = self.discovery.get(&authority).filter(|e| !e.is_empty()) else {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("no endpoints for {authority}"),
            );
        };
        let Some(ep) = self.pick(eps) else {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("every endpoint of {authority} is ejected"),
            );
        };
        let started = Instant::now();
        let (mut parts, body) = req.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        // The client cannot speak for itself: only the peer's inbound proxy sets this.
        parts.headers.remove(CLIENT_ID);
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        if parts.headers.get(http::header::HOST).is_none() {
            if let Ok(v) = http::HeaderValue::from_str(&authority) {
                parts.headers.insert(http::header::HOST, v);
            }
        }
        let result = match &ep.mesh {
            Some(mesh) => {
                let Some(uri) = target(&authority, &path) else {
                    return error(StatusCode::BAD_REQUEST, "invalid request target");
                };
                parts.uri = uri;
                parts.version = http::Version::HTTP_2;
                let req = Request::from_parts(parts, body.boxed());
                self.pool
                    .send(ep.addr, mesh, req)
                    .await
                    .map_err(|e| match e {
                        SendError::Connect(c) => c.to_string(),
                        SendError::Request(r) => format!("request to {}: {r}", ep.addr),
                    })
            }
            None => {
                let Some(uri) = target(&ep.addr.to_string(), &path) else {
                    return error(StatusCode::BAD_REQUEST, "invalid request target");
                };
                parts.uri = uri;
                parts.version = http::Version::HTTP_11;
                let req = Request::from_parts(parts, body.boxed());
                self.plain
                    .request(req)
                    .await
                    .map_err(|e| format!("plaintext to {}: {e}", ep.addr))
            }
        };
        // 5xx and transport failures count against the endpoint (Linkerd's classification).
        let ok = result.as_ref().is_ok_and(|r| !r.status().is_server_error());
        self.done(&ep, started, ok);
        match result {
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
        }
    }
}

impl Outbound {
    /// P2C over the endpoints the breaker lets through; the chosen one counts a request in
    /// flight. An ejected endpoint whose penalty is over gets the next request as its probe
    /// whatever its load: otherwise P2C, which always prefers the lighter, might never try it
    /// again.
    fn pick(&self, eps: &[Endpoint]) -> Option<Endpoint> {
        let now = Instant::now();
        let mut state = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        state.retain(|e, _| eps.contains(e));
        for e in eps {
            state.entry(e.clone()).or_insert_with(|| {
                (
                    PeakEwma::new(&self.cfg.balance, now),
                    Breaker::new(self.cfg.breaker.clone()),
                )
            });
        }
        let loads: Vec<Option<f64>> = eps
            .iter()
            .map(|e| {
                let (ewma, breaker) = &state[e];
                breaker
                    .available(now)
                    .then(|| ewma.load(&self.cfg.balance, now))
            })
            .collect();
        let due = eps.iter().position(|e| {
            let b = &state[e].1;
            b.is_ejected() && b.available(now)
        });
        let i = match due {
            Some(i) => i,
            None => balance::p2c(&loads, rand::random(), rand::random())?,
        };
        let (ewma, breaker) = state.get_mut(&eps[i])?;
        if breaker.admit(now) == breaker::Admit::No {
            return None;
        }
        ewma.start();
        Some(eps[i].clone())
    }

    /// Records a request's outcome on its endpoint.
    fn done(&self, ep: &Endpoint, started: Instant, ok: bool) {
        let now = Instant::now();
        let mut state = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((ewma, breaker)) = state.get_mut(ep) {
            ewma.finish(&self.cfg.balance, now, now - started);
            if let Some(why) = breaker.record(now, ok, rand::random()) {
                tracing::info!(endpoint = %ep.addr, reason = ?why, "endpoint ejected");
            }
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
