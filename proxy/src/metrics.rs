//! The proxy's Prometheus metrics (prometheus-client), served on the admin port
//! (`admin.rs`). Names follow Linkerd's proxy metrics in spirit: requests and responses by
//! direction, authority, route, status class and peer identity, with a latency histogram; TCP opens,
//! closes and bytes; TLS handshakes by outcome; the outbound stack's retries, budget and
//! ejections; the discovery stream's state.
//!
//! Label cardinality is bounded: outbound authorities, inbound authorities (which any client
//! names), peer identities and routes (configured per Service, so many Services make many)
//! each become label values only for the first `MAX_LABEL_VALUES` distinct ones seen, each
//! kind on its own budget so that one cannot use up another's; later ones count under
//! `overflow`. Their combinations are bounded too: past `MAX_SERIES` label sets of the request
//! counter, a new one counts under `overflow` for all three. So a client sending random Host
//! headers or paths cannot grow the registry.

use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

use crate::http::Body;
use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Distinct values of each kind (outbound authority, inbound authority, peer, route) kept as
/// labels.
pub const MAX_LABEL_VALUES: usize = 1000;

/// Longest label value kept (a DNS name is at most 253 bytes, a SPIFFE ID 2,048 by its spec
/// but far shorter in practice); longer ones are `invalid`.
pub const MAX_LABEL_LEN: usize = 512;

/// Longest method, path or authority a tap line or a span carries: the 1,024 lines the tap
/// buffers and the 2,048 spans the exporter queues stay small whatever the clients send
/// (hyper takes a request head of up to about 400 KiB, an extension method that long too).
pub const MAX_TAP_FIELD: usize = 1024;

pub use meshwork_daemon::cut;

/// Label sets of the request counter: past it, new combinations count under `overflow` for
/// authority, route and peer (one series per direction and status class).
pub const MAX_SERIES: usize = 10_000;
/// Label sets of the latency by route (a histogram each: 23 lines a set): past it, new
/// combinations count under `overflow` for authority and route.
pub const MAX_ROUTE_SERIES: usize = 1_000;

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// Lower case, as label values go (`direction="inbound"`).
impl EncodeLabelValue for Direction {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub direction: Direction,
    /// Shared with the bounded set it was admitted by: a request's labels copy no strings.
    pub authority: Arc<str>,
    /// The route the request matched (`config.meshwork.io/routes`: the pod's own for inbound,
    /// the Service's for outbound); empty: none.
    pub route: Arc<str>,
    /// `1xx` .. `5xx`, `other` (600..999, valid to the http crate), or `error` when no
    /// response came.
    pub status_class: &'static str,
    /// Inbound: the client's SPIFFE ID; outbound: the server's (empty: not meshed).
    pub peer: Arc<str>,
    /// A gRPC answer's status code (`0`..`16`, `other`), from its headers or, at its end,
    /// its trailers; `none`: a gRPC answer that ended without one; `cancelled`: one whose
    /// client went away before its end; empty: not gRPC.
    pub grpc_status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    pub direction: Direction,
}

/// The latency by route: requests to an authority that has routes (empty route: none of
/// them matched, Linkerd's `[DEFAULT]`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub direction: Direction,
    pub authority: Arc<str>,
    pub route: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TlsLabels {
    pub direction: Direction,
    /// `ok`, or why it failed: `timeout`, `peer_identity`, `certificate`, `protocol`, `io`.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

pub struct Metrics {
    pub requests: Family<RequestLabels, Counter>,
    pub latency: Family<DirectionLabels, Histogram>,
    pub route_latency: Family<RouteLabels, Histogram>,
    pub tcp_open: Family<DirectionLabels, Counter>,
    pub tcp_close: Family<DirectionLabels, Counter>,
    pub bytes_read: Family<DirectionLabels, Counter>,
    pub bytes_written: Family<DirectionLabels, Counter>,
    pub tls: Family<TlsLabels, Counter>,
    /// Connections or requests the proxy refused on its own account (bad input, policy).
    pub refused: Family<ReasonLabels, Counter>,
    pub retries: Counter,
    pub budget_exhausted: Counter,
    pub ejections: Counter,
    pub discovery_updates: Counter,
    pub discovery_errors: Counter,
    /// Discovery streams open (one per authority in use).
    pub discovery_streams: Gauge,
    /// Requests waiting for an endpoint (the outbound queue, `wait_for_endpoint`).
    pub queued: Gauge,
    /// Spans exported, dropped, and exports that failed (`otlp.rs`).
    pub otlp: crate::otlp::Counts,
    /// Label sets of `requests` made so far (at most `MAX_SERIES`, plus the overflow ones).
    series: AtomicUsize,
    /// The same for `route_latency` (`MAX_ROUTE_SERIES`).
    route_series: AtomicUsize,
    /// Label values in use: outbound authorities, inbound authorities, peers, routes.
    bounded: [Mutex<HashSet<Arc<str>>>; 4],
    /// The label values every request would otherwise allocate.
    empty: Arc<str>,
    overflow: Arc<str>,
    /// What a value that cannot be written as a label counts under.
    invalid: Arc<str>,
    registry: Registry,
    /// The live request stream (`tap.rs`).
    pub tap: tokio::sync::broadcast::Sender<crate::tap::Event>,
}

/// One answered request, as the metrics and the tap see it.
#[derive(Debug)]
pub struct Observed<'a> {
    pub direction: Direction,
    pub authority: &'a str,
    /// The route the request matched, if any.
    pub route: Option<&'a Arc<str>>,
    /// Whether its authority has routes (then its latency is kept by route too).
    pub routed: bool,
    pub method: &'a str,
    pub path: &'a str,
    /// None: no response came.
    pub status: Option<http::StatusCode>,
    /// Inbound: the client's SPIFFE ID; outbound: the server's.
    pub peer: &'a str,
    pub elapsed: std::time::Duration,
    /// From the request's `traceparent` (empty: none).
    pub trace_id: &'a str,
}

fn latency_histogram() -> Histogram {
    // 50 µs .. ~26 s, factor 2.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        5e-5, 2.0, 20,
    ))
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut r = Registry::with_prefix("meshwork_proxy");
        let requests = Family::<RequestLabels, Counter>::default();
        r.register(
            "requests",
            "HTTP requests answered, by direction, authority, route, status class, peer identity \
             and gRPC status",
            requests.clone(),
        );
        let latency = Family::<DirectionLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        r.register(
            "response_latency_seconds",
            "From a request's arrival to its response headers, through the proxy",
            latency.clone(),
        );
        let route_latency = Family::<RouteLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        r.register(
            "route_response_latency_seconds",
            "Response latency of requests to authorities with routes, by direction, authority \
             and route (empty: no route matched)",
            route_latency.clone(),
        );
        let tcp_open = Family::<DirectionLabels, Counter>::default();
        r.register("tcp_open", "TCP connections accepted", tcp_open.clone());
        let tcp_close = Family::<DirectionLabels, Counter>::default();
        r.register("tcp_close", "TCP connections closed", tcp_close.clone());
        let bytes_read = Family::<DirectionLabels, Counter>::default();
        r.register(
            "tcp_read_bytes",
            "Bytes read from accepted connections",
            bytes_read.clone(),
        );
        let bytes_written = Family::<DirectionLabels, Counter>::default();
        r.register(
            "tcp_write_bytes",
            "Bytes written to accepted connections",
            bytes_written.clone(),
        );
        let tls = Family::<TlsLabels, Counter>::default();
        r.register(
            "tls_handshakes",
            "mTLS handshakes between proxies, by outcome",
            tls.clone(),
        );
        let refused = Family::<ReasonLabels, Counter>::default();
        r.register(
            "refused",
            "Connections and requests refused by the proxy itself, by reason",
            refused.clone(),
        );
        let retries = Counter::default();
        r.register("retries", "Requests retried", retries.clone());
        let budget_exhausted = Counter::default();
        r.register(
            "retry_budget_exhausted",
            "Retries the budget refused",
            budget_exhausted.clone(),
        );
        let ejections = Counter::default();
        r.register(
            "endpoint_ejections",
            "Endpoints ejected by the breaker",
            ejections.clone(),
        );
        let discovery_updates = Counter::default();
        r.register(
            "discovery_updates",
            "Endpoint sets received from the control agent",
            discovery_updates.clone(),
        );
        let discovery_errors = Counter::default();
        r.register(
            "discovery_errors",
            "Discovery streams that failed or could not open (the last set is kept)",
            discovery_errors.clone(),
        );
        let queued = Gauge::default();
        r.register(
            "outbound_queued_requests",
            "Requests waiting for an endpoint that can take them",
            queued.clone(),
        );
        let otlp = crate::otlp::Counts::default();
        r.register(
            "trace_spans_exported",
            "Spans sent to the trace collector",
            otlp.exported.clone(),
        );
        r.register(
            "trace_spans_dropped",
            "Spans not sent: the queue was full or their export failed",
            otlp.dropped.clone(),
        );
        r.register(
            "trace_export_failures",
            "Exports to the trace collector that failed (their spans dropped)",
            otlp.failed_exports.clone(),
        );
        let discovery_streams = Gauge::default();
        r.register(
            "discovery_streams",
            "Discovery streams open to the control agent",
            discovery_streams.clone(),
        );
        Arc::new(Metrics {
            requests,
            latency,
            route_latency,
            tcp_open,
            tcp_close,
            bytes_read,
            bytes_written,
            tls,
            refused,
            retries,
            budget_exhausted,
            ejections,
            discovery_updates,
            discovery_errors,
            discovery_streams,
            queued,
            otlp,
            series: AtomicUsize::new(0),
            bounded: Default::default(),
            empty: Arc::from(""),
            overflow: Arc::from("overflow"),
            route_series: AtomicUsize::new(0),
            invalid: Arc::from("invalid"),
            registry: r,
            tap: tokio::sync::broadcast::channel(1024).0,
        })
    }

    /// `v` as a label value of budget `kind`, or `overflow` once `MAX_LABEL_VALUES` others
    /// are in use there.
    fn bounded(&self, kind: usize, v: &str) -> Arc<str> {
        if v.is_empty() {
            return self.empty.clone();
        }
        let mut seen = self.bounded[kind].lock().unwrap_or_else(|p| p.into_inner());
        if let Some(known) = seen.get(v) {
            return known.clone();
        }
        // prometheus-client writes label values as they are: a quote, backslash or line
        // break from a client's Host header would make the whole page unreadable to a
        // scraper. (Checked only for a value not seen yet: the hot path is the lookup above.)
        // Nor may a client make the proxy keep a long value (up to hyper's 400 KiB header
        // buffer) in each of the label sets, and write it into every scrape.
        if v.contains(['"', '\\', '\n']) || v.len() > MAX_LABEL_LEN {
            return self.invalid.clone();
        }
        if seen.len() < MAX_LABEL_VALUES {
            let v: Arc<str> = Arc::from(v);
            seen.insert(v.clone());
            return v;
        }
        self.overflow.clone()
    }

    /// One answered request: counted, timed, and on the tap when someone listens.
    pub fn request(&self, o: &Observed<'_>) {
        let labels = self.labels(o, "");
        let labels = self.count(labels);
        self.timed(o, labels);
    }

    /// [`Metrics::request`] with its response, counted by its gRPC status too: one that
    /// comes in the trailers is counted when the body ends (timed and tapped now).
    pub fn response(self: &Arc<Self>, o: &Observed<'_>, resp: &mut http::Response<Body>) {
        if let Some(grpc) = crate::http::grpc_status_now(resp.status(), resp.headers()) {
            let labels = self.labels(o, grpc);
            let labels = self.count(labels);
            self.timed(o, labels);
            return;
        }
        let labels = self.labels(o, "none");
        self.timed(o, labels.clone());
        let me = self.clone();
        let body = std::mem::replace(resp.body_mut(), crate::http::full(bytes::Bytes::new()));
        *resp.body_mut() = crate::http::on_end(body, move |how| {
            let mut labels = labels;
            labels.grpc_status = match how {
                crate::http::End::Trailers(t) => {
                    t.get("grpc-status").map_or("none", crate::http::grpc_code)
                }
                crate::http::End::Without => "none",
                // The client reset the call (a deadline, a watch it stopped): its choice,
                // not the server's failure.
                crate::http::End::Dropped => "cancelled",
            };
            me.count(labels);
        });
    }

    fn labels(&self, o: &Observed<'_>, grpc_status: &'static str) -> RequestLabels {
        let status_class = match o.status.map(|s| s.as_u16() / 100) {
            Some(1) => "1xx",
            Some(2) => "2xx",
            Some(3) => "3xx",
            Some(4) => "4xx",
            Some(5) => "5xx",
            // 6xx..9xx are valid status codes to the http crate; no label of their own.
            Some(_) => "other",
            None => "error",
        };
        RequestLabels {
            direction: o.direction,
            authority: self.bounded(
                match o.direction {
                    Direction::Outbound => 0,
                    Direction::Inbound => 1,
                },
                o.authority,
            ),
            route: o
                .route
                .map_or_else(|| self.empty.clone(), |r| self.bounded(3, r)),
            status_class,
            peer: self.bounded(2, o.peer),
            grpc_status,
        }
    }

    /// Counts a request under `labels`, or under `overflow` past [`MAX_SERIES`]: the labels
    /// it was counted under.
    fn count(&self, mut labels: RequestLabels) -> RequestLabels {
        // Each kind is bounded alone, but a series is a combination of them: the series count
        // is bounded too. Hits (almost every request) take one lookup, as before.
        if let Some(c) = self.requests.get(&labels) {
            c.inc();
        } else {
            if self.series.fetch_add(1, Ordering::Relaxed) >= MAX_SERIES {
                self.series.fetch_sub(1, Ordering::Relaxed);
                labels.authority = self.overflow.clone();
                labels.route = self.overflow.clone();
                labels.peer = self.overflow.clone();
            }
            self.requests.get_or_create(&labels).inc();
        }
        labels
    }

    /// The latency (by route too when its authority has routes) and the tap.
    fn timed(&self, o: &Observed<'_>, labels: RequestLabels) {
        if o.routed {
            self.route_latency(RouteLabels {
                direction: o.direction,
                authority: labels.authority,
                route: labels.route,
            })
            .observe(o.elapsed.as_secs_f64());
        }
        self.observed(o);
    }

    /// The latency histogram of a route, bounded like the request counter.
    fn route_latency(
        &self,
        mut labels: RouteLabels,
    ) -> impl std::ops::Deref<Target = Histogram> + '_ {
        if let Some(h) = self.route_latency.get(&labels) {
            return h;
        }
        if self.route_series.fetch_add(1, Ordering::Relaxed) >= MAX_ROUTE_SERIES {
            self.route_series.fetch_sub(1, Ordering::Relaxed);
            labels.authority = self.overflow.clone();
            labels.route = self.overflow.clone();
        }
        self.route_latency.get_or_create(&labels)
    }

    /// The latency and the tap, for a request counted.
    fn observed(&self, o: &Observed<'_>) {
        self.latency
            .get_or_create(&DirectionLabels {
                direction: o.direction,
            })
            .observe(o.elapsed.as_secs_f64());
        if self.tap.receiver_count() > 0 {
            let direction = o.direction.as_str();
            let line = serde_json::json!({
                "ts_ms": std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
                "direction": direction,
                "authority": cut(o.authority, MAX_TAP_FIELD),
                "method": cut(o.method, MAX_TAP_FIELD),
                "path": cut(o.path, MAX_TAP_FIELD),
                "route": o.route.map_or("", |r| &**r),
                "status": o.status.map(|s| s.as_u16()),
                "latency_ms": o.elapsed.as_secs_f64() * 1e3,
                "peer": o.peer,
                "trace_id": o.trace_id,
            })
            .to_string();
            let _ = self.tap.send(crate::tap::Event {
                line,
                direction,
                authority: cut(o.authority, MAX_TAP_FIELD).to_string(),
            });
        }
    }

    pub fn tls(&self, direction: Direction, result: &str) {
        self.tls
            .get_or_create(&TlsLabels {
                direction,
                result: result.into(),
            })
            .inc();
    }

    pub fn refuse(&self, reason: &str) {
        self.refused
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Why a TLS handshake failed, as a label: from the error's type (rustls's, and within it
/// the identity verifier's), not its text, which names whatever SPIFFE IDs were involved.
pub fn tls_reason(e: &std::io::Error) -> &'static str {
    use meshwork_identity::verify::VerifyError;
    use rustls::{AlertDescription, CertificateError, Error};
    if e.kind() == std::io::ErrorKind::TimedOut {
        return "timeout";
    }
    match e.get_ref().and_then(|i| i.downcast_ref::<Error>()) {
        Some(Error::InvalidCertificate(CertificateError::Other(o))) => {
            match o.0.downcast_ref::<VerifyError>() {
                Some(VerifyError::Chain(_)) | None => "certificate",
                Some(
                    VerifyError::NoIdentity
                    | VerifyError::WrongIdentity { .. }
                    | VerifyError::WrongTrustDomain { .. },
                ) => "peer_identity",
            }
        }
        Some(Error::InvalidCertificate(_) | Error::NoCertificatesPresented) => "certificate",
        // The peer refused our certificate (other alerts are the protocol's).
        Some(Error::AlertReceived(
            AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateRequired
            | AlertDescription::UnknownCA,
        )) => "certificate",
        Some(_) => "protocol",
        None if e.kind() == std::io::ErrorKind::InvalidData => "protocol",
        None => "io",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Handshake failures are labelled by what they are, whatever the IDs in their text.
    #[test]
    fn tls_failures_are_labelled_by_their_type() {
        use meshwork_identity::verify::VerifyError;
        let tls = |e: rustls::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        let verify = |v: VerifyError| {
            tls(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(rustls::OtherError(Arc::new(v))),
            ))
        };
        let wrong = verify(VerifyError::WrongIdentity {
            got: "spiffe://cluster.local/ns/default/sa/web".into(),
            want: "spiffe://cluster.local/ns/default/sa/db".into(),
        });
        assert_eq!(tls_reason(&wrong), "peer_identity");
        let domain = verify(VerifyError::WrongTrustDomain {
            got: "other.org".into(),
            want: "cluster.local".into(),
        });
        assert_eq!(tls_reason(&domain), "peer_identity");
        // An ID that happens to contain "identity" changes nothing.
        let chain = verify(VerifyError::Chain(
            "spiffe://cluster.local/ns/x/sa/meshwork-identity expired".into(),
        ));
        assert_eq!(tls_reason(&chain), "certificate");
        let refused = tls(rustls::Error::AlertReceived(
            rustls::AlertDescription::BadCertificate,
        ));
        assert_eq!(tls_reason(&refused), "certificate");
        let other = tls(rustls::Error::AlertReceived(
            rustls::AlertDescription::HandshakeFailure,
        ));
        assert_eq!(tls_reason(&other), "protocol");
        let late = std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake");
        assert_eq!(tls_reason(&late), "timeout");
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(tls_reason(&reset), "io");
    }

    /// A gRPC answer is counted by its status: from its headers at once, from its trailers
    /// when its body ends (not before: its status is not known), `none` when it ends without
    /// one, `cancelled` when its client went away; an answer that is not gRPC has none.
    #[tokio::test]
    async fn grpc_answers_are_counted_by_their_status() {
        use http_body_util::BodyExt;
        let m = Metrics::new();
        let series = |grpc: &str| {
            let want = format!(
                "meshwork_proxy_requests_total{{direction=\"inbound\",authority=\"web:80\",\
                 route=\"\",status_class=\"2xx\",peer=\"\",grpc_status=\"{grpc}\"}} "
            );
            m.encode()
                .lines()
                .find_map(|l| l.strip_prefix(want.as_str()).map(|v| v.to_string()))
        };
        let answer = |headers: &[(&'static str, &'static str)], trailers: Option<&'static str>| {
            let mut b = http::Response::builder();
            for (k, v) in headers {
                b = b.header(*k, *v);
            }
            let body = crate::http::full(bytes::Bytes::from_static(b"\0\0\0\0\0"));
            let body = match trailers {
                Some(code) => body
                    .with_trailers(async move {
                        let mut t = http::HeaderMap::new();
                        t.insert("grpc-status", http::HeaderValue::from_static(code));
                        Some(Ok(t))
                    })
                    .boxed(),
                None => body,
            };
            b.body(body).unwrap()
        };
        let o = ok(Direction::Inbound, "web:80", None, "");
        let grpc = ("content-type", "application/grpc");

        let mut r = answer(&[grpc], Some("14"));
        m.response(&o, &mut r);
        assert_eq!(series("14"), None, "counted before its status came");
        r.into_body().collect().await.unwrap();
        assert_eq!(series("14").as_deref(), Some("1"));

        let mut r = answer(&[grpc, ("grpc-status", "5")], None);
        m.response(&o, &mut r);
        assert_eq!(series("5").as_deref(), Some("1"));

        // Its last message, and no trailers: read as hyper reads it, no further than the
        // frame after which the body says it is at its end.
        let mut r = answer(&[grpc], None);
        m.response(&o, &mut r);
        let mut body = r.into_body();
        assert!(body.frame().await.unwrap().unwrap().is_data());
        assert!(hyper::body::Body::is_end_stream(&body));
        drop(body);
        assert_eq!(series("none").as_deref(), Some("1"));

        let mut r = answer(&[grpc], Some("0"));
        m.response(&o, &mut r);
        drop(r);
        assert_eq!(series("cancelled").as_deref(), Some("1"));
        assert_eq!(series("0"), None);

        let mut r = answer(&[("content-type", "text/plain")], None);
        m.response(&o, &mut r);
        assert_eq!(series("").as_deref(), Some("1"));
    }

    /// A client's 400 KB extension method, path and authority reach a tap line cut to
    /// 1 KiB each: what the tap buffers stays bounded.
    #[test]
    fn tap_lines_cut_what_the_client_sent() {
        let m = Metrics::new();
        let mut rx = m.tap.subscribe();
        let long = "X".repeat(400_000);
        let o = Observed {
            method: &long,
            path: &long,
            ..ok(Direction::Inbound, &long, None, "")
        };
        m.request(&o);
        let line = rx.try_recv().unwrap().line;
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        for field in ["method", "path", "authority"] {
            assert_eq!(v[field].as_str().unwrap().len(), MAX_TAP_FIELD, "{field}");
        }
    }

    /// A 200 for `authority` (and `route`) from `peer`.
    fn ok<'a>(
        direction: Direction,
        authority: &'a str,
        route: Option<&'a Arc<str>>,
        peer: &'a str,
    ) -> Observed<'a> {
        Observed {
            direction,
            authority,
            route,
            routed: route.is_some(),
            method: "GET",
            path: "/",
            status: Some(http::StatusCode::OK),
            peer,
            elapsed: std::time::Duration::from_millis(1),
            trace_id: "",
        }
    }

    #[test]
    fn label_values_stop_growing_at_the_bound() {
        let m = Metrics::new();
        for i in 0..(MAX_LABEL_VALUES * 2) {
            m.request(&ok(Direction::Outbound, &format!("h{i}:80"), None, ""));
        }
        let text = m.encode();
        let series = text
            .lines()
            .filter(|l| l.starts_with("meshwork_proxy_requests_total{"))
            .count();
        assert!(series <= MAX_LABEL_VALUES + 1, "{series} series");
        assert!(text.contains("authority=\"overflow\""));
    }

    #[test]
    fn combinations_of_bounded_labels_are_bounded_too() {
        let m = Metrics::new();
        // 150 authorities × 100 peers: each kind within its bound, 15,000 combinations.
        for a in 0..150 {
            for p in 0..100 {
                m.request(&ok(
                    Direction::Inbound,
                    &format!("h{a}"),
                    None,
                    &format!("spiffe://td/ns/n/sa/{p}"),
                ));
            }
        }
        let text = m.encode();
        let series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("meshwork_proxy_requests_total{"))
            .collect();
        assert_eq!(series.len(), MAX_SERIES + 1);
        let overflow = series
            .iter()
            .find(|l| l.contains("authority=\"overflow\",route=\"overflow\""))
            .expect("the overflow series");
        assert!(overflow.ends_with(" 5000"), "{overflow}");
    }

    /// Kept for authorities with routes only, the unmatched ones under an empty route; label
    /// sets bounded on their own.
    #[test]
    fn latency_by_route_for_routed_authorities_and_bounded() {
        let m = Metrics::new();
        let route: Arc<str> = Arc::from("GET /books/{id}");
        m.request(&ok(Direction::Inbound, "web:80", Some(&route), ""));
        let mut unmatched = ok(Direction::Inbound, "web:80", None, "");
        unmatched.routed = true;
        m.request(&unmatched);
        m.request(&ok(Direction::Outbound, "plain:80", None, ""));
        let text = m.encode();
        let count = |series: &str| {
            text.lines()
                .find(|l| l.starts_with(series))
                .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        };
        assert_eq!(
            count("meshwork_proxy_route_response_latency_seconds_count{direction=\"inbound\",authority=\"web:80\",route=\"GET /books/{id}\"}"),
            Some(1),
            "{text}"
        );
        assert_eq!(
            count("meshwork_proxy_route_response_latency_seconds_count{direction=\"inbound\",authority=\"web:80\",route=\"\"}"),
            Some(1),
            "{text}"
        );
        assert!(!text.contains("route_response_latency_seconds_count{direction=\"outbound\""));

        let m = Metrics::new();
        for a in 0..(MAX_ROUTE_SERIES + 50) {
            let mut o = ok(Direction::Outbound, "web:80", None, "");
            let a = format!("a{a}:80");
            o.authority = &a;
            o.routed = true;
            m.request(&o);
        }
        let text = m.encode();
        let sets = text
            .lines()
            .filter(|l| l.starts_with("meshwork_proxy_route_response_latency_seconds_count{"))
            .count();
        assert_eq!(
            sets,
            MAX_ROUTE_SERIES + 1,
            "the overflow set beside the bound"
        );
        let count = |series: &str| {
            text.lines()
                .find(|l| l.starts_with(series))
                .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        };
        assert_eq!(
            count("meshwork_proxy_route_response_latency_seconds_count{direction=\"outbound\",authority=\"overflow\",route=\"overflow\"}"),
            Some(50)
        );
    }

    #[test]
    fn a_value_the_text_format_cannot_carry_counts_as_invalid() {
        let m = Metrics::new();
        m.request(&ok(Direction::Inbound, "web\"} 1\nx{a=\"", None, ""));
        m.request(&ok(Direction::Inbound, "a\\b", None, ""));
        // Nor one a client made long to be kept in every label set and scrape.
        m.request(&ok(
            Direction::Inbound,
            &"w".repeat(MAX_LABEL_LEN + 1),
            None,
            "",
        ));
        let text = m.encode();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("meshwork_proxy_requests_total{"))
            .collect();
        assert_eq!(lines.len(), 1, "{text}");
        assert!(lines[0].contains("authority=\"invalid\""), "{text}");
        assert!(lines[0].ends_with(" 3"), "{text}");
    }

    #[test]
    fn tap_fields_are_cut_on_a_character_boundary() {
        assert_eq!(cut("web:80", 1024), "web:80");
        assert_eq!(cut("aé", 2), "a");
        assert_eq!(cut(&"é".repeat(600), MAX_TAP_FIELD).len(), MAX_TAP_FIELD);
    }

    #[test]
    fn routes_are_labels_within_their_own_bound() {
        let m = Metrics::new();
        let routes: Vec<Arc<str>> = (0..(MAX_LABEL_VALUES * 2))
            .map(|i| Arc::from(format!("GET /r{i}")))
            .collect();
        for r in &routes {
            m.request(&ok(Direction::Inbound, "web:80", Some(r), ""));
        }
        let text = m.encode();
        assert!(text.contains("route=\"GET /r0\""), "{text}");
        assert!(text.contains("route=\"overflow\""));
        let series = text
            .lines()
            .filter(|l| l.starts_with("meshwork_proxy_requests_total{"))
            .count();
        assert_eq!(series, MAX_LABEL_VALUES + 1);
    }
}
