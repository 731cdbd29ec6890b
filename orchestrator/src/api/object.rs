//! Stored objects are the serialized k8s-openapi value without `metadata.resourceVersion`
//! (etcd3-style: the revision is the key's mod_revision). On the way out it is spliced into
//! the bytes, so a list of 10k objects is served without decoding each one.

use serde_json::Value;

/// The offset just after the top-level `"metadata":{`, found by a scan that skips strings and
/// nested values (stored bytes are always our own compact serde_json output).
fn metadata_open(bytes: &[u8]) -> Option<usize> {
    const KEY: &[u8] = b"\"metadata\":{";
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            i += 1;
            continue;
        }
        match b {
            b'"' => {
                if depth == 1 && bytes[i..].starts_with(KEY) {
                    return Some(i + KEY.len());
                }
                in_string = true;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    None
}

/// The stored bytes with `metadata.resourceVersion` set to `rev`.
pub fn with_rv(bytes: &[u8], rev: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 32);
    match metadata_open(bytes) {
        Some(at) => {
            out.extend_from_slice(&bytes[..at]);
            out.extend_from_slice(b"\"resourceVersion\":\"");
            out.extend_from_slice(rev.to_string().as_bytes());
            out.push(b'"');
            if bytes.get(at) != Some(&b'}') {
                out.push(b',');
            }
            out.extend_from_slice(&bytes[at..]);
        }
        // Not our format (never written by this server): serve as stored.
        None => out.extend_from_slice(bytes),
    }
    out
}

/// The stored object as a JSON value carrying its resourceVersion (the input of a patch).
pub fn value_with_rv(bytes: &[u8], rev: i64) -> Result<Value, serde_json::Error> {
    let mut v: Value = serde_json::from_slice(bytes)?;
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("resourceVersion".into(), Value::String(rev.to_string()));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splices_top_level_metadata_only() {
        let cases: &[(&str, &str)] = &[
            (
                r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"a"}}"#,
                r#"{"apiVersion":"v1","kind":"Pod","metadata":{"resourceVersion":"7","name":"a"}}"#,
            ),
            (
                r#"{"data":{"x":"\"metadata\":{"},"metadata":{}}"#,
                r#"{"data":{"x":"\"metadata\":{"},"metadata":{"resourceVersion":"7"}}"#,
            ),
            (
                r#"{"endpoints":[{"metadata":{"a":1}}],"kind":"X","metadata":{"name":"b"}}"#,
                r#"{"endpoints":[{"metadata":{"a":1}}],"kind":"X","metadata":{"resourceVersion":"7","name":"b"}}"#,
            ),
        ];
        for (input, want) in cases {
            let got = String::from_utf8(with_rv(input.as_bytes(), 7)).unwrap();
            assert_eq!(&got, want);
            let v: Value = serde_json::from_str(&got).unwrap();
            assert_eq!(v["metadata"]["resourceVersion"], "7");
        }
    }
}
