//! Element order of merged lists and the `$setElementOrder/<list>` directive.
//!
//! apimachinery's rule (`normalizeElementOrder`): elements named by the patch (or by
//! `$setElementOrder`) take that relative order; elements only on the server keep their
//! original relative order; the two runs are interleaved by walking both and emitting the
//! server-only element first only when the original list had it before the next patch element.
//! New elements therefore land right after the server-only elements that preceded their
//! neighbours, and all remaining server-only elements follow the last patch element.

use std::collections::VecDeque;

use serde_json::{Map, Value};

use super::list::{self, directive, merge_key};
use super::value::{self, Path};
use super::{bad_value, directive_keys, field_of, SET_ELEMENT_ORDER};
use crate::schema::{Schema, Strategy};
use crate::PatchError;

/// Processes every `$setElementOrder/<list>` in `patch`, merging `<list>` together with it.
pub(super) fn apply_set_element_order(
    original: &mut Map<String, Value>,
    patch: &mut Map<String, Value>,
    schema: Schema,
    path: &Path<'_>,
) -> Result<(), PatchError> {
    for directive_key in directive_keys(patch, SET_ELEMENT_ORDER) {
        let order = patch.remove(&directive_key).unwrap_or_default();
        let field = field_of(&directive_key, SET_ELEMENT_ORDER, path)?.to_owned();
        let Value::Array(order) = order else {
            return Err(bad_value(path, &directive_key, "a list"));
        };
        if let Some(merged) = ordered_list(original, patch, &field, &order, schema, path)? {
            original.insert(field, Value::Array(merged));
        }
    }
    Ok(())
}

/// Merges `field` (if the patch has it) and sorts the result by `order`.
fn ordered_list(
    original: &mut Map<String, Value>,
    patch: &mut Map<String, Value>,
    field: &str,
    order: &[Value],
    schema: Schema,
    path: &Path<'_>,
) -> Result<Option<Vec<Value>>, PatchError> {
    let (strategy, elem) = schema.field(field);
    let key = match strategy {
        Strategy::MergeByKey(key) => Some(key),
        _ => None,
    };
    let list_path = path.child(field);
    let patch_list = match patch.remove(field) {
        None => None,
        Some(Value::Array(items)) => Some(items),
        Some(_) => {
            return Err(bad_value(
                path,
                field,
                "a list, as it has a $setElementOrder",
            ))
        }
    };
    // An original value that is not a list is replaced, as for any change of JSON type.
    let original_list = match original.remove(field) {
        Some(Value::Array(items)) => Some(items),
        _ => None,
    };
    validate(
        patch_list.as_deref().unwrap_or_default(),
        order,
        key,
        &list_path,
    )?;
    let (merged, server_order) = match (original_list, patch_list) {
        (None, None) => return Ok(None),
        (Some(items), None) => (items.clone(), items),
        (items, Some(patch)) => {
            list::merge_with_view(items.unwrap_or_default(), patch, strategy, elem, &list_path)?
        }
    };
    let (in_order, server_only) = partition(merged, order, key);
    Ok(Some(normalize(
        in_order,
        server_only,
        order,
        &server_order,
        key,
    )))
}

/// The patch list must name its elements in the same relative order as `$setElementOrder`
/// (deletions and other `$patch` elements aside), and every entry must carry the merge key.
fn validate(
    patch: &[Value],
    order: &[Value],
    key: Option<&'static str>,
    path: &Path<'_>,
) -> Result<(), PatchError> {
    if let Some(key) = key {
        for item in order
            .iter()
            .chain(patch.iter().filter(|i| directive(i).is_none()))
        {
            merge_key(item, key, path)?;
        }
    }
    let mut wanted = order.iter();
    for item in patch.iter().filter(|i| directive(i).is_none()) {
        if !wanted.any(|o| same_element(item, o, key)) {
            return Err(PatchError::SetElementOrderMismatch {
                path: path.to_string(),
            });
        }
    }
    Ok(())
}

/// Splits `items` into (named by `by`, not named by `by`), each keeping its order.
pub(super) fn partition(
    items: Vec<Value>,
    by: &[Value],
    key: Option<&str>,
) -> (Vec<Value>, Vec<Value>) {
    items
        .into_iter()
        .partition(|item| index(by, item, key).is_some())
}

/// Orders `named` by `named_order` and `server_only` by `server_order`, then interleaves them.
pub(super) fn normalize(
    mut named: Vec<Value>,
    mut server_only: Vec<Value>,
    named_order: &[Value],
    server_order: &[Value],
    key: Option<&str>,
) -> Vec<Value> {
    named.sort_by_key(|item| index(named_order, item, key).unwrap_or(usize::MAX));
    server_only.sort_by_key(|item| index(server_order, item, key).unwrap_or(usize::MAX));
    interleave(server_only.into(), named.into(), server_order, key)
}

/// apimachinery's `mergeSortedSlice`: take the server-only element first only when both are
/// in the original list and it came earlier there.
fn interleave(
    mut server_only: VecDeque<Value>,
    mut named: VecDeque<Value>,
    server_order: &[Value],
    key: Option<&str>,
) -> Vec<Value> {
    let mut out = Vec::with_capacity(server_only.len() + named.len());
    loop {
        let take_server = match (server_only.front(), named.front()) {
            (None, None) => return out,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (Some(s), Some(n)) => matches!(
                (index(server_order, s, key), index(server_order, n, key)),
                (Some(i), Some(j)) if i < j
            ),
        };
        let next = if take_server {
            server_only.pop_front()
        } else {
            named.pop_front()
        };
        out.extend(next);
    }
}

/// Position of `item` in `list`, matching by merge key (or by value for scalar lists).
fn index(list: &[Value], item: &Value, key: Option<&str>) -> Option<usize> {
    list.iter()
        .position(|candidate| same_element(candidate, item, key))
}

fn same_element(a: &Value, b: &Value, key: Option<&str>) -> bool {
    match key {
        Some(key) => match (a.get(key), b.get(key)) {
            (Some(x), Some(y)) => value::eq(x, y),
            (x, y) => x.is_none() && y.is_none(),
        },
        None => value::eq(a, b),
    }
}
