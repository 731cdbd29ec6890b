//! The node runtime's Prometheus metrics on its port (`/metrics`): pod starts and their
//! latency, whole and by phase (sandbox, CNI ADD, process), as `/debug/pod-starts` lists
//! them one by one.

use std::sync::Arc;

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

use super::kubelet::StartTiming;

pub struct NodeMetrics {
    /// Probe runs by probe kind and result (bounded labels: two kinds, two results).
    pub probes: Family<Vec<(String, String)>, Counter>,
    /// Containers a restarted node runtime found running and took over.
    pub adopted: Counter,
    /// Completed passes over this node's pods (a restarted runtime has reported once it has
    /// one).
    pub syncs: Counter,
    starts: Counter,
    start_seconds: Histogram,
    phase_seconds: Family<Vec<(String, String)>, Histogram>,
    registry: Registry,
}

fn buckets() -> impl Iterator<Item = f64> {
    // 1 ms .. ~33 s, factor 2.
    prometheus_client::metrics::histogram::exponential_buckets(1e-3, 2.0, 16)
}

impl NodeMetrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("meshwork_node");
        let starts = Counter::default();
        let start_seconds = Histogram::new(buckets());
        let phase_seconds =
            Family::<Vec<(String, String)>, Histogram>::new_with_constructor(|| {
                Histogram::new(buckets())
            });
        registry.register(
            "pod_starts",
            "Pods whose containers were all started by this node",
            starts.clone(),
        );
        registry.register(
            "pod_start_seconds",
            "From the node seeing a pod to all its containers started",
            start_seconds.clone(),
        );
        registry.register(
            "pod_start_phase_seconds",
            "Pod start by phase: sandbox (netns + cgroup), cni (ADD), process",
            phase_seconds.clone(),
        );
        let probes = Family::<Vec<(String, String)>, Counter>::default();
        let adopted = Counter::default();
        let syncs = Counter::default();
        registry.register(
            "probes",
            "Probe runs by probe (readiness, liveness) and result (success, failure)",
            probes.clone(),
        );
        registry.register(
            "containers_adopted",
            "Running containers taken over from an earlier node runtime",
            adopted.clone(),
        );
        registry.register(
            "pod_syncs",
            "Passes over this node's pods (start, probe results, status reports)",
            syncs.clone(),
        );
        Arc::new(NodeMetrics {
            probes,
            adopted,
            syncs,
            starts,
            start_seconds,
            phase_seconds,
            registry,
        })
    }

    pub fn observe(&self, t: &StartTiming) {
        self.starts.inc();
        self.start_seconds.observe(t.total_ms / 1e3);
        for (phase, ms) in [
            ("sandbox", t.sandbox_ms),
            ("cni", t.cni_ms),
            ("process", t.process_ms),
        ] {
            self.phase_seconds
                .get_or_create(&vec![("phase".to_string(), phase.to_string())])
                .observe(ms / 1e3);
        }
    }

    pub fn probed(&self, probe: &str, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.probes
            .get_or_create(&vec![
                ("probe".to_string(), probe.to_string()),
                ("result".to_string(), result.to_string()),
            ])
            .inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
