//! admissionregistration.k8s.io/v1: Mutating- and ValidatingWebhookConfigurations, with
//! kube's defaults and the checks that keep a configuration callable (`api/webhooks.rs`
//! calls them).

use k8s_openapi::{
    api::admissionregistration::v1::{
        MutatingWebhookConfiguration, RuleWithOperations, ValidatingWebhookConfiguration,
        WebhookClientConfig,
    },
    apimachinery::pkg::apis::meta::v1::LabelSelector,
    jiff::Timestamp,
};
use serde_json::Value;

use crate::api::{
    error::Cause,
    kind::{age, Column, Rules, AGE, NAME},
};

const COLUMNS: &[Column] = &[NAME, Column::new("Webhooks", "integer", 0), AGE];

/// The fields both webhook flavours share, by reference, for one set of checks.
struct Common<'a> {
    name: &'a str,
    namespace_selector: Option<&'a LabelSelector>,
    object_selector: Option<&'a LabelSelector>,
    client_config: &'a WebhookClientConfig,
    rules: Option<&'a [RuleWithOperations]>,
    failure_policy: Option<&'a str>,
    side_effects: &'a str,
    timeout_seconds: Option<i32>,
    admission_review_versions: &'a [String],
}

fn default_rules(rules: &mut Option<Vec<RuleWithOperations>>) {
    for r in rules.iter_mut().flatten() {
        r.scope.get_or_insert_with(|| "*".into());
    }
}

fn default_selector(sel: &mut Option<LabelSelector>) {
    sel.get_or_insert_with(LabelSelector::default);
}

/// kube's ValidateLabelSelector for the operators a selector may use.
fn validate_selector(sel: Option<&LabelSelector>, field: String, causes: &mut Vec<Cause>) {
    for (i, e) in sel
        .and_then(|s| s.match_expressions.as_ref())
        .into_iter()
        .flatten()
        .enumerate()
    {
        let f = format!("{field}.matchExpressions[{i}]");
        let values = e.values.as_ref().map_or(0, Vec::len);
        match e.operator.as_str() {
            "In" | "NotIn" if values == 0 => causes.push(Cause::required(format!(
                "{f}.values: must be specified when `operator` is 'In' or 'NotIn'"
            ))),
            "Exists" | "DoesNotExist" if values > 0 => causes.push(Cause {
                reason: "FieldValueForbidden",
                field: format!("{f}.values"),
                message:
                    "Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'"
                        .into(),
            }),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            op => causes.push(Cause::unsupported(
                format!("{f}.operator"),
                op,
                &["In", "NotIn", "Exists", "DoesNotExist"],
            )),
        }
    }
}

fn validate(hooks: &[Common<'_>], causes: &mut Vec<Cause>) {
    let mut names = std::collections::HashSet::new();
    for (i, w) in hooks.iter().enumerate() {
        let f = format!("webhooks[{i}]");
        // kube: a fully qualified name, at least three segments (`inject.meshwork.io`).
        if w.name.split('.').filter(|s| !s.is_empty()).count() < 3 {
            causes.push(Cause::invalid(
                format!("{f}.name"),
                w.name,
                "should be a domain with at least three segments separated by dots",
            ));
        } else if !names.insert(w.name) {
            causes.push(Cause {
                reason: "FieldValueDuplicate",
                field: format!("{f}.name"),
                message: format!("Duplicate value: \"{}\"", w.name),
            });
        }
        let cc = w.client_config;
        match (&cc.url, &cc.service) {
            (Some(_), Some(_)) | (None, None) => causes.push(Cause {
                reason: "FieldValueRequired",
                field: format!("{f}.clientConfig"),
                message: "Required value: exactly one of url or service is required".into(),
            }),
            (Some(u), None) if !u.starts_with("https://") => causes.push(Cause::invalid(
                format!("{f}.clientConfig.url"),
                u,
                "'https' is the only allowed URL scheme",
            )),
            _ => {}
        }
        if !w.admission_review_versions.iter().any(|v| v == "v1") {
            causes.push(Cause::unsupported(
                format!("{f}.admissionReviewVersions"),
                &w.admission_review_versions.join(","),
                &["v1"],
            ));
        }
        const SIDE_EFFECTS: &[&str] = &["None", "NoneOnDryRun"];
        if !SIDE_EFFECTS.contains(&w.side_effects) {
            causes.push(Cause::unsupported(
                format!("{f}.sideEffects"),
                w.side_effects,
                SIDE_EFFECTS,
            ));
        }
        const POLICIES: &[&str] = &["Fail", "Ignore"];
        if let Some(p) = w.failure_policy.filter(|p| !POLICIES.contains(p)) {
            causes.push(Cause::unsupported(
                format!("{f}.failurePolicy"),
                p,
                POLICIES,
            ));
        }
        if let Some(t) = w.timeout_seconds.filter(|t| !(1..=30).contains(t)) {
            causes.push(Cause::invalid(
                format!("{f}.timeoutSeconds"),
                &t.to_string(),
                "the timeout value must be between 1 and 30 seconds",
            ));
        }
        validate_selector(
            w.namespace_selector,
            format!("{f}.namespaceSelector"),
            causes,
        );
        validate_selector(w.object_selector, format!("{f}.objectSelector"), causes);
        const OPS: &[&str] = &["*", "CREATE", "UPDATE", "DELETE", "CONNECT"];
        for (j, r) in w.rules.into_iter().flatten().enumerate() {
            for op in r
                .operations
                .iter()
                .flatten()
                .filter(|o| !OPS.contains(&o.as_str()))
            {
                causes.push(Cause::unsupported(
                    format!("{f}.rules[{j}].operations"),
                    op,
                    OPS,
                ));
            }
        }
    }
}

/// What only a mutating webhook has to default.
fn default_mutating(w: &mut k8s_openapi::api::admissionregistration::v1::MutatingWebhook) {
    w.reinvocation_policy.get_or_insert_with(|| "Never".into());
}

/// The Rules of both flavours, whose webhooks share every field read here; `$extra` defaults
/// what only one flavour has.
macro_rules! webhook_configuration {
    ($ty:ty, $singular:literal $(, $extra:ident)?) => {
        impl Rules for $ty {
            const NAMESPACED: bool = false;
            const SINGULAR: &'static str = $singular;
            const COLUMNS: &'static [Column] = COLUMNS;

            fn default(&mut self) {
                for w in self.webhooks.iter_mut().flatten() {
                    w.failure_policy.get_or_insert_with(|| "Fail".into());
                    w.match_policy.get_or_insert_with(|| "Equivalent".into());
                    w.timeout_seconds.get_or_insert(10);
                    default_selector(&mut w.namespace_selector);
                    default_selector(&mut w.object_selector);
                    default_rules(&mut w.rules);
                    $($extra(w);)?
                }
            }

            fn validate(&self, causes: &mut Vec<Cause>) {
                let hooks: Vec<Common<'_>> = self
                    .webhooks
                    .iter()
                    .flatten()
                    .map(|w| Common {
                        name: &w.name,
                        namespace_selector: w.namespace_selector.as_ref(),
                        object_selector: w.object_selector.as_ref(),
                        client_config: &w.client_config,
                        rules: w.rules.as_deref(),
                        failure_policy: w.failure_policy.as_deref(),
                        side_effects: &w.side_effects,
                        timeout_seconds: w.timeout_seconds,
                        admission_review_versions: &w.admission_review_versions,
                    })
                    .collect();
                validate(&hooks, causes);
            }

            fn row(&self, now: Timestamp) -> Vec<Value> {
                vec![
                    Value::from(self.webhooks.as_ref().map_or(0, Vec::len)),
                    age(&self.metadata, now),
                ]
            }
        }
    };
}

webhook_configuration!(
    MutatingWebhookConfiguration,
    "mutatingwebhookconfiguration",
    default_mutating
);
webhook_configuration!(
    ValidatingWebhookConfiguration,
    "validatingwebhookconfiguration"
);
