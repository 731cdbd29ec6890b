//! Field validation (Strict/Warn/Ignore) and the name/label rules of apimachinery's
//! `validation` package.

use std::collections::BTreeMap;

use serde_json::Value;

use super::error::Cause;

/// The `fieldValidation` query parameter. kubectl sends Strict by default; the server default
/// is Warn, as in kube-apiserver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FieldValidation {
    Strict,
    #[default]
    Warn,
    Ignore,
}

impl FieldValidation {
    pub fn parse(s: Option<&str>) -> Result<Self, String> {
        match s {
            None | Some("") | Some("Warn") => Ok(Self::Warn),
            Some("Strict") => Ok(Self::Strict),
            Some("Ignore") => Ok(Self::Ignore),
            Some(other) => Err(format!(
                "fieldValidation parameter unsupported: {other}; expected one of Ignore, Warn, Strict"
            )),
        }
    }
}

/// Paths present in `input` but dropped by a decode/encode round trip through the typed object:
/// the fields the type does not know. Nulls are skipped (an explicit null is an absent field).
pub fn unknown_fields(input: &Value, roundtrip: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk(input, roundtrip, "", &mut out);
    out
}

fn walk(input: &Value, known: &Value, path: &str, out: &mut Vec<String>) {
    match (input, known) {
        (Value::Object(i), Value::Object(k)) => {
            for (key, v) in i {
                if v.is_null() {
                    continue;
                }
                let p = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match k.get(key) {
                    Some(kv) => walk(v, kv, &p, out),
                    None => out.push(p),
                }
            }
        }
        (Value::Array(i), Value::Array(k)) => {
            for (n, (iv, kv)) in i.iter().zip(k).enumerate() {
                walk(iv, kv, &format!("{path}[{n}]"), out);
            }
        }
        _ => {}
    }
}

fn is_alnum_lower(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// RFC 1123 label: what namespace names (and most DNS-facing names) must be.
pub fn dns1123_label(s: &str) -> Option<&'static str> {
    let b = s.as_bytes();
    if b.is_empty() || b.len() > 63 {
        return Some("must be no more than 63 characters");
    }
    if !b.iter().all(|&c| is_alnum_lower(c) || c == b'-')
        || !is_alnum_lower(b[0])
        || !is_alnum_lower(b[b.len() - 1])
    {
        return Some("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')");
    }
    None
}

/// A name usable as one path segment (kube's `path.ValidatePathSegmentName`).
pub fn path_segment(s: &str) -> Option<&'static str> {
    match s {
        "." => Some("may not be '.'"),
        ".." => Some("may not be '..'"),
        _ if s.contains('/') => Some("may not contain '/'"),
        _ if s.contains('%') => Some("may not contain '%'"),
        _ => None,
    }
}

/// RFC 1035 label: Service names (they become DNS labels that must not start with a digit).
pub fn dns1035_label(s: &str) -> Option<&'static str> {
    let b = s.as_bytes();
    if b.is_empty() || b.len() > 63 {
        return Some("must be no more than 63 characters");
    }
    if !b.iter().all(|&c| is_alnum_lower(c) || c == b'-')
        || !b[0].is_ascii_lowercase()
        || !is_alnum_lower(b[b.len() - 1])
    {
        return Some("a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')");
    }
    None
}

/// RFC 1123 subdomain: most object names.
pub fn dns1123_subdomain(s: &str) -> Option<&'static str> {
    if s.is_empty() || s.len() > 253 {
        return Some("must be no more than 253 characters");
    }
    if s.split('.').any(|l| dns1123_label(l).is_some()) {
        return Some("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')");
    }
    None
}

/// A qualified name (label key, annotation key): `[prefix/]name`.
fn qualified_name(s: &str) -> Option<&'static str> {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    if let Some(p) = prefix {
        if dns1123_subdomain(p).is_some() {
            return Some("prefix part must be a lowercase RFC 1123 subdomain");
        }
    }
    label_value_chars(name, false)
}

fn label_value_chars(s: &str, allow_empty: bool) -> Option<&'static str> {
    let b = s.as_bytes();
    if b.is_empty() {
        return (!allow_empty).then_some("name part must be non-empty");
    }
    if b.len() > 63 {
        return Some("must be no more than 63 characters");
    }
    let ok = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.');
    if !b.iter().all(|&c| ok(c))
        || !b[0].is_ascii_alphanumeric()
        || !b[b.len() - 1].is_ascii_alphanumeric()
    {
        return Some("must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')");
    }
    None
}

pub fn labels(field: &str, labels: Option<&BTreeMap<String, String>>, causes: &mut Vec<Cause>) {
    for (k, v) in labels.into_iter().flatten() {
        if let Some(why) = qualified_name(k) {
            causes.push(Cause::invalid(field, k, why));
        }
        if let Some(why) = label_value_chars(v, true) {
            causes.push(Cause::invalid(format!("{field}.{k}"), v, why));
        }
    }
}

pub fn annotations(field: &str, ann: Option<&BTreeMap<String, String>>, causes: &mut Vec<Cause>) {
    const MAX: usize = 256 * 1024;
    let mut total = 0;
    for (k, v) in ann.into_iter().flatten() {
        total += k.len() + v.len();
        if let Some(why) = qualified_name(k) {
            causes.push(Cause::invalid(field, k, why));
        }
    }
    if total > MAX {
        causes.push(Cause {
            reason: "FieldValueTooLong",
            field: field.into(),
            message: format!("Too long: must have at most {MAX} bytes"),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_fields_are_found_with_their_paths() {
        let input = json!({"spec": {"replicas": 1, "bogus": 2, "template": {"spec": {
            "containers": [{"name": "a", "imagePullPolicyy": "x"}]}}}, "metadata": {"creationTimestamp": null}});
        let known = json!({"spec": {"replicas": 1, "template": {"spec": {
            "containers": [{"name": "a"}]}}}, "metadata": {}});
        assert_eq!(
            unknown_fields(&input, &known),
            vec![
                "spec.bogus",
                "spec.template.spec.containers[0].imagePullPolicyy"
            ]
        );
    }

    #[test]
    fn names_and_labels() {
        assert!(dns1123_subdomain("web.example-1").is_none());
        assert!(dns1123_subdomain("Web").is_some());
        assert!(dns1123_label("a.b").is_some());
        assert!(dns1035_label("1abc").is_some());
        assert!(dns1035_label("abc-1").is_none());
        let mut causes = Vec::new();
        let l: BTreeMap<String, String> = [
            ("app.kubernetes.io/name".to_string(), "web".to_string()),
            ("bad key".to_string(), "-x".to_string()),
        ]
        .into();
        labels("metadata.labels", Some(&l), &mut causes);
        assert_eq!(causes.len(), 2, "{causes:?}");
    }
}
