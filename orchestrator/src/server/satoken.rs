//! ServiceAccount tokens: the API server's signing key and the JWTs it issues and checks, as
//! kube-apiserver's bound service account tokens (`pkg/serviceaccount/claims.go` upstream):
//! ES256 over a P-256 key kept in `<data>/pki/sa.key` (PKCS#8 PEM, 0600), created on first
//! start and reused after, so tokens survive restarts the way the CA does (`pki.rs`).
//!
//! This module knows keys and claims only; whether the ServiceAccount and the object a token
//! is bound to still exist is checked against the store in `auth.rs`.

use std::path::Path;

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rcgen::{KeyPair, PublicKeyData};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{json, Value};

use super::{write_private, Error};

/// kube-apiserver's `--service-account-issuer` in kubeadm clusters (the in-cluster name of the
/// `kubernetes` Service); also the API server's own audience (`--api-audiences` defaults to it).
pub const DEFAULT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// go-jose's `jwt.DefaultLeeway`, which kube-apiserver allows on exp/nbf/iat and on the
/// deletion time of a bound object.
pub const LEEWAY_SECONDS: i64 = 60;

/// What the API server answers for a token it signed but whose signature does not verify
/// (go-jose's wording, which kube passes on).
pub const BAD_SIGNATURE: &str = "go-jose/go-jose: error in cryptographic primitive";

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// `{name, uid}` of an object a token names.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRef {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
}

/// The private `kubernetes.io` claim.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeClaims {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default)]
    pub serviceaccount: ObjectRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<ObjectRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<ObjectRef>,
    /// The Node of a node-bound token, or the node a bound pod runs on (kube's
    /// ServiceAccountTokenPodNodeInfo, on by default since 1.30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<ObjectRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warnafter: Option<i64>,
}

/// A service account token's claims, named as kube-apiserver writes them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    /// RFC 7519 allows a single string; kube always writes an array.
    #[serde(default, deserialize_with = "one_or_many")]
    pub aud: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    #[serde(rename = "kubernetes.io", default)]
    pub kubernetes: KubeClaims,
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<OneOrMany>::deserialize(d)? {
        None => Vec::new(),
        Some(OneOrMany::One(s)) => vec![s],
        Some(OneOrMany::Many(v)) => v,
    })
}

impl Claims {
    /// go-jose's `Claims.Validate` with its default leeway, in kube-apiserver's words.
    pub fn check_time(&self, now: i64) -> Result<(), &'static str> {
        if self.nbf.is_some_and(|nbf| now + LEEWAY_SECONDS < nbf) {
            return Err("service account token is not valid yet");
        }
        if self.exp.is_some_and(|exp| now - LEEWAY_SECONDS > exp) {
            return Err("service account token has expired");
        }
        if self.iat.is_some_and(|iat| now + LEEWAY_SECONDS < iat) {
            return Err("service account token is issued in the future");
        }
        Ok(())
    }
}

/// What a bearer token is to the service account authenticator.
#[derive(Debug)]
pub enum Verified {
    /// Not a JWT of this issuer: some other authenticator's (kube's `hasCorrectIssuer`).
    NotOurs,
    /// Names this issuer but fails: the reason, worded as kube-apiserver words it.
    Invalid(String),
    /// Signed by this server's key; times, audiences and bound objects are still to check.
    Valid(Box<Claims>),
}

pub struct Signer {
    issuer: String,
    jwks_uri: String,
    kid: String,
    x: String,
    y: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("issuer", &self.issuer)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// kube's `keyIDFromPublicKey`: base64url (no padding) of SHA-256 of the PKIX (DER) public key.
pub fn key_id(spki_der: &[u8]) -> String {
    B64.encode(ring::digest::digest(&ring::digest::SHA256, spki_der))
}

impl Signer {
    /// Loads `<data>/pki/sa.key`, or creates it. `jwks_uri` is where the discovery document
    /// says the key set is (kube: the API server's external URL + `/openid/v1/jwks`).
    pub fn ensure(data: &Path, issuer: &str, jwks_uri: &str) -> Result<Signer, Error> {
        let dir = data.join("pki");
        std::fs::create_dir_all(&dir).map_err(|e| Error::Io(dir.clone(), e))?;
        let path = dir.join("sa.key");
        let pem = match std::fs::read_to_string(&path) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let k =
                    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(Error::Pki)?;
                let pem = k.serialize_pem();
                write_private(&path, pem.as_bytes())?;
                pem
            }
            Err(e) => return Err(Error::Io(path, e)),
        };
        Self::from_pem(&pem, issuer, jwks_uri)
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }

    /// A signer over a PKCS#8 PEM P-256 key.
    pub fn from_pem(pem: &str, issuer: &str, jwks_uri: &str) -> Result<Signer, String> {
        let key = KeyPair::from_pem(pem).map_err(|e| format!("service account key: {e}"))?;
        if key.algorithm() != &rcgen::PKCS_ECDSA_P256_SHA256 {
            return Err("the service account key must be an ECDSA P-256 key (ES256)".into());
        }
        // The raw public key is the uncompressed point 0x04 || x || y.
        let raw = key.public_key_raw();
        if raw.len() != 65 || raw[0] != 4 {
            return Err("the service account public key is not an uncompressed P-256 point".into());
        }
        Ok(Signer {
            issuer: issuer.to_string(),
            jwks_uri: jwks_uri.to_string(),
            kid: key_id(&key.subject_public_key_info()),
            x: B64.encode(&raw[1..33]),
            y: B64.encode(&raw[33..65]),
            encoding: EncodingKey::from_ec_der(key.serialized_der()),
            decoding: DecodingKey::from_ec_der(raw),
        })
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn key_id(&self) -> &str {
        &self.kid
    }

    /// A compact JWS, header `{"alg":"ES256","kid":...}` as kube-apiserver writes it.
    pub fn sign(&self, claims: &Claims) -> Result<String, String> {
        let mut header = Header::new(Algorithm::ES256);
        header.typ = None;
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding).map_err(|e| e.to_string())
    }

    /// Signature and issuer. Times, audiences and bound objects are the caller's (kube checks
    /// them in that order after the signature, with their own messages).
    pub fn verify(&self, token: &str) -> Verified {
        #[derive(Deserialize)]
        struct Iss {
            #[serde(default)]
            iss: Option<String>,
        }
        let mut parts = token.split('.');
        let (Some(_), Some(payload), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Verified::NotOurs;
        };
        // kube's hasCorrectIssuer: read the issuer before any signature check, so tokens of
        // other issuers are left to other authenticators without an error.
        let iss = B64
            .decode(payload.trim_end_matches('='))
            .ok()
            .and_then(|b| serde_json::from_slice::<Iss>(&b).ok())
            .and_then(|c| c.iss);
        if iss.as_deref() != Some(self.issuer.as_str()) {
            return Verified::NotOurs;
        }
        let mut v = Validation::new(Algorithm::ES256);
        v.required_spec_claims.clear();
        v.validate_exp = false;
        v.validate_nbf = false;
        v.validate_aud = false;
        match jsonwebtoken::decode::<Claims>(token, &self.decoding, &v) {
            Ok(d) => Verified::Valid(Box::new(d.claims)),
            Err(e) => {
                use jsonwebtoken::errors::ErrorKind;
                Verified::Invalid(match e.kind() {
                    ErrorKind::Json(_) | ErrorKind::Utf8(_) | ErrorKind::Base64(_) => {
                        format!("service account token claims could not be decoded: {e}")
                    }
                    _ => BAD_SIGNATURE.to_string(),
                })
            }
        }
    }

    /// `GET /.well-known/openid-configuration` (kube's `openIDMetadata`).
    pub fn openid_configuration(&self) -> Value {
        json!({
            "issuer": self.issuer,
            "jwks_uri": self.jwks_uri,
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        })
    }

    /// `GET /openid/v1/jwks`: the one public key, as RFC 7517 EC JWK.
    pub fn jwks(&self) -> Value {
        json!({"keys": [{
            "use": "sig",
            "kty": "EC",
            "kid": self.kid,
            "crv": "P-256",
            "alg": "ES256",
            "x": self.x,
            "y": self.y,
        }]})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(now: i64) -> Claims {
        Claims {
            iss: DEFAULT_ISSUER.into(),
            sub: "system:serviceaccount:default:default".into(),
            aud: vec![DEFAULT_ISSUER.into()],
            exp: Some(now + 3600),
            iat: Some(now),
            nbf: Some(now),
            jti: Some("j".into()),
            kubernetes: KubeClaims {
                namespace: "default".into(),
                serviceaccount: ObjectRef {
                    name: "default".into(),
                    uid: "u".into(),
                },
                ..Default::default()
            },
        }
    }

    #[test]
    fn key_is_created_once_private_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = Signer::ensure(dir.path(), DEFAULT_ISSUER, "https://x/openid/v1/jwks").unwrap();
        let mode = std::fs::metadata(dir.path().join("pki/sa.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = Signer::ensure(dir.path(), DEFAULT_ISSUER, "https://x/openid/v1/jwks").unwrap();
        assert_eq!(a.key_id(), b.key_id());
        let t = a.sign(&claims(1_000)).unwrap();
        assert!(matches!(b.verify(&t), Verified::Valid(c) if *c == claims(1_000)));
    }

    #[test]
    fn header_payload_and_foreign_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let s = Signer::ensure(dir.path(), DEFAULT_ISSUER, "https://x/openid/v1/jwks").unwrap();
        let t = s.sign(&claims(1_000)).unwrap();
        let mut parts = t.split('.');
        let header: Value =
            serde_json::from_slice(&B64.decode(parts.next().unwrap()).unwrap()).unwrap();
        assert_eq!(header, json!({"alg": "ES256", "kid": s.key_id()}));
        let payload: Value =
            serde_json::from_slice(&B64.decode(parts.next().unwrap()).unwrap()).unwrap();
        assert_eq!(payload["kubernetes.io"]["serviceaccount"]["uid"], "u");
        assert!(payload["kubernetes.io"].get("pod").is_none());
        assert!(matches!(s.verify("abc"), Verified::NotOurs));
        assert!(matches!(s.verify("a.b.c"), Verified::NotOurs));
        // Another key, same issuer: ours by name, refused by signature.
        let other = tempfile::tempdir().unwrap();
        let o = Signer::ensure(other.path(), DEFAULT_ISSUER, "").unwrap();
        let forged = o.sign(&claims(1_000)).unwrap();
        assert!(matches!(s.verify(&forged), Verified::Invalid(m) if m == BAD_SIGNATURE));
        // Another issuer: someone else's.
        let mut c = claims(1_000);
        c.iss = "https://elsewhere".into();
        assert!(matches!(s.verify(&s.sign(&c).unwrap()), Verified::NotOurs));
        // A single-string audience reads as one.
        let one: Claims =
            serde_json::from_value(json!({"iss": "i", "sub": "s", "aud": "a"})).unwrap();
        assert_eq!(one.aud, vec!["a"]);
    }

    #[test]
    fn times_with_go_jose_leeway() {
        let c = claims(1_000);
        assert_eq!(c.check_time(1_000), Ok(()));
        assert_eq!(c.check_time(1_000 - 60), Ok(()));
        assert_eq!(
            c.check_time(1_000 - 61),
            Err("service account token is not valid yet")
        );
        assert_eq!(c.check_time(4_600 + 60), Ok(()));
        assert_eq!(
            c.check_time(4_600 + 61),
            Err("service account token has expired")
        );
    }

    #[test]
    fn jwks_key_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let s =
            Signer::ensure(dir.path(), DEFAULT_ISSUER, "https://h:6443/openid/v1/jwks").unwrap();
        let jwks = s.jwks();
        let k = &jwks["keys"][0];
        let dec =
            DecodingKey::from_ec_components(k["x"].as_str().unwrap(), k["y"].as_str().unwrap())
                .unwrap();
        let mut v = Validation::new(Algorithm::ES256);
        v.set_audience(&[DEFAULT_ISSUER]);
        v.validate_exp = false;
        let t = s.sign(&claims(1_000)).unwrap();
        jsonwebtoken::decode::<Value>(&t, &dec, &v).unwrap();
        assert_eq!(
            s.openid_configuration()["jwks_uri"],
            "https://h:6443/openid/v1/jwks"
        );
    }
}
