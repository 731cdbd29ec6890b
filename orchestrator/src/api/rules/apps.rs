//! apps/v1 Deployments, ReplicaSets and DaemonSets, and discovery.k8s.io/v1 EndpointSlices.

use k8s_openapi::{
    api::{
        apps::v1::{
            DaemonSet, DaemonSetStatus, DaemonSetUpdateStrategy, Deployment, DeploymentStatus,
            DeploymentStrategy, ReplicaSet, ReplicaSetStatus, RollingUpdateDaemonSet,
            RollingUpdateDeployment,
        },
        core::v1::PodTemplateSpec,
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::{apis::meta::v1::LabelSelector, util::intstr::IntOrString},
    jiff::Timestamp,
};
use serde_json::Value;

use super::core::{default_pod_spec, selector_string, status_slot, validate_pod_spec};
use crate::api::{
    error::Cause,
    kind::{age, Column, Rules, ScaleView, AGE, NAME},
    selector::LabelSelector as Parsed,
};

/// A LabelSelector in the string form `/scale` and kubectl print.
pub fn label_selector_string(sel: Option<&LabelSelector>) -> String {
    let Some(sel) = sel else {
        return String::new();
    };
    let mut parts = vec![selector_string(sel.match_labels.as_ref())];
    for e in sel.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default().join(",");
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({values})", e.key),
            "NotIn" => format!("{} notin ({values})", e.key),
            "Exists" => e.key.clone(),
            _ => format!("!{}", e.key),
        });
    }
    parts.retain(|p| !p.is_empty());
    parts.join(",")
}

fn default_template(t: &mut PodTemplateSpec) {
    if let Some(spec) = t.spec.as_mut() {
        default_pod_spec(spec);
    }
}

/// Selector present, non-empty and matching the template's labels (apps/v1 rules). `what`
/// names the kind in the empty-selector message as kube does (ReplicaSets say "deployment").
fn validate_workload(
    selector: &LabelSelector,
    template: &PodTemplateSpec,
    replicas: Option<i32>,
    what: &str,
    causes: &mut Vec<Cause>,
) {
    let sel = label_selector_string(Some(selector));
    if sel.is_empty() {
        causes.push(Cause {
            reason: "FieldValueInvalid",
            field: "spec.selector".into(),
            message: format!("Invalid value: v1.LabelSelector{{MatchLabels:map[string]string(nil), MatchExpressions:[]v1.LabelSelectorRequirement(nil)}}: empty selector is invalid for {what}"),
        });
    } else {
        let labels = template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        if !Parsed::parse(&sel).is_ok_and(|p| p.matches(&labels)) {
            causes.push(Cause {
                reason: "FieldValueInvalid",
                field: "spec.template.metadata.labels".into(),
                message: format!(
                    "Invalid value: {labels:?}: `selector` does not match template `labels`"
                ),
            });
        }
    }
    match &template.spec {
        Some(spec) => validate_pod_spec(spec, "spec.template.spec", causes),
        None => causes.push(Cause::required("spec.template.spec")),
    }
    if let Some(r) = replicas.filter(|r| *r < 0) {
        causes.push(Cause::invalid(
            "spec.replicas",
            &r.to_string(),
            "must be greater than or equal to 0",
        ));
    }
}

fn selector_immutable(new: &LabelSelector, old: &LabelSelector, causes: &mut Vec<Cause>) {
    if new != old {
        causes.push(Cause {
            reason: "FieldValueInvalid",
            field: "spec.selector".into(),
            message: format!(
                "Invalid value: \"{}\": field is immutable",
                label_selector_string(Some(new))
            ),
        });
    }
}

fn containers_and_images(t: &PodTemplateSpec) -> (String, String) {
    let cs = t.spec.as_ref().map(|s| &s.containers[..]).unwrap_or(&[]);
    (
        cs.iter()
            .map(|c| c.name.clone())
            .collect::<Vec<_>>()
            .join(","),
        cs.iter()
            .map(|c| c.image.clone().unwrap_or_default())
            .collect::<Vec<_>>()
            .join(","),
    )
}

impl Rules for Deployment {
    const NAMESPACED: bool = true;
    const SINGULAR: &'static str = "deployment";
    const SHORT_NAMES: &'static [&'static str] = &["deploy"];
    const CATEGORIES: &'static [&'static str] = &["all"];
    const HAS_STATUS: bool = true;
    const HAS_SCALE: bool = true;
    const COLUMNS: &'static [Column] = &[
        NAME,
        Column::new("Ready", "string", 0),
        Column::new("Up-to-date", "integer", 0),
        Column::new("Available", "integer", 0),
        AGE,
        Column::new("Containers", "string", 1),
        Column::new("Images", "string", 1),
        Column::new("Selector", "string", 1),
    ];

    fn default(&mut self) {
        let spec = self.spec.get_or_insert_with(Default::default);
        spec.replicas.get_or_insert(1);
        spec.revision_history_limit.get_or_insert(10);
        spec.progress_deadline_seconds.get_or_insert(600);
        let strategy = spec
            .strategy
            .get_or_insert_with(DeploymentStrategy::default);
        let ty = strategy.type_.get_or_insert_with(|| "RollingUpdate".into());
        if ty == "RollingUpdate" {
            let ru = strategy
                .rolling_update
                .get_or_insert_with(RollingUpdateDeployment::default);
            ru.max_surge
                .get_or_insert(IntOrString::String("25%".into()));
            ru.max_unavailable
                .get_or_insert(IntOrString::String("25%".into()));
        }
        default_template(&mut spec.template);
    }

    fn validate(&self, causes: &mut Vec<Cause>) {
        let Some(spec) = &self.spec else {
            return causes.push(Cause::required("spec"));
        };
        validate_workload(
            &spec.selector,
            &spec.template,
            spec.replicas,
            "deployment",
            causes,
        );
        const STRATEGIES: &[&str] = &["Recreate", "RollingUpdate"];
        if let Some(t) = spec
            .strategy
            .as_ref()
            .and_then(|s| s.type_.as_deref())
            .filter(|t| !STRATEGIES.contains(t))
        {
            causes.push(Cause::unsupported("spec.strategy.type", t, STRATEGIES));
        }
    }

    fn validate_update(&self, old: &Self, causes: &mut Vec<Cause>) {
        if let (Some(n), Some(o)) = (&self.spec, &old.spec) {
            selector_immutable(&n.selector, &o.selector, causes);
        }
    }

    fn row(&self, now: Timestamp) -> Vec<Value> {
        let spec = self.spec.clone().unwrap_or_default();
        let st = self.status.clone().unwrap_or_default();
        let (containers, images) = containers_and_images(&spec.template);
        vec![
            Value::String(format!(
                "{}/{}",
                st.ready_replicas.unwrap_or(0),
                spec.replicas.unwrap_or(1)
            )),
            Value::from(st.updated_replicas.unwrap_or(0)),
            Value::from(st.available_replicas.unwrap_or(0)),
            age(&self.metadata, now),
            Value::String(containers),
            Value::String(images),
            Value::String(label_selector_string(Some(&spec.selector))),
        ]
    }

    status_slot!(Deployment, DeploymentStatus);

    fn scale(&self) -> Option<ScaleView> {
        let spec = self.spec.as_ref()?;
        Some(ScaleView {
            spec: spec.replicas.unwrap_or(1),
            status: self.status.as_ref().and_then(|s| s.replicas).unwrap_or(0),
            selector: label_selector_string(Some(&spec.selector)),
        })
    }

    fn set_replicas(&mut self, n: i32) {
        self.spec.get_or_insert_with(Default::default).replicas = Some(n);
    }
}

impl Rules for ReplicaSet {
    const NAMESPACED: bool = true;
    const SINGULAR: &'static str = "replicaset";
    const SHORT_NAMES: &'static [&'static str] = &["rs"];
    const CATEGORIES: &'static [&'static str] = &["all"];
    const HAS_STATUS: bool = true;
    const HAS_SCALE: bool = true;
    const COLUMNS: &'static [Column] = &[
        NAME,
        Column::new("Desired", "integer", 0),
        Column::new("Current", "integer", 0),
        Column::new("Ready", "integer", 0),
        AGE,
        Column::new("Containers", "string", 1),
        Column::new("Images", "string", 1),
        Column::new("Selector", "string", 1),
    ];

    fn default(&mut self) {
        let spec = self.spec.get_or_insert_with(Default::default);
        spec.replicas.get_or_insert(1);
        if let Some(t) = spec.template.as_mut() {
            default_template(t);
        }
    }

    fn validate(&self, causes: &mut Vec<Cause>) {
        let Some(spec) = &self.spec else {
            return causes.push(Cause::required("spec"));
        };
        match &spec.template {
            Some(t) => validate_workload(&spec.selector, t, spec.replicas, "deployment", causes),
            None => causes.push(Cause::required("spec.template")),
        }
    }

    fn validate_update(&self, old: &Self, causes: &mut Vec<Cause>) {
        if let (Some(n), Some(o)) = (&self.spec, &old.spec) {
            selector_immutable(&n.selector, &o.selector, causes);
        }
    }

    fn row(&self, now: Timestamp) -> Vec<Value> {
        let spec = self.spec.clone().unwrap_or_default();
        let st = self.status.clone().unwrap_or_default();
        let (containers, images) = spec
            .template
            .as_ref()
            .map(containers_and_images)
            .unwrap_or_default();
        vec![
            Value::from(spec.replicas.unwrap_or(1)),
            Value::from(st.replicas),
            Value::from(st.ready_replicas.unwrap_or(0)),
            age(&self.metadata, now),
            Value::String(containers),
            Value::String(images),
            Value::String(label_selector_string(Some(&spec.selector))),
        ]
    }

    status_slot!(ReplicaSet, ReplicaSetStatus);

    fn scale(&self) -> Option<ScaleView> {
        let spec = self.spec.as_ref()?;
        Some(ScaleView {
            spec: spec.replicas.unwrap_or(1),
            status: self.status.as_ref().map_or(0, |s| s.replicas),
            selector: label_selector_string(Some(&spec.selector)),
        })
    }

    fn set_replicas(&mut self, n: i32) {
        self.spec.get_or_insert_with(Default::default).replicas = Some(n);
    }
}

/// kube's ValidatePositiveIntOrPercent and IsNotMoreThan100Percent; the value as a number
/// (count or percent) for the surge/unavailable checks, 0 when unset or malformed.
fn int_or_percent(v: Option<&IntOrString>, field: &str, causes: &mut Vec<Cause>) -> i64 {
    match v {
        None => 0,
        Some(IntOrString::Int(n)) => {
            if *n < 0 {
                causes.push(Cause::invalid(
                    field,
                    &n.to_string(),
                    "must be greater than or equal to 0",
                ));
            }
            i64::from(*n)
        }
        Some(IntOrString::String(s)) => {
            let Some(n) = s
                .strip_suffix('%')
                .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|d| d.parse::<i64>().ok())
            else {
                causes.push(Cause::invalid(
                    field,
                    s,
                    "a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')",
                ));
                return 0;
            };
            if n > 100 {
                causes.push(Cause::invalid(field, s, "must not be greater than 100%"));
            }
            n
        }
    }
}

fn non_negative(v: Option<i32>, field: &str, causes: &mut Vec<Cause>) {
    if let Some(n) = v.filter(|n| *n < 0) {
        causes.push(Cause::invalid(
            field,
            &n.to_string(),
            "must be greater than or equal to 0",
        ));
    }
}

impl Rules for DaemonSet {
    const NAMESPACED: bool = true;
    const SINGULAR: &'static str = "daemonset";
    const SHORT_NAMES: &'static [&'static str] = &["ds"];
    const CATEGORIES: &'static [&'static str] = &["all"];
    const HAS_STATUS: bool = true;
    const COLUMNS: &'static [Column] = &[
        NAME,
        Column::new("Desired", "integer", 0),
        Column::new("Current", "integer", 0),
        Column::new("Ready", "integer", 0),
        Column::new("Up-to-date", "integer", 0),
        Column::new("Available", "integer", 0),
        Column::new("Node Selector", "string", 0),
        AGE,
        Column::new("Containers", "string", 1),
        Column::new("Images", "string", 1),
        Column::new("Selector", "string", 1),
    ];

    fn default(&mut self) {
        let spec = self.spec.get_or_insert_with(Default::default);
        spec.revision_history_limit.get_or_insert(10);
        let strategy = spec
            .update_strategy
            .get_or_insert_with(DaemonSetUpdateStrategy::default);
        let ty = strategy.type_.get_or_insert_with(|| "RollingUpdate".into());
        if ty == "RollingUpdate" {
            let ru = strategy
                .rolling_update
                .get_or_insert_with(RollingUpdateDaemonSet::default);
            ru.max_unavailable.get_or_insert(IntOrString::Int(1));
            ru.max_surge.get_or_insert(IntOrString::Int(0));
        }
        default_template(&mut spec.template);
    }

    fn validate(&self, causes: &mut Vec<Cause>) {
        let Some(spec) = &self.spec else {
            return causes.push(Cause::required("spec"));
        };
        validate_workload(&spec.selector, &spec.template, None, "daemonset", causes);
        if let Some(pod) = &spec.template.spec {
            // A daemon pod that exits would be replaced on its node at once, forever.
            let policy = pod.restart_policy.as_deref().unwrap_or("");
            if policy != "Always" {
                causes.push(Cause::unsupported(
                    "spec.template.spec.restartPolicy",
                    policy,
                    &["Always"],
                ));
            }
            if let Some(s) = pod.active_deadline_seconds {
                causes.push(Cause::invalid(
                    "spec.template.spec.activeDeadlineSeconds",
                    &s.to_string(),
                    "activeDeadlineSeconds in DaemonSet is not Supported",
                ));
            }
        }
        non_negative(spec.min_ready_seconds, "spec.minReadySeconds", causes);
        non_negative(
            spec.revision_history_limit,
            "spec.revisionHistoryLimit",
            causes,
        );
        let strategy = spec.update_strategy.clone().unwrap_or_default();
        const STRATEGIES: &[&str] = &["RollingUpdate", "OnDelete"];
        match strategy.type_.as_deref().unwrap_or("") {
            "OnDelete" => {}
            "RollingUpdate" => match &strategy.rolling_update {
                None => causes.push(Cause::required("spec.updateStrategy.rollingUpdate")),
                Some(ru) => {
                    let at = "spec.updateStrategy.rollingUpdate";
                    let unavailable = int_or_percent(
                        ru.max_unavailable.as_ref(),
                        &format!("{at}.maxUnavailable"),
                        causes,
                    );
                    let surge =
                        int_or_percent(ru.max_surge.as_ref(), &format!("{at}.maxSurge"), causes);
                    if unavailable != 0 && surge != 0 {
                        causes.push(Cause {
                            reason: "FieldValueInvalid",
                            field: format!("{at}.maxSurge"),
                            message: format!(
                                "Invalid value: {}: may not be set when maxUnavailable is non-zero",
                                match &ru.max_surge {
                                    Some(IntOrString::Int(n)) => n.to_string(),
                                    Some(IntOrString::String(s)) => s.clone(),
                                    None => String::new(),
                                }
                            ),
                        });
                    } else if unavailable == 0 && surge == 0 {
                        causes.push(Cause {
                            reason: "FieldValueRequired",
                            field: format!("{at}.maxUnavailable"),
                            message: "Required value: cannot be 0 when maxSurge is 0".into(),
                        });
                    }
                }
            },
            other => causes.push(Cause::unsupported("spec.updateStrategy", other, STRATEGIES)),
        }
    }

    fn validate_update(&self, old: &Self, causes: &mut Vec<Cause>) {
        if let (Some(n), Some(o)) = (&self.spec, &old.spec) {
            selector_immutable(&n.selector, &o.selector, causes);
        }
    }

    fn row(&self, now: Timestamp) -> Vec<Value> {
        let spec = self.spec.clone().unwrap_or_default();
        let st = self.status.clone().unwrap_or_default();
        let (containers, images) = containers_and_images(&spec.template);
        let node_selector = spec
            .template
            .spec
            .as_ref()
            .map(|s| selector_string(s.node_selector.as_ref()))
            .unwrap_or_default();
        vec![
            Value::from(st.desired_number_scheduled),
            Value::from(st.current_number_scheduled),
            Value::from(st.number_ready),
            Value::from(st.updated_number_scheduled.unwrap_or(0)),
            Value::from(st.number_available.unwrap_or(0)),
            Value::String(if node_selector.is_empty() {
                "<none>".into()
            } else {
                node_selector
            }),
            age(&self.metadata, now),
            Value::String(containers),
            Value::String(images),
            Value::String(label_selector_string(Some(&spec.selector))),
        ]
    }

    status_slot!(DaemonSet, DaemonSetStatus);
}

impl Rules for EndpointSlice {
    const NAMESPACED: bool = true;
    const SINGULAR: &'static str = "endpointslice";
    const COLUMNS: &'static [Column] = &[
        NAME,
        Column::new("AddressType", "string", 0),
        Column::new("Ports", "string", 0),
        Column::new("Endpoints", "string", 0),
        AGE,
    ];

    fn validate(&self, causes: &mut Vec<Cause>) {
        const TYPES: &[&str] = &["IPv4", "IPv6", "FQDN"];
        if !TYPES.contains(&self.address_type.as_str()) {
            causes.push(Cause::unsupported("addressType", &self.address_type, TYPES));
        }
        if self.endpoints.len() > 1000 {
            causes.push(Cause {
                reason: "FieldValueTooMany",
                field: "endpoints".into(),
                message: format!(
                    "Too many: {}: must have at most 1000 items",
                    self.endpoints.len()
                ),
            });
        }
        for (i, e) in self.endpoints.iter().enumerate() {
            if e.addresses.is_empty() || e.addresses.len() > 100 {
                causes.push(Cause::invalid(
                    format!("endpoints[{i}].addresses"),
                    &e.addresses.len().to_string(),
                    "must contain at least 1 and at most 100 addresses",
                ));
            }
            for (j, a) in e.addresses.iter().enumerate() {
                let ok = match self.address_type.as_str() {
                    "IPv4" => a.parse::<std::net::Ipv4Addr>().is_ok(),
                    "IPv6" => a.parse::<std::net::Ipv6Addr>().is_ok(),
                    _ => true,
                };
                if !ok {
                    causes.push(Cause::invalid(
                        format!("endpoints[{i}].addresses[{j}]"),
                        a,
                        &format!("must be a valid {} address", self.address_type),
                    ));
                }
            }
        }
    }

    fn row(&self, now: Timestamp) -> Vec<Value> {
        let ports: Vec<String> = self
            .ports
            .iter()
            .flatten()
            .map(|p| p.port.map_or("<unset>".into(), |p| p.to_string()))
            .collect();
        let addrs: Vec<&str> = self
            .endpoints
            .iter()
            .flat_map(|e| e.addresses.iter().map(String::as_str))
            .collect();
        let shown = if addrs.len() > 3 {
            format!("{} + {} more...", addrs[..3].join(","), addrs.len() - 3)
        } else {
            addrs.join(",")
        };
        vec![
            Value::String(self.address_type.clone()),
            Value::String(if ports.is_empty() {
                "<unset>".into()
            } else {
                ports.join(",")
            }),
            Value::String(if shown.is_empty() {
                "<unset>".into()
            } else {
                shown
            }),
            age(&self.metadata, now),
        ]
    }
}
