//! batch/v1 Jobs: defaults (the generated selector and labels), validation and the table
//! kubectl prints.

use k8s_openapi::{
    api::batch::v1::{Job, JobStatus},
    apimachinery::pkg::apis::meta::v1::LabelSelector,
    jiff::Timestamp,
};
use serde_json::Value;

use super::{
    apps::label_selector_string,
    core::{default_pod_spec, status_slot, validate_pod_spec},
};
use crate::api::{
    error::Cause,
    kind::{age, human_duration, Column, Rules, AGE, NAME},
    selector::LabelSelector as Parsed,
};

/// The labels kube's Job strategy puts on the template and selects by (batch/v1, 1.27+).
pub const CONTROLLER_UID: &str = "batch.kubernetes.io/controller-uid";
pub const JOB_NAME: &str = "batch.kubernetes.io/job-name";

impl Rules for Job {
    const NAMESPACED: bool = true;
    const SINGULAR: &'static str = "job";
    const CATEGORIES: &'static [&'static str] = &["all"];
    const HAS_STATUS: bool = true;
    const COLUMNS: &'static [Column] = &[
        NAME,
        Column::new("Status", "string", 0),
        Column::new("Completions", "string", 0),
        Column::new("Duration", "string", 0),
        AGE,
        Column::new("Containers", "string", 1),
        Column::new("Images", "string", 1),
        Column::new("Selector", "string", 1),
    ];

    /// kube's defaults, and unless `manualSelector`, a selector on the Job's uid with the same
    /// labels on the template (the legacy `controller-uid` / `job-name` ones too, which older
    /// tools select by).
    fn default(&mut self) {
        let uid = self.metadata.uid.clone().unwrap_or_default();
        let name = self.metadata.name.clone().unwrap_or_default();
        let spec = self.spec.get_or_insert_with(Default::default);
        if spec.completions.is_none() && spec.parallelism.is_none() {
            spec.completions = Some(1);
        }
        spec.parallelism.get_or_insert(1);
        spec.backoff_limit.get_or_insert(6);
        spec.completion_mode
            .get_or_insert_with(|| "NonIndexed".into());
        spec.suspend.get_or_insert(false);
        spec.pod_replacement_policy
            .get_or_insert_with(|| "TerminatedOrFailed".into());
        if spec.manual_selector != Some(true) && spec.selector.is_none() && !uid.is_empty() {
            spec.selector = Some(LabelSelector {
                match_labels: Some([(CONTROLLER_UID.to_string(), uid.clone())].into()),
                ..Default::default()
            });
            let labels = spec
                .template
                .metadata
                .get_or_insert_with(Default::default)
                .labels
                .get_or_insert_with(Default::default);
            for (k, v) in [
                (CONTROLLER_UID, &uid),
                ("controller-uid", &uid),
                (JOB_NAME, &name),
                ("job-name", &name),
            ] {
                labels.insert(k.into(), v.clone());
            }
        }
        if let Some(t) = spec.template.spec.as_mut() {
            default_pod_spec(t);
        }
    }

    fn validate(&self, causes: &mut Vec<Cause>) {
        let Some(spec) = &self.spec else {
            return causes.push(Cause::required("spec"));
        };
        match &spec.template.spec {
            Some(ps) => {
                validate_pod_spec(ps, "spec.template.spec", causes);
                const POLICIES: &[&str] = &["OnFailure", "Never"];
                let rp = ps.restart_policy.as_deref().unwrap_or("Always");
                if !POLICIES.contains(&rp) {
                    causes.push(Cause::unsupported(
                        "spec.template.spec.restartPolicy",
                        rp,
                        POLICIES,
                    ));
                }
            }
            None => causes.push(Cause::required("spec.template.spec")),
        }
        for (field, v) in [
            ("spec.parallelism", spec.parallelism),
            ("spec.completions", spec.completions),
            ("spec.backoffLimit", spec.backoff_limit),
        ] {
            if let Some(n) = v.filter(|n| *n < 0) {
                causes.push(Cause::invalid(
                    field,
                    &n.to_string(),
                    "must be greater than or equal to 0",
                ));
            }
        }
        if let Some(n) = spec.active_deadline_seconds.filter(|n| *n <= 0) {
            causes.push(Cause::invalid(
                "spec.activeDeadlineSeconds",
                &n.to_string(),
                "must be greater than 0",
            ));
        }
        if let Some(mode) = spec
            .completion_mode
            .as_deref()
            .filter(|m| *m != "NonIndexed")
        {
            // Indexed Jobs (per-pod completion indexes) are not implemented: refused, not
            // run wrongly.
            causes.push(Cause::unsupported(
                "spec.completionMode",
                mode,
                &["NonIndexed"],
            ));
        }
        match &spec.selector {
            None => causes.push(Cause::required("spec.selector")),
            Some(sel) => {
                let s = label_selector_string(Some(sel));
                let labels = spec
                    .template
                    .metadata
                    .as_ref()
                    .and_then(|m| m.labels.clone())
                    .unwrap_or_default();
                if s.is_empty() || !Parsed::parse(&s).is_ok_and(|p| p.matches(&labels)) {
                    causes.push(Cause {
                        reason: "FieldValueInvalid",
                        field: "spec.template.metadata.labels".into(),
                        message: format!(
                            "Invalid value: {labels:?}: `selector` does not match template `labels`"
                        ),
                    });
                }
            }
        }
    }

    /// kube: the selector, template and completions are immutable (suspended Jobs may change
    /// their template; not supported here).
    fn validate_update(&self, old: &Self, causes: &mut Vec<Cause>) {
        let (Some(n), Some(o)) = (&self.spec, &old.spec) else {
            return;
        };
        for (field, changed) in [
            ("spec.selector", n.selector != o.selector),
            ("spec.template", n.template != o.template),
            ("spec.completions", n.completions != o.completions),
            (
                "spec.completionMode",
                n.completion_mode != o.completion_mode,
            ),
        ] {
            if changed {
                causes.push(Cause {
                    reason: "FieldValueInvalid",
                    field: field.into(),
                    message: "Invalid value: field is immutable".into(),
                });
            }
        }
    }

    fn row(&self, now: Timestamp) -> Vec<Value> {
        let spec = self.spec.clone().unwrap_or_default();
        let st = self.status.clone().unwrap_or_default();
        let cond = |t: &str| {
            st.conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == t && c.status == "True")
        };
        // kubectl 1.30+'s STATUS column.
        let status = if cond("Complete") {
            "Complete"
        } else if cond("Failed") {
            "Failed"
        } else if cond("FailureTarget") {
            "FailureTarget"
        } else if cond("SuccessCriteriaMet") {
            "SuccessCriteriaMet"
        } else if spec.suspend == Some(true) {
            "Suspended"
        } else {
            "Running"
        };
        let completions = match spec.completions {
            Some(c) => format!("{}/{c}", st.succeeded.unwrap_or(0)),
            None => format!(
                "{}/1 of {}",
                st.succeeded.unwrap_or(0),
                spec.parallelism.unwrap_or(1)
            ),
        };
        let duration = match (&st.start_time, &st.completion_time) {
            (Some(s), Some(e)) => human_duration(e.0.as_second() - s.0.as_second()),
            (Some(s), None) => human_duration(now.as_second() - s.0.as_second()),
            _ => String::new(),
        };
        let cs = spec
            .template
            .spec
            .as_ref()
            .map(|s| &s.containers[..])
            .unwrap_or(&[]);
        vec![
            Value::String(status.into()),
            Value::String(completions),
            Value::String(duration),
            age(&self.metadata, now),
            Value::String(
                cs.iter()
                    .map(|c| c.name.clone())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            Value::String(
                cs.iter()
                    .map(|c| c.image.clone().unwrap_or_default())
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            Value::String(label_selector_string(spec.selector.as_ref())),
        ]
    }

    status_slot!(Job, JobStatus);
}
