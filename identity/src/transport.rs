//! gRPC over TLS for the mesh's own control connections, written once for both ends of both:
//! the identity service's listener and its clients' channels (client.rs), and the control
//! agent's discovery listener and the proxies' channels to it (ARCHITECTURE.md, "Discovery
//! over mTLS"). Names are never checked: each side's rustls verifier checks the peer's SPIFFE
//! ID (verify.rs), so the SNI sent is only a label.

use std::{future::Future, sync::Arc, time::Duration};

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};

/// A handshake that takes longer is dropped (a slow or silent client holds up no one else:
/// each runs in its own task).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes under way at once; a connection past them is closed at once (and counted), so
/// connections opened and left silent cost a listener at most this many tasks and sockets.
pub const MAX_HANDSHAKES: usize = 256;

/// The TLS connections `listener` accepts under `tls` (ALPN set to h2 here), for tonic's
/// `serve_with_incoming`. Handshakes run apart from the accept loop; a failed one is logged at
/// debug and counted by `failed` with its reason.
pub fn incoming(
    listener: TcpListener,
    mut tls: rustls::ServerConfig,
    failed: impl Fn(&std::io::Error) + Send + Sync + 'static,
) -> impl futures::Stream<Item = std::io::Result<tokio_rustls::server::TlsStream<TcpStream>>> {
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let failed = Arc::new(failed);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    let (tx, mut rx) = tokio::sync::mpsc::channel(128);
    let accept = tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::debug!(%peer, "{MAX_HANDSHAKES} TLS handshakes under way; closed");
                failed(&std::io::Error::other("too many handshakes under way"));
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx, failed) = (acceptor.clone(), tx.clone(), failed.clone());
            tokio::spawn(async move {
                let _slot = slot;
                let e = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => {
                        let _ = tx.send(Ok(s)).await;
                        return;
                    }
                    Ok(Err(e)) => e,
                    Err(_) => std::io::Error::new(std::io::ErrorKind::TimedOut, "handshake"),
                };
                tracing::debug!(%peer, error = %e, "TLS handshake");
                failed(&e);
            });
        }
    });
    // The accept loop ends with the stream (tonic drops it when the server stops).
    let guard = AbortOnDrop(accept);
    futures::stream::poll_fn(move |cx| {
        let _ = &guard;
        rx.poll_recv(cx)
    })
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What [`connector`] connects: TLS, or plain TCP when it was given no TLS config.
pub type Conn = tokio_util::either::Either<tokio_rustls::client::TlsStream<TcpStream>, TcpStream>;

/// A connector for tonic's `Endpoint::connect_with_connector[_lazy]`: TCP to the URI's own
/// `host:port` (connect bounded by `connect_timeout`), then TLS under `tls` with ALPN h2 and
/// `sni` as the name sent — or, without `tls`, plain TCP (a test's own server). One type for
/// every caller, so the binaries carry one copy of tonic's channel code, not one per
/// connector.
pub fn connector(
    tls: Option<rustls::ClientConfig>,
    sni: &'static str,
    connect_timeout: Duration,
) -> impl tower::Service<
    http::Uri,
    Response = TokioIo<Conn>,
    Error = std::io::Error,
    Future = impl Future<Output = std::io::Result<TokioIo<Conn>>> + Send,
> + Clone
       + Send {
    let tls = tls.map(|mut tls| {
        tls.alpn_protocols = vec![b"h2".to_vec()];
        tokio_rustls::TlsConnector::from(Arc::new(tls))
    });
    tower::service_fn(move |uri: http::Uri| {
        let tls = tls.clone();
        async move {
            let addr = uri
                .authority()
                .map(|a| a.as_str().to_string())
                .ok_or_else(|| std::io::Error::other(format!("{uri}: no host:port")))?;
            let tcp = tokio::time::timeout(connect_timeout, TcpStream::connect(&addr))
                .await
                .map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("connecting to {addr}"),
                    )
                })??;
            let _ = tcp.set_nodelay(true);
            let Some(tls) = tls else {
                return Ok(TokioIo::new(tokio_util::either::Either::Right(tcp)));
            };
            let name = ServerName::try_from(sni).map_err(std::io::Error::other)?;
            let s = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.connect(name, tcp))
                .await
                .map_err(|_| {
                    std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("TLS handshake with {addr}"),
                    )
                })??;
            Ok(TokioIo::new(tokio_util::either::Either::Left(s)))
        }
    })
}
