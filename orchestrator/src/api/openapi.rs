//! /openapi/v3: one document per group/version with the resource paths and their operations;
//! /openapi/v2: an empty Swagger document (see [`v2`]).
//!
//! kubectl reads it for one decision: a PATCH operation that declares the `fieldValidation`
//! query parameter means the server validates (so `apply` sends `fieldValidation=Strict` and
//! trusts the answer). No component schemas are published, so kubectl computes strategic merge
//! patches from its built-in types, which are exactly the kinds served here.

use serde_json::{json, Map, Value};

/// The media type kubectl asks /openapi/v2 in (gnostic's OpenAPIv2.proto `Document`)...
pub const V2_PROTOBUF: &str = "application/com.github.proto-openapi.spec.v2@v1.0+protobuf";
/// ...and the one the answer must carry: `@` is a tspecial, so client-go's media type parser
/// refuses the former (kube-openapi answers with this spelling for that reason).
pub const V2_PROTOBUF_ANSWER: &str = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf";

/// /openapi/v2 with no paths and no definitions, as protobuf (`protobuf`) or JSON.
///
/// kubectl validates a `kind: List` (what `kubectl get -o yaml` writes) on the client: a
/// List is not a resource, so no PATCH operation in /openapi/v3 says the server validates it,
/// and kubectl falls back to the v2 schemas, failing the whole apply when /openapi/v2 is
/// missing. With no definitions, kubectl's client-side check finds no schema for the items
/// and leaves them to the server, which applies them with `fieldValidation=Strict` and does
/// check every field (rules/, decode into the typed object) — where validation belongs.
pub fn v2(protobuf: bool, version: &str) -> Vec<u8> {
    if !protobuf {
        return json!({"swagger": "2.0", "info": {"title": "Kubernetes", "version": version},
                      "paths": {}, "definitions": {}})
        .to_string()
        .into_bytes();
    }
    // Field tags of Document: swagger = 1, info = 2 (Info: title = 1, version = 2),
    // paths = 8, definitions = 9; all length-delimited (wire type 2).
    fn field(out: &mut Vec<u8>, tag: u8, bytes: &[u8]) {
        out.push(tag << 3 | 2);
        let mut n = bytes.len();
        while n >= 0x80 {
            out.push((n as u8 & 0x7f) | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
        out.extend_from_slice(bytes);
    }
    let mut info = Vec::new();
    field(&mut info, 1, b"Kubernetes");
    field(&mut info, 2, version.as_bytes());
    let mut doc = Vec::new();
    field(&mut doc, 1, b"2.0");
    field(&mut doc, 2, &info);
    field(&mut doc, 8, &[]);
    field(&mut doc, 9, &[]);
    doc
}

use super::registry::{Registry, GROUP_VERSIONS};

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// A content hash so clients can cache (`?hash=`), stable across restarts of one build.
fn hash(doc: &Value) -> String {
    let bytes = doc.to_string();
    // FNV-1a: a cache key, not a security property.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016X}")
}

pub fn root(registry: &Registry) -> Value {
    let mut paths = Map::new();
    for (g, v) in GROUP_VERSIONS {
        let doc = document(registry, g, v);
        let p = gv_path(g, v);
        paths.insert(
            p.clone(),
            json!({ "serverRelativeURL": format!("/openapi/v3/{p}?hash={}", hash(&doc)) }),
        );
    }
    json!({ "paths": paths })
}

fn param(name: &str) -> Value {
    json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}})
}

fn op(action: &str, gvk: &Value, params: &[&str], body_types: &[&str]) -> Value {
    let mut o = json!({
        "operationId": format!("{action}{}", gvk["kind"].as_str().unwrap_or_default()),
        "parameters": params.iter().map(|p| param(p)).collect::<Vec<_>>(),
        "responses": {"200": {"description": "OK"}, "401": {"description": "Unauthorized"}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": gvk,
    });
    if !body_types.is_empty() {
        let content: Map<String, Value> = body_types
            .iter()
            .map(|t| (t.to_string(), json!({"schema": {"type": "object"}})))
            .collect();
        o["requestBody"] = json!({ "content": content, "required": true });
    }
    o
}

/// The document of one group/version (None: not served).
pub fn document(registry: &Registry, group: &str, version: &str) -> Value {
    let mut paths = Map::new();
    for k in registry.kinds() {
        let i = k.info();
        if i.group != group || i.version != version {
            continue;
        }
        let gvk = json!({"group": i.group, "version": i.version, "kind": i.kind});
        let base = format!("/{}", gv_path(group, version));
        let (list, item) = if i.namespaced {
            (
                format!("{base}/namespaces/{{namespace}}/{}", i.plural),
                format!("{base}/namespaces/{{namespace}}/{}/{{name}}", i.plural),
            )
        } else {
            (
                format!("{base}/{}", i.plural),
                format!("{base}/{}/{{name}}", i.plural),
            )
        };
        let write = ["dryRun", "fieldManager", "fieldValidation", "pretty"];
        paths.insert(
            list,
            json!({
                "get": op("list", &gvk, &["labelSelector", "fieldSelector", "limit", "continue", "resourceVersion", "timeoutSeconds", "watch", "allowWatchBookmarks", "sendInitialEvents"], &[]),
                "post": op("post", &gvk, &write, &["application/json"]),
                "delete": op("deletecollection", &gvk, &["labelSelector", "fieldSelector", "dryRun"], &[]),
            }),
        );
        paths.insert(
            item,
            json!({
                "get": op("get", &gvk, &["pretty"], &[]),
                "put": op("put", &gvk, &write, &["application/json"]),
                "patch": op("patch", &gvk, &["dryRun", "fieldManager", "fieldValidation", "force", "pretty"],
                            &["application/json-patch+json", "application/merge-patch+json"]),
                "delete": op("delete", &gvk, &["dryRun", "gracePeriodSeconds", "propagationPolicy"], &[]),
            }),
        );
    }
    // Create-only kinds answered by `tokens.rs`. kubectl's create decides whether the server
    // validates fields by looking for a PATCH operation with `fieldValidation` on the kind; a
    // TokenReview has no PATCH (it is refused with 405) but is declared with one, or
    // `kubectl create -f` would fall back to client-side validation against /openapi/v2, which
    // is not served.
    let write = ["dryRun", "fieldManager", "fieldValidation", "pretty"];
    for c in super::registry::CREATE_ONLY
        .iter()
        .filter(|c| c.group == group && version == "v1")
    {
        let gvk = json!({"group": group, "version": version, "kind": c.kind});
        let path = if c.namespaced {
            format!(
                "/apis/{group}/{version}/namespaces/{{namespace}}/{}",
                c.plural
            )
        } else {
            format!("/apis/{group}/{version}/{}", c.plural)
        };
        paths.insert(
            path,
            json!({
                "post": op("create", &gvk, &write, &["application/json"]),
                "patch": op("patch", &gvk, &write, &["application/merge-patch+json"]),
            }),
        );
    }
    if (group, version) == ("", "v1") {
        let gvk =
            json!({"group": "authentication.k8s.io", "version": "v1", "kind": "TokenRequest"});
        paths.insert(
            "/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token".into(),
            json!({"post": op("create", &gvk, &write, &["application/json"])}),
        );
    }
    json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0"},
        "paths": paths,
        "components": {"schemas": {}},
    })
}
