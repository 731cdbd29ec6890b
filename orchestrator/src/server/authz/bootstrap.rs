//! The default ClusterRoles and ClusterRoleBindings, after kube-apiserver's bootstrap policy
//! (`plugin/pkg/auth/authorizer/rbac/bootstrappolicy/policy.go` upstream), cut to the kinds
//! this server serves plus those kubectl users expect in them. Written at every start like
//! kube's RBAC post-start hook: created when missing, and brought back when changed unless the
//! object carries `rbac.authorization.kubernetes.io/autoupdate: "false"`.
//!
//! Differences from kube, on purpose:
//! - admin/edit/view are written out flat; kube assembles them by aggregation labels, which
//!   this server does not run (the labels are set, so a reader sees the same objects).
//! - `system:node` is bound to the `system:nodes` group: kube decides node requests with its
//!   Node authorizer and leaves the role unbound. Here the role says which kinds, and the node
//!   restriction (`api/noderestriction.rs`, `api/tokens.rs`) which objects: its own Node, its
//!   pods, the Secrets and ConfigMaps they use, tokens for them.
//! - `system:node-proxier` is bound to `system:nodes` too: the Meshwork agent (kube-proxy's
//!   role) runs with its node's credentials.

use k8s_openapi::{
    api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

pub const AUTOUPDATE: &str = "rbac.authorization.kubernetes.io/autoupdate";
pub const BOOTSTRAP_LABEL: &str = "kubernetes.io/bootstrapping";
pub const RBAC_GROUP: &str = "rbac.authorization.k8s.io";

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

fn r(verbs: &[&str], groups: &[&str], resources: &[&str]) -> PolicyRule {
    PolicyRule {
        verbs: s(verbs),
        api_groups: Some(s(groups)),
        resources: Some(s(resources)),
        ..Default::default()
    }
}

fn urls(verbs: &[&str], urls: &[&str]) -> PolicyRule {
    PolicyRule {
        verbs: s(verbs),
        non_resource_urls: Some(s(urls)),
        ..Default::default()
    }
}

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];

fn meta(name: &str, extra: &[(&str, &str)]) -> ObjectMeta {
    let mut labels = std::collections::BTreeMap::from([(
        BOOTSTRAP_LABEL.to_string(),
        "rbac-defaults".to_string(),
    )]);
    for (k, v) in extra {
        labels.insert(k.to_string(), v.to_string());
    }
    ObjectMeta {
        name: Some(name.into()),
        labels: Some(labels),
        annotations: Some([(AUTOUPDATE.to_string(), "true".to_string())].into()),
        ..Default::default()
    }
}

fn role(name: &str, labels: &[(&str, &str)], rules: Vec<PolicyRule>) -> ClusterRole {
    ClusterRole {
        metadata: meta(name, labels),
        rules: Some(rules),
        ..Default::default()
    }
}

fn view_rules() -> Vec<PolicyRule> {
    vec![
        r(
            READ,
            &[""],
            &[
                "configmaps",
                "endpoints",
                "persistentvolumeclaims",
                "persistentvolumeclaims/status",
                "pods",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "serviceaccounts",
                "services",
                "services/status",
            ],
        ),
        r(
            READ,
            &[""],
            &[
                "bindings",
                "events",
                "limitranges",
                "namespaces/status",
                "pods/log",
                "pods/status",
                "replicationcontrollers/status",
                "resourcequotas",
                "resourcequotas/status",
            ],
        ),
        r(READ, &[""], &["namespaces"]),
        r(READ, &["discovery.k8s.io"], &["endpointslices"]),
        r(
            READ,
            &["apps"],
            &[
                "controllerrevisions",
                "daemonsets",
                "daemonsets/status",
                "deployments",
                "deployments/scale",
                "deployments/status",
                "replicasets",
                "replicasets/scale",
                "replicasets/status",
                "statefulsets",
                "statefulsets/scale",
                "statefulsets/status",
            ],
        ),
        r(
            READ,
            &["autoscaling"],
            &[
                "horizontalpodautoscalers",
                "horizontalpodautoscalers/status",
            ],
        ),
        r(
            READ,
            &["batch"],
            &["cronjobs", "cronjobs/status", "jobs", "jobs/status"],
        ),
        r(
            READ,
            &["policy"],
            &["poddisruptionbudgets", "poddisruptionbudgets/status"],
        ),
        r(
            READ,
            &["networking.k8s.io"],
            &["ingresses", "ingresses/status", "networkpolicies"],
        ),
    ]
}

fn edit_rules() -> Vec<PolicyRule> {
    let mut rules = vec![
        r(
            &["create"],
            &[""],
            &[
                "pods/attach",
                "pods/exec",
                "pods/portforward",
                "pods/proxy",
                "secrets",
                "services/proxy",
            ],
        ),
        r(
            &["get"],
            &[""],
            &[
                "pods/attach",
                "pods/exec",
                "pods/portforward",
                "pods/proxy",
                "services/proxy",
            ],
        ),
        r(&["impersonate"], &[""], &["serviceaccounts"]),
        r(
            WRITE,
            &[""],
            &[
                "pods",
                "pods/attach",
                "pods/exec",
                "pods/portforward",
                "pods/proxy",
            ],
        ),
        r(&["create"], &[""], &["pods/eviction"]),
        r(
            WRITE,
            &[""],
            &[
                "configmaps",
                "events",
                "persistentvolumeclaims",
                "replicationcontrollers",
                "replicationcontrollers/scale",
                "secrets",
                "serviceaccounts",
                "services",
                "services/proxy",
            ],
        ),
        r(&["create"], &[""], &["serviceaccounts/token"]),
        r(
            WRITE,
            &["apps"],
            &[
                "daemonsets",
                "deployments",
                "deployments/rollback",
                "deployments/scale",
                "replicasets",
                "replicasets/scale",
                "statefulsets",
                "statefulsets/scale",
            ],
        ),
        r(WRITE, &["autoscaling"], &["horizontalpodautoscalers"]),
        r(WRITE, &["batch"], &["cronjobs", "jobs"]),
        r(
            WRITE,
            &["networking.k8s.io"],
            &["ingresses", "networkpolicies"],
        ),
        r(WRITE, &["policy"], &["poddisruptionbudgets"]),
        r(WRITE, &["discovery.k8s.io"], &["endpointslices"]),
        r(READ, &[""], &["secrets"]),
    ];
    rules.extend(view_rules());
    rules
}

fn admin_rules() -> Vec<PolicyRule> {
    let mut rules = vec![
        r(
            &["create"],
            &["authorization.k8s.io"],
            &["localsubjectaccessreviews"],
        ),
        r(
            &[
                "create",
                "delete",
                "deletecollection",
                "get",
                "list",
                "patch",
                "update",
                "watch",
            ],
            &[RBAC_GROUP],
            &["rolebindings", "roles"],
        ),
    ];
    rules.extend(edit_rules());
    rules
}

pub fn cluster_roles() -> Vec<ClusterRole> {
    let agg = |to: &'static str| [(to, "true")];
    vec![
        role(
            "cluster-admin",
            &[],
            vec![r(&["*"], &["*"], &["*"]), urls(&["*"], &["*"])],
        ),
        role(
            "admin",
            &agg("rbac.authorization.k8s.io/aggregate-to-admin"),
            admin_rules(),
        ),
        role(
            "edit",
            &agg("rbac.authorization.k8s.io/aggregate-to-edit"),
            edit_rules(),
        ),
        role(
            "view",
            &agg("rbac.authorization.k8s.io/aggregate-to-view"),
            view_rules(),
        ),
        role(
            "system:discovery",
            &[],
            vec![urls(
                &["get"],
                &[
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/healthz",
                    "/livez",
                    "/openapi",
                    "/openapi/*",
                    "/readyz",
                    "/version",
                    "/version/",
                ],
            )],
        ),
        role(
            "system:public-info-viewer",
            &[],
            vec![urls(
                &["get"],
                &["/healthz", "/livez", "/readyz", "/version", "/version/"],
            )],
        ),
        role(
            "system:basic-user",
            &[],
            vec![
                r(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                ),
                r(
                    &["create"],
                    &["authentication.k8s.io"],
                    &["selfsubjectreviews"],
                ),
            ],
        ),
        role(
            "system:auth-delegator",
            &[],
            vec![
                r(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
                r(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["subjectaccessreviews"],
                ),
            ],
        ),
        role(
            "system:service-account-issuer-discovery",
            &[],
            vec![urls(
                &["get"],
                &[
                    "/.well-known/openid-configuration",
                    "/.well-known/openid-configuration/",
                    "/openid/v1/jwks",
                    "/openid/v1/jwks/",
                ],
            )],
        ),
        role(
            "system:node",
            &[],
            vec![
                r(
                    &[
                        "create", "delete", "get", "list", "patch", "update", "watch",
                    ],
                    &[""],
                    &["nodes"],
                ),
                r(&["patch", "update"], &[""], &["nodes/status"]),
                // Its heartbeat Lease (only its own: api/noderestriction.rs).
                r(
                    &["create", "delete", "get", "patch", "update"],
                    &["coordination.k8s.io"],
                    &["leases"],
                ),
                r(
                    &["create", "patch", "update"],
                    &["", "events.k8s.io"],
                    &["events"],
                ),
                r(&["delete", "get", "list", "watch"], &[""], &["pods"]),
                r(&["patch", "update"], &[""], &["pods/status"]),
                r(&["create"], &[""], &["pods/eviction"]),
                r(READ, &[""], &["services"]),
                // Which ones, by name: only those its pods use (api/noderestriction.rs).
                r(&["get"], &[""], &["configmaps", "secrets"]),
                r(&["get"], &[""], &["serviceaccounts"]),
                r(&["create"], &[""], &["serviceaccounts/token"]),
                r(&["create"], &["authentication.k8s.io"], &["tokenreviews"]),
                r(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["subjectaccessreviews"],
                ),
            ],
        ),
        role(
            "system:node-proxier",
            &[],
            vec![
                r(
                    READ,
                    &[""],
                    &["endpoints", "services", "nodes", "pods", "namespaces"],
                ),
                r(READ, &["discovery.k8s.io"], &["endpointslices"]),
                r(
                    &["create", "patch", "update"],
                    &["", "events.k8s.io"],
                    &["events"],
                ),
            ],
        ),
    ]
}

fn binding(name: &str, role: &str, subjects: &[(&str, &str)]) -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: meta(name, &[]),
        role_ref: RoleRef {
            api_group: RBAC_GROUP.into(),
            kind: "ClusterRole".into(),
            name: role.into(),
        },
        subjects: Some(
            subjects
                .iter()
                .map(|(kind, name)| Subject {
                    kind: kind.to_string(),
                    name: name.to_string(),
                    api_group: Some(RBAC_GROUP.into()),
                    namespace: None,
                })
                .collect(),
        ),
    }
}

pub fn cluster_role_bindings() -> Vec<ClusterRoleBinding> {
    vec![
        binding(
            "cluster-admin",
            "cluster-admin",
            &[("Group", "system:masters")],
        ),
        binding(
            "system:discovery",
            "system:discovery",
            &[("Group", "system:authenticated")],
        ),
        binding(
            "system:basic-user",
            "system:basic-user",
            &[("Group", "system:authenticated")],
        ),
        binding(
            "system:public-info-viewer",
            "system:public-info-viewer",
            &[
                ("Group", "system:authenticated"),
                ("Group", "system:unauthenticated"),
            ],
        ),
        binding(
            "system:service-account-issuer-discovery",
            "system:service-account-issuer-discovery",
            &[("Group", "system:serviceaccounts")],
        ),
        binding("system:node", "system:node", &[("Group", "system:nodes")]),
        binding(
            "system:node-proxier",
            "system:node-proxier",
            &[("Group", "system:nodes")],
        ),
    ]
}

/// Appends to `cur[field]` (an array) what `want[field]` has and it lacks.
fn union(cur: &mut serde_json::Value, want: &serde_json::Value, field: &str) {
    let add: Vec<serde_json::Value> = want[field].as_array().cloned().unwrap_or_default();
    if !cur[field].is_array() {
        cur[field] = serde_json::json!([]);
    }
    if let Some(have) = cur[field].as_array_mut() {
        for v in add {
            if !have.contains(&v) {
                have.push(v);
            }
        }
    }
}

fn autoupdate(cur: &serde_json::Value) -> bool {
    cur["metadata"]["annotations"][AUTOUPDATE].as_str() != Some("false")
}

/// Writes the default policy (kube's RBAC post-start hook): missing objects created; missing
/// rules and subjects added to existing ones unless they opted out with autoupdate=false;
/// what users added is kept.
pub async fn ensure(api: &crate::api::Api) -> Result<(), crate::api::ApiError> {
    let to_value = |v: serde_json::Result<serde_json::Value>| {
        v.map_err(|e| crate::api::ApiError::Internal(e.to_string()))
    };
    for r in cluster_roles() {
        let name = r.metadata.name.clone().unwrap_or_default();
        let mut want = to_value(serde_json::to_value(&r))?;
        want["apiVersion"] = format!("{RBAC_GROUP}/v1").into();
        want["kind"] = "ClusterRole".into();
        api.ensure(
            RBAC_GROUP,
            "v1",
            "clusterroles",
            None,
            &name,
            want,
            |cur, want| {
                if autoupdate(cur) {
                    union(cur, want, "rules");
                }
            },
        )
        .await?;
    }
    for b in cluster_role_bindings() {
        let name = b.metadata.name.clone().unwrap_or_default();
        let mut want = to_value(serde_json::to_value(&b))?;
        want["apiVersion"] = format!("{RBAC_GROUP}/v1").into();
        want["kind"] = "ClusterRoleBinding".into();
        api.ensure(
            RBAC_GROUP,
            "v1",
            "clusterrolebindings",
            None,
            &name,
            want,
            |cur, want| {
                if autoupdate(cur) {
                    union(cur, want, "subjects");
                }
            },
        )
        .await?;
    }
    Ok(())
}
