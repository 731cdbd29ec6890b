//! Merging one list field: by merge key, as an ordered set, or by replacement.

use serde_json::{Map, Value};

use super::value::{self, clean_new, Path};
use super::{merge_map, order, PATCH};
use crate::schema::{Schema, Strategy};
use crate::PatchError;

/// Merges a patch list into the original list according to the field's strategy.
pub(super) fn merge(
    original: Vec<Value>,
    patch: Vec<Value>,
    strategy: Strategy,
    elem: Schema,
    path: &Path<'_>,
) -> Result<Vec<Value>, PatchError> {
    Ok(merge_with_view(original, patch, strategy, elem, path)?.0)
}

/// [`merge`], also returning the original list as apimachinery's caller sees it afterwards
/// (see [`AliasedView`]); `$setElementOrder` orders server-only elements by that view.
pub(super) fn merge_with_view(
    original: Vec<Value>,
    patch: Vec<Value>,
    strategy: Strategy,
    elem: Schema,
    path: &Path<'_>,
) -> Result<(Vec<Value>, Vec<Value>), PatchError> {
    let mut view = AliasedView::new(original.clone());
    let merged = match strategy {
        Strategy::MergeByKey(key) => merge_keyed(original, patch, key, elem, path, &mut view)?,
        Strategy::MergeSet => merge_set(original, patch, path)?,
        Strategy::Default | Strategy::Replace => replace(patch, path)?,
    };
    Ok((merged, view.backing))
}

/// The live list as Go's caller still sees it after `mergeSlice` worked on the same backing
/// array. The API server converts the live object with `ToUnstructured` (capacity == length), so
/// deleting an element shifts the caller's view in place, and appends fill the freed tail slots
/// until the capacity is exhausted. apimachinery then orders server-only elements by this view,
/// and its own tests ("add map and delete map from merging list with conflict") expect the
/// result, so we reproduce it rather than the tidier "original order".
struct AliasedView {
    backing: Vec<Value>,
    len: usize,
    detached: bool,
}

impl AliasedView {
    fn new(backing: Vec<Value>) -> Self {
        Self {
            len: backing.len(),
            backing,
            detached: false,
        }
    }

    /// Go's `s = append(s[:i], s[i+1:]...)`: shift left; the old last slot keeps its value.
    fn remove(&mut self, i: usize) {
        if self.detached || i >= self.len {
            return;
        }
        let last = self.backing[self.len - 1].clone();
        self.backing[i..self.len].rotate_left(1);
        self.backing[self.len - 1] = last;
        self.len -= 1;
    }

    /// Go's `s = append(s, v)`: writes in place while capacity lasts, then reallocates.
    fn push(&mut self, value: &Value) {
        match self.backing.get_mut(self.len) {
            Some(slot) if !self.detached => {
                *slot = value.clone();
                self.len += 1;
            }
            _ => self.detached = true,
        }
    }
}

/// A list without merge strategy is replaced; `$patch: replace` markers are redundant there,
/// and any other `$patch` cannot be honoured, so it is an error rather than silently kept.
fn replace(patch: Vec<Value>, path: &Path<'_>) -> Result<Vec<Value>, PatchError> {
    let mut out = Vec::with_capacity(patch.len());
    for item in patch {
        match directive(&item) {
            None => out.extend(clean_new(item)),
            Some(d) if d.as_str() == Some("replace") => {}
            Some(_) => {
                return Err(PatchError::DirectiveOnNonMergeList {
                    path: path.to_string(),
                    directive: "$patch",
                })
            }
        }
    }
    Ok(out)
}

/// `patchStrategy: merge` on scalars: set union, patch values in patch order, the rest where
/// they were (apimachinery's `mergeSlice` + `normalizeElementOrder`).
fn merge_set(
    original: Vec<Value>,
    patch: Vec<Value>,
    path: &Path<'_>,
) -> Result<Vec<Value>, PatchError> {
    if original.is_empty() && patch.is_empty() {
        return Ok(original);
    }
    check_scalars(original.iter().chain(&patch), path)?;
    let mut merged: Vec<Value> = Vec::with_capacity(original.len() + patch.len());
    for item in original.iter().chain(&patch) {
        if !merged.iter().any(|m| value::eq(m, item)) {
            merged.push(item.clone());
        }
    }
    let (in_patch, server_only) = order::partition(merged, &patch, None);
    Ok(order::normalize(
        in_patch,
        server_only,
        &patch,
        &original,
        None,
    ))
}

/// `patchStrategy: merge` + `patchMergeKey`: handle `$patch` elements, merge elements with equal
/// keys, append new ones, then order (patch order first, server-only elements kept in place).
fn merge_keyed(
    original: Vec<Value>,
    patch: Vec<Value>,
    key: &'static str,
    elem: Schema,
    path: &Path<'_>,
    view: &mut AliasedView,
) -> Result<Vec<Value>, PatchError> {
    if original.is_empty() && patch.is_empty() {
        return Ok(original);
    }
    if !original.iter().chain(&patch).all(Value::is_object) {
        return Err(PatchError::MixedListElements {
            path: path.to_string(),
        });
    }
    let (original, patch) = apply_list_directives(original, patch, key, path, view)?;
    let merged = merge_elements(original.clone(), &patch, key, elem, path, view)?;
    let (in_patch, server_only) = order::partition(merged, &patch, Some(key));
    Ok(order::normalize(
        in_patch,
        server_only,
        &patch,
        &original,
        Some(key),
    ))
}

/// Element-level `$patch`: `delete` removes elements with that key from the original, `replace`
/// makes the remaining patch elements the whole list. Returns (original, plain patch elements).
fn apply_list_directives(
    mut original: Vec<Value>,
    patch: Vec<Value>,
    key: &'static str,
    path: &Path<'_>,
    view: &mut AliasedView,
) -> Result<(Vec<Value>, Vec<Value>), PatchError> {
    let mut replace = false;
    let mut plain = Vec::with_capacity(patch.len());
    for item in patch {
        match directive(&item).map(|d| (d.as_str(), d)) {
            None => plain.push(item),
            Some((Some("delete"), _)) => {
                let wanted = merge_key(&item, key, path)?;
                while let Some(i) = position(&original, key, wanted) {
                    original.remove(i);
                    view.remove(i);
                }
            }
            Some((Some("replace"), _)) => replace = true,
            Some((_, d)) => {
                return Err(PatchError::BadPatchDirective {
                    path: path.to_string(),
                    value: d.clone(),
                })
            }
        }
    }
    if replace {
        // The list is now a new slice in Go: later appends no longer touch the caller's view.
        view.detached = true;
        return Ok((
            plain.into_iter().filter_map(clean_new).collect(),
            Vec::new(),
        ));
    }
    Ok((original, plain))
}

/// Merges each plain patch element into the original element with the same key, or appends it.
fn merge_elements(
    mut original: Vec<Value>,
    patch: &[Value],
    key: &'static str,
    elem: Schema,
    path: &Path<'_>,
    view: &mut AliasedView,
) -> Result<Vec<Value>, PatchError> {
    for item in patch {
        let wanted = merge_key(item, key, path)?;
        match position(&original, key, wanted) {
            Some(i) => {
                let current = as_map(std::mem::take(&mut original[i]));
                let element_path = path.element(key, wanted);
                let merged = merge_map(current, as_map(item.clone()), elem, &element_path)?;
                original[i] = Value::Object(merged);
            }
            None => {
                // Plain elements carry no `$patch`, so cleaning always keeps them.
                let new = clean_new(item.clone()).unwrap_or_default();
                view.push(&new);
                original.push(new);
            }
        }
    }
    Ok(original)
}

/// The merge key's value of a list element, which every patch element must carry.
pub(super) fn merge_key<'v>(
    item: &'v Value,
    key: &'static str,
    path: &Path<'_>,
) -> Result<&'v Value, PatchError> {
    item.get(key).ok_or_else(|| PatchError::MissingMergeKey {
        path: path.to_string(),
        key,
        element: item.clone(),
    })
}

/// Index of the first element whose merge key equals `wanted`.
fn position(list: &[Value], key: &str, wanted: &Value) -> Option<usize> {
    list.iter()
        .position(|o| o.get(key).is_some_and(|k| value::eq(k, wanted)))
}

/// The `$patch` value of a list element, if it has one.
pub(super) fn directive(item: &Value) -> Option<&Value> {
    item.as_object().and_then(|m| m.get(PATCH))
}

fn as_map(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

/// A merging scalar list holds scalars of one JSON type (apimachinery's `sliceElementType`).
fn check_scalars<'v>(
    mut items: impl Iterator<Item = &'v Value>,
    path: &Path<'_>,
) -> Result<(), PatchError> {
    let kind = |v: &Value| match v {
        Value::Null => 0,
        Value::Bool(_) => 1,
        Value::Number(_) => 2,
        Value::String(_) => 3,
        Value::Array(_) | Value::Object(_) => 4,
    };
    let first = items.next().map_or(0, kind);
    if first == 4 || items.any(|v| kind(v) != first) {
        return Err(PatchError::MixedListElements {
            path: path.to_string(),
        });
    }
    Ok(())
}
