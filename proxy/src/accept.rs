//! The accept loop both stacks run: one task per connection, accept errors (out of
//! descriptors and the like) backed off instead of spun on; the HTTP servers' settings
//! against slow and malformed clients, and how their errors are counted.

use std::{future::Future, time::Duration};

use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};

use crate::{
    drain::Watch,
    metrics::{Direction, DirectionLabels, Metrics},
};

/// How long a client may take to send a request's headers, hyper's default: a slowloris
/// client holds a connection for at most this. hyper starts the clock when it starts reading
/// a request, so it is also how long a kept-alive HTTP/1 connection may sit idle (nginx
/// allows 75 s).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// The HTTP/1 server both stacks run: a header-read timeout, hyper's limits on header size
/// (answered with 431) and malformed messages (400).
pub fn h1(header_read_timeout: Duration) -> hyper::server::conn::http1::Builder {
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    b
}

/// Flow-control windows of every HTTP/2 connection the proxy makes or serves: a stream may
/// have 256 KiB unread, a connection 4 MiB. What a stream holds unread (its app stopped reading
/// an upload or a tunnel) counts against its session's window too; a stream window as large
/// as the connection's lets such streams stall every other one on the session
/// (`tests/sessions.rs` stalls with both at 256 KiB or 1 MiB). The ratio is Linkerd's (64 KiB
/// and 1 MiB, `linkerd/app/src/env.rs`; ztunnel's is 1:4 at 4 and 16 MB), the sizes four times
/// its: at Linkerd's a single stream has at most 64 KiB in flight, which held one bulk download
/// to 0.72x an nginx pair's MiB/s in the lab, against 1.03x and 1.29x in two runs at these, for
/// a third less CPU per MiB (BENCHMARKS.md, "The proxy pair", bulk download). The price is
/// what a peer may leave buffered in a proxy: 4 MiB per session instead of 1.
pub const STREAM_WINDOW: u32 = 256 * 1024;
pub const CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;

/// Streams open at once on one HTTP/2 connection the proxy serves. hyper's default (200)
/// would make the 201st tunnel or request from a peer pod wait behind long-lived ones (a
/// database pool's connections are each a CONNECT stream on the one session); h2 bounds what
/// a peer resets or leaves unaccepted separately (its rapid-reset limits).
pub const MAX_CONCURRENT_STREAMS: u32 = 10_000;

/// The same for a plaintext HTTP/2 client from outside the mesh (permissive policy):
/// hyper's default.
pub const PLAINTEXT_MAX_CONCURRENT_STREAMS: u32 = 200;

/// The HTTP/2 server both stacks run: keep-alive pings find dead peers (Linkerd's 10 s).
pub fn h2() -> hyper::server::conn::http2::Builder<hyper_util::rt::TokioExecutor> {
    let mut b = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
    b.timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(3))
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS);
    b
}

/// Counts an HTTP connection that ended in error by what the client did wrong (nothing, when
/// it just went away), and logs it under `stack`.
pub fn http_error(metrics: &Metrics, stack: Direction, e: &hyper::Error) {
    let reason = if e.is_parse_too_large() {
        Some("headers_too_large")
    } else if e.is_parse() || e.is_parse_status() {
        Some("malformed_http")
    } else if e.is_timeout() {
        Some("header_timeout")
    } else {
        let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
        let mut found = None;
        while let Some(err) = src {
            if let Some(h2) = err.downcast_ref::<h2::Error>() {
                if h2
                    .reason()
                    .is_some_and(|r| r != h2::Reason::NO_ERROR && r != h2::Reason::CANCEL)
                {
                    found = Some("http2_protocol");
                }
                break;
            }
            src = err.source();
        }
        found
    };
    if let Some(r) = reason {
        metrics.refuse(r);
    }
    tracing::debug!(?stack, error = %e, "HTTP connection");
}

/// Serves one HTTP connection until it ends; when the drain begins, it stops taking new
/// requests, finishes those in flight and closes (hyper's graceful shutdown).
pub async fn http<C>(conn: C, mut drain: Watch) -> Result<(), hyper::Error>
where
    C: Future<Output = Result<(), hyper::Error>> + GracefulConnection,
{
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => r,
        _ = drain.signaled() => {
            conn.as_mut().shutdown();
            conn.await
        }
    }
}

/// hyper's HTTP/1 and HTTP/2 server connections, which both shut down gracefully.
pub trait GracefulConnection {
    fn shutdown(self: std::pin::Pin<&mut Self>);
}

impl<I, S> GracefulConnection for hyper::server::conn::http1::Connection<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::ResBody: hyper::body::Body + 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
{
    fn shutdown(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown()
    }
}

impl<I, S> GracefulConnection for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::ResBody: hyper::body::Body + 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    fn shutdown(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown()
    }
}

impl<I, S, E> GracefulConnection for hyper::server::conn::http2::Connection<I, S, E>
where
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::ResBody: hyper::body::Body + 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, S::ResBody>,
{
    fn shutdown(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown()
    }
}

/// Accepts on `listener` until the drain begins (then the listener closes); `conn` serves each
/// connection with its own hold on the drain; opens, closes and errors are counted and logged
/// under `stack`.
pub async fn serve<F, Fut>(
    listener: TcpListener,
    stack: Direction,
    metrics: Arc<Metrics>,
    mut drain: Watch,
    conn: F,
) where
    F: Fn(TcpStream, Watch) -> Fut,
    Fut: Future<Output = std::io::Result<()>> + Send + 'static,
{
    let mut last_warned: Option<std::time::Instant> = None;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = drain.signaled() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(c) => c,
            // Out of descriptors or memory: the pending connection stays queued, so accepting
            // again at once would spin. Said, counted, and a pause.
            Err(e) if out_of_resources(&e) => {
                metrics.refuse("accept_resources");
                let now = std::time::Instant::now();
                if last_warned.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10)) {
                    last_warned = Some(now);
                    tracing::warn!(?stack, error = %e, "accept: out of resources; pausing");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            // Errors of the one connection (it was reset or aborted before it was taken,
            // accept(2)): the next is taken almost at once (a millisecond, so that an error
            // that keeps coming back cannot spin a core).
            Err(e) => {
                tracing::debug!(?stack, error = %e, "accept");
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        crate::io::keepalive(&tcp);
        let labels = DirectionLabels { direction: stack };
        metrics.tcp_open.get_or_create(&labels).inc();
        // The stacks wrap the socket in `io::Counted` first thing, which counts its close.
        let fut = conn(tcp, drain.clone());
        tokio::spawn(async move {
            if let Err(e) = fut.await {
                tracing::debug!(%peer, ?stack, error = %e, "connection");
            }
        });
    }
}

/// Whether an accept failed for want of descriptors or memory (EMFILE, ENFILE, ENOBUFS,
/// ENOMEM), not because of the connection it would have taken.
fn out_of_resources(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}
