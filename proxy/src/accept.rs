//! The accept loop both stacks run: one task per connection, accept errors (out of
//! descriptors and the like) backed off instead of spun on.

use std::{future::Future, time::Duration};

use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};

use crate::{
    drain::Watch,
    metrics::{Direction, DirectionLabels, Metrics},
};

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
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = drain.signaled() => return,
        };
        let (tcp, peer) = match accepted {
            Ok(c) => c,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let labels = DirectionLabels { direction: stack };
        metrics.tcp_open.get_or_create(&labels).inc();
        let fut = conn(tcp, drain.clone());
        let metrics = metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = fut.await {
                tracing::debug!(%peer, ?stack, error = %e, "connection");
            }
            metrics.tcp_close.get_or_create(&labels).inc();
        });
    }
}
