//! `application/vnd.kubernetes.protobuf` bodies for the bundled API server.
//!
//! Kubernetes frames a protobuf object as the four bytes `k8s\0` followed by a
//! `runtime.Unknown` whose `typeMeta` names the kind and whose `raw` holds the object's message
//! (apimachinery `runtime/serializer/protobuf`; the repository's ARCHITECTURE.md, protobuf bodies). The server
//! keeps JSON, so bodies are transcoded at the edge: [`decode_body`] for requests,
//! [`encode_object`] for responses. Which message a kind is comes from the descriptors of the
//! upstream protos (README.md), so no kind has a hand-written codec.

use std::sync::LazyLock;

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, Value as PValue};
use serde_json::Value;

mod transcode;

pub use transcode::{from_json, to_json};

/// The media type clients send and accept (client-go's `runtime.ContentTypeProtobuf`).
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";
/// The envelope's prefix.
pub const MAGIC: &[u8; 4] = b"k8s\0";

static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    #[allow(
        clippy::expect_used,
        reason = "build.rs made these bytes; unit tests load them"
    )]
    DescriptorPool::decode(&include_bytes!(concat!(env!("OUT_DIR"), "/k8s.fds"))[..])
        .expect("the descriptor set built by build.rs decodes")
});

/// The envelope's two messages.
struct Envelope {
    unknown: MessageDescriptor,
    type_meta: MessageDescriptor,
}

static ENVELOPE: LazyLock<Envelope> = LazyLock::new(|| {
    #[allow(clippy::expect_used, reason = "vendored protos; unit tests load them")]
    let get = |n: &str| {
        POOL.get_message_by_name(n)
            .expect("runtime protos are vendored")
    };
    Envelope {
        unknown: get("apimachinery.pkg.runtime.Unknown"),
        type_meta: get("apimachinery.pkg.runtime.TypeMeta"),
    }
});

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Error {
    #[error("the protobuf body does not start with the Kubernetes envelope prefix \"k8s\\x00\"")]
    NoEnvelope,
    #[error("the protobuf envelope (runtime.Unknown) could not be decoded: {0}")]
    Envelope(String),
    #[error("the protobuf envelope does not name the object's apiVersion and kind")]
    NoKind,
    #[error("the protobuf envelope's contentEncoding {0:?} is not supported")]
    ContentEncoding(String),
    #[error("no protobuf message is known for apiVersion {api_version:?}, kind {kind:?}")]
    UnknownKind { api_version: String, kind: String },
    #[error("the protobuf body of {kind} could not be decoded: {message}")]
    Decode { kind: String, message: String },
    #[error("{kind} cannot be encoded as protobuf: {message}")]
    Encode { kind: String, message: String },
}

/// The message a kind is, from its `apiVersion` (`v1`, `apps/v1`, `rbac.authorization.k8s.io/v1`)
/// and kind. meta.k8s.io kinds (Status, DeleteOptions, APIResourceList, ...) are tried last,
/// as kube-apiserver also serves them under every group version.
pub fn message_for(api_version: &str, kind: &str) -> Option<MessageDescriptor> {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let pkg = match group {
        "" => "core",
        g => g.trim_end_matches(".k8s.io").split('.').next().unwrap_or(g),
    };
    if kind.is_empty() || version.is_empty() {
        return None;
    }
    POOL.get_message_by_name(&format!("api.{pkg}.{version}.{kind}"))
        .or_else(|| POOL.get_message_by_name(&format!("apimachinery.pkg.apis.meta.v1.{kind}")))
}

/// Decodes a request body into the JSON object JSON clients would have sent, with `apiVersion`
/// and `kind` from the envelope.
pub fn decode_body(body: &[u8]) -> Result<Value, Error> {
    let rest = body.strip_prefix(&MAGIC[..]).ok_or(Error::NoEnvelope)?;
    let env = DynamicMessage::decode(ENVELOPE.unknown.clone(), rest)
        .map_err(|e| Error::Envelope(e.to_string()))?;
    let text = |m: &DynamicMessage, f: &str| match m.get_field_by_name(f).as_deref() {
        Some(PValue::String(s)) => s.clone(),
        _ => String::new(),
    };
    let (api_version, kind) = match env.get_field_by_name("typeMeta").as_deref() {
        Some(PValue::Message(tm)) => (text(tm, "apiVersion"), text(tm, "kind")),
        _ => return Err(Error::NoKind),
    };
    if api_version.is_empty() || kind.is_empty() {
        return Err(Error::NoKind);
    }
    let encoding = text(&env, "contentEncoding");
    if !encoding.is_empty() {
        return Err(Error::ContentEncoding(encoding));
    }
    let desc = message_for(&api_version, &kind).ok_or_else(|| Error::UnknownKind {
        api_version: api_version.clone(),
        kind: kind.clone(),
    })?;
    let raw = match env.get_field_by_name("raw").as_deref() {
        Some(PValue::Bytes(b)) => b.clone(),
        _ => Default::default(),
    };
    let msg = DynamicMessage::decode(desc, raw).map_err(|e| Error::Decode {
        kind: kind.clone(),
        message: e.to_string(),
    })?;
    let obj = to_json(&msg).map_err(|message| Error::Decode {
        kind: kind.clone(),
        message,
    })?;
    let Value::Object(mut m) = obj else {
        // meta/v1 Time, Duration, ... are messages but not kinds.
        return Err(Error::UnknownKind { api_version, kind });
    };
    m.insert("apiVersion".into(), api_version.into());
    m.insert("kind".into(), kind.into());
    Ok(Value::Object(m))
}

/// Encodes a JSON object carrying `apiVersion` and `kind` as an enveloped protobuf body.
/// Fields the vendored protos do not know are left out, as a protobuf client would not see them.
pub fn encode_object(obj: &Value) -> Result<Vec<u8>, Error> {
    let s = |k: &str| obj.get(k).and_then(Value::as_str).unwrap_or_default();
    let (api_version, kind) = (s("apiVersion"), s("kind"));
    let desc = message_for(api_version, kind).ok_or_else(|| Error::UnknownKind {
        api_version: api_version.into(),
        kind: kind.into(),
    })?;
    let msg = from_json(&desc, obj).map_err(|message| Error::Encode {
        kind: kind.into(),
        message,
    })?;
    let mut env = DynamicMessage::new(ENVELOPE.unknown.clone());
    let mut tm = DynamicMessage::new(ENVELOPE.type_meta.clone());
    tm.set_field_by_name("apiVersion", PValue::String(api_version.into()));
    tm.set_field_by_name("kind", PValue::String(kind.into()));
    env.set_field_by_name("typeMeta", PValue::Message(tm));
    env.set_field_by_name("raw", PValue::Bytes(msg.encode_to_vec().into()));
    // Go's Unknown always writes these two, empty for a protobuf raw.
    env.set_field_by_name("contentEncoding", PValue::String(String::new()));
    env.set_field_by_name("contentType", PValue::String(String::new()));
    let mut out = MAGIC.to_vec();
    out.extend(env.encode_to_vec());
    Ok(out)
}

/// Whether an `Accept` header asks for protobuf before JSON (client-go typed clients send
/// `application/vnd.kubernetes.protobuf, application/json`).
pub fn prefers_protobuf(accept: &str) -> bool {
    let Some(first) = accept.split(',').map(str::trim).find(|a| !a.is_empty()) else {
        return false;
    };
    let mut parts = first.split(';').map(str::trim);
    // `as=Table` and friends are renderings, not the object itself.
    parts.next() == Some(MEDIA_TYPE) && parts.all(|p| !p.starts_with("as="))
}

#[cfg(test)]
mod tests;
