//! A first look at a presented token, before the API server is asked about it: the shape of a
//! signed JWT (RFC 7519: three base64url parts, a JSON header naming a signing algorithm, a
//! JSON claims object with `sub` and `exp`). What fails here is garbage and costs no
//! TokenReview; what passes is still only a claim — the TokenReview decides. The claims read
//! here (unverified) only label the audit line of a refusal.

use base64::Engine;
use serde_json::Value;

/// What a token says about itself, unverified.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Peeked {
    pub subject: String,
    pub audiences: Vec<String>,
    pub expires: i64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("not a JWT: {0}")]
    Shape(&'static str),
    #[error("the JWT header is not a JSON object naming a signing algorithm")]
    Header,
    #[error("unsigned JWTs (alg none) are not accepted")]
    Unsigned,
    #[error("the JWT claims are not a JSON object with sub and exp")]
    Claims,
}

/// Longest token looked at: projected ServiceAccount tokens are ~1 KiB.
pub const MAX_LEN: usize = 16 * 1024;

fn part(p: &str) -> Result<Value, TokenError> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(p)
        .map_err(|_| TokenError::Shape("a part is not base64url"))?;
    serde_json::from_slice(&bytes).map_err(|_| TokenError::Shape("a part is not JSON"))
}

pub fn peek(token: &str) -> Result<Peeked, TokenError> {
    if token.len() > MAX_LEN {
        return Err(TokenError::Shape("longer than 16 KiB"));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Shape("not three dot-separated parts"));
    };
    if sig.is_empty() {
        return Err(TokenError::Unsigned);
    }
    let header = part(h)?;
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(TokenError::Header)?;
    if alg.eq_ignore_ascii_case("none") {
        return Err(TokenError::Unsigned);
    }
    let claims = part(c)?;
    let subject = claims
        .get("sub")
        .and_then(Value::as_str)
        .ok_or(TokenError::Claims)?
        .to_string();
    let expires = claims
        .get("exp")
        .and_then(Value::as_i64)
        .ok_or(TokenError::Claims)?;
    let audiences = match claims.get("aud") {
        Some(Value::String(a)) => vec![a.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    };
    Ok(Peeked {
        subject,
        audiences,
        expires,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(v: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
    }

    #[test]
    fn shapes() {
        let ok = format!(
            "{}.{}.c2ln",
            b64(r#"{"alg":"ES256"}"#),
            b64(r#"{"sub":"system:serviceaccount:a:b","exp":5,"aud":["x"]}"#)
        );
        assert_eq!(
            peek(&ok).unwrap(),
            Peeked {
                subject: "system:serviceaccount:a:b".into(),
                audiences: vec!["x".into()],
                expires: 5
            }
        );
        let none = format!(
            "{}.{}.c2ln",
            b64(r#"{"alg":"none"}"#),
            b64(r#"{"sub":"s","exp":5}"#)
        );
        assert_eq!(peek(&none), Err(TokenError::Unsigned));
        let unsigned = format!(
            "{}.{}.",
            b64(r#"{"alg":"ES256"}"#),
            b64(r#"{"sub":"s","exp":5}"#)
        );
        assert_eq!(peek(&unsigned), Err(TokenError::Unsigned));
        assert!(matches!(peek("a.b"), Err(TokenError::Shape(_))));
        assert!(matches!(peek("a.b.c.d"), Err(TokenError::Shape(_))));
        assert!(matches!(peek("!!.b.c"), Err(TokenError::Shape(_))));
        let no_exp = format!(
            "{}.{}.c2ln",
            b64(r#"{"alg":"ES256"}"#),
            b64(r#"{"sub":"s"}"#)
        );
        assert_eq!(peek(&no_exp), Err(TokenError::Claims));
        let no_alg = format!(
            "{}.{}.c2ln",
            b64(r#"{"typ":"JWT"}"#),
            b64(r#"{"sub":"s","exp":1}"#)
        );
        assert_eq!(peek(&no_alg), Err(TokenError::Header));
        assert!(matches!(
            peek(&"a".repeat(MAX_LEN + 1)),
            Err(TokenError::Shape(_))
        ));
    }
}
