//! Patch metadata of the built-in kinds Meshwork serves, transcribed from the
//! `patchStrategy`/`patchMergeKey` tags in k8s.io/api (v1.33). Only fields that carry a tag, or
//! lead to one, are listed; everything else is [`Strategy::Default`](super::Strategy::Default).
//! Fields marked `atomic` are listed only to document that Kubernetes replaces them whole.

use super::{FieldDef as F, TypeDef};

static OBJECT_META: TypeDef = TypeDef {
    name: "ObjectMeta",
    fields: &[
        F::merge_by("ownerReferences", "uid", None),
        F::set("finalizers"),
        F::atomic("managedFields"),
    ],
};

/// `Container` and `EphemeralContainer` share these tags (EphemeralContainerCommon).
static CONTAINER: TypeDef = TypeDef {
    name: "Container",
    fields: &[
        F::merge_by("ports", "containerPort", None),
        F::merge_by("env", "name", None),
        F::merge_by("volumeMounts", "mountPath", None),
        F::merge_by("volumeDevices", "devicePath", None),
        F::atomic("envFrom"),
        F::atomic("resizePolicy"),
    ],
};

static POD_SPEC: TypeDef = TypeDef {
    name: "PodSpec",
    fields: &[
        // `merge,retainKeys`: kubectl sends `$retainKeys` inside each volume; no extra metadata.
        F::merge_by("volumes", "name", None),
        F::merge_by("initContainers", "name", Some(&CONTAINER)),
        F::merge_by("containers", "name", Some(&CONTAINER)),
        F::merge_by("ephemeralContainers", "name", Some(&CONTAINER)),
        F::merge_by("imagePullSecrets", "name", None),
        F::merge_by("hostAliases", "ip", None),
        F::merge_by("topologySpreadConstraints", "topologyKey", None),
        F::merge_by("schedulingGates", "name", None),
        F::merge_by("resourceClaims", "name", None),
        F::atomic("tolerations"),
        F::atomic("readinessGates"),
    ],
};

static CONDITIONS_BY_TYPE: TypeDef = TypeDef {
    name: "<status with conditions>",
    fields: &[F::merge_by("conditions", "type", None)],
};

static POD_STATUS: TypeDef = TypeDef {
    name: "PodStatus",
    fields: &[
        F::merge_by("conditions", "type", None),
        F::merge_by("podIPs", "ip", None),
        F::merge_by("hostIPs", "ip", None),
    ],
};

static POD_TEMPLATE_SPEC: TypeDef = TypeDef {
    name: "PodTemplateSpec",
    fields: &[
        F::object("metadata", &OBJECT_META),
        F::object("spec", &POD_SPEC),
    ],
};

static POD: TypeDef = TypeDef {
    name: "Pod",
    fields: &[
        F::object("metadata", &OBJECT_META),
        F::object("spec", &POD_SPEC),
        F::object("status", &POD_STATUS),
    ],
};

static POD_TEMPLATE: TypeDef = TypeDef {
    name: "PodTemplate",
    fields: &[
        F::object("metadata", &OBJECT_META),
        F::object("template", &POD_TEMPLATE_SPEC),
    ],
};

/// Deployment, ReplicaSet, StatefulSet, DaemonSet, ReplicationController and Job specs differ,
/// but only `template` carries patch metadata (`volumeClaimTemplates` is atomic).
static WORKLOAD_SPEC: TypeDef = TypeDef {
    name: "<workload spec>",
    fields: &[
        F::object("template", &POD_TEMPLATE_SPEC),
        F::atomic("volumeClaimTemplates"),
    ],
};

static WORKLOAD: TypeDef = TypeDef {
    name: "<workload>",
    fields: &[
        F::object("metadata", &OBJECT_META),
        F::object("spec", &WORKLOAD_SPEC),
        F::object("status", &CONDITIONS_BY_TYPE),
    ],
};

static JOB_TEMPLATE_SPEC: TypeDef = TypeDef {
    name: "JobTemplateSpec",
    fields: &[
        F::object("metadata", &OBJECT_META),
        F::object("spec", &WORKLOAD_SPEC),
    ],
};

static CRON_JOB: TypeDef = TypeDef {
    name: "CronJob",
    fields: &[
        F::object("metadata", &OBJECT_META),
        F::object(
            "spec",
            &TypeDef {
                name: "CronJobSpec",
                fields: &[F::object("jobTemplate", &JOB_TEMPLATE_SPEC)],
            },
        ),
    ],
};

static SERVICE: TypeDef = TypeDef {
    name: "Service",
    fields: &[
        F::object("metadata", &OBJECT_META),
        // ServicePort's merge key is `port`, even though (port, protocol) is the real identity.
        F::object(
            "spec",
            &TypeDef {
                name: "ServiceSpec",
                fields: &[F::merge_by("ports", "port", None)],
            },
        ),
        F::object("status", &CONDITIONS_BY_TYPE),
    ],
};

static NODE: TypeDef = TypeDef {
    name: "Node",
    fields: &[
        F::object("metadata", &OBJECT_META),
        F::object(
            "spec",
            &TypeDef {
                name: "NodeSpec",
                fields: &[F::set("podCIDRs"), F::atomic("taints")],
            },
        ),
        F::object(
            "status",
            &TypeDef {
                name: "NodeStatus",
                fields: &[
                    F::merge_by("conditions", "type", None),
                    F::merge_by("addresses", "type", None),
                ],
            },
        ),
    ],
};

static WITH_CONDITIONS: TypeDef = TypeDef {
    name: "<namespace or claim>",
    fields: &[
        F::object("metadata", &OBJECT_META),
        F::object("status", &CONDITIONS_BY_TYPE),
    ],
};

static SERVICE_ACCOUNT: TypeDef = TypeDef {
    name: "ServiceAccount",
    fields: &[
        F::object("metadata", &OBJECT_META),
        F::merge_by("secrets", "name", None),
    ],
};

static ENDPOINT_SLICE: TypeDef = TypeDef {
    name: "EndpointSlice",
    fields: &[
        F::object("metadata", &OBJECT_META),
        F::atomic("endpoints"),
        F::atomic("ports"),
    ],
};

/// Mutating- and ValidatingWebhookConfiguration: webhooks merge by name.
static WEBHOOK_CONFIGURATION: TypeDef = TypeDef {
    name: "<webhook configuration>",
    fields: &[
        F::object("metadata", &OBJECT_META),
        F::merge_by("webhooks", "name", None),
    ],
};

/// Kinds whose only patch metadata is in `metadata` (finalizers, ownerReferences).
static META_ONLY: TypeDef = TypeDef {
    name: "<metadata only>",
    fields: &[F::object("metadata", &OBJECT_META), F::atomic("subsets")],
};

/// The root type of a built-in kind, or `None` when the table does not model it.
pub(super) fn root(group: &str, kind: &str) -> Option<&'static TypeDef> {
    let ty = match (group, kind) {
        ("", "Pod") => &POD,
        ("", "PodTemplate") => &POD_TEMPLATE,
        ("", "ReplicationController")
        | ("apps", "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet") => &WORKLOAD,
        ("batch", "Job") => &WORKLOAD,
        ("batch", "CronJob") => &CRON_JOB,
        ("", "Service") => &SERVICE,
        ("", "Node") => &NODE,
        ("", "Namespace" | "PersistentVolumeClaim") => &WITH_CONDITIONS,
        ("", "ServiceAccount") => &SERVICE_ACCOUNT,
        ("discovery.k8s.io", "EndpointSlice") => &ENDPOINT_SLICE,
        (
            "admissionregistration.k8s.io",
            "MutatingWebhookConfiguration" | "ValidatingWebhookConfiguration",
        ) => &WEBHOOK_CONFIGURATION,
        ("", "ConfigMap" | "Secret" | "Endpoints") | ("autoscaling", "Scale") => &META_ONLY,
        _ => return None,
    };
    Some(ty)
}
