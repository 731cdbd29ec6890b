//! core/v1 kinds: defaults and checks as kube-apiserver applies them, and kubectl's columns.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{
        ConfigMap, Container, Event, Namespace, NamespaceStatus, Node, Pod, PodSpec, PodStatus,
        Secret, Service, ServiceAccount, ServicePort,
    },
    apimachinery::pkg::util::intstr::IntOrString,
    jiff::Timestamp,
};
use serde_json::Value;

use crate::api::{
    error::Cause,
    kind::{age, human_duration, Column, NameRule, Rules, WriteHook, AGE, NAME},
    validation,
};

fn s(v: impl Into<String>) -> Value {
    Value::String(v.into())
}

fn none_if_empty(v: String) -> Value {
    if v.is_empty() {
        s("<none>")
    } else {
        s(v)
    }
}

/// `k=v,k2=v2`, as kubectl prints selectors.
pub fn selector_string(m: Option<&BTreeMap<String, String>>) -> String {
    m.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

macro_rules! status_slot {
    ($ty:ty, $status:ty) => {
        fn take_status(&mut self) -> Value {
            self.status
                .take()
                .and_then(|st| serde_json::to_value(st).ok())
                .unwrap_or(Value::Null)
        }
        fn put_status(&mut self, status: Value) -> Result<(), serde_json::Error> {
            self.status = serde_json::from_value::<Option<$status>>(status)?;
            Ok(())
        }
    };
}
pub(crate) use status_slot;

const PROTOCOLS: &[&str] = &["TCP", "UDP", "SCTP"];

fn port_range(field: String, port: i32, causes: &mut Vec<Cause>) {
    if !(1..=65535).contains(&port) {
        causes.push(Cause::invalid(
            field,
            &port.to_string(),
            "must be between 1 and 65535, inclusive",
        ));
    }
}

fn default_container(c: &mut Container) {
    c.termination_message_path
        .get_or_insert_with(|| "/dev/termination-log".into());
    c.termination_message_policy
        .get_or_insert_with(|| "File".into());
    if c.image_pull_policy.is_none() {
        let image = c.image.as_deref().unwrap_or("");
        let tag = image
            .rsplit('/')
            .next()
            .and_then(|last| last.split_once(':'));
        let latest = !image.contains('@') && tag.is_none_or(|(_, t)| t == "latest");
        c.image_pull_policy = Some(if latest { "Always" } else { "IfNotPresent" }.into());
    }
    for p in c.ports.iter_mut().flatten() {
        p.protocol.get_or_insert_with(|| "TCP".into());
    }
}

/// PodSpec defaults shared by Pods and the templates of Deployments and ReplicaSets.
pub fn default_pod_spec(spec: &mut PodSpec) {
    spec.restart_policy.get_or_insert_with(|| "Always".into());
    spec.dns_policy.get_or_insert_with(|| "ClusterFirst".into());
    spec.termination_grace_period_seconds.get_or_insert(30);
    spec.scheduler_name
        .get_or_insert_with(|| "default-scheduler".into());
    spec.security_context.get_or_insert_with(Default::default);
    spec.enable_service_links.get_or_insert(true);
    for c in spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten())
    {
        default_container(c);
    }
}

pub fn validate_pod_spec(spec: &PodSpec, at: &str, causes: &mut Vec<Cause>) {
    if spec.containers.is_empty() {
        causes.push(Cause::required(format!("{at}.containers")));
    }
    let mut names = std::collections::HashSet::new();
    let lists = [
        ("containers", &spec.containers[..]),
        (
            "initContainers",
            spec.init_containers.as_deref().unwrap_or(&[]),
        ),
    ];
    for (list, containers) in lists {
        for (i, c) in containers.iter().enumerate() {
            let f = format!("{at}.{list}[{i}]");
            if c.name.is_empty() {
                causes.push(Cause::required(format!("{f}.name")));
            } else if let Some(why) = validation::dns1123_label(&c.name) {
                causes.push(Cause::invalid(format!("{f}.name"), &c.name, why));
            } else if !names.insert(c.name.as_str()) {
                causes.push(Cause {
                    reason: "FieldValueDuplicate",
                    field: format!("{f}.name"),
                    message: format!("Duplicate value: \"{}\"", c.name),
                });
            }
            if c.image.as_deref().is_none_or(str::is_empty) {
                causes.push(Cause::required(format!("{f}.image")));
            }
            // A container's own restartPolicy makes an init container a native sidecar
            // (KEP-753); "Always" is the only value, and only there.
            if let Some(rp) = c.restart_policy.as_deref() {
                if list == "containers" {
                    causes.push(Cause {
                        reason: "FieldValueForbidden",
                        field: format!("{f}.restartPolicy"),
                        message: "Forbidden: may not be set for non-init containers".into(),
                    });
                } else if rp != "Always" {
                    causes.push(Cause::unsupported(
                        format!("{f}.restartPolicy"),
                        rp,
                        &["Always"],
                    ));
                }
            }
            for (j, p) in c.ports.iter().flatten().enumerate() {
                port_range(
                    format!("{f}.ports[{j}].containerPort"),
                    p.container_port,
                    causes,
                );
                if let Some(proto) = p.protocol.as_deref().filter(|p| !PROTOCOLS.contains(p)) {
                    causes.push(Cause::unsupported(
                        format!("{f}.ports[{j}].protocol"),
                        proto,
                        PROTOCOLS,
                    ));
                }
            }
        }
    }
    const POLICIES: &[&str] = &["Always", "OnFailure", "Never"];
    if let Some(p) = spec
        .restart_policy
        .as_deref()
        .filter(|p| !POLICIES.contains(p))
    {
        causes.push(Cause::unsupported(
            format!("{at}.restartPolicy"),
            p,
            POLICIES,
        ));
    }
}

impl Rules for Pod {
    const WRITE_HOOKS: &'static [WriteHook] = &[WriteHook::AdmitPod];
    const NAMESPACED: bool = true;
    const SINGULAR: &'static str = "pod";
    const SHORT_NAMES: &'static [&'static str] = &["po"];
    const CATEGORIES: &'static [&'static str] = &["all"];
    const HAS_STATUS: bool = true;
    const FIELDS: &'static [&'static str] = &[
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "spec.hostNetwork",
        "status.phase",
        "status.podIP",
        "status.nominatedNodeName",
    ];
    const COLUMNS: &'static [Column] = &[
        NAME,
        Column::new("Ready", "string", 0),
        Column::new("Status", "string", 0),
        Column::new("Restarts", "string", 0),
        AGE,
        Column::new("IP", "string", 1),
        Column::new("Node", "string", 1),
        Column::new("Nominated Node", "string", 1),
        Column::new("Readiness Gates", "string", 1),
    ];

    fn default(&mut self) {
        if let Some(spec) = self.spec.as_mut() {
            default_pod_spec(spec);
        }
        let status = self.status.get_or_insert_with(PodStatus::default);
        status.phase.get_or_insert_with(|| "Pending".into());
    }

    fn validate(&self, causes: &mut Vec<Cause>) {
        match &self.spec {
            Some(spec) => validate_pod_spec(spec, "spec", causes),
            None => causes.push(Cause::required("spec")),
        }
    }

    fn validate_update(&self, old: &Self, causes: &mut Vec<Cause>) {
        let node = |p: &Pod| p.spec.as_ref().and_then(|s| s.node_name.clone());
        if node(old).is_some() && node(self) != node(old) {
            causes.push(Cause {
                reason: "FieldValueForbidden",
                field: "spec.nodeName".into(),
                message: "Forbidden: pod updates may not change fields other than `spec.containers[*].image`, `spec.initContainers[*].image`, `spec.activeDeadlineSeconds`, `spec.tolerations` (only additions to existing tolerations), `spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)".into(),
            });
        }
    }

    fn field(&self, path: &str) -> Option<String> {
        let spec = self.spec.as_ref();
        let status = self.status.as_ref();
        match path {
            "spec.nodeName" => spec.and_then(|s| s.node_name.clone()),
            "spec.restartPolicy" => spec.and_then(|s| s.restart_policy.clone()),
            "spec.schedulerName" => spec.and_then(|s| s.scheduler_name.clone()),
            "spec.serviceAccountName" => spec.and_then(|s| s.service_account_name.clone()),
            "spec.hostNetwork" => Some(
                spec.and_then(|s| s.host_network)
                    .unwrap_or(false)
                    .to_string(),
            ),
            "status.phase" => status.and_then(|s| s.phase.clone()),
            "status.podIP" => status.and_then(|s| s.pod_ip.clone()),
            "status.nominatedNodeName" => status.and_then(|s| s.nominated_node_name.clone()),
            _ => None,
        }
    }

    fn row(&self, now: Timestamp) -> Vec<Value> {
        let spec = self.spec.as_ref();
        let status = self.status.as_ref();
        let statuses = status
            .and_then(|s| s.container_statuses.as_deref())
            .unwrap_or(&[]);
        let inits = spec
            .and_then(|s| s.init_containers.as_deref())
            .unwrap_or(&[]);
        let init_statuses = status
            .and_then(|s| s.init_container_statuses.as_deref())
            .unwrap_or(&[]);
        // kubectl's printPod: native sidecars count among the containers, and an
        // initializing pod shows which init container it is at.
        let sidecar = |name: &str| {
            inits
                .iter()
                .any(|c| c.name == name && c.restart_policy.as_deref() == Some("Always"))
        };
        let mut total = spec.map_or(0, |s| s.containers.len());
        total += inits
            .iter()
            .filter(|c| c.restart_policy.as_deref() == Some("Always"))
            .count();
        let mut ready = statuses.iter().filter(|c| c.ready).count();
        ready += init_statuses
            .iter()
            .filter(|c| c.ready && sidecar(&c.name))
            .count();
        let restarts: i32 = statuses
            .iter()
            .chain(init_statuses)
            .map(|c| c.restart_count)
            .sum();
        let mut reason = status
            .and_then(|s| s.reason.clone().or_else(|| s.phase.clone()))
            .unwrap_or_else(|| "Unknown".into());
        let mut initializing = false;
        for (i, c) in init_statuses.iter().enumerate() {
            let st = c.state.as_ref();
            let term = st.and_then(|st| st.terminated.as_ref());
            let wait = st.and_then(|st| st.waiting.as_ref());
            if term.is_some_and(|t| t.exit_code == 0)
                || (sidecar(&c.name) && c.started == Some(true))
            {
                continue;
            }
            reason = match (term, wait.and_then(|w| w.reason.as_deref())) {
                (Some(t), _) => format!(
                    "Init:{}",
                    t.reason
                        .clone()
                        .unwrap_or_else(|| format!("ExitCode:{}", t.exit_code))
                ),
                (None, Some(r)) if r != "PodInitializing" => format!("Init:{r}"),
                _ => format!("Init:{i}/{}", inits.len()),
            };
            initializing = true;
            break;
        }
        for c in statuses.iter().filter(|_| !initializing) {
            if let Some(w) = c.state.as_ref().and_then(|st| st.waiting.as_ref()) {
                if let Some(r) = &w.reason {
                    reason = r.clone();
                }
            } else if let Some(t) = c.state.as_ref().and_then(|st| st.terminated.as_ref()) {
                reason = t
                    .reason
                    .clone()
                    .unwrap_or_else(|| format!("ExitCode:{}", t.exit_code));
            }
        }
        if self.metadata.deletion_timestamp.is_some() {
            reason = "Terminating".into();
        }
        vec![
            s(format!("{ready}/{total}")),
            s(reason),
            s(restarts.to_string()),
            age(&self.metadata, now),
            none_if_empty(status.and_then(|s| s.pod_ip.clone()).unwrap_or_default()),
            none_if_empty(spec.and_then(|s| s.node_name.clone()).unwrap_or_default()),
            none_if_empty(
                status
                    .and_then(|s| s.nominated_node_name.clone())
                    .unwrap_or_default(),
            ),
            s("<none>"),
        ]
    }

    status_slot!(Pod, PodStatus);

    fn grace_period(&self) -> Option<i64> {
        let spec = self.spec.as_ref()?;
        spec.node_name.as_ref()?;
        let phase = self.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed")) {
            return None;
        }
        Some(spec.termination_grace_period_seconds.unwrap_or(30))
    }
}

const SERVICE_TYPES: &[&str] = &["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"];

fn port_string(p: &ServicePort) -> String {
    let proto = p.protocol.as_deref().unwrap_or("TCP");
    match p.node_port {
        Some(np) => format!("{}:{np}/{proto}", p.port),
        None => format!("{}/{proto}", p.port),
    }
}

impl Rules for Service {
    const WRITE_HOOKS: &'static [WriteHook] = &[WriteHook::AllocateServiceAddresses];
    const NAMESPACED: bool = true;
    const SINGULAR: &'static str = "service";
    const SHORT_NAMES: &'static [&'static str] = &["svc"];
    const CATEGORIES: &'static [&'static str] = &["all"];
    const HAS_STATUS: bool = true;
    const NAME_RULE: NameRule = NameRule::Dns1035;
    const COLUMNS: &'static [Column] = &[
        NAME,
        Column::new("Type", "string", 0),
        Column::new("Cluster-IP", "string", 0),
        Column::new("External-IP", "string", 0),
        Column::new("Port(s)", "string", 0),
        AGE,
        Column::new("Selector", "string", 1),
    ];

    fn default(&mut self) {
        let spec = self.spec.get_or_insert_with(Default::default);
        let ty = spec.type_.get_or_insert_with(|| "ClusterIP".into()).clone();
        if ty != "ExternalName" {
            spec.session_affinity.get_or_insert_with(|| "None".into());
            spec.internal_traffic_policy
                .get_or_insert_with(|| "Cluster".into());
        }
        if ty == "NodePort" || ty == "LoadBalancer" {
            spec.external_traffic_policy
                .get_or_insert_with(|| "Cluster".into());
        }
        for p in spec.ports.iter_mut().flatten() {
            p.protocol.get_or_insert_with(|| "TCP".into());
            if ty != "ExternalName" {
                p.target_port.get_or_insert(IntOrString::Int(p.port));
            }
        }
        self.status.get_or_insert_with(Default::default);
    }

    fn validate(&self, causes: &mut Vec<Cause>) {
        let Some(spec) = &self.spec else {
            return causes.push(Cause::required("spec"));
        };
        let ty = spec.type_.as_deref().unwrap_or("ClusterIP");
        if !SERVICE_TYPES.contains(&ty) {
            causes.push(Cause::unsupported("spec.type", ty, SERVICE_TYPES));
        }
        let ports = spec.ports.as_deref().unwrap_or(&[]);
        let headless = spec.cluster_ip.as_deref() == Some("None");
        if ty == "ExternalName" {
            if spec.external_name.as_deref().is_none_or(str::is_empty) {
                causes.push(Cause::required("spec.externalName"));
            }
        } else if ports.is_empty() && !headless {
            causes.push(Cause::required("spec.ports"));
        }
        let mut names = std::collections::HashSet::new();
        for (i, p) in ports.iter().enumerate() {
            let f = format!("spec.ports[{i}]");
            port_range(format!("{f}.port"), p.port, causes);
            let name = p.name.as_deref().unwrap_or("");
            if ports.len() > 1 && name.is_empty() {
                causes.push(Cause::required(format!("{f}.name")));
            }
            if !name.is_empty() {
                if let Some(why) = validation::dns1123_label(name) {
                    causes.push(Cause::invalid(format!("{f}.name"), name, why));
                }
                if !names.insert(name) {
                    causes.push(Cause {
                        reason: "FieldValueDuplicate",
                        field: format!("{f}.name"),
                        message: format!("Duplicate value: \"{name}\""),
                    });
                }
            }
            if let Some(proto) = p.protocol.as_deref().filter(|p| !PROTOCOLS.contains(p)) {
                causes.push(Cause::unsupported(
                    format!("{f}.protocol"),
                    proto,
                    PROTOCOLS,
                ));
            }
            if let Some(np) = p.node_port {
                if ty == "ClusterIP" {
                    causes.push(Cause {
                        reason: "FieldValueForbidden",
                        field: format!("{f}.nodePort"),
                        message: "Forbidden: may not be used when `type` is 'ClusterIP'".into(),
                    });
                } else {
                    port_range(format!("{f}.nodePort"), np, causes);
                }
            }
            if let Some(IntOrString::Int(tp)) = &p.target_port {
                port_range(format!("{f}.targetPort"), *tp, causes);
            }
        }
        const AFFINITY: &[&str] = &["None", "ClientIP"];
        if let Some(a) = spec
            .session_affinity
            .as_deref()
            .filter(|a| !AFFINITY.contains(a))
        {
            causes.push(Cause::unsupported("spec.sessionAffinity", a, AFFINITY));
        }
        validation::labels("spec.selector", spec.selector.as_ref(), causes);
    }

    fn validate_update(&self, old: &Self, causes: &mut Vec<Cause>) {
        let ip = |s: &Service| {
            s.spec
                .as_ref()
                .and_then(|s| s.cluster_ip.clone())
                .filter(|ip| !ip.is_empty())
        };
        let ty = |s: &Service| s.spec.as_ref().and_then(|s| s.type_.clone());
        if ty(self).as_deref() != Some("ExternalName")
            && ip(old).is_some()
            && ip(self).is_some()
            && ip(self) != ip(old)
        {
            causes.push(Cause::invalid(
                "spec.clusterIPs[0]",
                &ip(self).unwrap_or_default(),
                "may not change once set",
            ));
        }
    }

    fn row(&self, now: Timestamp) -> Vec<Value> {
        let spec = self.spec.clone().unwrap_or_default();
        let ty = spec.type_.clone().unwrap_or_else(|| "ClusterIP".into());
        let lb_ips: Vec<String> = self
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|i| i.ip.clone().or_else(|| i.hostname.clone()))
            .collect();
        let ext = spec.external_ips.clone().unwrap_or_default();
        let external = match ty.as_str() {
            "ExternalName" => spec.external_name.clone().unwrap_or_default(),
            "LoadBalancer" if lb_ips.is_empty() && ext.is_empty() => "<pending>".into(),
            "LoadBalancer" => [lb_ips, ext].concat().join(","),
            _ => ext.join(","),
        };
        let ports: Vec<String> = spec.ports.iter().flatten().map(port_string).collect();
        vec![
            s(ty),
            none_if_empty(spec.cluster_ip.clone().unwrap_or_default()),
            none_if_empty(external),
            none_if_empty(ports.join(",")),
            age(&self.metadata, now),
            none_if_empty(selector_string(spec.selector.as_ref())),
        ]
    }

    status_slot!(Service, k8s_openapi::api::core::v1::ServiceStatus);
}

impl Rules for Namespace {
    const NAMESPACED: bool = false;
    const SINGULAR: &'static str = "namespace";
    const SHORT_NAMES: &'static [&'static str] = &["ns"];
    const HAS_STATUS: bool = true;
    const NAME_RULE: NameRule = NameRule::Label;
    const FIELDS: &'static [&'static str] = &["status.phase"];
    const COLUMNS: &'static [Column] = &[NAME, Column::new("Status", "string", 0), AGE];

    fn default(&mut self) {
        let status = self.status.get_or_insert_with(NamespaceStatus::default);
        status.phase.get_or_insert_with(|| "Active".into());
        let name = self.metadata.name.clone().unwrap_or_default();
        self.metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert("kubernetes.io/metadata.name".into(), name);
    }

    fn field(&self, path: &str) -> Option<String> {
        (path == "status.phase")
            .then(|| self.status.as_ref().and_then(|s| s.phase.clone()))
            .flatten()
    }

    fn row(&self, now: Timestamp) -> Vec<Value> {
        let phase = self
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        vec![s(phase), age(&self.metadata, now)]
    }

    status_slot!(Namespace, NamespaceStatus);
}

impl Rules for Node {
    const NAMESPACED: bool = false;
    const SINGULAR: &'static str = "node";
    const SHORT_NAMES: &'static [&'static str] = &["no"];
    const HAS_STATUS: bool = true;
    const FIELDS: &'static [&'static str] = &["spec.unschedulable"];
    const COLUMNS: &'static [Column] = &[
        NAME,
        Column::new("Status", "string", 0),
        Column::new("Roles", "string", 0),
        AGE,
        Column::new("Version", "string", 0),
        Column::new("Internal-IP", "string", 1),
        Column::new("External-IP", "string", 1),
        Column::new("OS-Image", "string", 1),
        Column::new("Kernel-Version", "string", 1),
        Column::new("Container-Runtime", "string", 1),
    ];

    fn field(&self, path: &str) -> Option<String> {
        (path == "spec.unschedulable").then(|| {
            self.spec
                .as_ref()
                .and_then(|s| s.unschedulable)
                .unwrap_or(false)
                .to_string()
        })
    }

    fn row(&self, now: Timestamp) -> Vec<Value> {
        let status = self.status.clone().unwrap_or_default();
        let ready = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Ready")
            .map(|c| match c.status.as_str() {
                "True" => "Ready",
                "False" => "NotReady",
                _ => "Unknown",
            })
            .unwrap_or("Unknown");
        let mut st = ready.to_string();
        if self.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
            st.push_str(",SchedulingDisabled");
        }
        let roles: Vec<&str> = self
            .metadata
            .labels
            .iter()
            .flatten()
            .filter_map(|(k, _)| k.strip_prefix("node-role.kubernetes.io/"))
            .collect();
        let addr = |t: &str| {
            status
                .addresses
                .iter()
                .flatten()
                .find(|a| a.type_ == t)
                .map(|a| a.address.clone())
                .unwrap_or_default()
        };
        let info = status.node_info.clone().unwrap_or_default();
        vec![
            s(st),
            none_if_empty(roles.join(",")),
            age(&self.metadata, now),
            s(info.kubelet_version),
            none_if_empty(addr("InternalIP")),
            none_if_empty(addr("ExternalIP")),
            s(info.os_image),
            s(info.kernel_version),
            s(info.container_runtime_version),
        ]
    }

    status_slot!(Node, k8s_openapi::api::core::v1::NodeStatus);
}

impl Rules for Event {
    const NAMESPACED: bool = true;
    const SINGULAR: &'static str = "event";
    const SHORT_NAMES: &'static [&'static str] = &["ev"];
    const FIELDS: &'static [&'static str] = &[
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    ];
    const COLUMNS: &'static [Column] = &[
        Column::new("Name", "string", 1),
        Column::new("Last Seen", "string", 0),
        Column::new("Type", "string", 0),
        Column::new("Reason", "string", 0),
        Column::new("Object", "string", 0),
        Column::new("Message", "string", 0),
    ];

    fn field(&self, path: &str) -> Option<String> {
        let o = &self.involved_object;
        match path {
            "involvedObject.kind" => o.kind.clone(),
            "involvedObject.namespace" => o.namespace.clone(),
            "involvedObject.name" => o.name.clone(),
            "involvedObject.uid" => o.uid.clone(),
            "involvedObject.apiVersion" => o.api_version.clone(),
            "involvedObject.resourceVersion" => o.resource_version.clone(),
            "involvedObject.fieldPath" => o.field_path.clone(),
            "reason" => self.reason.clone(),
            "reportingComponent" => self.reporting_component.clone(),
            "source" => self.source.as_ref().and_then(|s| s.component.clone()),
            "type" => self.type_.clone(),
            _ => None,
        }
    }

    fn row(&self, now: Timestamp) -> Vec<Value> {
        let last = self
            .last_timestamp
            .as_ref()
            .map(|t| t.0)
            .or(self.event_time.as_ref().map(|t| t.0))
            .or(self.metadata.creation_timestamp.as_ref().map(|t| t.0));
        let o = &self.involved_object;
        vec![
            s(last.map_or("<unknown>".into(), |t| {
                human_duration(now.as_second() - t.as_second())
            })),
            s(self.type_.clone().unwrap_or_default()),
            s(self.reason.clone().unwrap_or_default()),
            s(format!(
                "{}/{}",
                o.kind.clone().unwrap_or_default().to_lowercase(),
                o.name.clone().unwrap_or_default()
            )),
            s(self.message.clone().unwrap_or_default()),
        ]
    }
}

fn data_keys(field: &str, keys: impl Iterator<Item = String>, causes: &mut Vec<Cause>) {
    for k in keys {
        let ok = !k.is_empty()
            && k.len() <= 253
            && k.bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
        if !ok {
            causes.push(Cause::invalid(
                field,
                &k,
                "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')",
            ));
        }
    }
}

impl Rules for ConfigMap {
    const NAMESPACED: bool = true;
    const SINGULAR: &'static str = "configmap";
    const SHORT_NAMES: &'static [&'static str] = &["cm"];
    const COLUMNS: &'static [Column] = &[NAME, Column::new("Data", "integer", 0), AGE];

    fn validate(&self, causes: &mut Vec<Cause>) {
        data_keys(
            "data",
            self.data.iter().flatten().map(|(k, _)| k.clone()),
            causes,
        );
        data_keys(
            "binaryData",
            self.binary_data.iter().flatten().map(|(k, _)| k.clone()),
            causes,
        );
        let size: usize = self
            .data
            .iter()
            .flatten()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
            + self
                .binary_data
                .iter()
                .flatten()
                .map(|(k, v)| k.len() + v.0.len())
                .sum::<usize>();
        if size > 1024 * 1024 {
            causes.push(Cause {
                reason: "FieldValueTooLong",
                field: "data".into(),
                message: "Too long: must have at most 1048576 bytes".into(),
            });
        }
    }

    fn row(&self, now: Timestamp) -> Vec<Value> {
        let n = self.data.as_ref().map_or(0, BTreeMap::len)
            + self.binary_data.as_ref().map_or(0, BTreeMap::len);
        vec![Value::from(n), age(&self.metadata, now)]
    }
}

impl Rules for Secret {
    const NAMESPACED: bool = true;
    const SINGULAR: &'static str = "secret";
    const FIELDS: &'static [&'static str] = &["type"];
    const COLUMNS: &'static [Column] = &[
        NAME,
        Column::new("Type", "string", 0),
        Column::new("Data", "integer", 0),
        AGE,
    ];

    fn default(&mut self) {
        self.type_.get_or_insert_with(|| "Opaque".into());
        // stringData is write-only: folded into data as the API server does.
        if let Some(sd) = self.string_data.take() {
            let data = self.data.get_or_insert_with(Default::default);
            for (k, v) in sd {
                data.insert(k, k8s_openapi::ByteString(v.into_bytes()));
            }
        }
    }

    fn validate(&self, causes: &mut Vec<Cause>) {
        data_keys(
            "data",
            self.data.iter().flatten().map(|(k, _)| k.clone()),
            causes,
        );
    }

    fn field(&self, path: &str) -> Option<String> {
        (path == "type").then(|| self.type_.clone()).flatten()
    }

    fn row(&self, now: Timestamp) -> Vec<Value> {
        vec![
            s(self.type_.clone().unwrap_or_default()),
            Value::from(self.data.as_ref().map_or(0, BTreeMap::len)),
            age(&self.metadata, now),
        ]
    }
}

impl Rules for ServiceAccount {
    const NAMESPACED: bool = true;
    const SINGULAR: &'static str = "serviceaccount";
    const SHORT_NAMES: &'static [&'static str] = &["sa"];
    const COLUMNS: &'static [Column] = &[NAME, Column::new("Secrets", "string", 0), AGE];

    fn row(&self, now: Timestamp) -> Vec<Value> {
        vec![
            Value::from(self.secrets.as_ref().map_or(0, Vec::len)),
            age(&self.metadata, now),
        ]
    }
}
