//! The served kinds and the discovery documents derived from them.

use k8s_openapi::{
    api::{
        admissionregistration::v1::{MutatingWebhookConfiguration, ValidatingWebhookConfiguration},
        apps::v1::{DaemonSet, Deployment, ReplicaSet},
        batch::v1::Job,
        coordination::v1::Lease,
        core::v1::{ConfigMap, Event, Namespace, Node, Pod, Secret, Service, ServiceAccount},
        discovery::v1::EndpointSlice,
        rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding},
    },
    apimachinery::pkg::apis::meta::v1::{
        APIGroup, APIGroupList, APIResource, APIResourceList, APIVersions, GroupVersionForDiscovery,
    },
};

use super::kind::{Info, KindOps, Typed};

/// Every kind this server serves (immutable; built on first use).
pub static REGISTRY: std::sync::LazyLock<Registry> = std::sync::LazyLock::new(Registry::new);

pub struct Registry {
    kinds: Vec<Box<dyn KindOps>>,
}

/// The group/versions served, in discovery order (the core group is "").
/// authentication.k8s.io and authorization.k8s.io have no stored kind: their reviews are
/// `CREATE_ONLY` (and core's serviceaccounts/token, a TokenRequest, is `tokens.rs`).
pub const GROUP_VERSIONS: &[(&str, &str)] = &[
    ("", "v1"),
    ("apps", "v1"),
    ("batch", "v1"),
    ("discovery.k8s.io", "v1"),
    ("authentication.k8s.io", "v1"),
    ("authorization.k8s.io", "v1"),
    ("rbac.authorization.k8s.io", "v1"),
    ("coordination.k8s.io", "v1"),
    ("admissionregistration.k8s.io", "v1"),
];

/// A kind that is only ever created and answered, never stored (kube: a REST with only
/// Create): the token and access reviews.
pub struct CreateOnly {
    pub group: &'static str,
    pub plural: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
}

pub const CREATE_ONLY: &[CreateOnly] = &[
    CreateOnly {
        group: "authentication.k8s.io",
        plural: "tokenreviews",
        kind: "TokenReview",
        namespaced: false,
    },
    CreateOnly {
        group: "authentication.k8s.io",
        plural: "selfsubjectreviews",
        kind: "SelfSubjectReview",
        namespaced: false,
    },
    CreateOnly {
        group: "authorization.k8s.io",
        plural: "selfsubjectaccessreviews",
        kind: "SelfSubjectAccessReview",
        namespaced: false,
    },
    CreateOnly {
        group: "authorization.k8s.io",
        plural: "selfsubjectrulesreviews",
        kind: "SelfSubjectRulesReview",
        namespaced: false,
    },
    CreateOnly {
        group: "authorization.k8s.io",
        plural: "subjectaccessreviews",
        kind: "SubjectAccessReview",
        namespaced: false,
    },
    CreateOnly {
        group: "authorization.k8s.io",
        plural: "localsubjectaccessreviews",
        kind: "LocalSubjectAccessReview",
        namespaced: true,
    },
];

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    pub fn new() -> Self {
        let kinds: Vec<Box<dyn KindOps>> = vec![
            Box::new(Typed::<Namespace>::new()),
            Box::new(Typed::<Pod>::new()),
            Box::new(Typed::<Service>::new()),
            Box::new(Typed::<Node>::new()),
            Box::new(Typed::<Event>::new()),
            Box::new(Typed::<ConfigMap>::new()),
            Box::new(Typed::<Secret>::new()),
            Box::new(Typed::<ServiceAccount>::new()),
            Box::new(Typed::<DaemonSet>::new()),
            Box::new(Typed::<Deployment>::new()),
            Box::new(Typed::<ReplicaSet>::new()),
            Box::new(Typed::<Job>::new()),
            Box::new(Typed::<EndpointSlice>::new()),
            Box::new(Typed::<Role>::new()),
            Box::new(Typed::<ClusterRole>::new()),
            Box::new(Typed::<RoleBinding>::new()),
            Box::new(Typed::<ClusterRoleBinding>::new()),
            // Node heartbeats (kube-node-lease), so Node objects change only when their
            // status does.
            Box::new(Typed::<Lease>::new()),
            Box::new(Typed::<MutatingWebhookConfiguration>::new()),
            Box::new(Typed::<ValidatingWebhookConfiguration>::new()),
        ];
        Registry { kinds }
    }

    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<&dyn KindOps> {
        self.kinds
            .iter()
            .find(|k| {
                let i = k.info();
                i.group == group && i.version == version && i.plural == plural
            })
            .map(|k| k.as_ref())
    }

    pub fn kinds(&self) -> impl Iterator<Item = &dyn KindOps> {
        self.kinds.iter().map(|k| k.as_ref())
    }

    pub fn serves(&self, group: &str, version: &str) -> bool {
        GROUP_VERSIONS.contains(&(group, version))
    }

    pub fn api_versions() -> APIVersions {
        APIVersions {
            versions: vec!["v1".into()],
            server_address_by_client_cidrs: vec![],
        }
    }

    pub fn group(group: &str) -> Option<APIGroup> {
        let (_, version) = GROUP_VERSIONS
            .iter()
            .find(|(g, _)| *g == group && !g.is_empty())?;
        let gv = GroupVersionForDiscovery {
            group_version: format!("{group}/{version}"),
            version: version.to_string(),
        };
        Some(APIGroup {
            name: group.into(),
            preferred_version: Some(gv.clone()),
            server_address_by_client_cidrs: None,
            versions: vec![gv],
        })
    }

    pub fn groups() -> APIGroupList {
        APIGroupList {
            groups: GROUP_VERSIONS
                .iter()
                .filter_map(|(g, _)| Self::group(g))
                .collect(),
        }
    }

    pub fn resources(&self, group: &str, version: &str) -> APIResourceList {
        let mut out = Vec::new();
        for k in self.kinds() {
            let i = k.info();
            if i.group != group || i.version != version {
                continue;
            }
            let verbs: Vec<String> = [
                "create",
                "delete",
                "deletecollection",
                "get",
                "list",
                "patch",
                "update",
                "watch",
            ]
            .map(String::from)
            .to_vec();
            out.push(APIResource {
                categories: (!i.categories.is_empty())
                    .then(|| i.categories.iter().map(|c| c.to_string()).collect()),
                kind: i.kind.into(),
                name: i.plural.into(),
                namespaced: i.namespaced,
                short_names: (!i.short_names.is_empty())
                    .then(|| i.short_names.iter().map(|c| c.to_string()).collect()),
                singular_name: i.singular.into(),
                storage_version_hash: None,
                verbs,
                group: None,
                version: None,
            });
            if i.status {
                out.push(sub(i, "status", i.kind, None, &["get", "patch", "update"]));
            }
            if i.scale {
                out.push(sub(
                    i,
                    "scale",
                    "Scale",
                    Some(("autoscaling", "v1")),
                    &["get", "patch", "update"],
                ));
            }
            if i.group.is_empty() && i.plural == "serviceaccounts" {
                out.push(sub(
                    i,
                    "token",
                    "TokenRequest",
                    Some(("authentication.k8s.io", "v1")),
                    &["create"],
                ));
            }
        }
        for c in CREATE_ONLY
            .iter()
            .filter(|c| c.group == group && version == "v1")
        {
            out.push(APIResource {
                categories: None,
                group: None,
                kind: c.kind.into(),
                name: c.plural.into(),
                namespaced: c.namespaced,
                short_names: None,
                singular_name: c.kind.to_lowercase(),
                storage_version_hash: None,
                verbs: vec!["create".into()],
                version: None,
            });
        }
        APIResourceList {
            group_version: if group.is_empty() {
                version.into()
            } else {
                format!("{group}/{version}")
            },
            resources: out,
        }
    }
}

fn sub(i: &Info, name: &str, kind: &str, gv: Option<(&str, &str)>, verbs: &[&str]) -> APIResource {
    APIResource {
        categories: None,
        group: gv.map(|(g, _)| g.into()),
        kind: kind.into(),
        name: format!("{}/{name}", i.plural),
        namespaced: i.namespaced,
        short_names: None,
        singular_name: String::new(),
        storage_version_hash: None,
        verbs: verbs.iter().map(|v| v.to_string()).collect(),
        version: gv.map(|(_, v)| v.into()),
    }
}
