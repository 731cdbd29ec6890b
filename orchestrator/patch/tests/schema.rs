//! The built-in patch metadata table: a path is looked up through shared types, so container
//! fields resolve the same under a Pod, a Deployment or a CronJob.

use meshwork_orchestrator_patch::{Schema, Strategy};

#[test]
fn merge_keys_of_built_in_kinds() {
    use Strategy::{Default, MergeByKey, MergeSet};
    let cases = [
        (("", "Pod"), "spec.containers", MergeByKey("name")),
        (("", "Pod"), "spec.initContainers", MergeByKey("name")),
        (("", "Pod"), "spec.ephemeralContainers", MergeByKey("name")),
        (("", "Pod"), "spec.containers.env", MergeByKey("name")),
        (
            ("", "Pod"),
            "spec.ephemeralContainers.env",
            MergeByKey("name"),
        ),
        (
            ("", "Pod"),
            "spec.containers.ports",
            MergeByKey("containerPort"),
        ),
        (
            ("", "Pod"),
            "spec.containers.volumeMounts",
            MergeByKey("mountPath"),
        ),
        (
            ("", "Pod"),
            "spec.containers.volumeDevices",
            MergeByKey("devicePath"),
        ),
        (("", "Pod"), "spec.volumes", MergeByKey("name")),
        (("", "Pod"), "spec.imagePullSecrets", MergeByKey("name")),
        (("", "Pod"), "spec.hostAliases", MergeByKey("ip")),
        (("", "Pod"), "spec.tolerations", Default),
        (("", "Pod"), "status.conditions", MergeByKey("type")),
        (("", "Pod"), "metadata.finalizers", MergeSet),
        (("", "Pod"), "metadata.ownerReferences", MergeByKey("uid")),
        (
            ("apps", "Deployment"),
            "spec.template.spec.containers.env",
            MergeByKey("name"),
        ),
        (
            ("apps", "Deployment"),
            "spec.template.spec.initContainers.ports",
            MergeByKey("containerPort"),
        ),
        (
            ("apps", "Deployment"),
            "spec.template.metadata.finalizers",
            MergeSet,
        ),
        (
            ("apps", "Deployment"),
            "status.conditions",
            MergeByKey("type"),
        ),
        (
            ("apps", "ReplicaSet"),
            "spec.template.spec.containers.volumeMounts",
            MergeByKey("mountPath"),
        ),
        (
            ("apps", "StatefulSet"),
            "spec.template.spec.volumes",
            MergeByKey("name"),
        ),
        (
            ("apps", "DaemonSet"),
            "spec.template.spec.tolerations",
            Default,
        ),
        (
            ("batch", "CronJob"),
            "spec.jobTemplate.spec.template.spec.containers.env",
            MergeByKey("name"),
        ),
        (("", "Service"), "spec.ports", MergeByKey("port")),
        (("", "Node"), "status.addresses", MergeByKey("type")),
        (("discovery.k8s.io", "EndpointSlice"), "endpoints", Default),
        (("discovery.k8s.io", "EndpointSlice"), "ports", Default),
        (
            ("", "ConfigMap"),
            "metadata.ownerReferences",
            MergeByKey("uid"),
        ),
    ];
    for ((group, kind), path, want) in cases {
        let schema = Schema::for_kind(group, kind);
        let field = schema
            .lookup(path)
            .unwrap_or_else(|| panic!("{kind} {path} not in the table"));
        assert_eq!(field.strategy, want, "{kind} {path}");
    }
}

#[test]
fn unknown_kinds_and_fields_have_no_metadata() {
    assert!(!Schema::for_kind("example.com", "Widget").is_typed());
    assert!(
        !Schema::for_kind("", "Deployment").is_typed(),
        "Deployment lives in apps"
    );
    assert!(Schema::UNTYPED.lookup("spec.containers").is_none());
    let pod = Schema::for_kind("", "Pod");
    assert!(pod.lookup("spec.nodeName").is_none());
    assert!(pod.lookup("spec.containers.image").is_none());
    assert!(pod.lookup("spec.tolerations.key").is_none());
}
