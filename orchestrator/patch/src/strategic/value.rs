//! Small helpers over JSON values: equality as Go compares decoded JSON, cleaning new values,
//! and error paths.

use std::fmt;

use serde_json::Value;

/// A path for error messages, built as a linked list so the happy path allocates nothing.
pub(super) struct Path<'a> {
    parent: Option<&'a Path<'a>>,
    segment: Segment<'a>,
}

enum Segment<'a> {
    Root,
    Field(&'a str),
    Keyed(&'a str, &'a Value),
}

impl<'a> Path<'a> {
    pub(super) const ROOT: Path<'static> = Path {
        parent: None,
        segment: Segment::Root,
    };

    pub(super) fn child(&'a self, field: &'a str) -> Path<'a> {
        Path {
            parent: Some(self),
            segment: Segment::Field(field),
        }
    }

    /// The element of this list whose merge key `key` is `value`.
    pub(super) fn element(&'a self, key: &'a str, value: &'a Value) -> Path<'a> {
        Path {
            parent: Some(self),
            segment: Segment::Keyed(key, value),
        }
    }
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parent = self.parent.filter(|p| !matches!(p.segment, Segment::Root));
        match (&self.segment, parent) {
            (Segment::Root, _) => f.write_str("<root>"),
            (Segment::Field(name), None) => f.write_str(name),
            (Segment::Field(name), Some(p)) => write!(f, "{p}.{name}"),
            (Segment::Keyed(key, value), None) => write!(f, "[{key}={value}]"),
            (Segment::Keyed(key, value), Some(p)) => write!(f, "{p}[{key}={value}]"),
        }
    }
}

/// Equality of decoded JSON as Go sees it: numbers compare by value, so `80` equals `80.0`.
pub(super) fn eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => x.as_f64() == y.as_f64(),
        },
        _ => a == b,
    }
}

/// A value from the patch that has nothing to merge with: drop null fields (the server ignores
/// unmatched nulls), drop objects carrying `$patch`, and drop other `$` directive keys. `None`
/// means the value itself was a directive and must not be stored.
pub(super) fn clean_new(value: Value) -> Option<Value> {
    match value {
        Value::Object(map) if map.contains_key(super::PATCH) => None,
        Value::Object(map) => {
            let kept = map
                .into_iter()
                .filter(|(key, value)| !key.starts_with('$') && !value.is_null())
                .filter_map(|(key, value)| Some((key, clean_new(value)?)));
            Some(Value::Object(kept.collect()))
        }
        Value::Array(items) => Some(Value::Array(
            items.into_iter().filter_map(clean_new).collect(),
        )),
        scalar => Some(scalar),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn numbers_compare_by_value() {
        assert!(eq(&json!(80), &json!(80.0)));
        assert!(eq(&json!(-1), &json!(-1)));
        assert!(!eq(&json!(80), &json!("80")));
        assert!(!eq(&json!(1.5), &json!(1)));
        assert!(eq(&json!("a"), &json!("a")));
    }

    #[test]
    fn clean_new_drops_nulls_and_directives() {
        let value = json!({
            "a": null,
            "b": {"c": null, "d": 1, "$retainKeys": ["d"]},
            "e": [{"$patch": "delete", "name": "x"}, {"name": "y", "z": null}],
            "f": {"$patch": "replace", "g": 1},
            "$setElementOrder/e": [{"name": "y"}],
        });
        let want = json!({"b": {"d": 1}, "e": [{"name": "y"}]});
        assert_eq!(clean_new(value), Some(want));
        assert_eq!(clean_new(json!({"$patch": "delete"})), None);
        assert_eq!(clean_new(json!([null, 1])), Some(json!([null, 1])));
    }

    #[test]
    fn paths_render_for_errors() {
        let root = Path::ROOT;
        let spec = root.child("spec");
        let containers = spec.child("containers");
        let name = json!("app");
        let app = containers.element("name", &name);
        let env = app.child("env");
        assert_eq!(env.to_string(), r#"spec.containers[name="app"].env"#);
        assert_eq!(root.to_string(), "<root>");
    }
}
