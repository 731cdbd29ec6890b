//! RBAC's escalation check on writes of roles and bindings (kube's
//! `pkg/registry/rbac/{role,clusterrole,rolebinding,clusterrolebinding}/policybased` and
//! `pkg/registry/rbac/validation`): a user may write a role only with rules it holds itself,
//! and bind a role only if it holds the role's rules — unless RBAC lets it `escalate` roles or
//! `bind` that role. The role a binding names is read from the store, not the authorizer's
//! cache (a role created a moment ago counts); a binding to a missing role needs `bind`.
//! An update that leaves rules (or roleRef and subjects) as they were is not checked, so a
//! finalizer or ownerReference can be removed by whoever may update (kube's
//! `IsOnlyMutatingGCFields`).

use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use meshwork_orchestrator_store::Store;
use serde_json::Value;

use super::{error::ApiError, kind::KindOps, Api};
use crate::server::{
    auth::User,
    authz::{rbac::covers, Attributes, Decision},
};

const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

/// What a role or binding grants: (namespace, name, rules, the role a binding names).
struct Grant {
    ns: String,
    name: String,
    rules: Option<Vec<PolicyRule>>,
    role_ref: Option<(String, String)>,
}

fn fields_that_grant(plural: &str, v: &Value) -> Value {
    match plural {
        "roles" | "clusterroles" => serde_json::json!([v["rules"], v["aggregationRule"]]),
        _ => serde_json::json!([v["roleRef"], v["subjects"]]),
    }
}

fn rule_text(r: &PolicyRule) -> String {
    match r.non_resource_urls.as_ref().filter(|u| !u.is_empty()) {
        Some(u) => format!("{{NonResourceURLs:{u:?}, Verbs:{:?}}}", r.verbs),
        None => format!(
            "{{APIGroups:{:?}, Resources:{:?}{}, Verbs:{:?}}}",
            r.api_groups.clone().unwrap_or_default(),
            r.resources.clone().unwrap_or_default(),
            r.resource_names
                .as_ref()
                .filter(|n| !n.is_empty())
                .map(|n| format!(", ResourceNames:{n:?}"))
                .unwrap_or_default(),
            r.verbs
        ),
    }
}

impl Api {
    /// The rules of the role `kind`/`name` (in `ns` for a Role), from the store.
    async fn stored_role_rules(
        &self,
        kind: &str,
        name: &str,
        ns: &str,
    ) -> Result<Option<Vec<PolicyRule>>, ApiError> {
        let key = if kind == "Role" {
            format!("/registry/{RBAC_GROUP}/roles/{ns}/{name}")
        } else {
            format!("/registry/{RBAC_GROUP}/clusterroles/{name}")
        };
        let Some(found) = self
            .store
            .get(&key)
            .await
            .map_err(|e| ApiError::from_store(e, "roles", name))?
        else {
            return Ok(None);
        };
        let v: Value =
            serde_json::from_slice(&found.value).map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok(Some(
            serde_json::from_value(v["rules"].clone()).unwrap_or_default(),
        ))
    }

    fn grant_of(plural: &str, bytes: &[u8]) -> Result<Option<Grant>, ApiError> {
        let bad = |e: serde_json::Error| ApiError::Internal(e.to_string());
        Ok(Some(match plural {
            "roles" => {
                let r: Role = serde_json::from_slice(bytes).map_err(bad)?;
                Grant {
                    ns: r.metadata.namespace.unwrap_or_default(),
                    name: r.metadata.name.unwrap_or_default(),
                    rules: Some(r.rules.unwrap_or_default()),
                    role_ref: None,
                }
            }
            "clusterroles" => {
                let r: ClusterRole = serde_json::from_slice(bytes).map_err(bad)?;
                Grant {
                    ns: String::new(),
                    name: r.metadata.name.unwrap_or_default(),
                    rules: Some(r.rules.unwrap_or_default()),
                    role_ref: None,
                }
            }
            "rolebindings" => {
                let b: RoleBinding = serde_json::from_slice(bytes).map_err(bad)?;
                Grant {
                    ns: b.metadata.namespace.unwrap_or_default(),
                    name: b.metadata.name.unwrap_or_default(),
                    rules: None,
                    role_ref: Some((b.role_ref.kind, b.role_ref.name)),
                }
            }
            "clusterrolebindings" => {
                let b: ClusterRoleBinding = serde_json::from_slice(bytes).map_err(bad)?;
                Grant {
                    ns: String::new(),
                    name: b.metadata.name.unwrap_or_default(),
                    rules: None,
                    role_ref: Some((b.role_ref.kind, b.role_ref.name)),
                }
            }
            _ => return Ok(None),
        }))
    }

    /// The check on `bytes` (a role or binding) about to be written by `user`; `old`: the
    /// stored object an update replaces.
    pub(crate) async fn check_escalation(
        &self,
        kind: &dyn KindOps,
        bytes: &[u8],
        old: Option<&[u8]>,
        user: &User,
    ) -> Result<(), ApiError> {
        let info = kind.info();
        if info.group != RBAC_GROUP {
            return Ok(());
        }
        let Some(authz) = &self.authz else {
            return Ok(());
        };
        let Some(mut g) = Self::grant_of(info.plural, bytes)? else {
            return Ok(());
        };
        if let Some(old) = old {
            let (a, b): (Value, Value) = (
                serde_json::from_slice(old).unwrap_or_default(),
                serde_json::from_slice(bytes).unwrap_or_default(),
            );
            if fields_that_grant(info.plural, &a) == fields_that_grant(info.plural, &b) {
                return Ok(());
            }
        }
        // `escalate` on the role itself, or `bind` on the role a binding names, skips the check.
        let (verb, resource, target) = match &g.role_ref {
            None => ("escalate", info.plural.to_string(), g.name.clone()),
            Some((k, n)) => (
                "bind",
                if k == "Role" {
                    "roles".into()
                } else {
                    "clusterroles".into()
                },
                n.clone(),
            ),
        };
        let a = Attributes {
            verb: verb.into(),
            resource_request: true,
            api_group: RBAC_GROUP.into(),
            resource,
            name: target,
            namespace: g.ns.clone(),
            ..Default::default()
        };
        if authz.authorize(user, &a) == Decision::Allow {
            return Ok(());
        }
        let denied = |why: String| ApiError::Denied {
            resource: info.qualified(),
            name: g.name.clone(),
            why,
        };
        if let Some((k, n)) = &g.role_ref {
            match self.stored_role_rules(k, n, &g.ns).await? {
                Some(rules) => g.rules = Some(rules),
                None => {
                    let what = if k == "Role" { "roles" } else { "clusterroles" };
                    return Err(denied(format!("{what}.{RBAC_GROUP} \"{n}\" not found")));
                }
            }
        }
        let held = authz.policy().rules_for(user, &g.ns);
        let missing: Vec<String> = g
            .rules
            .iter()
            .flatten()
            .filter(|r| !covers(&held, r))
            .map(rule_text)
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(denied(format!(
            "user {:?} (groups={:?}) is attempting to grant RBAC permissions not currently held:\n{}",
            user.name,
            user.groups,
            missing.join("\n")
        )))
    }
}
