//! What a node may touch beyond its RBAC role: kube's Node authorizer and NodeRestriction
//! admission (`plugin/pkg/auth/authorizer/node`, `plugin/pkg/admission/noderestriction`
//! upstream), cut to what this server serves. RBAC's `system:node` role says which kinds a
//! node may read and write; this says which objects — so that one node's credentials do not
//! open the cluster:
//!
//! - Nodes: a node writes only its own Node (and its status).
//! - Pods: a node creates none (kube allows mirror pods only; this runtime makes none), and
//!   deletes or writes the status of only pods bound to it.
//! - Secrets and ConfigMaps: a node reads (get, by name) only those a pod bound to it uses —
//!   in a volume, a projected source, `env`/`envFrom` or `imagePullSecrets`.
//! - ServiceAccount tokens: only bound to pods on the node (`tokens.rs`).

use http::Method;
use k8s_openapi::api::core::v1::Pod;
use meshwork_orchestrator_store::Store;

use super::{error::ApiError, verbs::Ctx, Api};
use crate::server::auth::User;

/// The node a user is, when it is a node (and not also a cluster admin).
/// Where node heartbeat Leases live.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

pub fn node_of(user: &User) -> Option<&str> {
    if user
        .groups
        .iter()
        .any(|g| g == crate::server::authz::MASTERS)
        || !user.groups.iter().any(|g| g == "system:nodes")
    {
        return None;
    }
    user.name.strip_prefix("system:node:")
}

/// Whether `pod` uses the Secret (`secret`) or ConfigMap (not `secret`) `name`.
pub fn pod_uses(pod: &Pod, secret: bool, name: &str) -> bool {
    let Some(spec) = &pod.spec else { return false };
    let is = |n: Option<&String>| n.map(String::as_str) == Some(name);
    let vol = spec.volumes.iter().flatten().any(|v| {
        if secret {
            is(v.secret.as_ref().and_then(|s| s.secret_name.as_ref()))
                || v.projected
                    .iter()
                    .flat_map(|p| p.sources.iter().flatten())
                    .any(|s| s.secret.as_ref().is_some_and(|x| x.name == name))
        } else {
            v.config_map.as_ref().is_some_and(|c| c.name == name)
                || v.projected
                    .iter()
                    .flat_map(|p| p.sources.iter().flatten())
                    .any(|s| s.config_map.as_ref().is_some_and(|x| x.name == name))
        }
    });
    let env = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| {
            c.env
                .iter()
                .flatten()
                .filter_map(|e| e.value_from.as_ref())
                .any(|f| {
                    if secret {
                        f.secret_key_ref.as_ref().is_some_and(|r| r.name == name)
                    } else {
                        f.config_map_key_ref
                            .as_ref()
                            .is_some_and(|r| r.name == name)
                    }
                })
                || c.env_from.iter().flatten().any(|f| {
                    if secret {
                        f.secret_ref.as_ref().is_some_and(|r| r.name == name)
                    } else {
                        f.config_map_ref.as_ref().is_some_and(|r| r.name == name)
                    }
                })
        });
    let pull = secret
        && spec
            .image_pull_secrets
            .iter()
            .flatten()
            .any(|r| r.name == name);
    vol || env || pull
}

/// The object a write names: the path's name, or for a create the body's.
fn target_name(name: &str, body: &[u8]) -> String {
    if !name.is_empty() {
        return name.to_string();
    }
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["metadata"]["name"].as_str().map(str::to_string))
        .unwrap_or_default()
}

fn is_write(m: &Method) -> bool {
    matches!(
        *m,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    )
}

impl Api {
    async fn pod_json(&self, ns: &str, name: &str) -> Result<Option<Pod>, ApiError> {
        match self.core_object::<Pod>("pods", Some(ns), name).await {
            Ok(p) => Ok(Some(p)),
            Err(ApiError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Refuses what a node's RBAC role allows but this node may not do.
    pub(crate) async fn restrict_node(&self, ctx: &Ctx, method: &Method) -> Result<(), ApiError> {
        let t = &ctx.target;
        let Some(node) = t.user.as_deref().and_then(node_of).map(str::to_string) else {
            return Ok(());
        };
        let info = t.kind.info();
        let ns = t.ns.clone().unwrap_or_default();
        let name = t.name().to_string();
        let forbid = |resource: &str, why: String| ApiError::Denied {
            resource: resource.into(),
            name: name.clone(),
            why,
        };
        if info.group == "coordination.k8s.io" && info.plural == "leases" {
            // kube's NodeRestriction: a node writes only its own heartbeat Lease.
            let target = target_name(&name, &ctx.body);
            if is_write(method) && (ns != NODE_LEASE_NAMESPACE || target != node) {
                return Err(forbid(
                    "leases",
                    "can only access node lease with the same name as the requesting node".into(),
                ));
            }
            return Ok(());
        }
        if !info.group.is_empty() {
            return Ok(());
        }
        match (info.plural, t.sub.as_deref()) {
            ("nodes", _) if is_write(method) => {
                let target = target_name(&name, &ctx.body);
                if target != node {
                    return Err(forbid(
                        "nodes",
                        format!("node \"{node}\" is not allowed to modify node \"{target}\""),
                    ));
                }
            }
            ("pods", None) if *method == Method::POST => {
                return Err(forbid(
                    "pods",
                    format!(
                        "node \"{node}\" can only create mirror pods, and this server has none"
                    ),
                ));
            }
            ("pods", sub) if is_write(method) && !name.is_empty() && sub != Some("binding") => {
                let bound = self.pod_json(&ns, &name).await?;
                if bound
                    .as_ref()
                    .and_then(|p| p.spec.as_ref())
                    .and_then(|s| s.node_name.as_deref())
                    != Some(node.as_str())
                {
                    return Err(forbid(
                        "pods",
                        format!(
                            "node \"{node}\" can only write pods with spec.nodeName set to itself"
                        ),
                    ));
                }
            }
            (plural @ ("secrets" | "configmaps"), None) => {
                let secret = plural == "secrets";
                let mut related = false;
                if *method == Method::GET && !name.is_empty() {
                    let prefix = format!("/registry/core/pods/{ns}/");
                    let (pods, _) = self
                        .store
                        .list(&prefix)
                        .await
                        .map_err(|e| ApiError::from_store(e, "pods", ""))?;
                    related = pods.iter().any(|s| {
                        serde_json::from_slice::<Pod>(&s.value).is_ok_and(|p| {
                            p.spec.as_ref().and_then(|s| s.node_name.as_deref())
                                == Some(node.as_str())
                                && pod_uses(&p, secret, &name)
                        })
                    });
                }
                if !related {
                    let verb = if *method == Method::GET && !name.is_empty() {
                        "get"
                    } else {
                        "access"
                    };
                    return Err(forbid(
                        plural,
                        format!(
                            "User \"system:node:{node}\" cannot {verb} resource \"{plural}\" in API group \"\" in the namespace \"{ns}\": no relationship found between node '{node}' and this object"
                        ),
                    ));
                }
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_a_node_may_read() {
        let pod: Pod = serde_json::from_value(serde_json::json!({"spec": {
            "containers": [{"name": "c", "env": [{"name": "A", "valueFrom": {"secretKeyRef": {"name": "env-secret", "key": "k"}}}],
                            "envFrom": [{"configMapRef": {"name": "env-cm"}}]}],
            "imagePullSecrets": [{"name": "pull"}],
            "volumes": [
                {"name": "a", "secret": {"secretName": "vol-secret"}},
                {"name": "b", "projected": {"sources": [{"configMap": {"name": "kube-root-ca.crt"}}, {"secret": {"name": "proj-secret"}}]}},
            ],
        }}))
        .unwrap();
        for s in ["env-secret", "pull", "vol-secret", "proj-secret"] {
            assert!(pod_uses(&pod, true, s), "{s}");
        }
        for c in ["env-cm", "kube-root-ca.crt"] {
            assert!(pod_uses(&pod, false, c), "{c}");
        }
        assert!(!pod_uses(&pod, true, "other"));
        assert!(!pod_uses(&pod, false, "env-secret"));
        let node = User {
            name: "system:node:n1".into(),
            groups: vec!["system:nodes".into()],
            ..Default::default()
        };
        assert_eq!(node_of(&node), Some("n1"));
        let admin_node = User {
            groups: vec!["system:nodes".into(), "system:masters".into()],
            ..node
        };
        assert_eq!(node_of(&admin_node), None);
    }
}
