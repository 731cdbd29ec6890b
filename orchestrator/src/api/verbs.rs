//! get, list, create, update, patch, delete, deletecollection.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use k8s_openapi::api::core::v1::Service;
use meshwork_orchestrator_patch::{PatchType, Schema};
use meshwork_orchestrator_store::{Revision, Store, StoreError, Stored};
use serde_json::{json, Value};

use super::{
    error::ApiError,
    json_response,
    kind::{KindOps, Out, Sub, Write, WriteHook},
    object::{value_with_rv, with_rv},
    selector::{FieldSelector, LabelSelector},
    table::{self, Include, Render},
    validation::FieldValidation,
    value_response, webhooks, Api, Body, Query, Target,
};

/// Retries of a read-modify-write that lost a race with another writer (no client
/// precondition): kube-apiserver's GuaranteedUpdate loops the same way.
const UPDATE_RETRIES: usize = 16;

pub(crate) struct Ctx {
    pub target: Target,
    pub query: Query,
    pub accept: Option<String>,
    pub content_type: String,
    pub body: Bytes,
}

/// Parsed `labelSelector`/`fieldSelector`, checked against the kind's selectable fields.
pub(crate) struct Filter {
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    pub fn new(kind: &dyn KindOps, q: &Query, name: Option<&str>) -> Result<Self, ApiError> {
        let labels = LabelSelector::parse(q.get("labelSelector").unwrap_or_default())
            .map_err(ApiError::BadRequest)?;
        let mut fs = q.get("fieldSelector").unwrap_or_default().to_string();
        if let Some(n) = name {
            fs = if fs.is_empty() {
                format!("metadata.name={n}")
            } else {
                format!("{fs},metadata.name={n}")
            };
        }
        let fields = FieldSelector::parse(&fs).map_err(ApiError::BadRequest)?;
        if let Some(f) = fields.fields().find(|f| !kind.supports_field(f)) {
            return Err(ApiError::BadRequest(format!(
                "field label not supported: {f}"
            )));
        }
        Ok(Filter { labels, fields })
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty() && self.fields.is_empty()
    }

    pub fn matches(&self, kind: &dyn KindOps, bytes: &[u8]) -> Result<bool, ApiError> {
        if self.is_empty() {
            return Ok(true);
        }
        let s = kind.selectable(bytes)?;
        Ok(self.labels.matches(&s.labels) && self.fields.matches(|f| (s.fields)(f)))
    }
}

pub(crate) fn parse_json(body: &[u8]) -> Result<Value, ApiError> {
    if body.is_empty() {
        return Err(ApiError::BadRequest("the request body is empty".into()));
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::BadRequest(format!("couldn't get version/kind; json parse error: {e}"))
    })
}

fn field_validation(q: &Query) -> Result<FieldValidation, ApiError> {
    FieldValidation::parse(q.get("fieldValidation")).map_err(ApiError::BadRequest)
}

pub(crate) fn object_response(
    code: StatusCode,
    bytes: &[u8],
    rev: Revision,
    warnings: &[String],
) -> Response<Body> {
    let mut r = json_response(code, with_rv(bytes, rev));
    for w in warnings {
        let v = format!("299 - \"{}\"", w.replace('"', "\\\""));
        if let Ok(h) = HeaderValue::from_str(&v) {
            r.headers_mut().append(header::WARNING, h);
        }
    }
    r
}

fn list_kind(kind: &dyn KindOps) -> String {
    format!("{}List", kind.info().kind)
}

/// `{"kind":"PodList",...,"items":[...]}` written from stored bytes without re-encoding.
pub(crate) fn list_bytes(
    kind: &dyn KindOps,
    items: &[(&[u8], Revision)],
    rev: Revision,
) -> Vec<u8> {
    let info = kind.info();
    let mut out = Vec::with_capacity(items.iter().map(|(b, _)| b.len() + 32).sum::<usize>() + 128);
    out.extend_from_slice(
        format!(
            "{{\"kind\":\"{}\",\"apiVersion\":\"{}\",\"metadata\":{{\"resourceVersion\":\"{rev}\"}},\"items\":[",
            list_kind(kind),
            info.api_version()
        )
        .as_bytes(),
    );
    for (i, (b, r)) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&with_rv(b, *r));
    }
    out.extend_from_slice(b"]}");
    out
}

fn scale_json(kind: &dyn KindOps, stored: &Stored) -> Result<Value, ApiError> {
    let view = kind.scale(&stored.value)?.ok_or(ApiError::UnknownPath)?;
    let meta = kind.metadata(&stored.value)?;
    Ok(json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta.name,
            "namespace": meta.namespace,
            "uid": meta.uid,
            "creationTimestamp": meta.creation_timestamp,
            "resourceVersion": stored.mod_revision.to_string(),
        },
        "spec": {"replicas": view.spec},
        "status": {"replicas": view.status, "selector": view.selector},
    }))
}

/// The replica count of a Scale body (PUT or patched), checked like kube-apiserver does.
fn replicas_of(scale: &Value, name: &str) -> Result<i32, ApiError> {
    // Go decodes a missing replicas as 0; anything but an integer is a decode error.
    let n = match scale.pointer("/spec/replicas") {
        None | Some(Value::Null) => 0,
        Some(v) => v.as_i64().ok_or_else(|| {
            ApiError::BadRequest(format!(
                "Scale in version \"v1\" cannot be handled as a Scale: spec.replicas: invalid type: {v}, expected int32"
            ))
        })?,
    };
    i32::try_from(n)
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| ApiError::Invalid {
            kind: "Scale.autoscaling".into(),
            name: name.into(),
            causes: vec![super::error::Cause::invalid(
                "spec.replicas",
                &n.to_string(),
                "must be greater than or equal to 0",
            )],
        })
}

impl Api {
    pub(crate) async fn current(&self, t: &Target) -> Result<Stored, ApiError> {
        let key = t.key()?;
        self.store
            .get(&key)
            .await
            .map_err(|e| ApiError::from_store(e, &t.kind.info().qualified(), t.name()))?
            .ok_or_else(|| ApiError::NotFound {
                resource: t.kind.info().qualified(),
                name: t.name().into(),
            })
    }

    pub(crate) async fn get(&self, ctx: Ctx) -> Result<Response<Body>, ApiError> {
        let t = &ctx.target;
        let cur = self.current(t).await?;
        if t.sub.as_deref() == Some("scale") {
            return Ok(value_response(StatusCode::OK, &scale_json(t.kind, &cur)?));
        }
        match Render::from_accept(ctx.accept.as_deref())? {
            Render::Object => Ok(object_response(
                StatusCode::OK,
                &cur.value,
                cur.mod_revision,
                &[],
            )),
            Render::Table => {
                let include = Include::parse(ctx.query.get("includeObject"))?;
                let tbl = table::table(
                    t.kind,
                    &[(&cur.value, cur.mod_revision)],
                    Some(cur.mod_revision),
                    include,
                )?;
                Ok(value_response(StatusCode::OK, &tbl))
            }
            Render::Metadata => Ok(value_response(
                StatusCode::OK,
                &table::partial_metadata(t.kind, &cur.value, cur.mod_revision)?,
            )),
        }
    }

    pub(crate) async fn list(&self, ctx: Ctx) -> Result<Response<Body>, ApiError> {
        let t = &ctx.target;
        let filter = Filter::new(t.kind, &ctx.query, None)?;
        let render = Render::from_accept(ctx.accept.as_deref())?;
        let prefix = t.kind.info().prefix(t.ns.as_deref());
        let (all, rev) = self
            .store
            .list(&prefix)
            .await
            .map_err(|e| ApiError::from_store(e, &t.kind.info().qualified(), ""))?;
        // `limit` is not honoured: like kube-apiserver's watch-cache path, the whole list is
        // returned at one revision and no `continue` token is set (clients handle both).
        let mut items = Vec::with_capacity(all.len());
        for s in &all {
            if filter.matches(t.kind, &s.value)? {
                items.push((s.value.as_slice(), s.mod_revision));
            }
        }
        match render {
            Render::Object => Ok(json_response(
                StatusCode::OK,
                list_bytes(t.kind, &items, rev),
            )),
            Render::Table => {
                let include = Include::parse(ctx.query.get("includeObject"))?;
                Ok(value_response(
                    StatusCode::OK,
                    &table::table(t.kind, &items, Some(rev), include)?,
                ))
            }
            Render::Metadata => {
                let metas = items
                    .iter()
                    .map(|(b, r)| table::partial_metadata(t.kind, b, *r))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(value_response(
                    StatusCode::OK,
                    &json!({"kind": "PartialObjectMetadataList", "apiVersion": "meta.k8s.io/v1",
                            "metadata": {"resourceVersion": rev.to_string()}, "items": metas}),
                ))
            }
        }
    }

    pub(crate) async fn create(&self, ctx: Ctx) -> Result<Response<Body>, ApiError> {
        let t = &ctx.target;
        let fv = field_validation(&ctx.query)?;
        let dry = ctx.query.dry_run()?;
        let body = parse_json(&ctx.body)?;
        if let Some(ns) = &t.ns {
            self.require_namespace(ns).await?;
        }
        let mut out = t.kind.create(body, t.ns.as_deref(), fv)?;
        let Write::Put(mut bytes) = out.write else {
            return Err(ApiError::Internal("create produced no object".into()));
        };
        bytes = self.run_hooks(t, bytes, None).await?;
        // Admission webhooks (kube: after the built-in admission); what a mutating one
        // changed is validated again as a create of its own.
        let name = t.kind.metadata(&bytes)?.name.unwrap_or_default();
        let review = t.review("CREATE", &name, dry);
        if let Some(mutated) = self.mutate(&review, &bytes, None).await? {
            let again = t.kind.create(mutated, t.ns.as_deref(), fv)?;
            out.warnings.extend(again.warnings);
            let Write::Put(b) = again.write else {
                return Err(ApiError::Internal("create produced no object".into()));
            };
            // The object keeps the uid and creation time the webhooks saw (and that defaults
            // such as a Job's selector were made from).
            let first = t.kind.metadata(&bytes)?;
            let mut v: Value =
                serde_json::from_slice(&b).map_err(|e| ApiError::Internal(e.to_string()))?;
            v["metadata"]["uid"] = json!(first.uid);
            v["metadata"]["creationTimestamp"] = json!(first.creation_timestamp);
            bytes = serde_json::to_vec(&v).map_err(|e| ApiError::Internal(e.to_string()))?;
        }
        self.validate_webhooks(&review, &bytes, None).await?;
        if t.kind.info().group == webhooks::GROUP && !dry {
            self.webhooks_changed();
        }
        if let Some(u) = &t.user {
            self.check_escalation(t.kind, &bytes, None, u).await?;
        }
        let meta = t.kind.metadata(&bytes)?;
        let name = meta.name.unwrap_or_default();
        let key = t.kind.info().key(t.ns.as_deref(), &name);
        if dry {
            if self.store.get(&key).await.ok().flatten().is_some() {
                return Err(ApiError::AlreadyExists {
                    resource: t.kind.info().qualified(),
                    name,
                });
            }
            return Ok(object_response(
                StatusCode::CREATED,
                &bytes,
                0,
                &out.warnings,
            ));
        }
        let stored = self
            .store
            .create(&key, bytes)
            .await
            .map_err(|e| ApiError::from_store(e, &t.kind.info().qualified(), &name))?;
        Ok(object_response(
            StatusCode::CREATED,
            &stored.value,
            stored.mod_revision,
            &out.warnings,
        ))
    }

    /// Read-modify-write: `f` maps the current object to the write; a lost race retries unless
    /// the client pinned a resourceVersion (then it is a 409).
    pub(crate) async fn update_with(
        &self,
        t: &Target,
        dry: bool,
        f: impl Fn(&Stored) -> Result<(Out, Option<Revision>), ApiError>,
    ) -> Result<Response<Body>, ApiError> {
        let info = t.kind.info();
        for _ in 0..UPDATE_RETRIES {
            let cur = self.current(t).await?;
            let (mut out, pinned) = f(&cur)?;
            if let (Write::Put(bytes), Some(u)) = (&out.write, &t.user) {
                self.check_escalation(t.kind, bytes, Some(&cur.value), u)
                    .await?;
            }
            if let Write::Put(bytes) = &mut out.write {
                *bytes = self
                    .run_hooks(t, std::mem::take(bytes), Some(&cur.value))
                    .await?;
                let review = t.review("UPDATE", t.name(), dry);
                if let Some(mutated) = self.mutate(&review, bytes, Some(&cur.value)).await? {
                    let sub = if t.sub.as_deref() == Some("status") {
                        Sub::Status
                    } else {
                        Sub::Main
                    };
                    let again = t
                        .kind
                        .update(&cur.value, mutated, sub, FieldValidation::Strict)?;
                    out.warnings.extend(again.warnings);
                    if let Write::Put(b) = again.write {
                        *bytes = b;
                    }
                }
                self.validate_webhooks(&review, bytes, Some(&cur.value))
                    .await?;
            }
            if t.kind.info().group == webhooks::GROUP && !dry {
                self.webhooks_changed();
            }
            if pinned.is_some_and(|p| p != cur.mod_revision) {
                return Err(ApiError::Conflict {
                    resource: info.qualified(),
                    name: t.name().into(),
                });
            }
            let key = t.key()?;
            let deleting = matches!(out.write, Write::Delete) && !dry;
            let res = match out.write {
                Write::Unchanged => Ok((cur.value.clone(), cur.mod_revision)),
                Write::Put(bytes) if dry => Ok((bytes, cur.mod_revision)),
                Write::Put(bytes) => self
                    .store
                    .update(&key, bytes, Some(cur.mod_revision))
                    .await
                    .map(|s| (s.value, s.mod_revision)),
                Write::Delete if dry => Ok((cur.value.clone(), cur.mod_revision)),
                Write::Delete => self
                    .store
                    .delete(&key, Some(cur.mod_revision))
                    .await
                    .map(|(s, rev)| (s.value, rev)),
            };
            match res {
                Ok((bytes, rev)) => {
                    if let (Some(ns), true) = (&t.ns, deleting) {
                        self.finish_namespace(ns).await?;
                    }
                    if t.sub.as_deref() == Some("scale") {
                        let s = Stored {
                            value: bytes,
                            mod_revision: rev,
                            ..cur
                        };
                        return Ok(value_response(StatusCode::OK, &scale_json(t.kind, &s)?));
                    }
                    return Ok(object_response(StatusCode::OK, &bytes, rev, &out.warnings));
                }
                Err(StoreError::Conflict { .. }) if pinned.is_none() => continue,
                Err(e) => return Err(ApiError::from_store(e, &info.qualified(), t.name())),
            }
        }
        Err(ApiError::Conflict {
            resource: info.qualified(),
            name: t.name().into(),
        })
    }

    pub(crate) async fn replace(&self, ctx: Ctx) -> Result<Response<Body>, ApiError> {
        let t = &ctx.target;
        let fv = field_validation(&ctx.query)?;
        let dry = ctx.query.dry_run()?;
        let body = parse_json(&ctx.body)?;
        let pinned = pinned_rv(&body)?;
        let scale = t.sub.as_deref() == Some("scale");
        let sub = if t.sub.as_deref() == Some("status") {
            Sub::Status
        } else {
            Sub::Main
        };
        self.update_with(t, dry, |cur| {
            let out = if scale {
                t.kind
                    .set_replicas(&cur.value, replicas_of(&body, t.name())?)?
            } else {
                t.kind.update(&cur.value, body.clone(), sub, fv)?
            };
            Ok((out, pinned))
        })
        .await
    }

    pub(crate) async fn patch(&self, ctx: Ctx) -> Result<Response<Body>, ApiError> {
        let t = &ctx.target;
        let fv = field_validation(&ctx.query)?;
        let dry = ctx.query.dry_run()?;
        let ty = PatchType::from_content_type(&ctx.content_type).ok_or(
            ApiError::UnsupportedMediaType {
                accepted: "application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json",
            },
        )?;
        let patch: Value = serde_json::from_slice(&ctx.body)
            .map_err(|e| ApiError::BadRequest(format!("error decoding patch: {e}")))?;
        let scale = t.sub.as_deref() == Some("scale");
        let sub = if t.sub.as_deref() == Some("status") {
            Sub::Status
        } else {
            Sub::Main
        };
        let apply = |orig: &Value, schema: Schema| {
            meshwork_orchestrator_patch::apply_value(orig, &patch, ty, schema).map_err(|e| match e
                .http_status()
            {
                422 => ApiError::Unprocessable(e.to_string()),
                _ => ApiError::BadRequest(e.to_string()),
            })
        };
        // A patch that sets metadata.resourceVersion is a precondition on it (a JSON patch
        // is judged by its result: the value it leaves must be the current one).
        let from_patch = if ty == PatchType::Json {
            None
        } else {
            pinned_rv(&patch)?
        };
        let pin = |patched: &Value, cur: &Stored| -> Result<Option<Revision>, ApiError> {
            Ok(from_patch.or(pinned_rv(patched)?.filter(|p| *p != cur.mod_revision)))
        };
        self.update_with(t, dry, |cur| {
            if scale {
                let orig = scale_json(t.kind, cur)?;
                let patched = apply(&orig, Schema::UNTYPED)?;
                let pinned = pin(&patched, cur)?;
                let out = t
                    .kind
                    .set_replicas(&cur.value, replicas_of(&patched, t.name())?)?;
                return Ok((out, pinned));
            }
            let orig = value_with_rv(&cur.value, cur.mod_revision)
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            let patched = apply(&orig, t.kind.patch_schema())?;
            let pinned = pin(&patched, cur)?;
            Ok((t.kind.update(&cur.value, patched, sub, fv)?, pinned))
        })
        .await
    }
}

impl Api {
    /// The kind's write hooks (`Rules::WRITE_HOOKS`), in order; `old` is the stored object of
    /// an update (None: a create).
    async fn run_hooks(
        &self,
        t: &Target,
        mut bytes: Vec<u8>,
        old: Option<&[u8]>,
    ) -> Result<Vec<u8>, ApiError> {
        for hook in t.kind.info().hooks {
            bytes = match hook {
                WriteHook::AllocateServiceAddresses => self.assign_service(bytes, old).await?,
                WriteHook::AdmitPod => match (&t.ns, old) {
                    (Some(ns), None) => self.admit_pod(bytes, ns).await?,
                    _ => bytes,
                },
            };
        }
        Ok(bytes)
    }

    async fn reload_allocations(&self) -> Result<(), ApiError> {
        let kind = self
            .registry
            .find("", "v1", "services")
            .ok_or(ApiError::UnknownPath)?;
        let (all, _) = self
            .store
            .list(&kind.info().prefix(None))
            .await
            .map_err(|e| ApiError::from_store(e, "services", ""))?;
        let services: Vec<Service> = all
            .iter()
            .filter_map(|s| serde_json::from_slice(&s.value).ok())
            .collect();
        self.alloc.reload(&services);
        Ok(())
    }

    /// Gives a Service its clusterIP and node ports (see `alloc`).
    async fn assign_service(
        &self,
        bytes: Vec<u8>,
        old: Option<&[u8]>,
    ) -> Result<Vec<u8>, ApiError> {
        if !self.alloc.loaded() {
            self.reload_allocations().await?;
        }
        let svc: Service =
            serde_json::from_slice(&bytes).map_err(|e| ApiError::Internal(e.to_string()))?;
        let old: Option<Service> = old.and_then(|o| serde_json::from_slice(o).ok());
        for attempt in 0..2 {
            let mut s = svc.clone();
            match self.alloc.assign(&mut s, old.as_ref(), attempt == 1) {
                Ok(()) => {
                    return serde_json::to_vec(&s).map_err(|e| ApiError::Internal(e.to_string()))
                }
                Err(Some(cause)) => {
                    return Err(ApiError::Invalid {
                        kind: "Service".into(),
                        name: svc.metadata.name.clone().unwrap_or_default(),
                        causes: vec![cause],
                    })
                }
                Err(None) if attempt == 0 => self.reload_allocations().await?,
                Err(None) => break,
            }
        }
        Err(ApiError::Internal(
            "range of service addresses or node ports is full".into(),
        ))
    }
}

fn pinned_rv(body: &Value) -> Result<Option<Revision>, ApiError> {
    match body.pointer("/metadata/resourceVersion") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => s.parse().map(Some).map_err(|_| {
            ApiError::BadRequest(format!("metadata.resourceVersion: Invalid value: \"{s}\": must be a resourceVersion this server issued"))
        }),
        Some(other) => Err(ApiError::BadRequest(format!(
            "metadata.resourceVersion: Invalid value: {other}: must be a string"
        ))),
    }
}
