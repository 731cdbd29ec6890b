//! RBAC evaluation, as kube's RBAC authorizer does it
//! (`plugin/pkg/auth/authorizer/rbac/rbac.go`, `pkg/apis/rbac/v1/evaluation_helpers.go`
//! upstream): a request is allowed when some binding that applies to the user grants a rule
//! that matches it. Nothing denies; no rule means no.
//!
//! Also kube's escalation check (`pkg/registry/rbac/validation`): a role or binding may only
//! grant what its author holds, unless the author may `escalate` roles / `bind` the role.

use std::collections::HashMap;

use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};

use super::attributes::Attributes;
use crate::server::auth::User;

fn has(list: &[String], v: &str) -> bool {
    list.iter().any(|x| x == "*" || x == v)
}

pub fn rule_allows(rule: &PolicyRule, a: &Attributes) -> bool {
    if !has(&rule.verbs, &a.verb) {
        return false;
    }
    if !a.resource_request {
        return rule.non_resource_urls.iter().flatten().any(|u| {
            u == "*" || *u == a.path || u.strip_suffix('*').is_some_and(|p| a.path.starts_with(p))
        });
    }
    let groups = rule.api_groups.as_deref().unwrap_or_default();
    if !has(groups, &a.api_group) {
        return false;
    }
    let resources = rule.resources.as_deref().unwrap_or_default();
    let full = a.full_resource();
    let resource_ok = resources.iter().any(|r| {
        r == "*"
            || *r == full
            || (!a.subresource.is_empty() && *r == format!("*/{}", a.subresource))
    });
    if !resource_ok {
        return false;
    }
    let names = rule.resource_names.as_deref().unwrap_or_default();
    names.is_empty() || names.contains(&a.name)
}

/// kube's `appliesToUser`; `ns` is the binding's namespace (a ServiceAccount subject naming
/// none means that one).
pub fn subject_applies(s: &Subject, user: &User, ns: &str) -> bool {
    match s.kind.as_str() {
        "User" => s.name == user.name,
        "Group" => user.groups.contains(&s.name),
        "ServiceAccount" => {
            let sns = s
                .namespace
                .as_deref()
                .filter(|n| !n.is_empty())
                .unwrap_or(ns);
            user.name == format!("system:serviceaccount:{sns}:{}", s.name)
        }
        _ => false,
    }
}

/// Every RBAC object, as the authorizer's cache holds them.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    pub cluster_roles: HashMap<String, ClusterRole>,
    pub roles: HashMap<(String, String), Role>,
    pub cluster_bindings: HashMap<String, ClusterRoleBinding>,
    pub bindings: HashMap<(String, String), RoleBinding>,
}

/// Why nothing allowed a request, when a role a binding names is missing (kube appends
/// these to the denial as `RBAC: ...`).
pub type Missing = Vec<String>;

impl Policy {
    fn role_rules(&self, r: &RoleRef, ns: &str, missing: &mut Missing) -> Option<&[PolicyRule]> {
        let rules = match r.kind.as_str() {
            "ClusterRole" => self.cluster_roles.get(&r.name).map(|c| c.rules.as_deref()),
            "Role" => self
                .roles
                .get(&(ns.to_string(), r.name.clone()))
                .map(|c| c.rules.as_deref()),
            _ => None,
        };
        match rules {
            Some(r) => Some(r.unwrap_or_default()),
            None => {
                let what = if r.kind == "Role" {
                    "role"
                } else {
                    "clusterrole"
                };
                missing.push(format!(
                    "{what}.rbac.authorization.k8s.io \"{}\" not found",
                    r.name
                ));
                None
            }
        }
    }

    /// Calls `f` with every rule granted to `user` in `ns` ("" for cluster-wide only) until it
    /// returns true.
    pub fn visit(
        &self,
        user: &User,
        ns: &str,
        missing: &mut Missing,
        mut f: impl FnMut(&PolicyRule) -> bool,
    ) -> bool {
        for b in self.cluster_bindings.values() {
            if !b
                .subjects
                .iter()
                .flatten()
                .any(|s| subject_applies(s, user, ""))
            {
                continue;
            }
            if let Some(rules) = self.role_rules(&b.role_ref, "", missing) {
                if rules.iter().any(&mut f) {
                    return true;
                }
            }
        }
        if ns.is_empty() {
            return false;
        }
        for ((bns, _), b) in &self.bindings {
            if bns != ns
                || !b
                    .subjects
                    .iter()
                    .flatten()
                    .any(|s| subject_applies(s, user, ns))
            {
                continue;
            }
            if let Some(rules) = self.role_rules(&b.role_ref, ns, missing) {
                if rules.iter().any(&mut f) {
                    return true;
                }
            }
        }
        false
    }

    pub fn allows(&self, user: &User, a: &Attributes, missing: &mut Missing) -> bool {
        self.visit(user, &a.namespace, missing, |r| rule_allows(r, a))
    }

    /// The rules `user` holds in `ns` (SelfSubjectRulesReview).
    pub fn rules_for(&self, user: &User, ns: &str) -> Vec<PolicyRule> {
        let mut out = Vec::new();
        let mut missing = Vec::new();
        self.visit(user, ns, &mut missing, |r| {
            out.push(r.clone());
            false
        });
        out
    }
}

/// Whether `owner` rules cover every permission `rule` grants (kube's `Covers`, on rules
/// broken down to one verb, group, resource and name each).
pub fn covers(owner: &[PolicyRule], rule: &PolicyRule) -> bool {
    for verb in &rule.verbs {
        if let Some(urls) = rule.non_resource_urls.as_ref().filter(|u| !u.is_empty()) {
            for u in urls {
                let ok = owner.iter().any(|o| {
                    has(&o.verbs, verb)
                        && o.non_resource_urls.iter().flatten().any(|ou| {
                            ou == "*"
                                || ou == u
                                || ou.strip_suffix('*').is_some_and(|p| u.starts_with(p))
                        })
                });
                if !ok {
                    return false;
                }
            }
            continue;
        }
        // Broken down to one group, resource and name each (kube's BreakdownRule): names
        // held through different rules add up.
        let names: Vec<Option<&String>> = match rule.resource_names.as_deref() {
            Some(n) if !n.is_empty() => n.iter().map(Some).collect(),
            _ => vec![None],
        };
        for g in rule.api_groups.iter().flatten() {
            for r in rule.resources.iter().flatten() {
                for name in &names {
                    let ok = owner.iter().any(|o| {
                        let o_names = o.resource_names.as_deref().unwrap_or_default();
                        has(&o.verbs, verb)
                            && has(o.api_groups.as_deref().unwrap_or_default(), g)
                            && (has(o.resources.as_deref().unwrap_or_default(), r)
                                || r.split_once('/').is_some_and(|(_, sub)| {
                                    o.resources
                                        .iter()
                                        .flatten()
                                        .any(|x| *x == format!("*/{sub}"))
                                }))
                            && (o_names.is_empty() || name.is_some_and(|n| o_names.contains(n)))
                    });
                    if !ok {
                        return false;
                    }
                }
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    fn rule(verbs: &[&str], groups: &[&str], resources: &[&str], names: &[&str]) -> PolicyRule {
        let v = |x: &[&str]| Some(x.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        PolicyRule {
            verbs: verbs.iter().map(|s| s.to_string()).collect(),
            api_groups: v(groups),
            resources: v(resources),
            resource_names: if names.is_empty() { None } else { v(names) },
            non_resource_urls: None,
        }
    }

    fn at(m: Method, p: &str) -> Attributes {
        Attributes::from_request(&m, p, None)
    }

    #[test]
    fn rules_match_verb_group_resource_subresource_and_name() {
        let r = rule(&["get", "list"], &[""], &["pods", "pods/log"], &[]);
        assert!(rule_allows(
            &r,
            &at(Method::GET, "/api/v1/namespaces/d/pods")
        ));
        assert!(rule_allows(
            &r,
            &at(Method::GET, "/api/v1/namespaces/d/pods/p/log")
        ));
        assert!(!rule_allows(
            &r,
            &at(Method::GET, "/api/v1/namespaces/d/pods/p/exec")
        ));
        assert!(!rule_allows(
            &r,
            &at(Method::DELETE, "/api/v1/namespaces/d/pods/p")
        ));
        assert!(!rule_allows(
            &r,
            &at(Method::GET, "/apis/apps/v1/namespaces/d/deployments")
        ));
        let named = rule(&["get"], &[""], &["configmaps"], &["cfg"]);
        assert!(rule_allows(
            &named,
            &at(Method::GET, "/api/v1/namespaces/d/configmaps/cfg")
        ));
        assert!(!rule_allows(
            &named,
            &at(Method::GET, "/api/v1/namespaces/d/configmaps/other")
        ));
        assert!(!rule_allows(
            &named,
            &at(Method::GET, "/api/v1/namespaces/d/configmaps")
        ));
        let status = rule(&["patch"], &["*"], &["*/status"], &[]);
        assert!(rule_allows(
            &status,
            &at(
                Method::PATCH,
                "/apis/apps/v1/namespaces/d/deployments/x/status"
            )
        ));
        assert!(!rule_allows(
            &status,
            &at(Method::PATCH, "/apis/apps/v1/namespaces/d/deployments/x")
        ));
        let urls = PolicyRule {
            verbs: vec!["get".into()],
            non_resource_urls: Some(vec!["/healthz".into(), "/apis/*".into()]),
            ..Default::default()
        };
        assert!(rule_allows(&urls, &at(Method::GET, "/healthz")));
        assert!(rule_allows(&urls, &at(Method::GET, "/apis/apps/v1")));
        assert!(!rule_allows(&urls, &at(Method::GET, "/metrics")));
    }

    #[test]
    fn subjects() {
        let u = User {
            name: "system:serviceaccount:app:web".into(),
            groups: vec!["system:serviceaccounts".into()],
            ..Default::default()
        };
        let sa = |ns: Option<&str>| Subject {
            kind: "ServiceAccount".into(),
            name: "web".into(),
            namespace: ns.map(str::to_string),
            api_group: None,
        };
        assert!(subject_applies(&sa(Some("app")), &u, "other"));
        assert!(subject_applies(&sa(None), &u, "app"));
        assert!(!subject_applies(&sa(None), &u, "other"));
        let g = Subject {
            kind: "Group".into(),
            name: "system:serviceaccounts".into(),
            ..Default::default()
        };
        assert!(subject_applies(&g, &u, ""));
    }

    #[test]
    fn coverage_for_escalation() {
        let owner = vec![
            rule(&["get", "list"], &[""], &["pods"], &[]),
            rule(&["*"], &["apps"], &["deployments"], &["web"]),
        ];
        assert!(covers(&owner, &rule(&["get"], &[""], &["pods"], &[])));
        assert!(!covers(&owner, &rule(&["delete"], &[""], &["pods"], &[])));
        assert!(covers(
            &owner,
            &rule(&["patch"], &["apps"], &["deployments"], &["web"])
        ));
        assert!(!covers(
            &owner,
            &rule(&["patch"], &["apps"], &["deployments"], &[])
        ));
        let admin = vec![rule(&["*"], &["*"], &["*"], &[])];
        assert!(covers(&admin, &rule(&["*"], &["*"], &["*"], &[])));
        assert!(!covers(&owner, &rule(&["*"], &["*"], &["*"], &[])));
        let split = vec![
            rule(&["get"], &[""], &["configmaps"], &["a"]),
            rule(&["get"], &[""], &["configmaps"], &["b"]),
        ];
        assert!(covers(
            &split,
            &rule(&["get"], &[""], &["configmaps"], &["a", "b"])
        ));
        assert!(!covers(
            &split,
            &rule(&["get"], &[""], &["configmaps"], &["a", "c"])
        ));
        assert!(!covers(
            &split,
            &rule(&["get"], &[""], &["configmaps"], &[])
        ));
    }
}
