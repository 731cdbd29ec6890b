//! The inbound stack (peer → proxy → app), in linkerd2-proxy's `app/inbound` shape
//! (ARCHITECTURE.md, "The proxy"): accept → detect → mesh TLS (the peer's SPIFFE ID) or
//! plaintext by policy → the transport header's port → HTTP with the client identity set and
//! a forged one stripped, or opaque bytes → the app on localhost.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use http::{Request, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioIo},
};
use meshwork_identity::spiffe::SpiffeId;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite},
    net::{TcpListener, TcpStream},
};

use crate::{
    detect::Protocol,
    drain::Watch,
    http::{error, strip_hop_by_hop, Body, CLIENT_ID},
    io::{detect_io, PrefixedIo},
    tls::{mesh_server_name, peer_id, Credentials},
    transport_header::{self, SessionProtocol, TransportHeader},
};

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
    /// Where the app listens (its ports on this address).
    pub app_ip: std::net::IpAddr,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            detect_timeout: Duration::from_secs(10),
            policy: Policy::Permissive,
            app_ip: std::net::Ipv4Addr::LOCALHOST.into(),
        }
    }
}

pub struct Inbound {
    cfg: Config,
    creds: Arc<dyn Credentials>,
    app: Client<HttpConnector, Body>,
    own_name: String,
}

impl Inbound {
    pub fn new(cfg: Config, creds: Arc<dyn Credentials>) -> Arc<Self> {
        let own_name = mesh_server_name(creds.id());
        Arc::new(Inbound {
            cfg,
            creds,
            app: Client::builder(TokioExecutor::new()).build_http(),
            own_name,
        })
    }

    /// Serves `listener` until the drain begins.
    pub async fn serve(self: Arc<Self>, listener: TcpListener, drain: Watch) {
        let Ok(own) = listener.local_addr() else {
            return;
        };
        crate::accept::serve(listener, "inbound", drain, move |tcp, d| {
            self.clone().connection(tcp, own, d)
        })
        .await
    }

    async fn connection(
        self: Arc<Self>,
        tcp: TcpStream,
        own: SocketAddr,
        drain: Watch,
    ) -> std::io::Result<()> {
        let local = tcp.local_addr()?;
        let (detected, io) = detect_io(tcp, self.cfg.detect_timeout).await?;
        match detected.protocol() {
            Protocol::Tls { sni: Some(name) } if name == self.own_name => {
                self.mesh(io, drain).await
            }
            other => {
                if self.cfg.policy == Policy::Strict {
                    // Closed before a byte reaches the app.
                    tracing::info!(%local, "strict inbound policy: plaintext refused");
                    return Ok(());
                }
                let app = SocketAddr::new(self.cfg.app_ip, local.port());
                if loops_back(app, own) {
                    // Addressed to the listener itself (no interception kept another port):
                    // relaying would connect to this listener again, and again.
                    tracing::debug!(%local, "inbound: not a mesh connection, and no app port");
                    return Ok(());
                }
                self.plaintext(io, app, other, drain).await
            }
        }
    }

    /// Mutual TLS with a peer proxy, then what its transport header says.
    async fn mesh(self: Arc<Self>, io: PrefixedIo<TcpStream>, drain: Watch) -> std::io::Result<()> {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.creds.server_config());
        let mut tls = acceptor.accept(io).await?;
        let client = peer_id(tls.get_ref().1);
        let mut h = [0u8; transport_header::LEN];
        tokio::time::timeout(self.cfg.detect_timeout, tls.read_exact(&mut h))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "transport header"))??;
        let header = TransportHeader::decode(&h)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        let app = SocketAddr::new(self.cfg.app_ip, header.port);
        match header.protocol {
            SessionProtocol::Http2 => {
                self.http(tls, app, client, true, drain).await;
                Ok(())
            }
            SessionProtocol::Opaque => relay(tls, app).await,
        }
    }

    /// Plaintext from outside the mesh (permissive): to the app port the connection was
    /// addressed to. With kernel interception the accepted socket keeps that address; a
    /// connection made to the inbound listener itself names no app port and is closed.
    async fn plaintext(
        self: Arc<Self>,
        io: PrefixedIo<TcpStream>,
        app: SocketAddr,
        protocol: Protocol,
        drain: Watch,
    ) -> std::io::Result<()> {
        match protocol {
            Protocol::Http1 => {
                self.http(io, app, None, false, drain).await;
                Ok(())
            }
            Protocol::Http2 => {
                self.http(io, app, None, true, drain).await;
                Ok(())
            }
            _ => relay(io, app).await,
        }
    }

    /// Serves HTTP on `io`, each request to `app` with the client identity header set to
    /// `client` (or removed).
    async fn http<I>(
        self: Arc<Self>,
        io: I,
        app: SocketAddr,
        client: Option<SpiffeId>,
        h2: bool,
        drain: Watch,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let this = self.clone();
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let this = this.clone();
            let client = client.clone();
            async move { Ok::<_, std::convert::Infallible>(this.to_app(req, app, client).await) }
        });
        let io = TokioIo::new(io);
        let r = if h2 {
            let b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            crate::accept::http(b.serve_connection(io, svc), drain).await
        } else {
            let b = hyper::server::conn::http1::Builder::new();
            crate::accept::http(b.serve_connection(io, svc), drain).await
        };
        if let Err(e) = r {
            tracing::debug!(error = %e, "inbound HTTP connection");
        }
    }

    async fn to_app(
        &self,
        req: Request<Incoming>,
        app: SocketAddr,
        client: Option<SpiffeId>,
    ) -> http::Response<Body> {
        let (mut parts, body) = req.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        // Only this proxy may say who the client is.
        parts.headers.remove(CLIENT_ID);
        if let Some(id) = &client {
            if let Ok(v) = http::HeaderValue::from_str(&id.to_string()) {
                parts.headers.insert(CLIENT_ID, v);
            }
        }
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let Ok(uri) = Uri::builder()
            .scheme("http")
            .authority(app.to_string())
            .path_and_query(path)
            .build()
        else {
            return error(http::StatusCode::BAD_REQUEST, "invalid request target");
        };
        if parts.headers.get(http::header::HOST).is_none() {
            if let Some(a) = parts.uri.authority() {
                if let Ok(v) = http::HeaderValue::from_str(a.as_str()) {
                    parts.headers.insert(http::header::HOST, v);
                }
            }
        }
        parts.uri = uri;
        parts.version = http::Version::HTTP_11;
        let req = Request::from_parts(parts, body.boxed());
        match self.app.request(req).await {
            Ok(resp) => {
                let (mut parts, body) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                http::Response::from_parts(parts, body.boxed())
            }
            Err(e) => {
                tracing::debug!(%app, error = %e, "app request failed");
                error(
                    http::StatusCode::BAD_GATEWAY,
                    "the app refused the connection",
                )
            }
        }
    }
}

/// Relays bytes both ways between `io` and a new connection to `to`.
async fn relay<I>(mut io: I, to: SocketAddr) -> std::io::Result<()>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let mut app = TcpStream::connect(to).await?;
    let _ = app.set_nodelay(true);
    tokio::io::copy_bidirectional(&mut io, &mut app).await?;
    Ok(())
}

/// Whether connecting to `target` would reach the listener at `listener` itself.
fn loops_back(target: SocketAddr, listener: SocketAddr) -> bool {
    target.port() == listener.port()
        && (listener.ip().is_unspecified() || listener.ip() == target.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_to_the_listener_itself_is_not_relayed_to_it() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(loops_back(a("127.0.0.1:4143"), a("0.0.0.0:4143")));
        assert!(loops_back(a("127.0.0.1:4143"), a("127.0.0.1:4143")));
        assert!(!loops_back(a("127.0.0.1:8080"), a("0.0.0.0:4143")));
        assert!(!loops_back(a("127.0.0.2:8080"), a("127.0.0.3:8080")));
    }
}
