//! The served kinds. Each is a k8s-openapi type plus its `Rules` (defaults, validation,
//! selectable fields, table columns); `Typed<K>` turns that into the type-erased `KindOps` the
//! handlers use, so every kind goes through one typed create/update pipeline.

use std::{collections::BTreeMap, marker::PhantomData};

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
    jiff::Timestamp,
    Metadata,
};
use meshwork_orchestrator_patch::Schema;
use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;

use super::{
    error::{ApiError, Cause},
    validation::{self, FieldValidation},
};

/// How a kind's names are checked.
#[derive(Clone, Copy, Debug)]
pub enum NameRule {
    Subdomain,
    Label,
    Dns1035,
    /// Any name usable as a path segment (RBAC objects: `system:node`), kube's
    /// `ValidatePathSegmentName`.
    PathSegment,
}

/// A table column (meta.k8s.io/v1 TableColumnDefinition); priority 1 shows with `-o wide`.
#[derive(Clone, Copy, Debug)]
pub struct Column {
    pub name: &'static str,
    pub ty: &'static str,
    pub format: &'static str,
    pub priority: i32,
    pub description: &'static str,
}

impl Column {
    pub const fn new(name: &'static str, ty: &'static str, priority: i32) -> Self {
        Column {
            name,
            ty,
            format: if matches!(name.as_bytes(), b"Name") {
                "name"
            } else {
                ""
            },
            priority,
            description: "",
        }
    }
}

pub const NAME: Column = Column::new("Name", "string", 0);
pub const AGE: Column = Column::new("Age", "string", 0);

/// Replica counts a `/scale` subresource exposes.
pub struct ScaleView {
    pub spec: i32,
    pub status: i32,
    pub selector: String,
}

/// What a kind adds to the generic pipeline.
pub trait Rules:
    k8s_openapi::Resource
    + Metadata<Ty = ObjectMeta>
    + Serialize
    + DeserializeOwned
    + Clone
    + PartialEq
    + Send
    + Sync
    + 'static
{
    const NAMESPACED: bool;
    const SINGULAR: &'static str;
    const SHORT_NAMES: &'static [&'static str] = &[];
    const CATEGORIES: &'static [&'static str] = &[];
    const HAS_STATUS: bool = false;
    const HAS_SCALE: bool = false;
    /// Field-selector fields beyond metadata.name/namespace, answered by `field`.
    const FIELDS: &'static [&'static str] = &[];
    const NAME_RULE: NameRule = NameRule::Subdomain;
    const COLUMNS: &'static [Column] = &[NAME, AGE];
    /// Server-side steps that need the store or other objects, run by the generic verbs before
    /// the object is written (kube: a registry strategy's allocation plus admission).
    const WRITE_HOOKS: &'static [WriteHook] = &[];

    /// Server-side defaults (what kube-apiserver's defaulters fill in).
    fn default(&mut self) {}
    /// Kind-specific semantic checks, appended to `causes`.
    fn validate(&self, _causes: &mut Vec<Cause>) {}
    /// Changes that are not allowed after creation.
    fn validate_update(&self, _old: &Self, _causes: &mut Vec<Cause>) {}
    /// The value of one of `FIELDS` (None: empty).
    fn field(&self, _path: &str) -> Option<String> {
        None
    }
    /// Table cells after Name, matching `COLUMNS[1..]`.
    fn row(&self, now: Timestamp) -> Vec<Value> {
        vec![age(self.metadata(), now)]
    }
    /// The status, detached (for kinds with a status subresource).
    fn take_status(&mut self) -> Value {
        Value::Null
    }
    fn put_status(&mut self, _status: Value) -> Result<(), serde_json::Error> {
        Ok(())
    }
    fn scale(&self) -> Option<ScaleView> {
        None
    }
    fn set_replicas(&mut self, _n: i32) {}
    /// Seconds a delete waits before the object goes (a pod on a node: its grace period, so
    /// the node can stop it); None deletes at once.
    fn grace_period(&self) -> Option<i64> {
        None
    }
}

/// How a delete treats the object's dependents (DeleteOptions.propagationPolicy).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Propagation {
    Background,
    Foreground,
    Orphan,
}

/// The parts of DeleteOptions that change what a delete writes.
#[derive(Clone, Copy, Debug, Default)]
pub struct DeleteOpts {
    pub grace: Option<i64>,
    pub propagation: Option<Propagation>,
}

impl DeleteOpts {
    /// From a DeleteOptions body merged over the query (`gracePeriodSeconds`,
    /// `propagationPolicy`, the deprecated `orphanDependents`).
    pub fn from_options(
        opts: &Value,
        query: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ApiError> {
        let grace = match opts.get("gracePeriodSeconds") {
            Some(v) => v.as_i64(),
            None => match query("gracePeriodSeconds") {
                Some(q) => Some(q.parse::<i64>().map_err(|_| {
                    ApiError::BadRequest(format!("invalid gracePeriodSeconds {q:?}"))
                })?),
                None => None,
            },
        };
        let policy = opts
            .get("propagationPolicy")
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| query("propagationPolicy"));
        let orphan = opts
            .get("orphanDependents")
            .and_then(Value::as_bool)
            .or_else(|| query("orphanDependents").map(|q| q == "true"));
        let propagation = match policy.as_deref() {
            Some("Background") => Some(Propagation::Background),
            Some("Foreground") => Some(Propagation::Foreground),
            Some("Orphan") => Some(Propagation::Orphan),
            Some(other) => {
                return Err(ApiError::BadRequest(format!(
                    "propagationPolicy {other:?} is not one of Background, Foreground, Orphan"
                )))
            }
            None => orphan.map(|o| {
                if o {
                    Propagation::Orphan
                } else {
                    Propagation::Background
                }
            }),
        };
        Ok(DeleteOpts { grace, propagation })
    }
}

/// The finalizer the garbage collector honours for Orphan deletes.
pub const ORPHAN_FINALIZER: &str = "orphan";
/// The finalizer the garbage collector honours for Foreground deletes.
pub const FOREGROUND_FINALIZER: &str = "foregroundDeletion";

/// A cell for creation time, rendered like apimachinery's `duration.HumanDuration`.
pub fn age(meta: &ObjectMeta, now: Timestamp) -> Value {
    match &meta.creation_timestamp {
        Some(Time(t)) => Value::String(human_duration(now.as_second() - t.as_second())),
        None => Value::String("<unknown>".into()),
    }
}

pub fn human_duration(secs: i64) -> String {
    let s = secs.max(0);
    if s < 120 {
        return format!("{s}s");
    }
    let m = s / 60;
    if m < 10 {
        let r = s % 60;
        return if r == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{r}s")
        };
    }
    if m < 180 {
        return format!("{m}m");
    }
    let h = s / 3600;
    if h < 8 {
        let r = (s % 3600) / 60;
        return if r == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{r}m")
        };
    }
    if h < 48 {
        return format!("{h}h");
    }
    if h < 24 * 8 {
        let d = h / 24;
        let r = h % 24;
        return if r == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{r}h")
        };
    }
    if h < 24 * 365 * 2 {
        return format!("{}d", h / 24);
    }
    format!("{}y", h / 24 / 365)
}

/// Static facts about a kind (discovery, keys, messages).
/// A step of a kind's write path that needs more than the object (run by `Api::run_hooks` in
/// `verbs.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteHook {
    /// Cluster IPs and node ports from the allocator (create and update).
    AllocateServiceAddresses,
    /// ServiceAccount admission: the account, its token volume (create only).
    AdmitPod,
}

#[derive(Clone, Copy, Debug)]
pub struct Info {
    pub hooks: &'static [WriteHook],
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    pub short_names: &'static [&'static str],
    pub categories: &'static [&'static str],
    pub status: bool,
    pub scale: bool,
}

impl Info {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
    /// `deployments.apps`, `pods`: how messages name the resource.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
    /// `Deployment.apps`: how Invalid messages name the kind.
    pub fn qualified_kind(&self) -> String {
        if self.group.is_empty() {
            self.kind.to_string()
        } else {
            format!("{}.{}", self.kind, self.group)
        }
    }
    pub fn key(&self, ns: Option<&str>, name: &str) -> String {
        format!("{}{name}", self.prefix(ns))
    }
    /// The store prefix of every object (ns None) or of one namespace.
    pub fn prefix(&self, ns: Option<&str>) -> String {
        let g = if self.group.is_empty() {
            "core"
        } else {
            self.group
        };
        match ns {
            Some(ns) if self.namespaced => format!("/registry/{g}/{}/{ns}/", self.plural),
            _ => format!("/registry/{g}/{}/", self.plural),
        }
    }
}

/// Which part of an object a write may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sub {
    Main,
    Status,
}

/// What a write turns into: new bytes to store, the unchanged object (no-op update, keeps the
/// resourceVersion), or a delete (last finalizer removed from a terminating object).
pub enum Write {
    Put(Vec<u8>),
    Unchanged,
    Delete,
}

/// A field-selector lookup over one decoded object.
pub type FieldLookup = Box<dyn Fn(&str) -> Option<String> + Send>;

/// Labels and selectable fields of one stored object.
pub struct Selectable {
    pub labels: BTreeMap<String, String>,
    pub fields: FieldLookup,
}

/// The type-erased operations a handler calls.
pub trait KindOps: Send + Sync {
    fn info(&self) -> &Info;
    fn columns(&self) -> &'static [Column];
    fn patch_schema(&self) -> Schema;
    /// Decodes a request body and prepares it for storage as a new object.
    fn create(&self, body: Value, ns: Option<&str>, fv: FieldValidation) -> Result<Out, ApiError>;
    /// The replacement of `old` by `body` (PUT, or the result of a PATCH).
    fn update(
        &self,
        old: &[u8],
        body: Value,
        sub: Sub,
        fv: FieldValidation,
    ) -> Result<Out, ApiError>;
    /// DELETE: None = remove now; Some(bytes) = finalizers pending, store this terminating copy.
    fn begin_delete(&self, old: &[u8], opts: &DeleteOpts) -> Result<Option<Vec<u8>>, ApiError>;
    fn selectable(&self, bytes: &[u8]) -> Result<Selectable, ApiError>;
    /// `metadata` of a stored object (PartialObjectMetadata of Table rows).
    fn metadata(&self, bytes: &[u8]) -> Result<ObjectMeta, ApiError>;
    fn row(&self, bytes: &[u8], now: Timestamp) -> Result<Vec<Value>, ApiError>;
    fn scale(&self, bytes: &[u8]) -> Result<Option<ScaleView>, ApiError>;
    fn set_replicas(&self, old: &[u8], n: i32) -> Result<Out, ApiError>;
    /// Whether `field` may be used in a field selector.
    fn supports_field(&self, field: &str) -> bool;
    /// core/v1 Namespace (deletion and creates inside it have extra rules).
    fn is_namespace(&self) -> bool {
        let i = self.info();
        i.group.is_empty() && i.kind == "Namespace"
    }
}

/// A prepared write plus the warnings to return in `Warning` headers.
pub struct Out {
    pub write: Write,
    pub warnings: Vec<String>,
}

pub struct Typed<K> {
    info: Info,
    _kind: PhantomData<fn() -> K>,
}

impl<K: Rules> Typed<K> {
    pub fn new() -> Self {
        Typed {
            info: Self::info_static(),
            _kind: PhantomData,
        }
    }
}

impl<K: Rules> Default for Typed<K> {
    fn default() -> Self {
        Self::new()
    }
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(e.to_string())
}

const NAME_CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

pub(crate) fn random_suffix() -> String {
    let mut buf = [0u8; 5];
    // A failed getrandom leaves zeros: still a valid (if predictable) name.
    let _ = getrandom::fill(&mut buf);
    buf.iter()
        .map(|b| NAME_CHARS[usize::from(*b) % NAME_CHARS.len()] as char)
        .collect()
}

impl<K: Rules> Typed<K> {
    fn info_static() -> Info {
        Info {
            group: K::GROUP,
            version: K::VERSION,
            kind: K::KIND,
            plural: K::URL_PATH_SEGMENT,
            singular: K::SINGULAR,
            namespaced: K::NAMESPACED,
            short_names: K::SHORT_NAMES,
            categories: K::CATEGORIES,
            status: K::HAS_STATUS,
            scale: K::HAS_SCALE,
            hooks: K::WRITE_HOOKS,
        }
    }

    /// Body → K with the fieldValidation policy; the apiVersion/kind must be this kind's.
    fn decode(body: Value, fv: FieldValidation) -> Result<(K, Vec<String>), ApiError> {
        let info = Self::info_static();
        let cannot = |why: String| {
            ApiError::BadRequest(format!(
                "{} in version \"{}\" cannot be handled as a {}: {why}",
                K::KIND,
                K::VERSION,
                K::KIND
            ))
        };
        let Value::Object(mut map) = body else {
            return Err(cannot("the body must be a JSON object".into()));
        };
        for (field, want) in [("apiVersion", K::API_VERSION), ("kind", K::KIND)] {
            match map.get(field) {
                None | Some(Value::Null) => {
                    map.insert(field.into(), Value::String(want.into()));
                }
                Some(Value::String(s)) if s == want => {}
                Some(other) => {
                    return Err(ApiError::BadRequest(format!(
                    "the API version in the data ({}) does not match the expected API version ({})",
                    if field == "kind" {
                        format!(
                            "{}, kind {other}",
                            map.get("apiVersion").and_then(Value::as_str).unwrap_or("")
                        )
                    } else {
                        other.to_string()
                    },
                    info.api_version()
                )))
                }
            }
        }
        let body = Value::Object(map);
        let obj: K = deserialize_at_path(&body, cannot)?;
        let mut warnings = Vec::new();
        if fv != FieldValidation::Ignore {
            let back = serde_json::to_value(&obj).map_err(internal)?;
            let unknown = validation::unknown_fields(&body, &back);
            if !unknown.is_empty() {
                let msgs: Vec<String> = unknown
                    .iter()
                    .map(|p| format!("unknown field \"{p}\""))
                    .collect();
                if fv == FieldValidation::Strict {
                    return Err(cannot(format!(
                        "strict decoding error: {}",
                        msgs.join(", ")
                    )));
                }
                warnings = msgs;
            }
        }
        Ok((obj, warnings))
    }

    fn check(obj: &K, old: Option<&K>) -> Result<(), ApiError> {
        let meta = obj.metadata();
        let name = meta.name.clone().unwrap_or_default();
        let mut causes = Vec::new();
        if name.is_empty() {
            causes.push(Cause {
                reason: "FieldValueRequired",
                field: "metadata.name".into(),
                message: "Required value: name or generateName is required".into(),
            });
        } else {
            let why = match K::NAME_RULE {
                NameRule::Subdomain => validation::dns1123_subdomain(&name),
                NameRule::Label => validation::dns1123_label(&name),
                NameRule::Dns1035 => validation::dns1035_label(&name),
                NameRule::PathSegment => validation::path_segment(&name),
            };
            if let Some(why) = why {
                causes.push(Cause::invalid("metadata.name", &name, why));
            }
        }
        validation::labels("metadata.labels", meta.labels.as_ref(), &mut causes);
        validation::annotations(
            "metadata.annotations",
            meta.annotations.as_ref(),
            &mut causes,
        );
        obj.validate(&mut causes);
        if let Some(old) = old {
            obj.validate_update(old, &mut causes);
        }
        if causes.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Invalid {
                kind: Self::info_static().qualified_kind(),
                name,
                causes,
            })
        }
    }

    fn encode(obj: &K) -> Result<Vec<u8>, ApiError> {
        serde_json::to_vec(obj).map_err(internal)
    }

    /// Empty metadata lists and maps are absent, as Go's omitempty leaves them (clients test
    /// `finalizers == null` after removing the last one).
    fn normalize(obj: &mut K) {
        let m = obj.metadata_mut();
        if m.finalizers.as_ref().is_some_and(Vec::is_empty) {
            m.finalizers = None;
        }
        if m.owner_references.as_ref().is_some_and(Vec::is_empty) {
            m.owner_references = None;
        }
        if m.labels.as_ref().is_some_and(BTreeMap::is_empty) {
            m.labels = None;
        }
        if m.annotations.as_ref().is_some_and(BTreeMap::is_empty) {
            m.annotations = None;
        }
    }

    fn load(bytes: &[u8]) -> Result<K, ApiError> {
        serde_json::from_slice(bytes).map_err(internal)
    }

    /// The spec-like part of an object (all but metadata and status): a change bumps
    /// metadata.generation.
    fn spec_of(obj: &K) -> Result<Value, ApiError> {
        let mut v = serde_json::to_value(obj).map_err(internal)?;
        if let Some(m) = v.as_object_mut() {
            m.remove("metadata");
            m.remove("status");
        }
        Ok(v)
    }

    fn finish_update(mut new: K, old: K, warnings: Vec<String>) -> Result<Out, ApiError> {
        new.default();
        Self::normalize(&mut new);
        Self::check(&new, Some(&old))?;
        // The update that removes the last finalizer of a terminating object deletes it (a pod
        // in its grace period has none and stays until its node deletes it).
        let terminating = new.metadata().deletion_timestamp.is_some();
        let had_finalizers = old
            .metadata()
            .finalizers
            .as_ref()
            .is_some_and(|f| !f.is_empty());
        if terminating
            && had_finalizers
            && new.metadata().finalizers.as_ref().is_none_or(Vec::is_empty)
        {
            return Ok(Out {
                write: Write::Delete,
                warnings,
            });
        }
        if Self::spec_of(&new)? != Self::spec_of(&old)? {
            let g = old.metadata().generation.unwrap_or(1);
            new.metadata_mut().generation = Some(g + 1);
        }
        let write = if new == old {
            Write::Unchanged
        } else {
            Write::Put(Self::encode(&new)?)
        };
        Ok(Out { write, warnings })
    }
}

impl<K: Rules> KindOps for Typed<K> {
    fn info(&self) -> &Info {
        &self.info
    }

    fn columns(&self) -> &'static [Column] {
        K::COLUMNS
    }

    fn patch_schema(&self) -> Schema {
        Schema::for_kind(K::GROUP, K::KIND)
    }

    fn create(&self, body: Value, ns: Option<&str>, fv: FieldValidation) -> Result<Out, ApiError> {
        let (mut obj, warnings) = Self::decode(body, fv)?;
        let meta = obj.metadata_mut();
        if K::NAMESPACED {
            match (&meta.namespace, ns) {
                (Some(body_ns), Some(url_ns)) if !body_ns.is_empty() && body_ns != url_ns => {
                    return Err(ApiError::BadRequest(
                        "the namespace of the provided object does not match the namespace sent on the request".into(),
                    ))
                }
                _ => meta.namespace = ns.map(str::to_string),
            }
        } else {
            meta.namespace = None;
        }
        if meta.name.as_deref().is_none_or(str::is_empty) {
            if let Some(prefix) = meta.generate_name.as_deref().filter(|p| !p.is_empty()) {
                meta.name = Some(format!("{prefix}{}", random_suffix()));
            }
        }
        meta.uid = Some(uuid::Uuid::new_v4().to_string());
        meta.resource_version = None;
        meta.self_link = None;
        meta.managed_fields = None;
        meta.deletion_timestamp = None;
        meta.deletion_grace_period_seconds = None;
        meta.generation = Some(1);
        meta.creation_timestamp = Some(Time(now_seconds()));
        obj.default();
        Self::normalize(&mut obj);
        Self::check(&obj, None)?;
        Ok(Out {
            write: Write::Put(Self::encode(&obj)?),
            warnings,
        })
    }

    fn update(
        &self,
        old: &[u8],
        body: Value,
        sub: Sub,
        fv: FieldValidation,
    ) -> Result<Out, ApiError> {
        let old: K = Self::load(old)?;
        let (mut new, warnings) = Self::decode(body, fv)?;
        let (om, nm) = (old.metadata(), new.metadata());
        if nm.name.is_some() && nm.name != om.name {
            return Err(ApiError::BadRequest(format!(
                "the name of the object ({}) does not match the name on the URL ({})",
                nm.name.as_deref().unwrap_or(""),
                om.name.as_deref().unwrap_or("")
            )));
        }
        if K::NAMESPACED
            && nm.namespace.as_deref().is_some_and(|n| !n.is_empty())
            && nm.namespace != om.namespace
        {
            return Err(ApiError::BadRequest(
                "the namespace of the provided object does not match the namespace sent on the request".into(),
            ));
        }
        if nm.uid.as_deref().is_some_and(|u| !u.is_empty()) && nm.uid != om.uid {
            return Err(ApiError::Conflict {
                resource: self.info().qualified(),
                name: om.name.clone().unwrap_or_default(),
            });
        }
        if sub == Sub::Status {
            let status = new.take_status();
            let mut merged = old.clone();
            merged.take_status();
            merged.put_status(status).map_err(internal)?;
            let write = if merged == old {
                Write::Unchanged
            } else {
                Write::Put(Self::encode(&merged)?)
            };
            return Ok(Out { write, warnings });
        }
        {
            let om = old.metadata().clone();
            let m = new.metadata_mut();
            m.name = om.name;
            m.namespace = om.namespace;
            m.uid = om.uid;
            m.creation_timestamp = om.creation_timestamp;
            m.deletion_timestamp = om.deletion_timestamp;
            m.deletion_grace_period_seconds = om.deletion_grace_period_seconds;
            m.generation = om.generation;
            m.resource_version = None;
            m.self_link = None;
            m.managed_fields = None;
        }
        if K::HAS_STATUS {
            let mut keep = old.clone();
            new.take_status();
            new.put_status(keep.take_status()).map_err(internal)?;
        }
        Self::finish_update(new, old, warnings)
    }

    fn begin_delete(&self, old: &[u8], opts: &DeleteOpts) -> Result<Option<Vec<u8>>, ApiError> {
        let mut obj: K = Self::load(old)?;
        let grace = obj
            .grace_period()
            .map(|default| opts.grace.unwrap_or(default).max(0))
            .unwrap_or(0);
        let m = obj.metadata_mut();
        let fins = m.finalizers.get_or_insert_with(Vec::new);
        if m.deletion_timestamp.is_none() {
            let add = match opts.propagation {
                Some(Propagation::Orphan) => Some(ORPHAN_FINALIZER),
                Some(Propagation::Foreground) => Some(FOREGROUND_FINALIZER),
                _ => None,
            };
            if let Some(f) = add.filter(|f| !fins.iter().any(|x| x == f)) {
                fins.push(f.into());
            }
        }
        let has_finalizers = !fins.is_empty();
        if !has_finalizers {
            m.finalizers = None;
        }
        if grace > 0 {
            let until = now_seconds()
                .checked_add(jiff::SignedDuration::from_secs(grace))
                .map_err(internal)?;
            // A later delete may shorten the grace period, never lengthen it.
            if m.deletion_timestamp.as_ref().is_none_or(|t| until < t.0) {
                m.deletion_timestamp = Some(Time(until));
                m.deletion_grace_period_seconds = Some(grace);
            }
            return Ok(Some(Self::encode(&obj)?));
        }
        if !has_finalizers {
            return Ok(None);
        }
        if m.deletion_timestamp.is_none() {
            m.deletion_timestamp = Some(Time(now_seconds()));
            m.deletion_grace_period_seconds = Some(0);
        }
        Ok(Some(Self::encode(&obj)?))
    }

    fn selectable(&self, bytes: &[u8]) -> Result<Selectable, ApiError> {
        let obj: K = Self::load(bytes)?;
        let labels = obj.metadata().labels.clone().unwrap_or_default();
        Ok(Selectable {
            labels,
            fields: Box::new(move |path| match path {
                "metadata.name" => obj.metadata().name.clone(),
                "metadata.namespace" => obj.metadata().namespace.clone(),
                other => obj.field(other),
            }),
        })
    }

    fn metadata(&self, bytes: &[u8]) -> Result<ObjectMeta, ApiError> {
        #[derive(serde::Deserialize)]
        struct Partial {
            metadata: ObjectMeta,
        }
        let p: Partial = serde_json::from_slice(bytes).map_err(internal)?;
        Ok(p.metadata)
    }

    fn row(&self, bytes: &[u8], now: Timestamp) -> Result<Vec<Value>, ApiError> {
        let obj: K = Self::load(bytes)?;
        let mut cells = vec![Value::String(
            obj.metadata().name.clone().unwrap_or_default(),
        )];
        cells.extend(obj.row(now));
        Ok(cells)
    }

    fn scale(&self, bytes: &[u8]) -> Result<Option<ScaleView>, ApiError> {
        Ok(Self::load(bytes)?.scale())
    }

    fn set_replicas(&self, old: &[u8], n: i32) -> Result<Out, ApiError> {
        let old: K = Self::load(old)?;
        let mut new = old.clone();
        new.set_replicas(n);
        Self::finish_update(new, old, Vec::new())
    }

    fn supports_field(&self, field: &str) -> bool {
        matches!(field, "metadata.name" | "metadata.namespace") || K::FIELDS.contains(&field)
    }
}

pub fn now_seconds() -> Timestamp {
    let now = Timestamp::now();
    Timestamp::from_second(now.as_second()).unwrap_or(now)
}

/// `v` as a `T`; a failure names the JSON path where it happened (kube's decoder says
/// `spec.replicas: invalid type ...`), worded by `cannot`.
pub(crate) fn deserialize_at_path<T: serde::de::DeserializeOwned>(
    v: &Value,
    cannot: impl FnOnce(String) -> ApiError,
) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        cannot(if path == "." {
            inner.to_string()
        } else {
            format!("{path}: {inner}")
        })
    })
}

#[cfg(test)]
mod tests {
    use super::human_duration;

    #[test]
    fn ages_render_like_kubectl() {
        for (s, want) in [
            (5, "5s"),
            (119, "119s"),
            (125, "2m5s"),
            (600, "10m"),
            (3 * 3600 + 60, "3h1m"),
            (10 * 3600, "10h"),
            (3 * 86400 + 3600, "3d1h"),
            (30 * 86400, "30d"),
        ] {
            assert_eq!(human_duration(s), want, "{s}");
        }
    }
}
