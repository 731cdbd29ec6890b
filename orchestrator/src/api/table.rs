//! meta.k8s.io/v1 Table and PartialObjectMetadata(List) renderings, chosen by `Accept`.

use k8s_openapi::jiff::Timestamp;
use serde_json::{json, Value};

use super::{error::ApiError, kind::KindOps};

/// What the client asked for in `Accept` (first alternative the server can produce wins).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Render {
    Object,
    Table,
    Metadata,
}

impl Render {
    pub fn from_accept(accept: Option<&str>) -> Result<Self, ApiError> {
        let Some(accept) = accept else {
            return Ok(Render::Object);
        };
        let mut json_ok = false;
        for alt in accept.split(',') {
            let mut parts = alt.split(';').map(str::trim);
            let media = parts.next().unwrap_or_default();
            let params: Vec<&str> = parts.collect();
            let is_as = |v: &str| {
                params
                    .iter()
                    .any(|p| p.eq_ignore_ascii_case(&format!("as={v}")))
            };
            let json_like = matches!(media, "application/json" | "*/*" | "application/*");
            if !json_like && media != "application/vnd.kubernetes.protobuf" {
                continue;
            }
            if media == "application/vnd.kubernetes.protobuf" {
                // We answer JSON only; clients that list JSON too (kubectl's typed client) get it.
                continue;
            }
            if is_as("Table") {
                return Ok(Render::Table);
            }
            if is_as("PartialObjectMetadataList") || is_as("PartialObjectMetadata") {
                return Ok(Render::Metadata);
            }
            if !params.iter().any(|p| p.starts_with("as=")) {
                json_ok = true;
            }
        }
        if json_ok || accept.trim().is_empty() {
            Ok(Render::Object)
        } else {
            Err(ApiError::NotAcceptable(format!(
                "only the following media types are accepted: application/json, application/json;as=Table;v=v1;g=meta.k8s.io (got {accept})"
            )))
        }
    }
}

/// `includeObject` of a Table request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Include {
    None,
    Metadata,
    Object,
}

impl Include {
    pub fn parse(s: Option<&str>) -> Result<Self, ApiError> {
        match s {
            None | Some("") | Some("Metadata") => Ok(Include::Metadata),
            Some("None") => Ok(Include::None),
            Some("Object") => Ok(Include::Object),
            Some(o) => Err(ApiError::BadRequest(format!(
                "includeObject: Unsupported value: \"{o}\": supported values: \"Metadata\", \"None\", \"Object\""
            ))),
        }
    }
}

pub fn partial_metadata(kind: &dyn KindOps, bytes: &[u8], rev: i64) -> Result<Value, ApiError> {
    let mut meta = serde_json::to_value(kind.metadata(bytes)?)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    if let Some(m) = meta.as_object_mut() {
        m.insert("resourceVersion".into(), Value::String(rev.to_string()));
    }
    Ok(json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
    }))
}

/// A Table of `items` (stored bytes with their revisions).
pub fn table(
    kind: &dyn KindOps,
    items: &[(&[u8], i64)],
    list_rv: Option<i64>,
    include: Include,
) -> Result<Value, ApiError> {
    let now = Timestamp::now();
    let columns: Vec<Value> = kind
        .columns()
        .iter()
        .map(|c| {
            json!({"name": c.name, "type": c.ty, "format": c.format,
                   "description": c.description, "priority": c.priority})
        })
        .collect();
    let mut rows = Vec::with_capacity(items.len());
    for (bytes, rev) in items {
        let mut row = json!({ "cells": kind.row(bytes, now)? });
        let object = match include {
            Include::None => None,
            Include::Metadata => Some(partial_metadata(kind, bytes, *rev)?),
            Include::Object => Some(
                super::object::value_with_rv(bytes, *rev)
                    .map_err(|e| ApiError::Internal(e.to_string()))?,
            ),
        };
        if let (Some(o), Some(m)) = (object, row.as_object_mut()) {
            m.insert("object".into(), o);
        }
        rows.push(row);
    }
    let mut metadata = json!({});
    if let Some(rv) = list_rv {
        metadata["resourceVersion"] = Value::String(rv.to_string());
    }
    Ok(json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": columns,
        "rows": rows,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_negotiation() {
        let kubectl_get = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(
            Render::from_accept(Some(kubectl_get)).unwrap(),
            Render::Table
        );
        let typed = "application/vnd.kubernetes.protobuf,application/json";
        assert_eq!(Render::from_accept(Some(typed)).unwrap(), Render::Object);
        assert_eq!(Render::from_accept(None).unwrap(), Render::Object);
        assert_eq!(Render::from_accept(Some("*/*")).unwrap(), Render::Object);
        assert!(Render::from_accept(Some("application/yaml")).is_err());
    }
}
