//! rbac.authorization.k8s.io/v1 Role, ClusterRole, RoleBinding, ClusterRoleBinding: what
//! kube validates (`pkg/apis/rbac/validation` upstream) and how kubectl prints them. Who may
//! write them (the escalation check) is `api/reviews.rs`; what they allow,
//! `server/authz/rbac.rs`.

use k8s_openapi::{
    api::rbac::v1::{
        ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
    },
    jiff::Timestamp,
};
use serde_json::Value;

use crate::api::{
    error::Cause,
    kind::{age, Column, NameRule, Rules, AGE, NAME},
};

const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

fn validate_rules(rules: Option<&Vec<PolicyRule>>, namespaced: bool, causes: &mut Vec<Cause>) {
    for (i, r) in rules.into_iter().flatten().enumerate() {
        let at = format!("rules[{i}]");
        if r.verbs.is_empty() {
            causes.push(Cause::required(format!("{at}.verbs")));
        }
        let urls = r.non_resource_urls.as_deref().unwrap_or_default();
        let resources = r.resources.as_deref().unwrap_or_default();
        if !urls.is_empty() {
            if namespaced {
                causes.push(Cause::invalid(
                    format!("{at}.nonResourceURLs"),
                    &urls.join(","),
                    "namespaced rules cannot apply to non-resource URLs",
                ));
            }
            if !resources.is_empty() || r.api_groups.as_ref().is_some_and(|g| !g.is_empty()) {
                causes.push(Cause::invalid(
                    format!("{at}.nonResourceURLs"),
                    &urls.join(","),
                    "rules cannot apply to both regular resources and non-resource URLs",
                ));
            }
            continue;
        }
        if r.api_groups.as_ref().is_none_or(|g| g.is_empty()) {
            causes.push(Cause::required(format!("{at}.apiGroups")));
        }
        if resources.is_empty() {
            causes.push(Cause::required(format!("{at}.resources")));
        }
    }
}

fn validate_role_ref(r: &RoleRef, namespaced: bool, causes: &mut Vec<Cause>) {
    if r.api_group != RBAC_GROUP {
        causes.push(Cause::unsupported(
            "roleRef.apiGroup",
            &r.api_group,
            &[RBAC_GROUP],
        ));
    }
    let kinds: &[&str] = if namespaced {
        &["Role", "ClusterRole"]
    } else {
        &["ClusterRole"]
    };
    if !kinds.contains(&r.kind.as_str()) {
        causes.push(Cause::unsupported("roleRef.kind", &r.kind, kinds));
    }
    if r.name.is_empty() {
        causes.push(Cause::required("roleRef.name"));
    }
}

fn validate_subjects(subjects: Option<&Vec<Subject>>, namespaced: bool, causes: &mut Vec<Cause>) {
    for (i, s) in subjects.into_iter().flatten().enumerate() {
        let at = format!("subjects[{i}]");
        if s.name.is_empty() {
            causes.push(Cause::required(format!("{at}.name")));
        }
        match s.kind.as_str() {
            "ServiceAccount" => {
                if s.api_group.as_deref().is_some_and(|g| !g.is_empty()) {
                    causes.push(Cause::unsupported(
                        format!("{at}.apiGroup"),
                        s.api_group.as_deref().unwrap_or_default(),
                        &[""],
                    ));
                }
                if !namespaced && s.namespace.as_deref().unwrap_or_default().is_empty() {
                    causes.push(Cause::required(format!("{at}.namespace")));
                }
            }
            "User" | "Group" => {
                if s.api_group.as_deref() != Some(RBAC_GROUP) {
                    causes.push(Cause::unsupported(
                        format!("{at}.apiGroup"),
                        s.api_group.as_deref().unwrap_or_default(),
                        &[RBAC_GROUP],
                    ));
                }
            }
            other => causes.push(Cause::unsupported(
                format!("{at}.kind"),
                other,
                &["ServiceAccount", "User", "Group"],
            )),
        }
    }
}

/// kubectl's `create rolebinding --user` writes no apiGroup on User/Group subjects in some
/// versions; kube's defaulting sets it, and "" on ServiceAccounts.
fn default_subjects(subjects: Option<&mut Vec<Subject>>) {
    for s in subjects.into_iter().flatten() {
        match s.kind.as_str() {
            "User" | "Group" if s.api_group.as_deref().unwrap_or_default().is_empty() => {
                s.api_group = Some(RBAC_GROUP.into());
            }
            "ServiceAccount" if s.api_group.is_none() => s.api_group = Some(String::new()),
            _ => {}
        }
    }
}

fn role_ref_cell(r: &RoleRef) -> Value {
    Value::from(format!("{}/{}", r.kind, r.name))
}

fn subject_cells(subjects: Option<&Vec<Subject>>) -> [Value; 3] {
    let pick = |kind: &str| {
        subjects
            .into_iter()
            .flatten()
            .filter(|s| s.kind == kind)
            .map(|s| match (kind, s.namespace.as_deref()) {
                ("ServiceAccount", Some(ns)) => format!("{ns}/{}", s.name),
                _ => s.name.clone(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    [
        Value::from(pick("User")),
        Value::from(pick("Group")),
        Value::from(pick("ServiceAccount")),
    ]
}

const CREATED_AT: Column = Column::new("Created At", "string", 0);
const BINDING_COLUMNS: &[Column] = &[
    NAME,
    Column::new("Role", "string", 0),
    AGE,
    Column::new("Users", "string", 1),
    Column::new("Groups", "string", 1),
    Column::new("ServiceAccounts", "string", 1),
];

fn created_at(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Value {
    Value::from(
        meta.creation_timestamp
            .as_ref()
            .map(|t| t.0.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
            .unwrap_or_default(),
    )
}

impl Rules for Role {
    const NAMESPACED: bool = true;
    const SINGULAR: &'static str = "role";
    const NAME_RULE: NameRule = NameRule::PathSegment;
    const COLUMNS: &'static [Column] = &[NAME, CREATED_AT];

    fn validate(&self, causes: &mut Vec<Cause>) {
        validate_rules(self.rules.as_ref(), true, causes);
    }
    fn row(&self, _now: Timestamp) -> Vec<Value> {
        vec![created_at(&self.metadata)]
    }
}

impl Rules for ClusterRole {
    const NAMESPACED: bool = false;
    const SINGULAR: &'static str = "clusterrole";
    const NAME_RULE: NameRule = NameRule::PathSegment;
    const COLUMNS: &'static [Column] = &[NAME, CREATED_AT];

    fn validate(&self, causes: &mut Vec<Cause>) {
        validate_rules(self.rules.as_ref(), false, causes);
    }
    fn row(&self, _now: Timestamp) -> Vec<Value> {
        vec![created_at(&self.metadata)]
    }
}

/// RoleBinding and ClusterRoleBinding differ only in scope (which roles and subjects they may
/// name); one set of rules serves both.
macro_rules! binding_rules {
    ($kind:ty, $namespaced:expr, $singular:expr) => {
        impl Rules for $kind {
            const NAMESPACED: bool = $namespaced;
            const SINGULAR: &'static str = $singular;
            const NAME_RULE: NameRule = NameRule::PathSegment;
            const COLUMNS: &'static [Column] = BINDING_COLUMNS;

            fn default(&mut self) {
                default_subjects(self.subjects.as_mut());
            }
            fn validate(&self, causes: &mut Vec<Cause>) {
                validate_role_ref(&self.role_ref, $namespaced, causes);
                validate_subjects(self.subjects.as_ref(), $namespaced, causes);
            }
            fn validate_update(&self, old: &Self, causes: &mut Vec<Cause>) {
                if self.role_ref != old.role_ref {
                    causes.push(Cause::invalid(
                        "roleRef",
                        &self.role_ref.name,
                        "cannot change roleRef",
                    ));
                }
            }
            fn row(&self, now: Timestamp) -> Vec<Value> {
                let [u, g, sa] = subject_cells(self.subjects.as_ref());
                vec![
                    role_ref_cell(&self.role_ref),
                    age(&self.metadata, now),
                    u,
                    g,
                    sa,
                ]
            }
        }
    };
}

binding_rules!(RoleBinding, true, "rolebinding");
binding_rules!(ClusterRoleBinding, false, "clusterrolebinding");
