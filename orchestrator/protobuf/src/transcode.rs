//! One walk over any message, driven by its descriptor, between protobuf and Kubernetes JSON.
//!
//! Kubernetes JSON differs from the proto3 JSON mapping, so prost-reflect's serde is not used:
//! int64 stays a number, field names are the proto names (already the JSON names), and a few
//! apimachinery types have a JSON shape of their own (`special`).
//!
//! Presence: gogo-generated Go code writes every non-pointer field, zero or not, and pointer
//! fields only when set. Go's JSON leaves out zero `omitempty` fields but keeps set pointers. A
//! present zero scalar is therefore written to JSON only when the field is required (no
//! `+optional`, listed by build.rs) or is a pointer whose zero means something ([`POINTERS`]);
//! otherwise it is the Go zero value a JSON client would not have sent.

use base64::{engine::general_purpose::STANDARD as B64, Engine};
use prost_reflect::{
    DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor, ReflectMessage,
    Value as PValue,
};
use serde_json::{Map, Number, Value};

include!(concat!(env!("OUT_DIR"), "/required.rs"));

/// Optional pointer scalars (`*int32`, `*bool`, ...) whose zero differs from unset in the kinds
/// served or about to be: a replica count of 0, a grace period of 0, uid 0, `false` opt-outs.
/// Unlisted optional pointers lose an explicit zero and take the server's default.
pub static POINTERS: &[&str] = &[
    "api.apps.v1.DaemonSetSpec.revisionHistoryLimit",
    "api.apps.v1.DeploymentSpec.progressDeadlineSeconds",
    "api.apps.v1.DeploymentSpec.replicas",
    "api.apps.v1.DeploymentSpec.revisionHistoryLimit",
    "api.apps.v1.ReplicaSetSpec.replicas",
    "api.apps.v1.StatefulSetSpec.replicas",
    "api.apps.v1.StatefulSetSpec.revisionHistoryLimit",
    "api.authentication.v1.TokenRequestSpec.expirationSeconds",
    "api.batch.v1.CronJobSpec.failedJobsHistoryLimit",
    "api.batch.v1.CronJobSpec.startingDeadlineSeconds",
    "api.batch.v1.CronJobSpec.successfulJobsHistoryLimit",
    "api.batch.v1.CronJobSpec.suspend",
    "api.batch.v1.JobSpec.activeDeadlineSeconds",
    "api.batch.v1.JobSpec.backoffLimit",
    "api.batch.v1.JobSpec.completions",
    "api.batch.v1.JobSpec.manualSelector",
    "api.batch.v1.JobSpec.parallelism",
    "api.batch.v1.JobSpec.suspend",
    "api.batch.v1.JobSpec.ttlSecondsAfterFinished",
    "api.coordination.v1.LeaseSpec.leaseDurationSeconds",
    "api.coordination.v1.LeaseSpec.leaseTransitions",
    "api.core.v1.ConfigMap.immutable",
    "api.core.v1.ConfigMapKeySelector.optional",
    "api.core.v1.ConfigMapVolumeSource.defaultMode",
    "api.core.v1.ConfigMapVolumeSource.optional",
    "api.core.v1.PodSecurityContext.fsGroup",
    "api.core.v1.PodSecurityContext.runAsGroup",
    "api.core.v1.PodSecurityContext.runAsNonRoot",
    "api.core.v1.PodSecurityContext.runAsUser",
    "api.core.v1.PodSpec.activeDeadlineSeconds",
    "api.core.v1.PodSpec.automountServiceAccountToken",
    "api.core.v1.PodSpec.enableServiceLinks",
    "api.core.v1.PodSpec.hostUsers",
    "api.core.v1.PodSpec.priority",
    "api.core.v1.PodSpec.shareProcessNamespace",
    "api.core.v1.PodSpec.terminationGracePeriodSeconds",
    "api.core.v1.Probe.terminationGracePeriodSeconds",
    "api.core.v1.Secret.immutable",
    "api.core.v1.SecretKeySelector.optional",
    "api.core.v1.SecretVolumeSource.defaultMode",
    "api.core.v1.SecretVolumeSource.optional",
    "api.core.v1.SecurityContext.allowPrivilegeEscalation",
    "api.core.v1.SecurityContext.privileged",
    "api.core.v1.SecurityContext.readOnlyRootFilesystem",
    "api.core.v1.SecurityContext.runAsGroup",
    "api.core.v1.SecurityContext.runAsNonRoot",
    "api.core.v1.SecurityContext.runAsUser",
    "api.core.v1.ServiceAccount.automountServiceAccountToken",
    "api.core.v1.ServiceAccountTokenProjection.expirationSeconds",
    "api.core.v1.ServiceSpec.allocateLoadBalancerNodePorts",
    "api.discovery.v1.EndpointConditions.ready",
    "api.discovery.v1.EndpointConditions.serving",
    "api.discovery.v1.EndpointConditions.terminating",
    "api.discovery.v1.EndpointPort.port",
    "apimachinery.pkg.apis.meta.v1.DeleteOptions.gracePeriodSeconds",
    "apimachinery.pkg.apis.meta.v1.DeleteOptions.orphanDependents",
    "apimachinery.pkg.apis.meta.v1.ListMeta.remainingItemCount",
    "apimachinery.pkg.apis.meta.v1.ObjectMeta.deletionGracePeriodSeconds",
    "apimachinery.pkg.apis.meta.v1.OwnerReference.blockOwnerDeletion",
    "apimachinery.pkg.apis.meta.v1.OwnerReference.controller",
];

/// Go structs embedded with `json:",inline"`: protobuf nests them in a field, JSON spreads their
/// fields into the parent (a Probe's `httpGet`, a Volume's `configMap`, a key selector's `name`).
/// Derived from the vendored protos: every message field whose name is not a JSON key of the
/// parent's k8s-openapi type, less the renamed ones below (README.md says how).
pub static INLINE: &[&str] = &[
    "api.admissionregistration.v1.NamedRuleWithOperations.ruleWithOperations",
    "api.admissionregistration.v1.RuleWithOperations.rule",
    "api.core.v1.ConfigMapEnvSource.localObjectReference",
    "api.core.v1.ConfigMapKeySelector.localObjectReference",
    "api.core.v1.ConfigMapProjection.localObjectReference",
    "api.core.v1.ConfigMapVolumeSource.localObjectReference",
    "api.core.v1.EphemeralContainer.ephemeralContainerCommon",
    "api.core.v1.PersistentVolumeSpec.persistentVolumeSource",
    "api.core.v1.Probe.handler",
    "api.core.v1.SecretEnvSource.localObjectReference",
    "api.core.v1.SecretKeySelector.localObjectReference",
    "api.core.v1.SecretProjection.localObjectReference",
    "api.core.v1.Volume.volumeSource",
    "api.networking.v1.IngressRule.ingressRuleValue",
];

/// Fields whose protobuf name is not their JSON name (a Go struct tag says otherwise).
pub static RENAMED: &[(&str, &str)] = &[
    (
        "api.admissionregistration.v1.MutatingWebhookConfiguration.Webhooks",
        "webhooks",
    ),
    (
        "api.admissionregistration.v1.ValidatingWebhookConfiguration.Webhooks",
        "webhooks",
    ),
    (
        "api.admissionregistration.v1.Variable.Expression",
        "expression",
    ),
    ("api.admissionregistration.v1.Variable.Name", "name"),
    ("api.authentication.v1.BoundObjectReference.uID", "uid"),
    (
        "api.networking.v1.IngressClassParametersReference.aPIGroup",
        "apiGroup",
    ),
];

fn is_inline(field: &FieldDescriptor) -> bool {
    INLINE.contains(&field.full_name())
}

fn json_name(field: &FieldDescriptor) -> &str {
    RENAMED
        .iter()
        .find(|(f, _)| *f == field.full_name())
        .map_or(field.name(), |(_, j)| j)
}

/// The field of `desc` that JSON key `key` names (after renames).
fn field_for_json(desc: &MessageDescriptor, key: &str) -> Option<FieldDescriptor> {
    desc.fields().find(|f| json_name(f) == key)
}

/// Whether `key` belongs to the inline message of `field` (or to one inline in it).
fn inline_has(field: &FieldDescriptor, key: &str) -> bool {
    let Kind::Message(d) = field.kind() else {
        return false;
    };
    field_for_json(&d, key).is_some_and(|f| !is_inline(&f))
        || d.fields().any(|f| is_inline(&f) && inline_has(&f, key))
}

const TIME: &str = "apimachinery.pkg.apis.meta.v1.Time";
const MICRO_TIME: &str = "apimachinery.pkg.apis.meta.v1.MicroTime";
const DURATION: &str = "apimachinery.pkg.apis.meta.v1.Duration";
const FIELDS_V1: &str = "apimachinery.pkg.apis.meta.v1.FieldsV1";
const QUANTITY: &str = "apimachinery.pkg.api.resource.Quantity";
const INT_OR_STRING: &str = "apimachinery.pkg.util.intstr.IntOrString";
const RAW_EXTENSION: &str = "apimachinery.pkg.runtime.RawExtension";
/// Go's zero `time.Time` as Unix seconds (0001-01-01), which older encoders wrote.
const GO_ZERO_TIME: i64 = -62_135_596_800;

/// A message as Kubernetes JSON. `Err` carries a message for a 400.
pub fn to_json(msg: &DynamicMessage) -> Result<Value, String> {
    Ok(message_to_json(msg)?.unwrap_or(Value::Null))
}

/// `None` for a value JSON leaves out (a zero `Time`).
fn message_to_json(msg: &DynamicMessage) -> Result<Option<Value>, String> {
    let desc = msg.descriptor();
    let int = |name: &str| match msg.get_field_by_name(name).as_deref() {
        Some(PValue::I64(v)) => *v,
        Some(PValue::I32(v)) => i64::from(*v),
        _ => 0,
    };
    let bytes = |name: &str| match msg.get_field_by_name(name).as_deref() {
        Some(PValue::Bytes(b)) => b.clone(),
        _ => Default::default(),
    };
    let string = |name: &str| match msg.get_field_by_name(name).as_deref() {
        Some(PValue::String(s)) => s.clone(),
        _ => String::new(),
    };
    match desc.full_name() {
        TIME | MICRO_TIME => {
            // Go writes a zero Time as an empty message (meta/v1 time_proto.go).
            let seconds = int("seconds");
            if !msg.has_field_by_name("seconds") || seconds == GO_ZERO_TIME {
                return Ok(None);
            }
            let nanos = int("nanos");
            let ts = jiff::Timestamp::new(seconds, nanos as i32)
                .map_err(|e| format!("{}: {e}", desc.name()))?;
            let base = ts.strftime("%Y-%m-%dT%H:%M:%S").to_string();
            return Ok(Some(Value::String(if desc.full_name() == TIME {
                format!("{base}Z")
            } else {
                format!("{base}.{:06}Z", nanos / 1000)
            })));
        }
        DURATION => return Ok(Some(Value::String(go_duration(int("duration"))))),
        QUANTITY => return Ok(Some(Value::String(string("string")))),
        INT_OR_STRING => {
            return Ok(Some(if int("type") == 1 {
                Value::String(string("strVal"))
            } else {
                Value::Number(int("intVal").into())
            }))
        }
        FIELDS_V1 | RAW_EXTENSION => {
            let raw = bytes(if desc.full_name() == FIELDS_V1 {
                "Raw"
            } else {
                "raw"
            });
            if raw.is_empty() {
                return Ok(None);
            }
            // No client sends one, and following them would let a body nest without bound.
            if raw.starts_with(&crate::MAGIC[..]) {
                return Err(format!(
                    "{}: nested protobuf objects are not supported",
                    desc.name()
                ));
            }
            return serde_json::from_slice(&raw)
                .map(Some)
                .map_err(|e| format!("{}: embedded JSON: {e}", desc.name()));
        }
        _ => {}
    }
    if let Some(items) = list_wrapper(&desc) {
        let v = msg.get_field(&items);
        return Ok(Some(
            value_to_json(&items, &v)?.unwrap_or(Value::Array(vec![])),
        ));
    }
    let mut out = Map::new();
    for (field, value) in msg.fields() {
        if is_unwanted_zero(&field, value) {
            continue;
        }
        match value_to_json(&field, value)? {
            Some(Value::Object(inner)) if is_inline(&field) => out.extend(inner),
            Some(v) => {
                out.insert(json_name(&field).to_string(), v);
            }
            None => {}
        }
    }
    Ok(Some(Value::Object(out)))
}

/// `type Verbs []string` and friends: a message whose only field is `repeated items`.
fn list_wrapper(desc: &MessageDescriptor) -> Option<FieldDescriptor> {
    let mut fields = desc.fields();
    let f = fields.next()?;
    (fields.next().is_none() && f.name() == "items" && f.is_list()).then_some(f)
}

fn is_unwanted_zero(field: &FieldDescriptor, value: &PValue) -> bool {
    let zero = match value {
        PValue::Bool(b) => !b,
        PValue::I32(v) => *v == 0,
        PValue::I64(v) => *v == 0,
        PValue::U32(v) => *v == 0,
        PValue::U64(v) => *v == 0,
        PValue::F32(v) => *v == 0.0,
        PValue::F64(v) => *v == 0.0,
        PValue::String(s) => s.is_empty(),
        PValue::Bytes(b) => b.is_empty(),
        _ => false,
    };
    zero && {
        let name = field.full_name();
        REQUIRED.binary_search(&name).is_err() && !POINTERS.contains(&name)
    }
}

fn value_to_json(field: &FieldDescriptor, value: &PValue) -> Result<Option<Value>, String> {
    Ok(Some(match value {
        PValue::List(items) => Value::Array(
            items
                .iter()
                .map(|v| scalar_to_json(v).map(|o| o.unwrap_or(Value::Null)))
                .collect::<Result<_, _>>()?,
        ),
        PValue::Map(entries) => {
            let mut m = Map::new();
            for (k, v) in entries {
                let key = match k {
                    MapKey::String(s) => s.clone(),
                    MapKey::Bool(b) => b.to_string(),
                    MapKey::I32(i) => i.to_string(),
                    MapKey::I64(i) => i.to_string(),
                    MapKey::U32(i) => i.to_string(),
                    MapKey::U64(i) => i.to_string(),
                };
                m.insert(key, scalar_to_json(v)?.unwrap_or(Value::Null));
            }
            Value::Object(m)
        }
        v => return scalar_to_json(v).map_err(|e| format!("{}: {e}", field.name())),
    }))
}

fn scalar_to_json(v: &PValue) -> Result<Option<Value>, String> {
    Ok(Some(match v {
        PValue::Bool(b) => Value::Bool(*b),
        PValue::I32(i) => Value::Number((*i).into()),
        PValue::I64(i) => Value::Number((*i).into()),
        PValue::U32(i) => Value::Number((*i).into()),
        PValue::U64(i) => Value::Number((*i).into()),
        PValue::F32(f) => Number::from_f64(f64::from(*f)).map_or(Value::Null, Value::Number),
        PValue::F64(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
        PValue::String(s) => Value::String(s.clone()),
        PValue::Bytes(b) => Value::String(B64.encode(b)),
        PValue::EnumNumber(n) => Value::Number((*n).into()),
        PValue::Message(m) => return message_to_json(m),
        PValue::List(_) | PValue::Map(_) => return Err("nested repeated value".into()),
    }))
}

/// A JSON object as the message `desc`. Unknown fields are skipped (the object may carry
/// fields newer than the vendored protos, and `apiVersion`/`kind` live in the envelope).
pub fn from_json(desc: &MessageDescriptor, v: &Value) -> Result<DynamicMessage, String> {
    let mut msg = DynamicMessage::new(desc.clone());
    let set = |msg: &mut DynamicMessage, name: &str, value: PValue| {
        msg.set_field_by_name(name, value);
    };
    match desc.full_name() {
        TIME | MICRO_TIME => {
            let s = v.as_str().ok_or("a time must be an RFC 3339 string")?;
            let ts: jiff::Timestamp = s.parse().map_err(|e| format!("time {s:?}: {e}"))?;
            set(&mut msg, "seconds", PValue::I64(ts.as_second()));
            set(&mut msg, "nanos", PValue::I32(ts.subsec_nanosecond()));
            return Ok(msg);
        }
        DURATION => {
            let s = v.as_str().ok_or("a duration must be a string")?;
            set(&mut msg, "duration", PValue::I64(parse_go_duration(s)?));
            return Ok(msg);
        }
        QUANTITY => {
            let s = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => return Err("a quantity must be a string or a number".into()),
            };
            set(&mut msg, "string", PValue::String(s));
            return Ok(msg);
        }
        INT_OR_STRING => {
            match v {
                Value::String(s) => {
                    set(&mut msg, "type", PValue::I64(1));
                    set(&mut msg, "strVal", PValue::String(s.clone()));
                }
                Value::Number(n) => {
                    let i = n.as_i64().and_then(|i| i32::try_from(i).ok());
                    set(&mut msg, "type", PValue::I64(0));
                    set(
                        &mut msg,
                        "intVal",
                        PValue::I32(i.ok_or("int-or-string out of range")?),
                    );
                }
                _ => return Err("an int-or-string must be a string or an integer".into()),
            }
            return Ok(msg);
        }
        FIELDS_V1 | RAW_EXTENSION => {
            let name = if desc.full_name() == FIELDS_V1 {
                "Raw"
            } else {
                "raw"
            };
            let raw = serde_json::to_vec(v).map_err(|e| e.to_string())?;
            set(&mut msg, name, PValue::Bytes(raw.into()));
            return Ok(msg);
        }
        _ => {}
    }
    if let Some(items) = list_wrapper(desc) {
        let value = json_to_value(&items, v)?;
        msg.set_field(&items, value);
        return Ok(msg);
    }
    let obj = v
        .as_object()
        .ok_or_else(|| format!("{} must be an object", desc.name()))?;
    let inline: Vec<FieldDescriptor> = desc.fields().filter(is_inline).collect();
    let mut spread: Vec<Map<String, Value>> = vec![Map::new(); inline.len()];
    for (k, v) in obj {
        if v.is_null() {
            continue;
        }
        match field_for_json(desc, k).filter(|f| !is_inline(f)) {
            Some(field) => {
                let value = json_to_value(&field, v).map_err(|e| format!("{k}: {e}"))?;
                msg.set_field(&field, value);
            }
            None => {
                if let Some(i) = inline.iter().position(|f| inline_has(f, k)) {
                    spread[i].insert(k.clone(), v.clone());
                }
            }
        }
    }
    for (field, sub) in inline.iter().zip(spread) {
        if let (false, Kind::Message(d)) = (sub.is_empty(), field.kind()) {
            let inner = from_json(&d, &Value::Object(sub))?;
            msg.set_field(field, PValue::Message(inner));
        }
    }
    Ok(msg)
}

fn json_to_value(field: &FieldDescriptor, v: &Value) -> Result<PValue, String> {
    if field.is_map() {
        let Kind::Message(entry) = field.kind() else {
            return Err("map without an entry type".into());
        };
        let key_kind = entry.map_entry_key_field().kind();
        let value_field = entry.map_entry_value_field();
        let obj = v.as_object().ok_or("expected an object")?;
        let mut out = std::collections::HashMap::new();
        for (k, v) in obj {
            let key = match key_kind {
                Kind::String => MapKey::String(k.clone()),
                Kind::Int32 => MapKey::I32(k.parse().map_err(|_| format!("key {k:?}"))?),
                Kind::Int64 => MapKey::I64(k.parse().map_err(|_| format!("key {k:?}"))?),
                _ => return Err(format!("unsupported map key type for {k:?}")),
            };
            if v.is_null() {
                continue;
            }
            out.insert(key, single(&value_field.kind(), v)?);
        }
        return Ok(PValue::Map(out));
    }
    if field.is_list() {
        let arr = v.as_array().ok_or("expected an array")?;
        return arr
            .iter()
            .map(|e| single(&field.kind(), e))
            .collect::<Result<_, _>>()
            .map(PValue::List);
    }
    single(&field.kind(), v)
}

fn single(kind: &Kind, v: &Value) -> Result<PValue, String> {
    let int = || -> Result<i64, String> {
        match v {
            Value::Number(n) => n.as_i64().ok_or_else(|| format!("{n} is not an integer")),
            Value::String(s) => s.parse().map_err(|_| format!("{s:?} is not an integer")),
            _ => Err(format!("expected an integer, got {v}")),
        }
    };
    let range = |i: i64| format!("{i} is out of range");
    Ok(match kind {
        // A list element JSON left out (an empty RawExtension) is an empty message.
        Kind::Message(d) if v.is_null() => PValue::Message(DynamicMessage::new(d.clone())),
        Kind::Message(d) => PValue::Message(from_json(d, v)?),
        Kind::String => PValue::String(
            v.as_str()
                .ok_or_else(|| format!("expected a string, got {v}"))?
                .to_string(),
        ),
        Kind::Bytes => {
            let s = v.as_str().ok_or("expected a base64 string")?;
            PValue::Bytes(B64.decode(s).map_err(|e| format!("base64: {e}"))?.into())
        }
        Kind::Bool => PValue::Bool(
            v.as_bool()
                .ok_or_else(|| format!("expected a bool, got {v}"))?,
        ),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            let i = int()?;
            PValue::I32(i32::try_from(i).map_err(|_| range(i))?)
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => PValue::I64(int()?),
        Kind::Uint32 | Kind::Fixed32 => {
            let i = int()?;
            PValue::U32(u32::try_from(i).map_err(|_| range(i))?)
        }
        Kind::Uint64 | Kind::Fixed64 => {
            let i = int()?;
            PValue::U64(u64::try_from(i).map_err(|_| range(i))?)
        }
        Kind::Double => PValue::F64(v.as_f64().ok_or("expected a number")?),
        Kind::Float => PValue::F32(v.as_f64().ok_or("expected a number")? as f32),
        Kind::Enum(_) => {
            PValue::EnumNumber(i32::try_from(int()?).map_err(|_| "enum out of range".to_string())?)
        }
    })
}

/// Go's `time.Duration.String()` for the shapes Kubernetes uses ("1h0m0s", "1.5s", "300ms").
pub fn go_duration(ns: i64) -> String {
    if ns == 0 {
        return "0s".into();
    }
    let sign = if ns < 0 { "-" } else { "" };
    let u = ns.unsigned_abs();
    if u < 1_000_000_000 {
        let (div, unit) = match u {
            0..1_000 => (1, "ns"),
            1_000..1_000_000 => (1_000, "µs"),
            _ => (1_000_000, "ms"),
        };
        return format!("{sign}{}{unit}", frac(u, div));
    }
    let (h, rem) = (u / 3_600_000_000_000, u % 3_600_000_000_000);
    let (m, rem) = (rem / 60_000_000_000, rem % 60_000_000_000);
    let s = frac(rem, 1_000_000_000);
    match (h, m) {
        (0, 0) => format!("{sign}{s}s"),
        (0, m) => format!("{sign}{m}m{s}s"),
        (h, m) => format!("{sign}{h}h{m}m{s}s"),
    }
}

fn frac(v: u64, div: u64) -> String {
    let (whole, part) = (v / div, v % div);
    if part == 0 {
        return whole.to_string();
    }
    let width = div.ilog10() as usize;
    let digits = format!("{part:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

/// Parses Go duration strings ("1h2m3.5s", "300ms", "-1.5h").
pub fn parse_go_duration(s: &str) -> Result<i64, String> {
    let bad = || format!("invalid duration {s:?}");
    let (neg, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let num: f64 = rest[..n].parse().map_err(|_| bad())?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let mult = match &rest[..u] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        total += num * mult;
        rest = &rest[u..];
    }
    if total > i64::MAX as f64 {
        return Err(bad());
    }
    Ok(if neg {
        -(total.round() as i64)
    } else {
        total.round() as i64
    })
}
