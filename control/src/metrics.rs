//! Prometheus metrics and the kube-proxy-compatible `/healthz`.

use std::{
    sync::{
        atomic::{AtomicBool, AtomicI64, Ordering},
        Arc,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

pub struct Metrics {
    pub services: Gauge,
    pub endpoints: Gauge,
    pub sync_duration: Histogram,
    pub sync_errors: Counter,
    /// Overlay syncs that reached the kernel (a Node set change or the periodic resync).
    pub overlay_syncs: Counter,
    pub last_sync: Gauge,
    /// Open discovery streams from proxies (`destination/`).
    pub destination_streams: Gauge,
    /// Discovery answers computed: each stream's first, then one per change it depends on.
    pub destination_answers: Counter,
    /// Discovery connections refused in the TLS handshake.
    pub destination_tls_failures: Counter,
    /// The agent's discovery identity, read at each scrape for its certificate's expiry.
    pub destination_identity: std::sync::OnceLock<meshwork_identity::client::Identity>,
    destination_cert_expiry: Gauge,
    /// Unix ms of the oldest change not yet applied (0: none pending).
    pub pending_since_ms: AtomicI64,
    pub synced: AtomicBool,
    /// The kernel's drop counters (`mw_drops`), followed at each scrape.
    drops: Family<Vec<(&'static str, &'static str)>, Counter>,
    pin_dir: std::sync::OnceLock<std::path::PathBuf>,
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
        let overlay_syncs = Counter::default();
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
            "overlay_syncs",
            "Overlay syncs applied to the kernel (Node set changes and periodic resyncs)",
            overlay_syncs.clone(),
        );
        registry.register(
            "last_sync_timestamp_seconds",
            "Unix time of the last successful sync",
            last_sync.clone(),
        );
        let destination_streams = Gauge::default();
        registry.register(
            "destination_streams",
            "Discovery streams open to this node's proxies",
            destination_streams.clone(),
        );
        let destination_answers = Counter::default();
        registry.register(
            "destination_answers",
            "Discovery answers computed: a stream's first, then one per change it depends on",
            destination_answers.clone(),
        );
        let destination_tls_failures = Counter::default();
        registry.register(
            "destination_handshake_failures",
            "Discovery connections that failed the mutual TLS handshake (no or a foreign \
             client certificate, plaintext, timeout, or no agent certificate yet)",
            destination_tls_failures.clone(),
        );
        let destination_cert_expiry = Gauge::default();
        registry.register(
            "destination_certificate_expiry_timestamp_seconds",
            "When the agent's discovery certificate expires (Unix seconds; 0: none yet, so \
             no proxy can get discovery from this agent)",
            destination_cert_expiry.clone(),
        );
        let drops = Family::<Vec<(&'static str, &'static str)>, Counter>::default();
        registry.register(
            "datapath_drops",
            "Connects refused and packets dropped by the eBPF datapath, by reason",
            drops.clone(),
        );
        Arc::new(Metrics {
            drops,
            pin_dir: std::sync::OnceLock::new(),
            services,
            endpoints,
            sync_duration,
            sync_errors,
            overlay_syncs,
            last_sync,
            destination_streams,
            destination_answers,
            destination_tls_failures,
            destination_identity: std::sync::OnceLock::new(),
            destination_cert_expiry,
            pending_since_ms: AtomicI64::new(0),
            synced: AtomicBool::new(false),
            registry,
        })
    }

    /// Where the datapath's maps are pinned: its drop counters join the metrics.
    pub fn follow_datapath(&self, pin_dir: std::path::PathBuf) {
        let _ = self.pin_dir.set(pin_dir);
    }

    /// Brings the drop counters up to the kernel's (monotonic; per-CPU sums).
    fn read_drops(&self) {
        let Some(dir) = self.pin_dir.get() else {
            return;
        };
        let Ok(drops) = meshwork_ebpf::drops(dir) else {
            return;
        };
        for (reason, n) in drops {
            let c = self.drops.get_or_create(&vec![("reason", reason.as_str())]);
            c.inc_by(n.saturating_sub(c.get()));
        }
    }

    pub fn encode(&self) -> String {
        self.read_drops();
        if let Some(id) = self.destination_identity.get() {
            let expiry = id
                .current()
                .and_then(|c| c.not_after.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
            self.destination_cert_expiry.set(expiry);
        }
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

    pub fn admin(m: Arc<Metrics>) -> meshwork_daemon::admin::Handler {
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
