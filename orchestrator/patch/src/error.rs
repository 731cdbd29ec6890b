//! Why a patch could not be applied.

use serde_json::Value;

/// A patch was malformed or could not be applied to the object.
///
/// Every variant is the client's fault; [`PatchError::http_status`] gives the status code the
/// API server should answer with. Strategic-merge-patch paths read like `spec.containers[name=app]`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PatchError {
    /// The request body is not JSON at all.
    #[error("patch body is not valid JSON: {0}")]
    InvalidJson(#[source] serde_json::Error),
    /// Merge and strategic merge patches (and the object they patch) must be JSON objects.
    #[error("{what} must be a JSON object")]
    NotAnObject {
        /// "patch" or "object".
        what: &'static str,
    },
    /// The body is JSON but not an RFC 6902 operation list (unknown `op`, missing `path`...).
    #[error("invalid JSON patch: {0}")]
    InvalidJsonPatch(#[source] serde_json::Error),
    /// kube-apiserver caps JSON patches at 10,000 operations.
    #[error("JSON patch has {count} operations, more than the {max} allowed")]
    TooManyOperations {
        /// Operations in the request.
        count: usize,
        /// The cap.
        max: usize,
    },
    /// A JSON patch `test` operation compared unequal.
    #[error("JSON patch operation {index} failed: test of {path:?} did not match")]
    TestFailed {
        /// Zero-based operation index.
        index: usize,
        /// The tested JSON pointer.
        path: String,
    },
    /// A JSON patch `path` does not exist (remove/replace/test) or cannot be created (add).
    #[error("JSON patch operation {index} failed: path {path:?} does not exist or is not a valid target")]
    PathNotFound {
        /// Zero-based operation index.
        index: usize,
        /// The JSON pointer.
        path: String,
    },
    /// A JSON patch `from` (move/copy) does not exist.
    #[error("JSON patch operation {index} failed: \"from\" of {path:?} does not exist")]
    FromNotFound {
        /// Zero-based operation index.
        index: usize,
        /// The operation's target JSON pointer.
        path: String,
    },
    /// A JSON patch `move` into a child of its own source.
    #[error("JSON patch operation {index} failed: cannot move a value into itself ({path:?})")]
    MoveIntoItself {
        /// Zero-based operation index.
        index: usize,
        /// The operation's target JSON pointer.
        path: String,
    },
    /// A JSON patch failure the library reported in a way not listed above.
    #[error("JSON patch operation {index} failed at {path:?}: {reason}")]
    JsonPatchFailed {
        /// Zero-based operation index.
        index: usize,
        /// The JSON pointer.
        path: String,
        /// The library's explanation.
        reason: String,
    },
    /// A `$`-prefixed key that is not a strategic-merge-patch directive.
    #[error("{path}: unknown patch directive {directive:?}")]
    UnknownDirective {
        /// Where it appeared.
        path: String,
        /// The key.
        directive: String,
    },
    /// `$patch` with a value other than `replace` or `delete` (including `merge`, which
    /// apimachinery also rejects when applying).
    #[error("{path}: unsupported $patch value {value} (expected \"replace\" or \"delete\")")]
    BadPatchDirective {
        /// Where it appeared.
        path: String,
        /// The value found.
        value: Value,
    },
    /// `$patch` or `$deleteFromPrimitiveList` on a list that has no merge strategy.
    #[error(
        "{path}: {directive} needs a list with a merge strategy, but this list is replaced whole"
    )]
    DirectiveOnNonMergeList {
        /// The list.
        path: String,
        /// The directive used.
        directive: &'static str,
    },
    /// An element of a merging list (or `$setElementOrder` list) lacks the merge key.
    #[error("{path}: list element {element} has no merge key {key:?}")]
    MissingMergeKey {
        /// The list.
        path: String,
        /// The merge key.
        key: &'static str,
        /// The element.
        element: Value,
    },
    /// A directive's value has the wrong JSON type, or names no field.
    #[error("{path}: {directive} has an invalid value (expected {expected})")]
    BadDirectiveValue {
        /// Where it appeared.
        path: String,
        /// The directive key.
        directive: String,
        /// What was expected.
        expected: &'static str,
    },
    /// The patch sets a field that its own `$retainKeys` would drop.
    #[error("{path}: field {field:?} is in the patch but not in $retainKeys")]
    RetainKeysViolation {
        /// The object.
        path: String,
        /// The field.
        field: String,
    },
    /// The patch list orders elements differently from its `$setElementOrder` list.
    #[error("{path}: the order of the patch list does not match its $setElementOrder list")]
    SetElementOrderMismatch {
        /// The list.
        path: String,
    },
    /// A merging list mixes objects and scalars, scalar types, or holds lists.
    #[error("{path}: merging list elements must all be objects, or all scalars of one type")]
    MixedListElements {
        /// The list.
        path: String,
    },
}

// === impl PatchError ===

impl PatchError {
    /// The HTTP status the API server should answer with: 400 when the body is malformed,
    /// 422 when it is well-formed but cannot be applied to this object (a failed `test`, a
    /// missing path, a `$retainKeys` conflict). This split is Meshwork's; kube-apiserver's own
    /// mapping differs in a few corners.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::TestFailed { .. }
            | Self::PathNotFound { .. }
            | Self::FromNotFound { .. }
            | Self::MoveIntoItself { .. }
            | Self::JsonPatchFailed { .. }
            | Self::RetainKeysViolation { .. } => 422,
            _ => 400,
        }
    }
}
