//! Watch: newline-delimited JSON events over a streamed body.
//!
//! The rules kube-rs and kubectl depend on: a too-old resourceVersion is an in-stream ERROR 410
//! (HTTP 200) followed by the end of the stream; resourceVersion "0"/unset starts with synthetic
//! ADDED events for the current state; objects moving in or out of a selector produce
//! ADDED/DELETED; bookmarks carry apiVersion and kind; timeoutSeconds ends the stream cleanly.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use futures::StreamExt;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use meshwork_orchestrator_store::{Event, Revision, Store, StoreError, WatchStream};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::{
    error::{status_json, ApiError},
    kind::KindOps,
    object::with_rv,
    table::{self, Include, Render},
    verbs::{Ctx, Filter},
    Api, Body,
};

/// Events buffered towards a slow client before the producer waits.
const BUFFER: usize = 256;

/// How one watch renders and filters its events.
struct Shape {
    kind: &'static dyn KindOps,
    filter: Filter,
    render: Render,
    include: Include,
}

impl Shape {
    fn event(&self, ty: &str, bytes: &[u8], rev: Revision) -> Result<Vec<u8>, ApiError> {
        let mut line = format!("{{\"type\":\"{ty}\",\"object\":").into_bytes();
        match self.render {
            Render::Object => line.extend_from_slice(&with_rv(bytes, rev)),
            Render::Table => {
                let t = table::table(self.kind, &[(bytes, rev)], None, self.include)?;
                line.extend_from_slice(&serde_json::to_vec(&t).unwrap_or_default());
            }
            Render::Metadata => {
                let m = table::partial_metadata(self.kind, bytes, rev)?;
                line.extend_from_slice(&serde_json::to_vec(&m).unwrap_or_default());
            }
        }
        line.extend_from_slice(b"}\n");
        Ok(line)
    }

    fn bookmark(&self, rev: Revision, initial_end: bool) -> Vec<u8> {
        let info = self.kind.info();
        let mut meta = json!({"resourceVersion": rev.to_string()});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let obj = json!({"kind": info.kind, "apiVersion": info.api_version(), "metadata": meta});
        line("BOOKMARK", &obj)
    }

    /// The event (if any) one store change produces for this watch.
    fn translate(&self, ev: &Event) -> Result<Option<Vec<u8>>, ApiError> {
        match ev {
            Event::Put { object, prev } => {
                let now = self.filter.matches(self.kind, &object.value)?;
                let before = match prev {
                    Some(p) => Some(self.filter.matches(self.kind, p)?),
                    None => None,
                };
                let ty = match (before, now) {
                    (None | Some(false), true) => "ADDED",
                    (Some(true), true) => "MODIFIED",
                    (Some(true), false) => "DELETED",
                    (_, false) => return Ok(None),
                };
                self.event(ty, &object.value, object.mod_revision).map(Some)
            }
            Event::Delete { object, revision } => {
                if self.filter.matches(self.kind, &object.value)? {
                    self.event("DELETED", &object.value, *revision).map(Some)
                } else {
                    Ok(None)
                }
            }
        }
    }
}

fn line(ty: &str, obj: &Value) -> Vec<u8> {
    let mut l = serde_json::to_vec(&json!({"type": ty, "object": obj})).unwrap_or_default();
    l.push(b'\n');
    l
}

fn error_line(e: &ApiError) -> Vec<u8> {
    line("ERROR", &status_json(&e.status()))
}

/// Where the watch starts.
enum Start {
    /// Synthetic ADDED for the current state first (`initial_end`: then the
    /// `k8s.io/initial-events-end` bookmark of a streaming list).
    Current {
        initial_end: bool,
    },
    After(Revision),
}

impl Api {
    pub(crate) async fn watch(self: Arc<Self>, ctx: Ctx) -> Result<Response<Body>, ApiError> {
        let t = &ctx.target;
        let q = &ctx.query;
        let filter = Filter::new(t.kind, q, t.name.as_deref())?;
        let render = Render::from_accept(ctx.accept.as_deref())?;
        let include = Include::parse(q.get("includeObject"))?;
        let send_initial = q.flag("sendInitialEvents");
        let start = match q.get("resourceVersion") {
            _ if send_initial => Start::Current { initial_end: true },
            None | Some("") | Some("0") => Start::Current { initial_end: false },
            Some(rv) => Start::After(rv.parse().map_err(|_| {
                ApiError::BadRequest(format!("resourceVersion: Invalid value: \"{rv}\": must be a resourceVersion this server issued"))
            })?),
        };
        let timeout = match q.get("timeoutSeconds") {
            Some(s) => Duration::from_secs(s.parse().map_err(|_| {
                ApiError::BadRequest(format!("timeoutSeconds: Invalid value: \"{s}\""))
            })?),
            None => self.cfg.max_watch,
        }
        .min(self.cfg.max_watch);
        let bookmarks = q.flag("allowWatchBookmarks");
        let prefix = t.kind.info().prefix(t.ns.as_deref());
        let shape = Shape {
            kind: t.kind,
            filter,
            render,
            include,
        };

        let (tx, rx) = mpsc::channel::<Bytes>(BUFFER);
        let api = self.clone();
        tokio::spawn(async move {
            let deadline = tokio::time::sleep(timeout);
            tokio::pin!(deadline);
            tokio::select! {
                _ = api.run_watch(&shape, &prefix, start, bookmarks, &tx) => {}
                _ = &mut deadline => {}
                _ = tx.closed() => {}
            }
        });
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, std::convert::Infallible>(Frame::data(b)), rx))
        });
        let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
        *r.status_mut() = StatusCode::OK;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        Ok(r)
    }

    async fn run_watch(
        &self,
        shape: &Shape,
        prefix: &str,
        start: Start,
        bookmarks: bool,
        tx: &mpsc::Sender<Bytes>,
    ) {
        let send = |b: Vec<u8>| tx.send(Bytes::from(b));
        let mut last = match start {
            Start::After(rev) => rev,
            Start::Current { initial_end } => {
                let (items, rev) = match self.store.list(prefix).await {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = send(error_line(&ApiError::from_store(e, "", ""))).await;
                        return;
                    }
                };
                for s in &items {
                    match shape.filter.matches(shape.kind, &s.value) {
                        Ok(true) => {
                            let Ok(l) = shape.event("ADDED", &s.value, s.mod_revision) else {
                                return;
                            };
                            if send(l).await.is_err() {
                                return;
                            }
                        }
                        Ok(false) => {}
                        Err(_) => return,
                    }
                }
                if initial_end && send(shape.bookmark(rev, true)).await.is_err() {
                    return;
                }
                rev
            }
        };
        let mut events: WatchStream = match self.store.watch(prefix, last).await {
            Ok(w) => w,
            Err(e) => {
                let _ = send(error_line(&ApiError::from_store(e, "", ""))).await;
                return;
            }
        };
        let every = self.cfg.bookmark_every;
        // Bookmarks are due after `every` without an event *sent*: a selective watch whose
        // events are all filtered out still learns how far the stream has got.
        let mut due = tokio::time::Instant::now() + every;
        loop {
            let next = if bookmarks {
                match tokio::time::timeout_at(due, events.next()).await {
                    Ok(n) => n,
                    Err(_) => {
                        if send(shape.bookmark(last, false)).await.is_err() {
                            return;
                        }
                        due = tokio::time::Instant::now() + every;
                        continue;
                    }
                }
            } else {
                events.next().await
            };
            let ev = match next {
                None => return,
                Some(Ok(ev)) => ev,
                Some(Err(e @ StoreError::Expired { .. })) | Some(Err(e)) => {
                    let _ = send(error_line(&ApiError::from_store(e, "", ""))).await;
                    return;
                }
            };
            last = ev.revision();
            if let Event::Delete { object, revision } = &ev {
                // etcd compacted the previous value away: the client cannot be told what was
                // deleted, so it must relist (the same answer kube-apiserver gives).
                if object.value.is_empty() {
                    let e = ApiError::Expired {
                        requested: *revision,
                        oldest: *revision,
                    };
                    let _ = send(error_line(&e)).await;
                    return;
                }
            }
            match shape.translate(&ev) {
                Ok(Some(l)) => {
                    if send(l).await.is_err() {
                        return;
                    }
                    due = tokio::time::Instant::now() + every;
                }
                Ok(None) => {}
                Err(e) => {
                    let _ = send(error_line(&e)).await;
                    return;
                }
            }
        }
    }
}
