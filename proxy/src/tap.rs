//! The live request stream on the admin port (`GET /tap`, JSON lines; `linkerd viz tap`'s
//! role, for `mesh-ctl tap`): one line per answered request, its direction, authority, method,
//! path, status, latency, peer identity and trace id. No header values or bodies, but paths can
//! carry secrets, so only loopback callers get it (the pod's own containers, or `kubectl
//! port-forward`); Linkerd serves tap over mTLS to its tap API instead. Lines go to a bounded
//! broadcast; a slow reader misses lines (counted in the stream as `{"lagged": n}`) rather
//! than slowing requests, and nothing is built while no one listens.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Frame;
use tokio::sync::{broadcast, mpsc};

/// Readers at once.
pub const MAX_TAPS: usize = 8;

#[derive(Clone, Debug)]
pub struct Event {
    pub line: String,
    pub direction: &'static str,
    pub authority: String,
}

/// Which lines a reader wants (`?direction=inbound&authority=web`).
#[derive(Debug, Default)]
pub struct Filter {
    direction: Option<String>,
    authority: Option<String>,
}

impl Filter {
    pub fn from_query(q: Option<&str>) -> Filter {
        let mut f = Filter::default();
        for kv in q.unwrap_or("").split('&') {
            match kv.split_once('=') {
                Some(("direction", v)) => f.direction = Some(v.to_ascii_lowercase()),
                Some(("authority", v)) => f.authority = Some(v.to_ascii_lowercase()),
                _ => {}
            }
        }
        f
    }

    fn wants(&self, e: &Event) -> bool {
        self.direction.as_deref().is_none_or(|d| d == e.direction)
            && self
                .authority
                .as_deref()
                .is_none_or(|a| e.authority.contains(a))
    }
}

/// A response body that streams what `rx` sends, one line per frame.
pub struct Lines(mpsc::Receiver<Bytes>);

impl hyper::body::Body for Lines {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

/// The body for one reader of `events`, filtered; it ends when the reader goes away.
pub fn stream(mut events: broadcast::Receiver<Event>, filter: Filter) -> crate::http::Body {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            // A reader that went away is noticed even while no line matches its filter.
            let ev = tokio::select! {
                e = events.recv() => e,
                _ = tx.closed() => return,
            };
            let line = match ev {
                Ok(e) if filter.wants(&e) => e.line,
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(n)) => format!("{{\"lagged\":{n}}}"),
                Err(broadcast::error::RecvError::Closed) => return,
            };
            if tx.send(Bytes::from(line + "\n")).await.is_err() {
                return;
            }
        }
    });
    Lines(rx).boxed()
}
