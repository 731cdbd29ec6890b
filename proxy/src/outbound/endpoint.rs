//! Connections to one endpoint. A meshed endpoint gets mutual TLS to its proxy's inbound port
//! (the peer must prove the identity discovery gave), the transport header, then HTTP/2: one
//! handshake serves every request, HTTP/1 requests travel as HTTP/2 streams (as Linkerd does).
//! The connection is kept per (endpoint, identity) and replaced when it closes.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use http::Request;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshwork_identity::spiffe::SpiffeId;
use tokio::{io::AsyncWriteExt, net::TcpStream};

use super::discover::Mesh;
use crate::{
    http::Body,
    tls::{mesh_server_name, Credentials},
    transport_header::{SessionProtocol, TransportHeader},
};

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connecting to {0}: {1}")]
    Tcp(SocketAddr, std::io::Error),
    #[error("connecting to {0}: timed out")]
    Timeout(SocketAddr),
    #[error("mTLS with {addr} (expecting {want}): {source}")]
    Tls {
        addr: SocketAddr,
        want: SpiffeId,
        source: std::io::Error,
    },
    #[error("HTTP/2 with {0}: {1}")]
    H2(SocketAddr, hyper::Error),
}

type Key = (SocketAddr, u16, SpiffeId);

/// Longest a new session may take, TCP connect, mTLS and HTTP/2 handshakes together.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);

/// HTTP/2 sessions to endpoints (`sessions.rs`: one handshake per endpoint, shared): mTLS to
/// meshed ones, and prior-knowledge plaintext to those outside the mesh for apps that spoke
/// HTTP/2 (gRPC).
pub struct Pool {
    inner: Arc<Inner>,
    sessions: crate::sessions::Sessions<Key, ConnectError>,
    plain: crate::sessions::Sessions<SocketAddr, String>,
}

struct Inner {
    creds: Arc<dyn Credentials>,
    metrics: Arc<crate::metrics::Metrics>,
    connect_timeout: Duration,
}

impl Pool {
    pub fn new(
        creds: Arc<dyn Credentials>,
        connect_timeout: Duration,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        Pool {
            inner: Arc::new(Inner {
                creds,
                metrics,
                connect_timeout,
            }),
            sessions: Default::default(),
            plain: Default::default(),
        }
    }

    /// A plaintext HTTP/2 session to `addr`, an endpoint outside the mesh.
    pub async fn plaintext(&self, addr: SocketAddr) -> Result<SendRequest<Body>, Arc<String>> {
        let timeout = self.inner.connect_timeout;
        self.plain
            .get(addr, move || {
                Box::pin(crate::sessions::plaintext_h2(addr, timeout))
            })
            .await
    }

    /// A ready HTTP/2 session to `addr`'s pod through its proxy.
    pub async fn session(
        &self,
        addr: SocketAddr,
        mesh: &Mesh,
    ) -> Result<SendRequest<Body>, Arc<ConnectError>> {
        let key = (addr, mesh.proxy_port, mesh.identity.clone());
        let inner = self.inner.clone();
        let mesh = mesh.clone();
        self.sessions
            .get_until(key, move || {
                Box::pin(async move {
                    // The whole of it bounded (TCP, TLS, HTTP/2): a peer that accepts and
                    // then stalls fails its requests in bounded time.
                    // One deadline for the whole and for the TLS step within it: at the
                    // same instant the inner one is seen first, and the stall is counted.
                    let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
                    tokio::time::timeout_at(deadline, inner.connect(addr, &mesh, deadline))
                        .await
                        .map_err(|_| {
                            ConnectError::Timeout(SocketAddr::new(addr.ip(), mesh.proxy_port))
                        })
                        .and_then(|r| r)
                })
            })
            .await
    }
}

impl Inner {
    /// A session to `addr`'s proxy; `deadline`: the session's whole bound, which the caller
    /// applies too: the TLS step ends at it on its own so that a peer stalling the handshake
    /// is counted as a TLS timeout.
    async fn connect(
        &self,
        addr: SocketAddr,
        mesh: &Mesh,
        deadline: tokio::time::Instant,
    ) -> Result<(SendRequest<Body>, Option<tokio::time::Instant>), ConnectError> {
        let proxy = SocketAddr::new(addr.ip(), mesh.proxy_port);
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(proxy))
            .await
            .map_err(|_| ConnectError::Timeout(proxy))?
            .map_err(|e| ConnectError::Tcp(proxy, e))?;
        let _ = tcp.set_nodelay(true);
        let name = rustls::pki_types::ServerName::try_from(mesh_server_name(&mesh.identity))
            .map_err(|e| ConnectError::Tls {
                addr: proxy,
                want: mesh.identity.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
            })?;
        let connector = tokio_rustls::TlsConnector::from(self.creds.client_config(&mesh.identity));
        let tls_err = |source| ConnectError::Tls {
            addr: proxy,
            want: mesh.identity.clone(),
            source,
        };
        let handshake = tokio::time::timeout_at(deadline, connector.connect(name, tcp))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake"))
            .and_then(|r| r);
        let mut tls = match handshake {
            Ok(t) => {
                self.metrics.tls(crate::metrics::Direction::Outbound, "ok");
                t
            }
            Err(e) => {
                let why = crate::metrics::tls_reason(&e);
                self.metrics.tls(crate::metrics::Direction::Outbound, why);
                return Err(tls_err(e));
            }
        };
        let header = TransportHeader {
            port: addr.port(),
            protocol: SessionProtocol::Http2,
        };
        // The session takes requests until the peer's certificate expires: the identity it
        // proved is then no longer vouched for, and a new session makes it prove its current
        // one (the server side ends a session at its client's expiry: `inbound/
        // connection.rs`).
        // Up to a tenth of its life sooner, at random: every client of a server reaches
        // that server's expiry at once, and would all make their new sessions in one burst.
        let until = crate::tls::peer_not_after(tls.get_ref().1).map(|at| {
            let now = tokio::time::Instant::now();
            now + at
                .saturating_duration_since(now)
                .mul_f64(1.0 - 0.1 * rand::random::<f64>())
        });
        tls.write_all(&header.encode()).await.map_err(tls_err)?;
        // Keep-alive pings find a peer that vanished without a FIN (Linkerd: 10 s).
        let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(3))
            .keep_alive_while_idle(true)
            .initial_stream_window_size(crate::accept::STREAM_WINDOW)
            .initial_connection_window_size(crate::accept::CONNECTION_WINDOW)
            .handshake(TokioIo::new(Box::new(tls) as crate::io::BoxedIo))
            .await
            .map_err(|e| ConnectError::H2(proxy, e))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%proxy, error = %e, "mesh session ended");
            }
        });
        Ok((send, until))
    }
}

impl Pool {
    /// Lets go of the sessions to endpoints discovery no longer lists: each closes once its
    /// requests in flight are done (hyper closes an HTTP/2 client connection whose every
    /// handle is gone when its last stream ends), so removed endpoints drain.
    pub fn forget(&self, gone: Vec<(SocketAddr, Option<Mesh>)>) {
        for (addr, m) in gone {
            match m {
                Some(m) => self.sessions.forget(&(addr, m.proxy_port, m.identity)),
                None => self.plain.forget(&addr),
            }
        }
    }

    /// A CONNECT stream to the endpoint's pod port on its session: the tunnel's far side.
    pub async fn tunnel(
        &self,
        addr: SocketAddr,
        mesh: &Mesh,
    ) -> Result<hyper::upgrade::Upgraded, SendError> {
        let mut req = Request::new(crate::http::full(bytes::Bytes::new()));
        *req.method_mut() = http::Method::CONNECT;
        *req.uri_mut() = http::Uri::builder()
            .authority(addr.to_string())
            .build()
            .map_err(|e| SendError::Tunnel(e.to_string()))?;
        *req.version_mut() = http::Version::HTTP_2;
        let resp = self.send(addr, mesh, req).await.map_err(|(e, _)| e)?;
        if resp.status() != http::StatusCode::OK {
            return Err(SendError::Tunnel(format!(
                "the peer proxy answered {}",
                resp.status()
            )));
        }
        hyper::upgrade::on(resp).await.map_err(SendError::Request)
    }

    /// Sends `req` on a session to the endpoint. When it was not sent (no session, or one
    /// that takes no more), it comes back with the error, its body unread: it can go to
    /// another endpoint whatever its body.
    pub async fn send(
        &self,
        addr: SocketAddr,
        mesh: &Mesh,
        req: Request<Body>,
    ) -> Result<http::Response<hyper::body::Incoming>, (SendError, Option<Request<Body>>)> {
        let mut s = match self.session(addr, mesh).await {
            Ok(s) => s,
            Err(e) => return Err((SendError::Connect(e), Some(req))),
        };
        if let Err(e) = s.ready().await {
            return Err((SendError::NotReady(e), Some(req)));
        }
        s.send_request(req)
            .await
            .map_err(|e| (SendError::Request(e), None))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error(transparent)]
    Connect(Arc<ConnectError>),
    #[error("request: {0}")]
    Request(hyper::Error),
    /// The session would take no more requests (it is closing): nothing was sent.
    #[error("session closing: {0}")]
    NotReady(hyper::Error),
    #[error("tunnel: {0}")]
    Tunnel(String),
}
