//! HTTP/2 client sessions by key, made once and shared: every request for a key awaits the
//! same handshake and gets its outcome (a failed handshake fails them all at once, instead of
//! each trying again in turn), and the map is held only for its reads and writes, never across
//! a handshake, so a slow peer never holds up the others. The mesh pool (`outbound/
//! endpoint.rs`) keys by endpoint and identity; HTTP/2 to an app or an endpoint outside the
//! mesh keys by address.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::{Arc, Mutex},
};

use futures::future::{BoxFuture, FutureExt, Shared};
use hyper::client::conn::http2::SendRequest;

use crate::http::Body;

/// A session and when it stops taking requests (its peer's certificate expiry), if ever.
type Made = (SendRequest<Body>, Option<tokio::time::Instant>);
type Session<E> = Shared<BoxFuture<'static, Result<Made, Arc<E>>>>;

pub struct Sessions<K, E> {
    map: Mutex<HashMap<K, Session<E>>>,
}

impl<K: Hash + Eq + Clone, E> Default for Sessions<K, E> {
    fn default() -> Self {
        Sessions {
            map: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq + Clone, E: Send + Sync + 'static> Sessions<K, E> {
    /// The open session for `key`, or the one being made, or a new one from `connect`.
    pub async fn get<F>(&self, key: K, connect: F) -> Result<SendRequest<Body>, Arc<E>>
    where
        F: FnOnce() -> BoxFuture<'static, Result<SendRequest<Body>, E>>,
    {
        self.get_until(key, || connect().map(|r| r.map(|s| (s, None))).boxed())
            .await
    }

    /// As [`Sessions::get`], for sessions that end: `connect` also says when its session
    /// stops taking requests. A later request then gets a new session, and the old one
    /// closes once its streams in flight are done (a client's GOAWAY, in effect).
    pub async fn get_until<F>(&self, key: K, connect: F) -> Result<SendRequest<Body>, Arc<E>>
    where
        F: FnOnce() -> BoxFuture<'static, Result<Made, E>>,
    {
        let session = {
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            match map.get(&key).map(|s| (s.clone(), s.peek().cloned())) {
                Some((_, Some(Ok((s, until)))))
                    if !s.is_closed() && until.is_none_or(|u| tokio::time::Instant::now() < u) =>
                {
                    return Ok(s)
                }
                Some((pending, None)) => pending,
                _ => {
                    let s = connect().map(|r| r.map_err(Arc::new)).boxed().shared();
                    map.insert(key.clone(), s.clone());
                    s
                }
            }
        };
        let r = session.clone().await.map(|(s, _)| s);
        if r.is_err() {
            // The next request tries afresh.
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            if map.get(&key).is_some_and(|s| s.ptr_eq(&session)) {
                map.remove(&key);
            }
        }
        r
    }

    /// Lets go of `key`'s session: it closes once its requests in flight are done (hyper
    /// closes an HTTP/2 client connection whose every handle is gone when its last stream
    /// ends).
    pub fn forget(&self, key: &K) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

/// A plaintext prior-knowledge HTTP/2 session to `addr` (an app on localhost, or an endpoint
/// outside the mesh), its connection driven by a task of its own.
pub async fn plaintext_h2(
    addr: std::net::SocketAddr,
    connect_timeout: std::time::Duration,
) -> Result<SendRequest<Body>, String> {
    let tcp = tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| format!("connecting to {addr}: timed out"))?
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    plaintext_h2_over(tcp, addr).await
}

/// [`plaintext_h2`] over a connection already made to `addr` (the inbound stack's to its app,
/// from its own source address).
pub async fn plaintext_h2_over(
    tcp: tokio::net::TcpStream,
    addr: std::net::SocketAddr,
) -> Result<SendRequest<Body>, String> {
    let (send, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .keep_alive_interval(std::time::Duration::from_secs(10))
            .keep_alive_timeout(std::time::Duration::from_secs(3))
            .initial_stream_window_size(crate::accept::STREAM_WINDOW)
            .initial_connection_window_size(crate::accept::CONNECTION_WINDOW)
            .handshake(hyper_util::rt::TokioIo::new(
                Box::new(tcp) as crate::io::BoxedIo
            ))
            .await
            .map_err(|e| format!("HTTP/2 with {addr}: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(%addr, error = %e, "HTTP/2 session ended");
        }
    });
    Ok(send)
}
