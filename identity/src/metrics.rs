//! The service's Prometheus metrics: certificates issued, refusals by reason, issuance
//! latency, and the seconds until the issuer expires (refreshed at each scrape: rotate the
//! issuer before it reaches zero).

use std::{
    sync::{
        atomic::{AtomicI64, Ordering},
        Arc,
    },
    time::{SystemTime, UNIX_EPOCH},
};

use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

pub struct Metrics {
    pub issued: Counter,
    pub rejected: Family<Vec<(String, String)>, Counter>,
    pub latency: Histogram,
    issuer_expiry: Gauge,
    /// Unix seconds the issuer in use expires at.
    pub issuer_not_after: AtomicI64,
    registry: Registry,
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("meshwork_identity");
        let issued = Counter::default();
        let rejected = Family::default();
        // 50 µs .. ~1.6 s, factor 2.
        let latency = Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
            5e-5, 2.0, 16,
        ));
        let issuer_expiry = Gauge::default();
        registry.register("certificates_issued", "Certificates signed", issued.clone());
        registry.register(
            "certificates_rejected",
            "Certify calls refused, by reason",
            rejected.clone(),
        );
        registry.register(
            "issuance_duration_seconds",
            "From a Certify call arriving to its answer (token review included)",
            latency.clone(),
        );
        registry.register(
            "issuer_expiry_seconds",
            "Seconds until the issuer certificate expires",
            issuer_expiry.clone(),
        );
        Arc::new(Metrics {
            issued,
            rejected,
            latency,
            issuer_expiry,
            issuer_not_after: AtomicI64::new(0),
            registry,
        })
    }

    pub fn reject(&self, reason: &str) {
        self.rejected
            .get_or_create(&vec![("reason".to_string(), reason.to_string())])
            .inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        self.issuer_expiry
            .set(self.issuer_not_after.load(Ordering::Relaxed) - now());
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
