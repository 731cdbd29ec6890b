//! Strategic merge patch, applied the way k8s.io/apimachinery `strategicpatch` does on the
//! server (`StrategicMergeMapPatch`: parallel lists merged, unmatched nulls ignored).
//!
//! Per object: `$patch` first, then `$retainKeys`, then each `$setElementOrder/<list>` with its
//! list, then `$deleteFromPrimitiveList/<list>`, then ordinary fields.
//!
//! Where apimachinery copies a *new* value (a field or list element absent from the original)
//! verbatim, we drop its nulls and directive keys (see [`value::clean_new`]); the API server's
//! typed decode drops them there anyway, so the stored object is the same.

mod list;
mod order;
mod value;

use serde_json::{Map, Value};

use crate::schema::{Schema, Strategy};
use crate::PatchError;
use value::{clean_new, Path};

const PATCH: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ELEMENT_ORDER: &str = "$setElementOrder/";
const DELETE_FROM_PRIMITIVE_LIST: &str = "$deleteFromPrimitiveList/";

/// Applies a strategic merge patch to an object.
pub(crate) fn apply(original: &Value, patch: &Value, schema: Schema) -> Result<Value, PatchError> {
    let Value::Object(patch) = patch else {
        return Err(PatchError::NotAnObject {
            what: "strategic merge patch",
        });
    };
    let Value::Object(original) = original else {
        return Err(PatchError::NotAnObject {
            what: "patched object",
        });
    };
    let merged = merge_map(original.clone(), patch.clone(), schema, &Path::ROOT)?;
    Ok(Value::Object(merged))
}

/// Merges `patch` into `original`, both objects of the type `schema` describes.
fn merge_map(
    mut original: Map<String, Value>,
    mut patch: Map<String, Value>,
    schema: Schema,
    path: &Path<'_>,
) -> Result<Map<String, Value>, PatchError> {
    if let Some(directive) = patch.remove(PATCH) {
        return map_directive(&directive, patch, path);
    }
    apply_retain_keys(&mut original, &mut patch, path)?;
    order::apply_set_element_order(&mut original, &mut patch, schema, path)?;
    apply_delete_lists(&mut original, &mut patch, schema, path)?;
    for (key, patch_value) in patch {
        merge_field(&mut original, key, patch_value, schema, path)?;
    }
    Ok(original)
}

/// `$patch` on an object: `replace` keeps only the patch, `delete` empties it.
fn map_directive(
    directive: &Value,
    rest: Map<String, Value>,
    path: &Path<'_>,
) -> Result<Map<String, Value>, PatchError> {
    match directive.as_str() {
        Some("replace") => match clean_new(Value::Object(rest)) {
            Some(Value::Object(map)) => Ok(map),
            _ => Ok(Map::new()),
        },
        Some("delete") => Ok(Map::new()),
        _ => Err(PatchError::BadPatchDirective {
            path: path.to_string(),
            value: directive.clone(),
        }),
    }
}

/// `$retainKeys`: drop original keys not listed; every key the patch sets must be listed.
fn apply_retain_keys(
    original: &mut Map<String, Value>,
    patch: &mut Map<String, Value>,
    path: &Path<'_>,
) -> Result<(), PatchError> {
    let Some(retain) = patch.remove(RETAIN_KEYS) else {
        return Ok(());
    };
    let Value::Array(retain) = retain else {
        return Err(bad_value(path, RETAIN_KEYS, "a list of field names"));
    };
    let listed = |key: &str| retain.iter().any(|k| k.as_str() == Some(key));
    let set_by_patch = patch.iter().filter(|(key, value)| {
        !value.is_null()
            && !key.starts_with(SET_ELEMENT_ORDER)
            && !key.starts_with(DELETE_FROM_PRIMITIVE_LIST)
    });
    for (key, _) in set_by_patch {
        if !listed(key) {
            return Err(PatchError::RetainKeysViolation {
                path: path.to_string(),
                field: key.clone(),
            });
        }
    }
    original.retain(|key, _| listed(key));
    Ok(())
}

/// `$deleteFromPrimitiveList/<list>`: remove the listed values from a merging scalar list.
///
/// Runs before ordinary fields so that a value both deleted and re-added ends up present.
fn apply_delete_lists(
    original: &mut Map<String, Value>,
    patch: &mut Map<String, Value>,
    schema: Schema,
    path: &Path<'_>,
) -> Result<(), PatchError> {
    for key in directive_keys(patch, DELETE_FROM_PRIMITIVE_LIST) {
        let to_delete = patch.remove(&key).unwrap_or_default();
        let field = field_of(&key, DELETE_FROM_PRIMITIVE_LIST, path)?;
        let list_path = path.child(field);
        let Value::Array(to_delete) = to_delete else {
            return Err(bad_value(path, &key, "a list of values"));
        };
        if schema.field(field).0 != Strategy::MergeSet {
            return Err(PatchError::DirectiveOnNonMergeList {
                path: list_path.to_string(),
                directive: "$deleteFromPrimitiveList",
            });
        }
        // Deleting from a list that is absent (or not a list) changes nothing.
        if let Some(Value::Array(current)) = original.get_mut(field) {
            current.retain(|v| !to_delete.iter().any(|d| value::eq(d, v)));
        }
    }
    Ok(())
}

/// Merges one ordinary field of the patch into `original`.
fn merge_field(
    original: &mut Map<String, Value>,
    key: String,
    patch_value: Value,
    schema: Schema,
    path: &Path<'_>,
) -> Result<(), PatchError> {
    if key.starts_with('$') {
        return Err(PatchError::UnknownDirective {
            path: path.to_string(),
            directive: key,
        });
    }
    if patch_value.is_null() {
        original.remove(&key);
        return Ok(());
    }
    let (strategy, child) = schema.field(&key);
    let field_path = path.child(&key);
    let merged = match (original.remove(&key), patch_value) {
        (Some(Value::Object(o)), Value::Object(p)) if strategy != Strategy::Replace => {
            Some(Value::Object(merge_map(o, p, child, &field_path)?))
        }
        (Some(Value::Array(o)), Value::Array(p)) => Some(Value::Array(list::merge(
            o,
            p,
            strategy,
            child,
            &field_path,
        )?)),
        (_, Value::Array(p)) => Some(Value::Array(list::merge(
            Vec::new(),
            p,
            strategy,
            child,
            &field_path,
        )?)),
        // New field, changed JSON type, replace strategy or a scalar: the patch value wins.
        (_, patch_value) => clean_new(patch_value),
    };
    if let Some(merged) = merged {
        original.insert(key, merged);
    }
    Ok(())
}

/// The field name after a `$directive/` prefix.
/// The patch's keys that carry directive `prefix` (collected first: the caller removes them).
fn directive_keys(patch: &Map<String, Value>, prefix: &str) -> Vec<String> {
    patch
        .keys()
        .filter(|k| k.starts_with(prefix))
        .cloned()
        .collect()
}

fn field_of<'k>(key: &'k str, prefix: &str, path: &Path<'_>) -> Result<&'k str, PatchError> {
    match key.strip_prefix(prefix) {
        Some(field) if !field.is_empty() => Ok(field),
        _ => Err(bad_value(path, key, "a field name after the '/'")),
    }
}

fn bad_value(path: &Path<'_>, directive: &str, expected: &'static str) -> PatchError {
    PatchError::BadDirectiveValue {
        path: path.to_string(),
        directive: directive.to_owned(),
        expected,
    }
}
