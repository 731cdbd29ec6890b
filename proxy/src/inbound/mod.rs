//! The inbound stack (peer → proxy → app), in linkerd2-proxy's `app/inbound` shape
//! (ARCHITECTURE.md, "The proxy"): accept → detect → mesh TLS (the peer's SPIFFE ID) or
//! plaintext by policy → the transport header's port → HTTP with the client identity set and
//! a forged one stripped, or opaque bytes → the app on localhost.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use http::{Request, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::Client,
    rt::{TokioExecutor, TokioIo},
};
use meshwork_identity::spiffe::SpiffeId;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
};
use tracing::Instrument;

mod app;
mod connection;

use app::connect_app;
pub use app::APP_SOURCE;

use crate::{
    drain::Watch,
    http::{error, strip_hop_by_hop, Body, CLIENT_ID, ORIG_PROTO},
    io::detect_io,
    metrics::{Direction, Metrics, Observed},
    tls::{mesh_server_name, Credentials},
};

/// What every request on one connection shares, worked out once per connection.
struct Session {
    app: SocketAddr,
    /// `app` as a request target's authority (HTTP/1.1 to the app).
    app_authority: http::uri::Authority,
    /// The peer proxy's verified identity (None: plaintext).
    client: Option<SpiffeId>,
    /// `client` as the identity header's value, and as text for the metrics and the span.
    client_header: Option<http::HeaderValue>,
    peer: String,
    /// Served inside a CONNECT tunnel: a CONNECT here is refused (a peer nesting tunnels
    /// would have each level's streams multiply the last's).
    tunnelled: bool,
    /// This connection's own HTTP/2 connection to the app, made at its first HTTP/2 request
    /// and closed with it: one client (a peer pod's session, or a plaintext client) holding
    /// the app's stream limit (hyper's and tonic's 200, Go's 250) with long calls then does
    /// not hold up another's, as without the proxy, where each has its own connection.
    app_h2: crate::sessions::Sessions<SocketAddr, String>,
}

impl Session {
    fn new(app: SocketAddr, client: Option<SpiffeId>, tunnelled: bool) -> Self {
        let peer = client.as_ref().map(|c| c.to_string()).unwrap_or_default();
        Session {
            app,
            app_authority: http::uri::Authority::try_from(app.to_string())
                .unwrap_or_else(|_| http::uri::Authority::from_static("localhost")),
            client_header: client
                .as_ref()
                .and_then(|_| http::HeaderValue::from_str(&peer).ok()),
            client,
            peer,
            tunnelled,
            app_h2: Default::default(),
        }
    }
}

/// Whether plaintext from a workload outside the mesh reaches the app
/// (`meshwork.io/inbound-policy`; Linkerd's default is permissive too).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    Permissive,
    Strict,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub detect_timeout: Duration,
    pub policy: Policy,
    /// Where the app listens (its ports on this address); None: the address the connection
    /// came to, the pod's (a port bound on 127.0.0.1 only is then not reachable from outside).
    pub app_ip: Option<std::net::IpAddr>,
    /// How long a connection to the app may take.
    pub connect_timeout: Duration,
    /// The proxy's own ports (outbound, admin): never an app port, so that no peer can use
    /// this pod's outbound proxy, and its identity, through the inbound one. The inbound
    /// listener's own port is added by `serve`.
    pub proxy_ports: Vec<u16>,
    /// How long a plaintext client may take to send a request's headers.
    pub header_read_timeout: Duration,
    /// This pod's opaque ports (`config.meshwork.io/opaque-ports`): what a tunnel carries to
    /// them is relayed without detection, so a server that speaks first is not kept waiting
    /// for a client byte (Linkerd's opaque ports).
    pub opaque_ports: Vec<std::ops::RangeInclusive<u16>>,
    /// The app's HTTP probes (port, path): under `Strict`, plaintext GETs of exactly these are
    /// still served, and nothing else (Linkerd's default policy authorizes probes too).
    pub probe_paths: Vec<(u16, String)>,
    /// Routes naming inbound requests in the metrics (`config.meshwork.io/routes`).
    pub routes: meshwork_destination_api::routes::Routes,
    /// Spans of sampled requests to a collector (`otlp.rs`); None: none kept.
    pub tracer: Option<crate::otlp::Exporter>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            detect_timeout: Duration::from_secs(10),
            policy: Policy::Permissive,
            app_ip: None,
            connect_timeout: Duration::from_secs(1),
            // Linkerd's outbound and admin ports (ARCHITECTURE.md, "The proxy").
            proxy_ports: vec![4140, 4191],
            header_read_timeout: crate::accept::HEADER_READ_TIMEOUT,
            opaque_ports: meshwork_destination_api::DEFAULT_OPAQUE_PORTS
                .iter()
                .map(|p| *p..=*p)
                .collect(),
            probe_paths: Vec::new(),
            routes: Default::default(),
            tracer: None,
        }
    }
}

pub struct Inbound {
    cfg: Config,
    creds: Arc<dyn Credentials>,
    app: Client<app::Connector, Body>,
    own_name: String,
    /// The inbound listener's address, once serving.
    own: std::sync::OnceLock<SocketAddr>,
    /// The drain the listener serves under, for what outlives a request (tunnels).
    drain: std::sync::OnceLock<Watch>,
    pub metrics: Arc<Metrics>,
}

impl Inbound {
    /// With metrics of its own (tests).
    pub fn new(cfg: Config, creds: Arc<dyn Credentials>) -> Arc<Self> {
        Self::with(cfg, creds, Metrics::new())
    }

    pub fn with(cfg: Config, creds: Arc<dyn Credentials>, metrics: Arc<Metrics>) -> Arc<Self> {
        let own_name = mesh_server_name(creds.id());
        let connector = app::Connector {
            timeout: cfg.connect_timeout,
        };
        Arc::new(Inbound {
            cfg,
            creds,
            app: Client::builder(TokioExecutor::new()).build(connector),
            own_name,
            own: std::sync::OnceLock::new(),
            drain: std::sync::OnceLock::new(),
            metrics,
        })
    }

    /// Serves `listener` until the drain begins.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, drain: Watch) {
        let Ok(own) = listener.local_addr() else {
            return;
        };
        let _ = self.own.set(own);
        let _ = self.drain.set(drain.clone());
        let metrics = self.metrics.clone();
        crate::accept::serve(
            listener,
            Direction::Inbound,
            metrics,
            drain,
            move |tcp, d| self.clone().connection(tcp, own, d),
        )
        .await
    }

    /// Serves HTTP on `io`, each request to `app` with the client identity header set to
    /// `client` (or removed).
    /// Boxed: a tunnel serves HTTP from inside a request this serves, and the compiler cannot
    /// see through that cycle of anonymous futures.
    fn http<I>(
        self: Arc<Self>,
        io: I,
        app: SocketAddr,
        client: Option<SpiffeId>,
        h2: bool,
        tunnelled: bool,
        drain: Watch,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        Box::pin(async move {
            let this = self.clone();
            let meshed = client.is_some();
            let session = Arc::new(Session::new(app, client, tunnelled));
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let this = this.clone();
                let session = session.clone();
                async move {
                    let h2 = req.version() == http::Version::HTTP_2;
                    let resp = this.to_app(req, &session).await;
                    // Not processed: HTTP/2 says so with a reset the client (a peer proxy
                    // above all) may retry anywhere, e.g. while this pod's app is gone in a
                    // rolling update. HTTP/1.1 has no such word; it gets the 502.
                    if h2 && resp.extensions().get::<crate::http::Unsent>().is_some() {
                        return Err(h2::Error::from(h2::Reason::REFUSED_STREAM));
                    }
                    Ok(resp)
                }
            });
            let io = TokioIo::new(Box::new(io) as crate::io::BoxedIo);
            let r = if h2 {
                let mut b = crate::accept::h2();
                if !meshed {
                    // Not a mesh peer's session (which carries a pod's tunnels and requests
                    // together): a client outside the mesh gets hyper's usual limit, not
                    // ten thousand streams queued toward the app.
                    b.max_concurrent_streams(crate::accept::PLAINTEXT_MAX_CONCURRENT_STREAMS);
                }
                crate::accept::http(b.serve_connection(io, svc), drain).await
            } else {
                // With upgrades, like the outbound server (one copy of hyper's HTTP/1 server
                // code): a mesh peer's HTTP/1 CONNECT inside an opaque session is tunnelled
                // to the session's port as its HTTP/2 CONNECT is (`tunnel`: mesh peers only,
                // that port only, what it carries detected again).
                let b = crate::accept::h1(self.cfg.header_read_timeout);
                crate::accept::http(b.serve_connection(io, svc).with_upgrades(), drain).await
            };
            if let Err(e) = r {
                crate::accept::http_error(&self.metrics, Direction::Inbound, &e);
            }
        })
    }

    /// One request to the app, counted by authority, status class and client identity.
    async fn to_app(
        self: &Arc<Self>,
        mut req: Request<Incoming>,
        s: &Session,
    ) -> http::Response<Body> {
        let started = std::time::Instant::now();
        let traced = self
            .cfg
            .tracer
            .as_ref()
            .and_then(|t| t.start(req.headers_mut()));
        let bad = crate::http::bad_authority(req.uri(), req.headers());
        // Refused below, and counted without what it named (a password, say).
        let named = match bad {
            None => crate::http::named_authority(req.uri(), req.headers()).unwrap_or_default(),
            Some(_) => "",
        };
        // A copy (the request moves on), folded only when it has upper case.
        let authority = if named.bytes().any(|b| b.is_ascii_uppercase()) {
            named.to_ascii_lowercase()
        } else {
            named.to_string()
        };
        let peer = s.peer.as_str();
        // A traced request's header was read once already.
        let trace_id = match &traced {
            Some(t) => t.incoming.trace_id(),
            None => crate::trace::trace_id(req.headers()),
        };
        // The target shares its bytes: cloning it copies no path.
        let (method, target) = (req.method().clone(), req.uri().clone());
        // Debug level: see the outbound stack's `route`.
        let span = tracing::debug_span!(
            "request",
            direction = "inbound",
            %authority,
            client = %peer,
            trace_id = %trace_id,
        );
        let mut resp = async {
            if let Some(why) = bad {
                return error(http::StatusCode::BAD_REQUEST, why);
            }
            // A probe is a request and its answer: switched to another protocol it would be
            // a byte stream to the app from outside the mesh.
            if s.client.is_none()
                && self.cfg.policy == Policy::Strict
                && (!self.probe(&req, s) || crate::upgrade::is_upgrade(&req))
            {
                self.metrics.refuse("strict_policy");
                return error(
                    http::StatusCode::FORBIDDEN,
                    "strict inbound policy: outside the mesh only the pod's probes are served",
                );
            }
            if req.method() == http::Method::CONNECT && s.tunnelled {
                self.metrics.refuse("nested_connect");
                error(
                    http::StatusCode::FORBIDDEN,
                    "CONNECT inside a CONNECT tunnel is not served",
                )
            } else if req.method() == http::Method::CONNECT {
                self.tunnel(req, s.app, s.client.clone()).await
            } else {
                self.forward(req, s).await
            }
        }
        .instrument(span)
        .await;
        // A tunnel a peer's proxy opened is the mesh's transport for TCP, counted as TCP (and
        // what runs inside it, HTTP included, is counted as itself), not as a request of the
        // app's: else every opaque connection would be an inbound 2xx of no duration, and a
        // WebSocket two requests. One refused is counted with the refusals.
        if method == http::Method::CONNECT {
            return resp;
        }
        let observed = Observed {
            direction: Direction::Inbound,
            authority: &authority,
            route: self.cfg.routes.find(method.as_str(), target.path()),
            routed: !self.cfg.routes.is_empty(),
            method: method.as_str(),
            path: target.path(),
            status: Some(resp.status()),
            peer,
            elapsed: started.elapsed(),
            trace_id: &trace_id,
        };
        self.metrics.response(&observed, &mut resp);
        if let (Some(tracer), Some(t)) = (&self.cfg.tracer, traced) {
            tracer.finish(t, &observed);
        }
        resp
    }

    /// Whether `req` is one of the app's probes: a GET of exactly a probe's path (and query)
    /// on the port that probe names.
    fn probe(&self, req: &Request<Incoming>, s: &Session) -> bool {
        let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
        req.method() == http::Method::GET
            && self
                .cfg
                .probe_paths
                .iter()
                .any(|(port, path)| *port == s.app.port() && path == target)
    }

    /// A peer proxy's CONNECT: a TCP connection to the app port it names, bytes relayed.
    /// Only over mTLS: plaintext clients do not get a relay.
    async fn tunnel(
        self: &Arc<Self>,
        mut req: Request<Incoming>,
        session_app: SocketAddr,
        client: Option<SpiffeId>,
    ) -> http::Response<Body> {
        let Some(client) = client else {
            self.metrics.refuse("plaintext_connect");
            return error(
                http::StatusCode::METHOD_NOT_ALLOWED,
                "CONNECT is served to mesh peers only",
            );
        };
        // Only to the port the session was opened for (its transport header's), which the
        // peer's discovery named: a session is not a way into the pod's other ports.
        let port = req.uri().authority().and_then(|a| a.port_u16());
        if port != Some(session_app.port()) {
            self.metrics.refuse("connect_port");
            return error(
                http::StatusCode::FORBIDDEN,
                "CONNECT names another port than the session's",
            );
        }
        let app = session_app;
        let opaque = self.opaque(app.port());
        // An opaque port's tunnel is the app's connection: made before the peer is told yes,
        // so that a refusal is its answer. Any other port's is made once its bytes are known
        // not to be HTTP (HTTP inside, an upgrade above all, makes connections of its own:
        // one made here first would reach the app for nothing).
        let early = if opaque {
            match connect_app(app, self.cfg.connect_timeout).await {
                Ok(t) => Some(t),
                Err(e) => {
                    tracing::debug!(%app, error = %e, "app refused a tunnel");
                    let mut resp = error(
                        http::StatusCode::BAD_GATEWAY,
                        "the app refused the connection",
                    );
                    resp.extensions_mut().insert(crate::http::Unsent);
                    return resp;
                }
            }
        } else {
            None
        };
        let on_upgrade = hyper::upgrade::on(&mut req);
        let this = self.clone();
        let drain = self.drain.get().cloned().unwrap_or_else(Watch::never);
        tokio::spawn(async move {
            let Ok(near) = on_upgrade.await else { return };
            if let Some(far) = early {
                let (mut near, mut far) = (TokioIo::new(near), far);
                let _hold = drain;
                // The bytes count where the mesh session was accepted (`Counted`).
                if let Err(e) = tokio::io::copy_bidirectional(&mut near, &mut far).await {
                    tracing::debug!(error = %e, "inbound tunnel ended");
                }
                return;
            }
            // What a tunnel to any other port carries is still looked at: HTTP inside gets
            // the identity header set here like any other request, so a peer cannot bring
            // its own.
            let near = TokioIo::new(near);
            let Ok((detected, io)) = detect_io(near, this.cfg.detect_timeout).await else {
                return;
            };
            if let Err(e) = this
                .serve_detected(detected, io, app, Some(client), true, drain)
                .await
            {
                tracing::debug!(%app, error = %e, "inbound tunnel ended");
            }
        });
        http::Response::new(crate::http::full(bytes::Bytes::new()))
    }

    async fn forward(&self, req: Request<Incoming>, s: &Session) -> http::Response<Body> {
        if crate::upgrade::is_upgrade(&req) {
            return self.upgrade(req, s).await;
        }
        let app = s.app;
        let (mut parts, body) = req.into_parts();
        // Trailers too: an app may read them beside the headers.
        let body = body.map_frame(|mut f| {
            if let Some(t) = f.trailers_mut() {
                crate::http::remove_client_id(t);
            }
            f
        });
        // HTTP/2 end to end unless the client's proxy says the app there spoke HTTP/1.1 (a
        // plaintext client's own version otherwise).
        let h1_origin = parts.headers.remove(ORIG_PROTO).is_some();
        let to_h2 = parts.version == http::Version::HTTP_2 && !(s.client.is_some() && h1_origin);
        strip_hop_by_hop(&mut parts.headers);
        // Only this proxy may say who the client is.
        crate::http::remove_client_id(&mut parts.headers);
        if let Some(v) = &s.client_header {
            parts.headers.insert(CLIENT_ID, v.clone());
        }
        let path = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        // The authority the client named, which the app sees: `:authority` in HTTP/2, Host
        // in HTTP/1.1. The connection goes to `app` whatever it says.
        let named = crate::http::named_authority(&parts.uri, &parts.headers);
        // The target's authority (absolute form; HTTP/2's `:authority`), which replaces Host.
        let absolute = parts.uri.authority().is_some();
        let target = match named {
            Some(a) if to_h2 => http::uri::Authority::try_from(a),
            _ => Ok(s.app_authority.clone()),
        };
        // Host for an HTTP/1.1 request that came without one.
        let host = named.map_or_else(|| s.app_authority.as_str().to_string(), str::to_string);
        let Some(uri) = target.ok().and_then(|a| {
            Uri::builder()
                .scheme("http")
                .authority(a)
                .path_and_query(path)
                .build()
                .ok()
        }) else {
            return error(http::StatusCode::BAD_REQUEST, "invalid request target");
        };
        parts.uri = uri;
        let resp = if to_h2 {
            parts.version = http::Version::HTTP_2;
            // `:authority` carries it; a Host beside it must not differ (RFC 9113 §8.3.1).
            parts.headers.remove(http::header::HOST);
            let req = Request::from_parts(parts, body.boxed());
            let connect_timeout = self.cfg.connect_timeout;
            match s
                .app_h2
                .get(app, move || {
                    Box::pin(async move {
                        let tcp = connect_app(app, connect_timeout)
                            .await
                            .map_err(|e| format!("connecting to {app}: {e}"))?;
                        crate::sessions::plaintext_h2_over(tcp, app).await
                    })
                })
                .await
            {
                Ok(mut send) => match send.ready().await {
                    Ok(()) => send
                        .send_request(req)
                        .await
                        .map_err(|e| (e.to_string(), crate::http::unprocessed(&e))),
                    Err(e) => Err((e.to_string(), true)),
                },
                Err(e) => Err((e.to_string(), true)),
            }
        } else {
            // Host for a request that came without one, or the target's authority for one in
            // absolute form, which replaces Host (RFC 9112 §3.2.2): the app sees what was
            // routed and counted.
            let host_header = parts.headers.get(http::header::HOST);
            if host_header.is_none()
                || (absolute && host_header.is_some_and(|h| h.as_bytes() != host.as_bytes()))
            {
                if let Ok(v) = http::HeaderValue::from_str(&host) {
                    parts.headers.insert(http::header::HOST, v);
                }
            }
            // `TE: trailers` (the only TE kept) goes on: without it an HTTP/1.1 server sends
            // no trailers back. In HTTP/1.1 a TE needs `Connection: TE` beside it (RFC 9110
            // §10.1.4); the hop-by-hop headers went above, so this is the only Connection.
            if parts.headers.contains_key(http::header::TE) {
                parts.headers.insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("te"),
                );
            }
            parts.version = http::Version::HTTP_11;
            let req = Request::from_parts(parts, body.boxed());
            self.app
                .request(req)
                .await
                .map_err(|e| (e.to_string(), e.is_connect()))
        };
        match resp {
            Ok(resp) => {
                let (mut parts, body) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                http::Response::from_parts(parts, body.boxed())
            }
            Err((e, unsent)) => {
                tracing::debug!(%app, error = %e, "app request failed");
                let mut resp = error(
                    http::StatusCode::BAD_GATEWAY,
                    "the app refused the connection",
                );
                if unsent {
                    resp.extensions_mut().insert(crate::http::Unsent);
                }
                resp
            }
        }
    }
}

impl Inbound {
    /// An HTTP/1.1 upgrade (WebSocket) to the app, identity header set as for any request,
    /// on a connection of its own that is spliced once the app switches protocols.
    async fn upgrade(&self, mut req: Request<Incoming>, s: &Session) -> http::Response<Body> {
        // An absolute-form target's authority replaces Host (RFC 9112 §3.2.2).
        let target = req
            .uri()
            .authority()
            .and_then(|a| http::HeaderValue::from_str(a.as_str()).ok());
        let h = req.headers_mut();
        if let Some(v) = target {
            h.insert(http::header::HOST, v);
        }
        // First: a `Connection` naming the identity header would otherwise remove the one
        // set here when `forward` strips the hop-by-hop headers.
        crate::upgrade::strip_keeping_upgrade(h);
        // No trailers at all on an upgrade (hyper writes only those `Trailer` names): its
        // body is not filtered for a forged identity as a request's is.
        h.remove(http::header::TRAILER);
        h.remove(ORIG_PROTO);
        crate::http::remove_client_id(h);
        if let Some(v) = &s.client_header {
            h.insert(CLIENT_ID, v.clone());
        }
        if !h.contains_key(http::header::HOST) {
            if let Ok(v) = http::HeaderValue::from_str(s.app_authority.as_str()) {
                h.insert(http::header::HOST, v);
            }
        }
        let app = s.app;
        let tcp = match connect_app(app, self.cfg.connect_timeout).await {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                return error(
                    http::StatusCode::GATEWAY_TIMEOUT,
                    "connecting to the app timed out",
                )
            }
            Err(e) => {
                tracing::debug!(%app, error = %e, "app refused an upgrade");
                let mut resp = error(
                    http::StatusCode::BAD_GATEWAY,
                    "the app refused the connection",
                );
                resp.extensions_mut().insert(crate::http::Unsent);
                return resp;
            }
        };
        let drain = self.drain.get().cloned();
        match crate::upgrade::forward(req, Box::new(tcp), Direction::Inbound, drain).await {
            Ok(resp) => resp,
            Err(why) => {
                tracing::debug!(%app, error = %why, "app upgrade failed");
                error(http::StatusCode::BAD_GATEWAY, &why)
            }
        }
    }
}
