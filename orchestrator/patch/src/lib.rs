//! Kubernetes PATCH semantics over `serde_json::Value`, as kube-apiserver applies them.
//!
//! Three patch types, chosen by the request's `Content-Type` ([`PatchType::from_content_type`]):
//! JSON merge patch (RFC 7386), JSON patch (RFC 6902) and strategic merge patch, the one
//! `kubectl apply`, `set image` and `rollout restart` send. Strategic merge needs per-kind patch
//! metadata ([`Schema::for_kind`]); kinds the table does not know get merge-patch behaviour for
//! objects and whole replacement for lists, as apimachinery does for types without metadata.
//!
//! Pure functions, no I/O: the caller owns decoding, admission and storage.

mod error;
mod json;
mod schema;
mod strategic;

pub use error::PatchError;
pub use schema::{FieldDef, Schema, Strategy, TypeDef};
use serde_json::Value;

/// The patch formats kube-apiserver accepts on PATCH (server-side apply excluded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    /// `application/merge-patch+json` (RFC 7386).
    Merge,
    /// `application/json-patch+json` (RFC 6902).
    Json,
    /// `application/strategic-merge-patch+json`.
    StrategicMerge,
}

// === impl PatchType ===

impl PatchType {
    /// The patch type for a `Content-Type` header, ignoring parameters such as `charset`.
    ///
    /// `application/apply-patch+yaml` (server-side apply) and anything else give `None`;
    /// the server answers 415 Unsupported Media Type.
    pub fn from_content_type(content_type: &str) -> Option<Self> {
        let media_type = content_type.split(';').next().unwrap_or_default().trim();
        [Self::Merge, Self::Json, Self::StrategicMerge]
            .into_iter()
            .find(|ty| ty.content_type().eq_ignore_ascii_case(media_type))
    }

    /// The media type of this patch type.
    pub const fn content_type(self) -> &'static str {
        match self {
            Self::Merge => "application/merge-patch+json",
            Self::Json => "application/json-patch+json",
            Self::StrategicMerge => "application/strategic-merge-patch+json",
        }
    }
}

/// Applies a PATCH request body to `original` and returns the patched object.
///
/// `schema` matters only for [`PatchType::StrategicMerge`]. `original` is never modified, so a
/// failed patch leaves nothing half-applied.
pub fn apply(
    original: &Value,
    patch: &[u8],
    ty: PatchType,
    schema: Schema,
) -> Result<Value, PatchError> {
    let patch: Value = serde_json::from_slice(patch).map_err(PatchError::InvalidJson)?;
    apply_value(original, &patch, ty, schema)
}

/// [`apply`] for a patch that is already parsed.
pub fn apply_value(
    original: &Value,
    patch: &Value,
    ty: PatchType,
    schema: Schema,
) -> Result<Value, PatchError> {
    match ty {
        PatchType::Merge => json::merge_patch(original, patch),
        PatchType::Json => json::json_patch(original, patch),
        PatchType::StrategicMerge => strategic::apply(original, patch, schema),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        let cases = [
            ("application/merge-patch+json", Some(PatchType::Merge)),
            ("application/json-patch+json", Some(PatchType::Json)),
            (
                "application/strategic-merge-patch+json",
                Some(PatchType::StrategicMerge),
            ),
            (
                "application/strategic-merge-patch+json; charset=utf-8",
                Some(PatchType::StrategicMerge),
            ),
            (
                "Application/Merge-Patch+JSON ;charset=UTF-8",
                Some(PatchType::Merge),
            ),
            ("application/apply-patch+yaml", None),
            ("application/json", None),
            ("", None),
        ];
        for (header, want) in cases {
            assert_eq!(PatchType::from_content_type(header), want, "{header:?}");
        }
    }

    #[test]
    fn content_type_round_trips() {
        for ty in [PatchType::Merge, PatchType::Json, PatchType::StrategicMerge] {
            assert_eq!(PatchType::from_content_type(ty.content_type()), Some(ty));
        }
    }

    #[test]
    fn body_that_is_not_json_is_rejected() {
        for ty in [PatchType::Merge, PatchType::Json, PatchType::StrategicMerge] {
            let err = apply(&serde_json::json!({}), b"{not json", ty, Schema::UNTYPED).unwrap_err();
            assert!(matches!(err, PatchError::InvalidJson(_)), "{ty:?}: {err}");
            assert_eq!(err.http_status(), 400);
        }
    }
}
