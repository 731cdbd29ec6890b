//! The accept loop both stacks run: one task per connection, accept errors (out of
//! descriptors and the like) backed off instead of spun on.

use std::{future::Future, time::Duration};

use tokio::net::{TcpListener, TcpStream};

/// Accepts on `listener` until the task is dropped; `conn` serves each connection, and its
/// error is logged under `stack`.
pub async fn serve<F, Fut>(listener: TcpListener, stack: &'static str, conn: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: Future<Output = std::io::Result<()>> + Send + 'static,
{
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let fut = conn(tcp);
        tokio::spawn(async move {
            if let Err(e) = fut.await {
                tracing::debug!(%peer, stack, error = %e, "connection");
            }
        });
    }
}
