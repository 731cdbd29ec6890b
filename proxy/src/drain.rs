//! Graceful drain (SIGTERM or `POST /shutdown`, Linkerd's lifecycle): listeners stop
//! accepting, HTTP connections finish the requests in flight and then close, and the drain
//! completes when every connection is done or the grace period runs out.

use std::time::Duration;

use tokio::sync::watch;

/// Held by the accept loops and every connection: told when to drain.
#[derive(Clone, Debug)]
pub struct Watch(watch::Receiver<bool>);

/// Held by whoever decides to drain.
#[derive(Debug)]
pub struct Signal(watch::Sender<bool>);

pub fn channel() -> (Signal, Watch) {
    let (tx, rx) = watch::channel(false);
    (Signal(tx), Watch(rx))
}

impl Watch {
    /// A watch that never signals (nothing can drain what holds it).
    pub fn never() -> Self {
        channel().1
    }

    /// Resolves once the drain has begun (or its signal was dropped: nobody can drain then,
    /// so this never resolves).
    pub async fn signaled(&mut self) {
        if self.0.wait_for(|d| *d).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// A watch that signals when this one does or at `deadline`, whichever is first (one
    /// connection's own end: a mesh session at its peer's certificate expiry). This one is
    /// held until every holder of the new one has let go, so the drain still waits for them.
    pub fn or_at(mut self, deadline: tokio::time::Instant) -> Watch {
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            tokio::select! {
                () = self.signaled() => {}
                () = tokio::time::sleep_until(deadline) => {}
                () = tx.closed() => return,
            }
            let _ = tx.send(true);
            tx.closed().await;
            drop(self);
        });
        Watch(rx)
    }
}

impl Signal {
    /// Begins the drain and waits until every holder of a [`Watch`] has let go, or `grace`
    /// passes; whether everything finished.
    pub async fn drain(self, grace: Duration) -> bool {
        let _ = self.0.send(true);
        tokio::time::timeout(grace, self.0.closed()).await.is_ok()
    }
}
