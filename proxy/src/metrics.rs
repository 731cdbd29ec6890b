//! The proxy's Prometheus metrics (prometheus-client), served on the admin port
//! (`admin.rs`). Names follow Linkerd's proxy metrics in spirit: requests and responses by
//! direction, authority, status class and peer identity, with a latency histogram; TCP opens,
//! closes and bytes; TLS handshakes by outcome; the outbound stack's retries, budget and
//! ejections; the discovery stream's state.
//!
//! Label cardinality is bounded: authorities and peer identities become label values only for
//! the first `MAX_LABEL_VALUES` distinct ones seen; later ones count under `overflow`, so a client sending random Host headers cannot grow
//! the registry.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
};

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Distinct authorities and peer identities (together) kept as label values.
pub const MAX_LABEL_VALUES: usize = 1000;

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Direction {
    Inbound,
    Outbound,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub direction: Direction,
    pub authority: String,
    /// `2xx` .. `5xx`, or `error` when no response came.
    pub status_class: String,
    /// Inbound: the client's SPIFFE ID; outbound: the server's (empty: not meshed).
    pub peer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    pub direction: Direction,
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
    bounded: Mutex<HashSet<String>>,
    registry: Registry,
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
            "HTTP requests answered, by direction, authority, status class and peer identity",
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
        let discovery_streams = Gauge::default();
        r.register(
            "discovery_streams",
            "Discovery streams open to the control agent",
            discovery_streams.clone(),
        );
        Arc::new(Metrics {
            requests,
            latency,
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
            bounded: Mutex::new(HashSet::new()),
            registry: r,
        })
    }

    /// `v` as a label value, or `overflow` once `MAX_LABEL_VALUES` others are in use.
    pub fn bounded(&self, v: &str) -> String {
        if v.is_empty() {
            return String::new();
        }
        let mut seen = self.bounded.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains(v) {
            return v.to_string();
        }
        if seen.len() < MAX_LABEL_VALUES {
            seen.insert(v.to_string());
            return v.to_string();
        }
        "overflow".into()
    }

    /// One answered request.
    pub fn request(
        &self,
        direction: Direction,
        authority: &str,
        status: Option<http::StatusCode>,
        peer: &str,
        elapsed: std::time::Duration,
    ) {
        let status_class = match status {
            Some(s) => format!("{}xx", s.as_u16() / 100),
            None => "error".into(),
        };
        self.requests
            .get_or_create(&RequestLabels {
                direction,
                authority: self.bounded(authority),
                status_class,
                peer: self.bounded(peer),
            })
            .inc();
        self.latency
            .get_or_create(&DirectionLabels { direction })
            .observe(elapsed.as_secs_f64());
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

/// Why a TLS handshake failed, as a label.
pub fn tls_reason(e: &std::io::Error) -> &'static str {
    if e.kind() == std::io::ErrorKind::TimedOut {
        return "timeout";
    }
    let msg = e.to_string();
    if msg.contains("SPIFFE") || msg.contains("identity") {
        "peer_identity"
    } else if msg.contains("certificate") || msg.contains("Certificate") {
        "certificate"
    } else if e.kind() == std::io::ErrorKind::InvalidData {
        "protocol"
    } else {
        "io"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_stop_growing_at_the_bound() {
        let m = Metrics::new();
        for i in 0..(MAX_LABEL_VALUES * 2) {
            m.request(
                Direction::Outbound,
                &format!("h{i}:80"),
                Some(http::StatusCode::OK),
                "",
                std::time::Duration::from_millis(1),
            );
        }
        let text = m.encode();
        let series = text
            .lines()
            .filter(|l| l.starts_with("meshwork_proxy_requests_total{"))
            .count();
        assert!(series <= MAX_LABEL_VALUES + 1, "{series} series");
        assert!(text.contains("authority=\"overflow\""));
    }
}
