//! delete, deletecollection and the namespace lifecycle.
//!
//! An object with finalizers is only marked (deletionTimestamp) and goes when the last
//! finalizer is removed. A namespace is marked Terminating, its contents are deleted the same
//! way, and it goes when it is empty; creates inside a terminating namespace are refused.

use http::{Response, StatusCode};
use k8s_openapi::api::core::v1::Namespace;
use meshwork_orchestrator_store::{Revision, Store, StoreError, Stored};
use serde_json::{json, Value};

use super::{
    error::ApiError,
    json_response,
    kind::{now_seconds, DeleteOpts, KindOps},
    verbs::{list_bytes, object_response, parse_json, Ctx, Filter},
    Api, Body,
};

/// Deletes that lose a race with another writer and have no client precondition retry.
const DELETE_RETRIES: usize = 16;

const PROTECTED: &[&str] = &["default", "kube-system", "kube-public"];

fn namespace_key(ns: &str) -> String {
    format!("/registry/core/namespaces/{ns}")
}

/// Client preconditions of a DeleteOptions body.
struct Preconditions {
    uid: Option<String>,
    rv: Option<String>,
}

impl Preconditions {
    fn from(opts: &Value) -> Self {
        let s = |p: &str| opts.pointer(p).and_then(Value::as_str).map(str::to_string);
        Preconditions {
            uid: s("/preconditions/uid"),
            rv: s("/preconditions/resourceVersion"),
        }
    }
    fn any(&self) -> bool {
        self.uid.is_some() || self.rv.is_some()
    }
    fn check(&self, kind: &dyn KindOps, cur: &Stored, name: &str) -> Result<(), ApiError> {
        let uid = kind.metadata(&cur.value)?.uid;
        let uid_ok = self.uid.as_ref().is_none_or(|u| Some(u) == uid.as_ref());
        let rv_ok = self
            .rv
            .as_ref()
            .is_none_or(|r| *r == cur.mod_revision.to_string());
        if uid_ok && rv_ok {
            Ok(())
        } else {
            Err(ApiError::Conflict {
                resource: kind.info().qualified(),
                name: name.into(),
            })
        }
    }
}

impl Api {
    pub(crate) async fn delete(&self, ctx: Ctx) -> Result<Response<Body>, ApiError> {
        let t = &ctx.target;
        let opts: Value = if ctx.body.is_empty() {
            json!({})
        } else {
            parse_json(&ctx.body)?
        };
        let dry = ctx.query.dry_run()?
            || opts
                .get("dryRun")
                .and_then(Value::as_array)
                .is_some_and(|a| !a.is_empty());
        let pre = Preconditions::from(&opts);
        let dopts = DeleteOpts::from_options(&opts, |k| ctx.query.get(k).map(str::to_string))?;
        if t.kind.is_namespace() && PROTECTED.contains(&t.name()) {
            return Err(ApiError::Forbidden(format!(
                "namespaces \"{}\" is forbidden: this namespace may not be deleted",
                t.name()
            )));
        }
        for _ in 0..DELETE_RETRIES {
            let cur = self.current(t).await?;
            pre.check(t.kind, &cur, t.name())?;
            if dry {
                return Ok(object_response(
                    StatusCode::OK,
                    &cur.value,
                    cur.mod_revision,
                    &[],
                ));
            }
            let res = if t.kind.is_namespace() {
                self.terminate_namespace(&cur, t.name()).await
            } else {
                self.remove(t.kind, &cur, &dopts).await
            };
            match res {
                Ok((bytes, rev)) => {
                    if let Some(ns) = &t.ns {
                        self.finish_namespace(ns).await?;
                    }
                    return Ok(object_response(StatusCode::OK, &bytes, rev, &[]));
                }
                Err(ApiError::Conflict { .. }) if !pre.any() => continue,
                Err(e) => return Err(e),
            }
        }
        Err(ApiError::Conflict {
            resource: t.kind.info().qualified(),
            name: t.name().into(),
        })
    }

    /// Deletes (or, with finalizers, marks terminating) one object read at `cur`.
    pub(crate) async fn remove(
        &self,
        kind: &dyn KindOps,
        cur: &Stored,
        opts: &DeleteOpts,
    ) -> Result<(Vec<u8>, Revision), ApiError> {
        let name = kind.metadata(&cur.value)?.name.unwrap_or_default();
        let res = match kind.begin_delete(&cur.value, opts)? {
            Some(bytes) if bytes == cur.value => return Ok((cur.value.clone(), cur.mod_revision)),
            Some(bytes) => self
                .store
                .update(&cur.key, bytes, Some(cur.mod_revision))
                .await
                .map(|s| (s.value, s.mod_revision)),
            None => self
                .store
                .delete(&cur.key, Some(cur.mod_revision))
                .await
                .map(|(s, rev)| (s.value, rev)),
        };
        res.map_err(|e| ApiError::from_store(e, &kind.info().qualified(), &name))
    }

    /// Marks the namespace Terminating, deletes what it holds and removes it once empty.
    async fn terminate_namespace(
        &self,
        cur: &Stored,
        name: &str,
    ) -> Result<(Vec<u8>, Revision), ApiError> {
        let internal = |e: serde_json::Error| ApiError::Internal(e.to_string());
        let mut ns: Namespace = serde_json::from_slice(&cur.value).map_err(internal)?;
        let mut state = (cur.value.clone(), cur.mod_revision);
        if ns.metadata.deletion_timestamp.is_none() {
            ns.metadata.deletion_timestamp = Some(
                k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now_seconds()),
            );
            ns.status.get_or_insert_with(Default::default).phase = Some("Terminating".into());
            let bytes = serde_json::to_vec(&ns).map_err(internal)?;
            let s = self
                .store
                .update(&cur.key, bytes, Some(cur.mod_revision))
                .await
                .map_err(|e| ApiError::from_store(e, "namespaces", name))?;
            state = (s.value, s.mod_revision);
        }
        for kind in self.registry.kinds().filter(|k| k.info().namespaced) {
            let (items, _) = self
                .store
                .list(&kind.info().prefix(Some(name)))
                .await
                .map_err(|e| ApiError::from_store(e, &kind.info().qualified(), ""))?;
            for s in items {
                match self.remove(kind, &s, &DeleteOpts::default()).await {
                    // Gone or changed meanwhile: finish_namespace sees what is left.
                    Ok(_) | Err(ApiError::NotFound { .. } | ApiError::Conflict { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        match self.finish_namespace(name).await? {
            Some(deleted) => Ok(deleted),
            None => Ok(state),
        }
    }

    /// Removes a terminating namespace that has become empty; returns its final state if so.
    pub(crate) async fn finish_namespace(
        &self,
        ns: &str,
    ) -> Result<Option<(Vec<u8>, Revision)>, ApiError> {
        let be = |e| ApiError::from_store(e, "namespaces", ns);
        let Some(cur) = self.store.get(&namespace_key(ns)).await.map_err(be)? else {
            return Ok(None);
        };
        let terminating: Namespace =
            serde_json::from_slice(&cur.value).map_err(|e| ApiError::Internal(e.to_string()))?;
        if terminating.metadata.deletion_timestamp.is_none() {
            return Ok(None);
        }
        for kind in self.registry.kinds().filter(|k| k.info().namespaced) {
            let (items, _) = self
                .store
                .list(&kind.info().prefix(Some(ns)))
                .await
                .map_err(be)?;
            if !items.is_empty() {
                return Ok(None);
            }
        }
        match self.store.delete(&cur.key, Some(cur.mod_revision)).await {
            Ok((s, rev)) => Ok(Some((s.value, rev))),
            Err(StoreError::NotFound { .. } | StoreError::Conflict { .. }) => Ok(None),
            Err(e) => Err(be(e)),
        }
    }

    /// Creates need an existing namespace that is not terminating.
    pub(crate) async fn require_namespace(&self, ns: &str) -> Result<(), ApiError> {
        let found = self
            .store
            .get(&namespace_key(ns))
            .await
            .map_err(|e| ApiError::from_store(e, "namespaces", ns))?;
        let Some(found) = found else {
            return Err(ApiError::NotFound {
                resource: "namespaces".into(),
                name: ns.into(),
            });
        };
        let n: Namespace =
            serde_json::from_slice(&found.value).map_err(|e| ApiError::Internal(e.to_string()))?;
        if n.metadata.deletion_timestamp.is_some() {
            return Err(ApiError::Forbidden(format!(
                "unable to create new content in namespace {ns} because it is being terminated"
            )));
        }
        Ok(())
    }

    pub(crate) async fn delete_collection(&self, ctx: Ctx) -> Result<Response<Body>, ApiError> {
        let t = &ctx.target;
        let filter = Filter::new(t.kind, &ctx.query, None)?;
        let dry = ctx.query.dry_run()?;
        let opts: Value = if ctx.body.is_empty() {
            json!({})
        } else {
            parse_json(&ctx.body)?
        };
        let dopts = DeleteOpts::from_options(&opts, |k| ctx.query.get(k).map(str::to_string))?;
        let (all, rev) = self
            .store
            .list(&t.kind.info().prefix(t.ns.as_deref()))
            .await
            .map_err(|e| ApiError::from_store(e, &t.kind.info().qualified(), ""))?;
        let mut deleted: Vec<(Vec<u8>, Revision)> = Vec::new();
        for mut s in all {
            if !filter.matches(t.kind, &s.value)? {
                continue;
            }
            if dry {
                deleted.push((s.value.clone(), s.mod_revision));
                continue;
            }
            // A concurrent write re-reads and retries; an object deleted meanwhile is skipped.
            for _ in 0..DELETE_RETRIES {
                match self.remove(t.kind, &s, &dopts).await {
                    Ok(d) => {
                        deleted.push(d);
                        break;
                    }
                    Err(ApiError::NotFound { .. }) => break,
                    Err(ApiError::Conflict { .. }) => match self.store.get(&s.key).await {
                        Ok(Some(again)) if filter.matches(t.kind, &again.value)? => s = again,
                        Ok(_) => break,
                        Err(e) => {
                            return Err(ApiError::from_store(e, &t.kind.info().qualified(), ""))
                        }
                    },
                    Err(e) => return Err(e),
                }
            }
        }
        if let Some(ns) = &t.ns {
            self.finish_namespace(ns).await?;
        }
        let items: Vec<(&[u8], Revision)> =
            deleted.iter().map(|(b, r)| (b.as_slice(), *r)).collect();
        Ok(json_response(
            StatusCode::OK,
            list_bytes(t.kind, &items, rev),
        ))
    }
}
