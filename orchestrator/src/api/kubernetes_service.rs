//! The `kubernetes` Service in `default` and its EndpointSlice, which kube-apiserver keeps
//! (its "kubernetes service" and endpoint reconcilers): how pods find the API server, at the
//! first address of the service CIDR (`alloc.rs` never hands that address out) and port 443,
//! backed by the advertise address and the port the server listens on.
//!
//! The Service has no selector, so the EndpointSlice controller (`controllers/endpointslice.rs`)
//! makes no slices for it; this one carries its own managed-by label, which that controller
//! leaves alone, and no owner, so the garbage collector leaves it too. Written at every start:
//! created when missing, brought back to what this server is when it differs (another port
//! after a restart), left as is otherwise.

use std::net::{IpAddr, Ipv4Addr};

use serde_json::{json, Value};

use super::{error::ApiError, Api};

pub const NAME: &str = "kubernetes";
pub const NAMESPACE: &str = "default";
/// Tells the EndpointSlice controller the slice is not its own (kube's apiserver writes the
/// same label with its own value).
pub const MANAGED_BY: &str = "meshwork-apiserver";

/// The `kubernetes` Service's address: the first of the service CIDR.
pub fn cluster_ip(ranges: &super::alloc::ServiceRanges) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(ranges.cidr.network()).saturating_add(1))
}

impl Api {
    /// Creates or reconciles the `kubernetes` Service and EndpointSlice for an API server
    /// reachable at `endpoint:port`.
    pub async fn ensure_kubernetes_service(
        &self,
        endpoint: IpAddr,
        port: u16,
    ) -> Result<(), ApiError> {
        let cluster_ip = cluster_ip(&self.cfg.services);
        let service = json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": NAME,
                "namespace": NAMESPACE,
                "labels": {"component": "apiserver", "provider": "kubernetes"},
            },
            "spec": {
                "type": "ClusterIP",
                "clusterIP": cluster_ip.to_string(),
                "sessionAffinity": "None",
                "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}],
            },
        });
        self.ensure(
            "",
            "v1",
            "services",
            Some(NAMESPACE),
            NAME,
            service,
            |cur, want| {
                // The clusterIP is immutable: a cluster whose service CIDR moved keeps the old
                // one, as kube's reconciler does (it only logs the mismatch).
                merge_labels(cur, want);
                cur["spec"]["ports"] = want["spec"]["ports"].clone();
            },
        )
        .await?;
        let family = if endpoint.is_ipv4() { "IPv4" } else { "IPv6" };
        let slice = json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": NAME,
                "namespace": NAMESPACE,
                "labels": {
                    (meshwork_service_model::SERVICE_NAME_LABEL): NAME,
                    (crate::controllers::MANAGED_BY_LABEL): MANAGED_BY,
                },
            },
            "addressType": family,
            "endpoints": [{"addresses": [endpoint.to_string()], "conditions": {"ready": true}}],
            "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
        });
        self.ensure(
            "discovery.k8s.io",
            "v1",
            "endpointslices",
            Some(NAMESPACE),
            NAME,
            slice,
            |cur, want| {
                merge_labels(cur, want);
                for f in ["addressType", "endpoints", "ports"] {
                    cur[f] = want[f].clone();
                }
            },
        )
        .await
    }
}

fn merge_labels(cur: &mut Value, want: &Value) {
    if let Some(labels) = want.pointer("/metadata/labels").and_then(Value::as_object) {
        for (k, v) in labels {
            cur["metadata"]["labels"][k] = v.clone();
        }
    }
}
