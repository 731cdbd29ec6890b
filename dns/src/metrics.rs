//! Prometheus metrics (prometheus-client) and the admin endpoints: `/metrics`, `/health`
//! (the process answers) and `/ready` (the zone has been built from a synced watch).

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc,
};

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue},
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Proto {
    Udp,
    Tcp,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(clippy::upper_case_acronyms, reason = "DNS record type mnemonics")]
pub enum QType {
    A,
    AAAA,
    SRV,
    PTR,
    CNAME,
    TXT,
    SOA,
    NS,
    ANY,
    Other,
}

impl QType {
    pub fn from_u16(t: u16) -> Self {
        match t {
            1 => QType::A,
            28 => QType::AAAA,
            33 => QType::SRV,
            12 => QType::PTR,
            5 => QType::CNAME,
            16 => QType::TXT,
            6 => QType::SOA,
            2 => QType::NS,
            255 => QType::ANY,
            _ => QType::Other,
        }
    }
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(clippy::upper_case_acronyms, reason = "DNS rcode mnemonics")]
pub enum Rcode {
    NOERROR,
    FORMERR,
    SERVFAIL,
    NXDOMAIN,
    NOTIMP,
    REFUSED,
    Other,
}

impl Rcode {
    pub fn from_u8(r: u8) -> Self {
        match r & 0x0f {
            0 => Rcode::NOERROR,
            1 => Rcode::FORMERR,
            2 => Rcode::SERVFAIL,
            3 => Rcode::NXDOMAIN,
            4 => Rcode::NOTIMP,
            5 => Rcode::REFUSED,
            _ => Rcode::Other,
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueryLabels {
    pub proto: Proto,
    pub qtype: QType,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RcodeLabels {
    pub rcode: Rcode,
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum CacheKind {
    Zone,
    Forward,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    pub cache: CacheKind,
}

pub struct Metrics {
    pub requests: Family<QueryLabels, Counter>,
    pub responses: Family<RcodeLabels, Counter>,
    pub duration: Histogram,
    pub cache_hits: Family<CacheLabels, Counter>,
    pub cache_misses: Family<CacheLabels, Counter>,
    pub forwarded: Counter,
    pub zone_rebuilds: Counter,
    pub ready: AtomicBool,
    registry: Registry,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("meshwork_dns");
        let requests = Family::<QueryLabels, Counter>::default();
        let responses = Family::<RcodeLabels, Counter>::default();
        // 10 µs .. ~2.6 s, factor 2.
        let duration = Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
            1e-5, 2.0, 18,
        ));
        let cache_hits = Family::<CacheLabels, Counter>::default();
        let cache_misses = Family::<CacheLabels, Counter>::default();
        let forwarded = Counter::default();
        let zone_rebuilds = Counter::default();
        registry.register(
            "requests",
            "DNS queries by transport and type",
            requests.clone(),
        );
        registry.register("responses", "DNS responses by rcode", responses.clone());
        registry.register(
            "request_duration_seconds",
            "Time from receiving a query to sending its answer",
            duration.clone(),
        );
        registry.register(
            "cache_hits",
            "Answers served from a cache",
            cache_hits.clone(),
        );
        registry.register(
            "cache_misses",
            "Answers that had to be computed or fetched",
            cache_misses.clone(),
        );
        registry.register(
            "forward_requests",
            "Queries forwarded upstream",
            forwarded.clone(),
        );
        registry.register(
            "zone_rebuilds",
            "Cluster zone snapshots built from the API",
            zone_rebuilds.clone(),
        );
        Arc::new(Metrics {
            requests,
            responses,
            duration,
            cache_hits,
            cache_misses,
            forwarded,
            zone_rebuilds,
            ready: AtomicBool::new(false),
            registry,
        })
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The admin handler: /metrics, /health (the process answers), /ready (zone from a synced
/// watch).
pub fn admin(m: Arc<Metrics>) -> meshwork_daemon::admin::Handler {
    Arc::new(move |path: &str| match path {
        "/metrics" => (200, m.encode()),
        "/health" => (200, "OK".to_string()),
        "/ready" if m.ready.load(Ordering::Relaxed) => (200, "OK".to_string()),
        "/ready" => (503, "not synced".to_string()),
        _ => (404, "not found".to_string()),
    })
}
