//! coordination.k8s.io: Leases (node heartbeats in `kube-node-lease`).

use k8s_openapi::{api::coordination::v1::Lease, jiff::Timestamp};
use serde_json::Value;

use crate::api::{
    error::Cause,
    kind::{age, Column, Rules, AGE, NAME},
};

impl Rules for Lease {
    const NAMESPACED: bool = true;
    const SINGULAR: &'static str = "lease";
    const COLUMNS: &'static [Column] = &[NAME, Column::new("Holder", "string", 0), AGE];

    /// kube's ValidateLeaseSpec: durations and transitions are not negative.
    fn validate(&self, causes: &mut Vec<Cause>) {
        let Some(spec) = &self.spec else { return };
        if let Some(d) = spec.lease_duration_seconds.filter(|d| *d <= 0) {
            causes.push(Cause::invalid(
                "spec.leaseDurationSeconds",
                &d.to_string(),
                "must be greater than 0",
            ));
        }
        if let Some(t) = spec.lease_transitions.filter(|t| *t < 0) {
            causes.push(Cause::invalid(
                "spec.leaseTransitions",
                &t.to_string(),
                "must be greater than or equal to 0",
            ));
        }
    }

    fn row(&self, now: Timestamp) -> Vec<Value> {
        vec![
            Value::from(
                self.spec
                    .as_ref()
                    .and_then(|s| s.holder_identity.clone())
                    .unwrap_or_default(),
            ),
            age(&self.metadata, now),
        ]
    }
}
