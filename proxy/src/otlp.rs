//! Spans to an OpenTelemetry collector (OTLP/HTTP with the JSON encoding,
//! https://opentelemetry.io/docs/specs/otlp/#otlphttp), when `--trace-collector` names one, as
//! Linkerd's proxy exports to its `config.linkerd.io/trace-collector`. Only requests that
//! arrive with a sampled W3C `traceparent` get a span (starting traces is the app's or the
//! ingress's decision, `trace.rs`); the proxy's span becomes the parent the next hop sees.
//!
//! Spans wait in a bounded queue and leave in batches (at most `BATCH` spans, at least every
//! `FLUSH`); a full queue drops new spans and a failed export drops its batch, both counted:
//! tracing never slows or fails a request. Plain HTTP only (a node-local or in-cluster
//! collector). A span ends when the response headers are back (a long response body or
//! stream is not in it); it carries the path without its query (where secrets usually are);
//! spans still queued when the proxy exits are lost; a collector's `partialSuccess`
//! rejections inside a 2xx answer are not read.

use crate::metrics::{cut, MAX_TAP_FIELD};
use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use http_body_util::BodyExt;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;

use crate::{
    metrics::Direction,
    trace::{hex, TraceParent},
};

/// Spans held at most, waiting for export.
pub const QUEUE: usize = 2048;
/// Spans per export request at most.
pub const BATCH: usize = 256;
/// A span waits at most this long for its batch to fill.
pub const FLUSH: Duration = Duration::from_secs(2);
const TIMEOUT: Duration = Duration::from_secs(5);

/// One request through the proxy, as a span.
#[derive(Clone, Debug)]
pub struct Span {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_id: [u8; 8],
    pub direction: Direction,
    pub method: String,
    pub path: String,
    pub route: Option<Arc<str>>,
    pub authority: String,
    pub status: Option<u16>,
    /// The other side's SPIFFE ID (empty: not meshed).
    pub peer: String,
    /// The request's `tracestate`, carried into the span as it came.
    pub trace_state: String,
    pub start: SystemTime,
    pub end: SystemTime,
}

/// Counts of what happened to spans (registered by `Metrics`).
#[derive(Clone, Debug, Default)]
pub struct Counts {
    pub exported: Counter,
    pub dropped: Counter,
    pub failed_exports: Counter,
}

/// The handle requests record spans through; cheap to clone.
#[derive(Clone, Debug)]
pub struct Exporter {
    tx: mpsc::Sender<Span>,
    counts: Counts,
}

/// What a request that is traced carries: the context it came with and the proxy's own span.
#[derive(Clone, Debug)]
pub struct Traced {
    pub incoming: TraceParent,
    pub own: TraceParent,
    pub state: String,
    pub start: SystemTime,
}

impl Exporter {
    /// An exporter to the collector at `addr` (`host:port`), its task spawned; `resource`:
    /// the attributes naming this proxy.
    pub fn spawn(addr: &str, resource: Vec<(String, String)>, counts: Counts) -> Exporter {
        let (tx, rx) = mpsc::channel(QUEUE);
        let url = format!("http://{addr}/v1/traces");
        tokio::spawn(export(rx, url, resource, counts.clone()));
        Exporter { tx, counts }
    }

    /// Whether a request with `headers` is traced: a sampled `traceparent`. If so, the header
    /// is replaced by the proxy's own span, the parent the next hop sees.
    pub fn start(&self, headers: &mut http::HeaderMap) -> Option<Traced> {
        let incoming = headers
            .get(crate::trace::TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(TraceParent::parse)
            .filter(|t| t.flags & 1 == 1)?;
        let own = incoming.child();
        let v = http::HeaderValue::from_str(&own.to_header()).ok()?;
        headers.insert(crate::trace::TRACEPARENT, v);
        // Passed on untouched (the proxy adds no entry of its own), and kept in the span.
        let state = trace_state(headers);
        Some(Traced {
            incoming,
            own,
            state,
            start: SystemTime::now(),
        })
    }

    /// The span of a traced request, answered as `o` says.
    pub fn finish(&self, t: Traced, o: &crate::metrics::Observed<'_>) {
        self.record(Span {
            trace_id: t.own.trace_id,
            span_id: t.own.parent_id,
            parent_id: t.incoming.parent_id,
            direction: o.direction,
            method: cut(o.method, MAX_TAP_FIELD).to_string(),
            path: cut(o.path, MAX_TAP_FIELD).to_string(),
            route: o.route.cloned(),
            authority: cut(o.authority, MAX_TAP_FIELD).to_string(),
            status: o.status.map(|s| s.as_u16()),
            peer: o.peer.to_string(),
            trace_state: t.state,
            start: t.start,
            end: SystemTime::now(),
        });
    }

    /// Queues a finished span; dropped (and counted) when the queue is full.
    pub fn record(&self, span: Span) {
        if self.tx.try_send(span).is_err() {
            self.counts.dropped.inc();
        }
    }
}

/// The request's `tracestate` for its span: its headers joined (W3C Trace Context §3.3.1: a
/// list may come in several), at most 512 characters of whole entries — the spec's own
/// bound, to which it allows a vendor to cut the list, entries over 128 characters first,
/// then from the end. The header itself goes on as it came.
fn trace_state(headers: &http::HeaderMap) -> String {
    const MAX: usize = 512;
    let entries: Vec<&str> = headers
        .get_all("tracestate")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty())
        // The spec allows at most 32 list members.
        .take(32)
        .collect();
    let mut out = String::new();
    for e in entries.iter().filter(|e| e.len() <= 128) {
        if out.len() + usize::from(!out.is_empty()) + e.len() > MAX {
            break;
        }
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(e);
    }
    out
}

async fn export(
    mut rx: mpsc::Receiver<Span>,
    url: String,
    resource: Vec<(String, String)>,
    counts: Counts,
) {
    // The outbound stack's client type (`Outbound::plain`): one copy of hyper's client code
    // in the binary, not a second one for another body type (its pages are the proxy's RSS).
    let client: Client<HttpConnector, crate::http::Body> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        // The first span of a batch waits as long as it takes; the rest at most `FLUSH`.
        let Some(first) = rx.recv().await else {
            return;
        };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + FLUSH;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(s)) => batch.push(s),
                Ok(None) | Err(_) => break,
            }
        }
        let n = batch.len() as u64;
        let body = encode(&batch, &resource);
        batch.clear();
        let req = http::Request::post(&url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(crate::http::full(body));
        let Ok(req) = req else {
            counts.failed_exports.inc();
            counts.dropped.inc_by(n);
            continue;
        };
        let sent = tokio::time::timeout(TIMEOUT, async {
            let resp = client.request(req).await.map_err(|e| e.to_string())?;
            let status = resp.status();
            // The answer is read whole so the connection can be used again.
            let _ = resp.into_body().collect().await;
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("the collector answered {status}"))
            }
        })
        .await
        .unwrap_or_else(|_| Err("timed out".into()));
        match sent {
            Ok(()) => {
                counts.exported.inc_by(n);
            }
            Err(e) => {
                tracing::debug!(error = %e, spans = n, "trace export failed; spans dropped");
                counts.failed_exports.inc();
                counts.dropped.inc_by(n);
            }
        }
    }
}

fn nanos(t: SystemTime) -> String {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
        .to_string()
}

fn attr(key: &str, value: serde_json::Value) -> serde_json::Value {
    serde_json::json!({"key": key, "value": value})
}

/// An `ExportTraceServiceRequest` in OTLP's JSON mapping: ids as hex, 64-bit integers as
/// strings, enums as numbers, camelCase names.
pub fn encode(spans: &[Span], resource: &[(String, String)]) -> Vec<u8> {
    let spans: Vec<serde_json::Value> = spans
        .iter()
        .map(|s| {
            let mut attrs = vec![
                attr(
                    "http.request.method",
                    serde_json::json!({"stringValue": s.method}),
                ),
                attr("url.path", serde_json::json!({"stringValue": s.path})),
                attr(
                    "meshwork.direction",
                    serde_json::json!({"stringValue": s.direction.as_str()}),
                ),
            ];
            // The authority the request named: `server.address` and `server.port`.
            match s.authority.rsplit_once(':') {
                Some((host, port)) if port.parse::<u16>().is_ok() => {
                    let host = host.trim_start_matches('[').trim_end_matches(']');
                    attrs.push(attr(
                        "server.address",
                        serde_json::json!({"stringValue": host}),
                    ));
                    attrs.push(attr("server.port", serde_json::json!({"intValue": port})));
                }
                _ if !s.authority.is_empty() => {
                    attrs.push(attr(
                        "server.address",
                        serde_json::json!({"stringValue": s.authority}),
                    ));
                }
                _ => {}
            }
            if let Some(r) = &s.route {
                attrs.push(attr("http.route", serde_json::json!({"stringValue": &**r})));
            }
            if let Some(code) = s.status {
                attrs.push(attr(
                    "http.response.status_code",
                    serde_json::json!({"intValue": code.to_string()}),
                ));
            }
            if !s.peer.is_empty() {
                attrs.push(attr(
                    "meshwork.peer.identity",
                    serde_json::json!({"stringValue": s.peer}),
                ));
            }
            let name = match &s.route {
                Some(r) => r.to_string(),
                None => s.method.clone(),
            };
            // SPAN_KIND_SERVER (2) for what the proxy receives, CLIENT (3) for what it sends;
            // STATUS_CODE_ERROR (2) as the HTTP conventions say — no answer, a 5xx, and on
            // the client side a 4xx too — else UNSET (0).
            let (kind, error_from) = match s.direction {
                Direction::Inbound => (2, 500),
                Direction::Outbound => (3, 400),
            };
            let error = s.status.is_none_or(|c| c >= error_from);
            serde_json::json!({
                "traceId": hex(&s.trace_id),
                "spanId": hex(&s.span_id),
                "parentSpanId": hex(&s.parent_id),
                "traceState": s.trace_state,
                "name": name,
                "kind": kind,
                "startTimeUnixNano": nanos(s.start),
                "endTimeUnixNano": nanos(s.end),
                "attributes": attrs,
                "status": {"code": if error { 2 } else { 0 }},
            })
        })
        .collect();
    let resource: Vec<serde_json::Value> = resource
        .iter()
        .map(|(k, v)| attr(k, serde_json::json!({"stringValue": v})))
        .collect();
    serde_json::json!({
        "resourceSpans": [{
            "resource": {"attributes": resource},
            "scopeSpans": [{
                "scope": {"name": "meshwork-proxy", "version": env!("CARGO_PKG_VERSION")},
                "spans": spans,
            }],
        }],
    })
    .to_string()
    .into_bytes()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]
    use super::*;

    /// Several headers are one list; a span keeps at most 512 characters of whole entries,
    /// leaving out those over 128 first, whatever size the client sent.
    #[test]
    fn a_spans_tracestate_is_joined_and_bounded() {
        let mut h = http::HeaderMap::new();
        h.append("tracestate", "a=1, b=2".parse().unwrap());
        h.append("tracestate", "c=3".parse().unwrap());
        assert_eq!(trace_state(&h), "a=1,b=2,c=3");
        let long = format!("big={}", "x".repeat(200));
        let entries: Vec<String> = (0..40)
            .map(|i| format!("k{i:02}={}", "v".repeat(40)))
            .collect();
        let mut h = http::HeaderMap::new();
        h.append("tracestate", long.parse().unwrap());
        h.append("tracestate", entries.join(",").parse().unwrap());
        let kept = trace_state(&h);
        assert!(kept.len() <= 512, "{}", kept.len());
        assert!(!kept.contains("big="));
        assert!(
            kept.starts_with("k00=") && kept.split(',').all(|e| e.len() == 44),
            "{kept}"
        );
        assert_eq!(kept.split(',').count(), 512 / 45);
    }
}
