//! Prometheus metrics and the kube-proxy-compatible `/healthz`.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicI64, Ordering},
        Arc,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use prometheus_client::{
    metrics::{counter::Counter, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

pub struct Metrics {
    pub services: Gauge,
    pub endpoints: Gauge,
    pub sync_duration: Histogram,
    pub sync_errors: Counter,
    pub last_sync: Gauge,
    /// Unix ms of the oldest change not yet applied (0: none pending).
    pub pending_since_ms: AtomicI64,
    pub synced: AtomicBool,
    registry: Registry,
}

/// A change not applied within this makes /healthz 503 (kube-proxy: 2 × sync period).
const UNHEALTHY_AFTER: Duration = Duration::from_secs(60);

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("meshwork_control");
        let services = Gauge::default();
        let endpoints = Gauge::default();
        // 100 µs .. ~3 s, factor 2.
        let sync_duration = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(1e-4, 2.0, 16),
        );
        let sync_errors = Counter::default();
        let last_sync = Gauge::default();
        registry.register(
            "frontends_programmed",
            "Service frontends in the datapath",
            services.clone(),
        );
        registry.register(
            "backends_programmed",
            "Backends across all frontends",
            endpoints.clone(),
        );
        registry.register(
            "sync_duration_seconds",
            "From an API change being seen to the datapath matching it",
            sync_duration.clone(),
        );
        registry.register(
            "sync_errors",
            "Syncs that failed (retried)",
            sync_errors.clone(),
        );
        registry.register(
            "last_sync_timestamp_seconds",
            "Unix time of the last successful sync",
            last_sync.clone(),
        );
        Arc::new(Metrics {
            services,
            endpoints,
            sync_duration,
            sync_errors,
            last_sync,
            pending_since_ms: AtomicI64::new(0),
            synced: AtomicBool::new(false),
            registry,
        })
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// kube-proxy's contract: 200 once synced and while no change waits longer than allowed.
    pub fn healthy(&self) -> bool {
        let pending = self.pending_since_ms.load(Ordering::Relaxed);
        let stale = pending != 0
            && now_ms() - pending > i64::try_from(UNHEALTHY_AFTER.as_millis()).unwrap_or(i64::MAX);
        self.synced.load(Ordering::Relaxed) && !stale
    }

    pub fn admin(m: Arc<Metrics>) -> meshwork_kube_watch::admin::Handler {
        Arc::new(move |path: &str| match path {
            "/metrics" => (200, m.encode()),
            "/healthz" | "/livez" => {
                let body = format!(
                    "{{\"lastUpdated\": {}, \"currentTime\": {}}}",
                    m.last_sync.get(),
                    now_ms() / 1000
                );
                (if m.healthy() { 200 } else { 503 }, body)
            }
            _ => (404, "not found".to_string()),
        })
    }
}
