//! JSON merge patch (RFC 7386) and JSON patch (RFC 6902), delegated to the `json-patch` crate.

use json_patch::{PatchErrorKind, PatchOperation};
use serde_json::Value;

use crate::PatchError;

/// kube-apiserver rejects JSON patches with more operations than this.
const MAX_JSON_PATCH_OPERATIONS: usize = 10_000;

/// RFC 7386. kube-apiserver (evanphx/json-patch) only accepts an object as the patch.
pub(crate) fn merge_patch(original: &Value, patch: &Value) -> Result<Value, PatchError> {
    if !patch.is_object() {
        return Err(PatchError::NotAnObject {
            what: "merge patch",
        });
    }
    let mut doc = original.clone();
    json_patch::merge(&mut doc, patch);
    Ok(doc)
}

/// RFC 6902, all-or-nothing.
pub(crate) fn json_patch(original: &Value, patch: &Value) -> Result<Value, PatchError> {
    let ops: Vec<PatchOperation> =
        serde_json::from_value(patch.clone()).map_err(PatchError::InvalidJsonPatch)?;
    if ops.len() > MAX_JSON_PATCH_OPERATIONS {
        return Err(PatchError::TooManyOperations {
            count: ops.len(),
            max: MAX_JSON_PATCH_OPERATIONS,
        });
    }
    // Work on a copy and drop it on failure: the crate's own rollback (`patch`) can panic when
    // undoing some `move` sequences, and a copy gives the same atomicity without that risk.
    let mut doc = original.clone();
    for (index, op) in ops.iter().enumerate() {
        // evanphx/json-patch (kube-apiserver) treats a missing path as null in `test`: kube-rs's
        // finalizer helper sends `test /metadata/finalizers == null` before its first `add`.
        if let PatchOperation::Test(t) = op {
            if t.value.is_null() && doc.pointer(t.path.as_str()).is_none() {
                continue;
            }
        }
        json_patch::patch_unsafe(&mut doc, std::slice::from_ref(op)).map_err(|mut e| {
            e.operation = index;
            from_library(e)
        })?;
    }
    Ok(doc)
}

fn from_library(err: json_patch::PatchError) -> PatchError {
    let (index, path) = (err.operation, err.path.to_string());
    match err.kind {
        PatchErrorKind::TestFailed => PatchError::TestFailed { index, path },
        PatchErrorKind::InvalidPointer => PatchError::PathNotFound { index, path },
        PatchErrorKind::InvalidFromPointer => PatchError::FromNotFound { index, path },
        PatchErrorKind::CannotMoveInsideItself => PatchError::MoveIntoItself { index, path },
        other => PatchError::JsonPatchFailed {
            index,
            path,
            reason: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn test_of_null_matches_a_missing_path() {
        let doc = json!({"metadata": {"name": "a"}});
        let ops = json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": ["x"]}
        ]);
        let out = json_patch(&doc, &ops).unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!(["x"]));
        let ops = json!([{"op": "test", "path": "/metadata/name", "value": null}]);
        assert!(matches!(
            json_patch(&doc, &ops),
            Err(PatchError::TestFailed { index: 0, .. })
        ));
        let ops = json!([{"op": "add", "path": "/a", "value": 1}, {"op": "test", "path": "/a", "value": 2}]);
        assert!(matches!(
            json_patch(&doc, &ops),
            Err(PatchError::TestFailed { index: 1, .. })
        ));
    }

    /// RFC 7386 appendix A, plus the Kubernetes rule that the patch must be an object.
    #[test]
    fn merge_patch_rfc7386_examples() {
        let cases = [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (
                json!({"a": "b"}),
                json!({"b": "c"}),
                json!({"a": "b", "b": "c"}),
            ),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (
                json!({"a": "b", "b": "c"}),
                json!({"a": null}),
                json!({"b": "c"}),
            ),
            (json!({"a": ["b"]}), json!({"a": "c"}), json!({"a": "c"})),
            (json!({"a": "c"}), json!({"a": ["b"]}), json!({"a": ["b"]})),
            (
                json!({"a": {"b": "c"}}),
                json!({"a": {"b": "d", "c": null}}),
                json!({"a": {"b": "d"}}),
            ),
            (
                json!({"a": [{"b": "c"}]}),
                json!({"a": [1]}),
                json!({"a": [1]}),
            ),
            (
                json!({"e": null}),
                json!({"a": 1}),
                json!({"e": null, "a": 1}),
            ),
            (
                json!({}),
                json!({"a": {"bb": {"ccc": null}}}),
                json!({"a": {"bb": {}}}),
            ),
        ];
        for (original, patch, want) in cases {
            assert_eq!(
                merge_patch(&original, &patch).unwrap(),
                want,
                "patch {patch}"
            );
        }
    }

    #[test]
    fn merge_patch_must_be_an_object() {
        for patch in [json!(["a"]), json!("a"), json!(null), json!(1)] {
            let err = merge_patch(&json!({"a": 1}), &patch).unwrap_err();
            assert!(
                matches!(err, PatchError::NotAnObject { .. }),
                "{patch}: {err}"
            );
        }
    }

    /// RFC 6902 section A examples and pointer escaping.
    #[test]
    fn json_patch_operations() {
        let cases = [
            (
                json!({"foo": "bar"}),
                json!([{"op": "add", "path": "/baz", "value": "qux"}]),
                json!({"foo": "bar", "baz": "qux"}),
            ),
            (
                json!({"foo": ["bar", "baz"]}),
                json!([{"op": "add", "path": "/foo/1", "value": "qux"}]),
                json!({"foo": ["bar", "qux", "baz"]}),
            ),
            (
                json!({"foo": ["bar"]}),
                json!([{"op": "add", "path": "/foo/-", "value": "end"}]),
                json!({"foo": ["bar", "end"]}),
            ),
            (
                json!({"baz": "qux", "foo": "bar"}),
                json!([{"op": "remove", "path": "/baz"}]),
                json!({"foo": "bar"}),
            ),
            (
                json!({"foo": ["bar", "qux", "baz"]}),
                json!([{"op": "remove", "path": "/foo/1"}]),
                json!({"foo": ["bar", "baz"]}),
            ),
            (
                json!({"baz": "qux"}),
                json!([{"op": "replace", "path": "/baz", "value": "boo"}]),
                json!({"baz": "boo"}),
            ),
            (
                json!({"foo": {"waldo": "fred"}, "qux": {}}),
                json!([{"op": "move", "from": "/foo/waldo", "path": "/qux/thud"}]),
                json!({"foo": {}, "qux": {"thud": "fred"}}),
            ),
            (
                json!({"foo": ["all", "grass", "cows"]}),
                json!([{"op": "move", "from": "/foo/1", "path": "/foo/2"}]),
                json!({"foo": ["all", "cows", "grass"]}),
            ),
            (
                json!({"a": {"b": 1}}),
                json!([{"op": "copy", "from": "/a", "path": "/c"}]),
                json!({"a": {"b": 1}, "c": {"b": 1}}),
            ),
            (
                json!({"baz": "qux"}),
                json!([{"op": "test", "path": "/baz", "value": "qux"}]),
                json!({"baz": "qux"}),
            ),
            // ~1 is '/', ~0 is '~': how clients address annotation keys.
            (
                json!({"metadata": {"annotations": {"a/b": "1", "m~n": "2"}}}),
                json!([{"op": "replace", "path": "/metadata/annotations/a~1b", "value": "x"}, {"op": "remove", "path": "/metadata/annotations/m~0n"}]),
                json!({"metadata": {"annotations": {"a/b": "x"}}}),
            ),
            (json!({"a": 1}), json!([]), json!({"a": 1})),
        ];
        for (original, patch, want) in cases {
            assert_eq!(
                json_patch(&original, &patch).unwrap(),
                want,
                "patch {patch}"
            );
        }
    }

    #[test]
    fn json_patch_errors() {
        let doc = json!({"metadata": {"name": "web", "labels": {"a": "1"}}, "list": [1]});
        let failing_test = json!([
            {"op": "replace", "path": "/metadata/name", "value": "other"},
            {"op": "test", "path": "/metadata/labels/a", "value": "2"},
        ]);
        let err = json_patch(&doc, &failing_test).unwrap_err();
        assert!(
            matches!(&err, PatchError::TestFailed { index: 1, path } if path == "/metadata/labels/a"),
            "{err}"
        );
        assert_eq!(err.http_status(), 422);

        let cases = [
            (
                json!([{"op": "remove", "path": "/metadata/missing"}]),
                "PathNotFound",
            ),
            (
                json!([{"op": "replace", "path": "/nope", "value": 1}]),
                "PathNotFound",
            ),
            (
                json!([{"op": "add", "path": "/a/b/c", "value": 1}]),
                "PathNotFound",
            ),
            (
                json!([{"op": "add", "path": "/list/5", "value": 1}]),
                "PathNotFound",
            ),
            (
                json!([{"op": "move", "from": "/nope", "path": "/x"}]),
                "FromNotFound",
            ),
            (
                json!([{"op": "copy", "from": "/nope", "path": "/x"}]),
                "FromNotFound",
            ),
            (
                json!([{"op": "move", "from": "/metadata", "path": "/metadata/labels/x"}]),
                "MoveIntoItself",
            ),
            (
                json!([{"op": "frobnicate", "path": "/a"}]),
                "InvalidJsonPatch",
            ),
            (json!([{"op": "add", "path": "/a"}]), "InvalidJsonPatch"),
            (
                json!([{"op": "add", "path": "no-slash", "value": 1}]),
                "InvalidJsonPatch",
            ),
            (
                json!({"op": "add", "path": "/a", "value": 1}),
                "InvalidJsonPatch",
            ),
        ];
        for (patch, want) in cases {
            let err = json_patch(&doc, &patch).unwrap_err();
            let got = format!("{err:?}");
            assert!(got.starts_with(want), "{patch}: got {got}");
        }
    }

    /// The crate's rollback panics undoing this sequence; we must return an error instead.
    #[test]
    fn json_patch_failure_after_move_to_parent_is_an_error_not_a_panic() {
        let doc = json!({"a": {"b": {"c": 1}}});
        let patch = json!([
            {"op": "move", "from": "/a/b", "path": "/a"},
            {"op": "test", "path": "/a/c", "value": 2},
        ]);
        assert!(matches!(
            json_patch(&doc, &patch),
            Err(PatchError::TestFailed { index: 1, .. })
        ));
    }

    #[test]
    fn json_patch_operation_cap() {
        let ops: Vec<Value> = (0..=MAX_JSON_PATCH_OPERATIONS)
            .map(|_| json!({"op": "test", "path": "/a", "value": 1}))
            .collect();
        let err = json_patch(&json!({"a": 1}), &Value::Array(ops)).unwrap_err();
        assert!(matches!(
            err,
            PatchError::TooManyOperations {
                count: 10_001,
                max: 10_000
            }
        ));
    }
}
