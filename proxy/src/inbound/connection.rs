//! What arrives at the inbound listener, up to HTTP or a relay: mesh TLS by server name (the
//! peer's SPIFFE ID, then its transport header) or plaintext by policy; detection, and for a
//! client silent past its timeout, whoever speaks first; opaque ports relayed as they are.
//! (HTTP to the app is `mod.rs`'s.)

use std::{net::SocketAddr, sync::Arc};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite},
    net::TcpStream,
};

use super::{connect_app, Inbound, Policy};
use crate::{
    detect::Protocol,
    drain::Watch,
    io::{detect_io, Detected, PrefixedIo},
    metrics::{tls_reason, Direction},
    tls::peer_id,
    transport_header::{self, SessionProtocol, TransportHeader},
};
use meshwork_identity::spiffe::SpiffeId;

impl Inbound {
    pub(super) async fn connection(
        self: Arc<Self>,
        tcp: TcpStream,
        own: SocketAddr,
        drain: Watch,
    ) -> std::io::Result<()> {
        let tcp = crate::io::Counted::new(tcp, &self.metrics, Direction::Inbound);
        let local = tcp.get_ref().local_addr()?;
        // Permissive, plaintext to an opaque app port (the listener's own port takes mesh
        // sessions): relayed without detection, as the mesh's tunnels to it are, so a
        // server-speaks-first protocol's client (MySQL, SMTP), which says nothing until the
        // app has, does not wait out the detection timeout first. (Bytes to an opaque port
        // are never looked at: no identity header is set or removed there. Strict goes on to
        // detection, which lets only the app's probes through.)
        if let Some(app) = self
            .app_port(local.ip(), local.port(), own)
            .filter(|a| self.cfg.policy == Policy::Permissive && self.opaque(a.port()))
        {
            return relay(
                PrefixedIo::new(bytes::BytesMut::new(), tcp),
                app,
                self.cfg.connect_timeout,
            )
            .await;
        }
        let (detected, io) = detect_io(tcp, self.cfg.detect_timeout).await?;
        match detected.protocol() {
            Protocol::Tls { sni: Some(name) } if name == self.own_name => {
                self.mesh(io, local.ip(), own, drain).await
            }
            other => {
                let probed = other == Protocol::Http1
                    && self.cfg.probe_paths.iter().any(|(p, _)| *p == local.port());
                if self.cfg.policy == Policy::Strict && !probed {
                    // Closed before a byte reaches the app. (A port the app's probes use is
                    // served as HTTP, and `to_app` lets only the probes' requests through.)
                    tracing::info!(%local, "strict inbound policy: plaintext refused");
                    self.metrics.refuse("strict_policy");
                    return Ok(());
                }
                let Some(app) = self.app_port(local.ip(), local.port(), own) else {
                    // Addressed to the listener itself (no interception kept another port),
                    // or to another port of the proxy's: relaying would loop or lend out this
                    // pod's outbound proxy.
                    tracing::debug!(%local, "inbound: not a mesh connection, and no app port");
                    self.metrics.refuse("no_app_port");
                    return Ok(());
                };
                self.serve_detected(detected, io, app, None, false, drain)
                    .await
            }
        }
    }

    /// Mutual TLS with a peer proxy, then what its transport header says.
    async fn mesh(
        self: Arc<Self>,
        io: PrefixedIo<crate::io::Counted<TcpStream>>,
        local: std::net::IpAddr,
        own: SocketAddr,
        drain: Watch,
    ) -> std::io::Result<()> {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.creds.server_config());
        let tls = tokio::time::timeout(self.cfg.detect_timeout, acceptor.accept(io))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake"))
            .and_then(|r| r);
        let mut tls = match tls {
            Ok(t) => {
                self.metrics.tls(Direction::Inbound, "ok");
                t
            }
            Err(e) => {
                self.metrics.tls(Direction::Inbound, tls_reason(&e));
                return Err(e);
            }
        };
        // The verifier requires a client certificate; if a credential source ever did not,
        // a mesh connection without a proven peer is still not served.
        let Some(client) = peer_id(tls.get_ref().1) else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "mesh connection without a client identity",
            ));
        };
        let mut h = [0u8; transport_header::LEN];
        tokio::time::timeout(self.cfg.detect_timeout, tls.read_exact(&mut h))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "transport header"))??;
        let header = TransportHeader::decode(&h)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        let Some(app) = self.app_port(local, header.port, own) else {
            self.metrics.refuse("proxy_port");
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "transport header names the proxy's own port {}",
                    header.port
                ),
            ));
        };
        match header.protocol {
            SessionProtocol::Http2 => {
                // A session lasts no longer than the certificate it was opened with: short
                // lives are the mesh's revocation, so streams opened on it later must not
                // still be taken as that identity's (a GOAWAY then; the peer opens a new
                // session with its current certificate).
                let drain = match crate::tls::peer_not_after(tls.get_ref().1) {
                    Some(at) => drain.or_at(at),
                    None => drain,
                };
                self.http(tls, app, Some(client), true, false, drain).await;
                Ok(())
            }
            // What the peer calls opaque is still looked at: HTTP inside gets the identity
            // header set here like any other, so a peer cannot bring its own.
            SessionProtocol::Opaque => {
                let (detected, io) = detect_io(tls, self.cfg.detect_timeout).await?;
                self.serve_detected(detected, io, app, Some(client), false, drain)
                    .await
            }
        }
    }

    /// Whether `port` is one of this pod's opaque ports (`--inbound-opaque-ports`).
    pub(super) fn opaque(&self, port: u16) -> bool {
        self.cfg.opaque_ports.iter().any(|r| r.contains(&port))
    }

    /// The app address for `port` on `local` (the address the connection came to, unless
    /// `--app-ip` says otherwise), unless it is one of the proxy's own ports.
    fn app_port(&self, local: std::net::IpAddr, port: u16, own: SocketAddr) -> Option<SocketAddr> {
        let app = SocketAddr::new(self.cfg.app_ip.unwrap_or(local), port);
        (!loops_back(app, own) && !self.cfg.proxy_ports.contains(&port)).then_some(app)
    }

    /// What detection found on a connection for the app at `app`, served: HTTP with the
    /// client identity header set to `client` (or removed: plaintext from outside the mesh,
    /// permissive), anything else relayed. With kernel interception a plaintext connection's
    /// accepted socket keeps the app port it was addressed to.
    pub(super) async fn serve_detected<I>(
        self: Arc<Self>,
        detected: Detected,
        io: PrefixedIo<I>,
        app: SocketAddr,
        client: Option<SpiffeId>,
        tunnelled: bool,
        drain: Watch,
    ) -> std::io::Result<()>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (detected, io) = match detected {
            Detected::TimedOut => match self.after_silence(io, app, &drain).await? {
                Some(late) => late,
                None => return Ok(()),
            },
            d => (d, io),
        };
        match detected {
            Detected::Found(Protocol::Http1) => {
                self.http(io, app, client, false, tunnelled, drain).await;
                Ok(())
            }
            Detected::Found(Protocol::Http2) => {
                self.http(io, app, client, true, tunnelled, drain).await;
                Ok(())
            }
            Detected::Partial => {
                // An HTTP request line that stopped short: relaying it raw would let the rest
                // pass without the identity header being stripped.
                tracing::debug!(%app, "inbound: partial request line, closed");
                self.metrics.refuse("partial_request");
                Ok(())
            }
            _ => {
                let _hold = drain;
                relay(io, app, self.cfg.connect_timeout).await
            }
        }
    }

    /// The client sent nothing within the detection timeout: a server-speaks-first protocol
    /// on a port not marked opaque (Linkerd's fallback relays it), or a client waiting out
    /// detection so that its request reaches the app raw, a forged identity header with it.
    /// So the app is connected, and whichever side speaks first decides: the app (or either
    /// closing) — relayed, as before; the client — its bytes are detected like any first
    /// bytes, and HTTP is returned to be served as HTTP (the app connection made for nothing
    /// is closed unused). `None` once relayed.
    async fn after_silence<I>(
        &self,
        io: PrefixedIo<I>,
        app: SocketAddr,
        drain: &Watch,
    ) -> std::io::Result<Option<(Detected, PrefixedIo<I>)>>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut buf, mut io) = io.into_parts();
        let mut far = connect_app(app, self.cfg.connect_timeout).await?;
        let client_first = tokio::select! {
            // Both are cancel-safe: a read that has not completed took nothing.
            r = io.read_buf(&mut buf) => r? > 0,
            r = far.readable() => {
                r?;
                false
            }
        };
        let (detected, mut io) = if client_first {
            crate::io::detect_more(buf, io, self.cfg.detect_timeout).await?
        } else {
            (Detected::TimedOut, PrefixedIo::new(buf, io))
        };
        if matches!(
            detected,
            Detected::Found(Protocol::Http1 | Protocol::Http2) | Detected::Partial
        ) {
            tracing::debug!(%app, "inbound: HTTP after the detection timeout");
            return Ok(Some((detected, io)));
        }
        let _hold = drain.clone();
        tokio::io::copy_bidirectional(&mut io, &mut far).await?;
        Ok(None)
    }
}

/// Relays bytes both ways between `io` and a new connection to `to`.
async fn relay<I>(
    mut io: I,
    to: SocketAddr,
    connect_timeout: std::time::Duration,
) -> std::io::Result<()>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let mut app = connect_app(to, connect_timeout).await?;
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
