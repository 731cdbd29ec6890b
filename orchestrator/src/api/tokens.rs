//! ServiceAccount tokens in the API, as kube-apiserver serves them: `serviceaccounts/token`
//! (TokenRequest, `pkg/registry/core/serviceaccount/storage/token.go` upstream), `tokenreviews`
//! (TokenReview, `pkg/registry/authentication/tokenreview`) and the service account issuer
//! discovery documents. The key and claims are `server/satoken.rs`'s; authentication, which a
//! TokenReview runs exactly as a request would, is `server/auth.rs`'s.

use std::sync::Arc;

use http::{header, HeaderValue, Response, StatusCode};
use k8s_openapi::{
    api::{
        authentication::v1::{TokenRequest, TokenReview},
        core::v1::{Node, Pod, Secret, ServiceAccount},
    },
    jiff::Timestamp,
};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use super::{
    error::{ApiError, Cause},
    json_response,
    kind::now_seconds,
    value_response,
    verbs::{parse_json, Ctx},
    Api, Body, Target,
};
use crate::server::{
    auth::Authenticator,
    satoken::{Claims, KubeClaims, ObjectRef},
};

const AUTHN_VERSION: &str = "authentication.k8s.io/v1";
/// kube's TokenRequest validation: at least 10 minutes, at most 2^32 seconds.
const MIN_EXPIRATION: i64 = 10 * 60;
const MAX_EXPIRATION: i64 = 1 << 32;
/// The v1 default of spec.expirationSeconds.
const DEFAULT_EXPIRATION: i64 = 3600;

/// A body decoded as kube's decoder would: the k8s-openapi type, with kube's 400 wording.
/// The status is output only and dropped unread (a Go client sends its zero value, which the
/// k8s-openapi type would refuse for a missing required field).
/// A field of a request body (null when absent) as `K`; a 400 naming the kind otherwise.
pub(crate) fn decode_value<K: DeserializeOwned>(v: &Value, kind: &str) -> Result<K, ApiError> {
    serde_json::from_value(v.clone()).map_err(|e| {
        ApiError::BadRequest(format!(
            "{kind} in version \"v1\" cannot be handled as a {kind}: {e}"
        ))
    })
}

fn decode<K: DeserializeOwned>(body: &[u8], kind: &str) -> Result<K, ApiError> {
    let mut v = parse_json(body)?;
    if let Some(m) = v.as_object_mut() {
        m.remove("status");
    }
    let cannot = |why: String| {
        ApiError::BadRequest(format!(
            "{kind} in version \"v1\" cannot be handled as a {kind}: {why}"
        ))
    };
    if !v.is_object() {
        return Err(cannot("the body must be a JSON object".into()));
    }
    for (field, want) in [("apiVersion", AUTHN_VERSION), ("kind", kind)] {
        match v.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s == want || s.is_empty() => {}
            Some(other) => {
                return Err(ApiError::BadRequest(format!(
                    "the API version in the data ({}, kind {}) does not match the expected API version ({AUTHN_VERSION}, kind {kind})",
                    v.get("apiVersion").and_then(Value::as_str).unwrap_or_default(),
                    if field == "kind" { other.to_string() } else { kind.to_string() },
                )))
            }
        }
    }
    super::kind::deserialize_at_path(&v, cannot)
}

/// An Invalid TokenRequest, named "" as kube names it (its validation runs before any name).
fn invalid(name: &str, field: &str, message: String) -> ApiError {
    ApiError::Invalid {
        kind: "TokenRequest.authentication.k8s.io".into(),
        name: name.into(),
        causes: vec![Cause {
            reason: "FieldValueInvalid",
            field: field.into(),
            message,
        }],
    }
}

fn with_warnings(mut r: Response<Body>, warnings: &[String]) -> Response<Body> {
    for w in warnings {
        if let Ok(h) = HeaderValue::from_str(&format!("299 - \"{}\"", w.replace('"', "\\\""))) {
            r.headers_mut().append(header::WARNING, h);
        }
    }
    r
}

impl Api {
    fn authn(&self) -> Result<&Arc<Authenticator>, ApiError> {
        self.authn.as_ref().ok_or(ApiError::UnknownPath)
    }

    /// A stored core/v1 object, decoded; 404 in kube's words when missing.
    pub(crate) async fn core_object<K: DeserializeOwned>(
        &self,
        plural: &str,
        ns: Option<&str>,
        name: &str,
    ) -> Result<K, ApiError> {
        let kind = self
            .registry
            .find("", "v1", plural)
            .ok_or(ApiError::UnknownPath)?;
        let t = Target {
            kind,
            ns: ns.map(str::to_string),
            name: Some(name.to_string()),
            sub: None,
            user: None,
        };
        let cur = self.current(&t).await?;
        serde_json::from_slice(&cur.value).map_err(|e| ApiError::Internal(e.to_string()))
    }

    /// A core/v1 object as stored, or NotFound.
    pub(crate) async fn core_json(
        &self,
        plural: &str,
        ns: Option<&str>,
        name: &str,
    ) -> Result<serde_json::Value, ApiError> {
        self.core_object(plural, ns, name).await
    }

    /// `GET /.well-known/openid-configuration`.
    pub(crate) fn openid_configuration(&self) -> Result<Response<Body>, ApiError> {
        Ok(value_response(
            StatusCode::OK,
            &self.authn()?.signer().openid_configuration(),
        ))
    }

    /// `GET /openid/v1/jwks`, with kube's media type for a key set.
    pub(crate) fn jwks(&self) -> Result<Response<Body>, ApiError> {
        let mut r = value_response(StatusCode::OK, &self.authn()?.signer().jwks());
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/jwk-set+json"),
        );
        Ok(r)
    }

    /// `POST .../serviceaccounts/<name>/token`: a token for the ServiceAccount, for the asked
    /// audiences and time, optionally bound to a Pod, Secret or Node in kube's way (the token
    /// dies with the object).
    pub(crate) async fn token_request(&self, ctx: Ctx) -> Result<Response<Body>, ApiError> {
        let authn = self.authn()?;
        let t = &ctx.target;
        let ns = t.ns.clone().unwrap_or_default();
        let name = t.name().to_string();
        let req: TokenRequest = decode(&ctx.body, "TokenRequest")?;
        // kube's NodeRestriction admission: a node asks for tokens only for pods it runs.
        let node_user = t
            .user
            .as_deref()
            .filter(|u| u.groups.iter().any(|g| g == "system:nodes"))
            .filter(|u| !u.groups.iter().any(|g| g == crate::server::authz::MASTERS))
            .and_then(|u| u.name.strip_prefix("system:node:"))
            .map(str::to_string);
        let node_denied = |why: &str| ApiError::Denied {
            resource: "serviceaccounts".into(),
            name: name.clone(),
            why: why.into(),
        };
        if node_user.is_some()
            && req
                .spec
                .bound_object_ref
                .as_ref()
                .is_none_or(|r| r.kind.as_deref() != Some("Pod"))
        {
            return Err(node_denied("node requested token not bound to a pod"));
        }
        // Name and namespace in the body must match the URL if given.
        if let Some(n) = req
            .metadata
            .name
            .as_deref()
            .filter(|n| !n.is_empty() && *n != name)
        {
            return Err(invalid(
                &name,
                "metadata.name",
                format!("Invalid value: \"{n}\": must match the service account name if specified"),
            ));
        }
        if let Some(n) = req
            .metadata
            .namespace
            .as_deref()
            .filter(|n| !n.is_empty() && *n != ns)
        {
            return Err(invalid(
                &name,
                "metadata.namespace",
                format!(
                    "Invalid value: \"{n}\": must match the service account namespace if specified"
                ),
            ));
        }
        let sa: ServiceAccount = self
            .core_object("serviceaccounts", Some(&ns), &name)
            .await?;
        let sa_uid = sa.metadata.uid.clone().unwrap_or_default();
        let mut spec = req.spec;
        if spec.audiences.is_empty() {
            spec.audiences = authn.audiences().to_vec();
        }
        let mut exp = spec.expiration_seconds.unwrap_or(DEFAULT_EXPIRATION);
        if exp < MIN_EXPIRATION {
            return Err(invalid(
                "",
                "spec.expirationSeconds",
                format!("Invalid value: {exp}: may not specify a duration less than 10 minutes"),
            ));
        }
        if exp > MAX_EXPIRATION {
            return Err(invalid(
                "",
                "spec.expirationSeconds",
                format!(
                    "Invalid value: {exp}: may not specify a duration larger than 2^32 seconds"
                ),
            ));
        }
        let mut kube = KubeClaims {
            namespace: ns.clone(),
            serviceaccount: ObjectRef {
                name: name.clone(),
                uid: sa_uid.clone(),
            },
            ..Default::default()
        };
        if let Some(r) = &spec.bound_object_ref {
            let kind = r.kind.clone().unwrap_or_default();
            let api_version = r.api_version.clone().unwrap_or_default();
            let (group, version) = api_version.split_once('/').unwrap_or(("", &api_version));
            let obj = r.name.clone().unwrap_or_default();
            if group.is_empty()
                && matches!(kind.as_str(), "Pod" | "Secret" | "Node")
                && obj.is_empty()
            {
                // kube's store refuses a get without a name.
                return Err(ApiError::BadRequest("Name parameter required.".into()));
            }
            let uid = match (group, kind.as_str()) {
                ("", "Pod") => {
                    let pod: Pod = self.core_object("pods", Some(&ns), &obj).await?;
                    let spec = pod.spec.unwrap_or_default();
                    if node_user
                        .as_ref()
                        .is_some_and(|n| spec.node_name.as_ref() != Some(n))
                    {
                        return Err(node_denied(
                            "node requested token bound to a pod scheduled on a different node",
                        ));
                    }
                    // kube's ServiceAccount admission sets "default" on pods naming none.
                    let pod_sa = spec
                        .service_account_name
                        .filter(|s| !s.is_empty())
                        .unwrap_or_else(|| "default".into());
                    if pod_sa != name {
                        return Err(ApiError::BadRequest(format!(
                            "cannot bind token for serviceaccount \"{name}\" to pod running with different serviceaccount name."
                        )));
                    }
                    let uid = pod.metadata.uid.unwrap_or_default();
                    kube.pod = Some(ObjectRef {
                        name: obj.clone(),
                        uid: uid.clone(),
                    });
                    // The pod's node goes in as information (kube's ServiceAccountTokenPodNodeInfo);
                    // a node not (yet) registered is named without a uid.
                    if let Some(node) = spec.node_name.filter(|n| !n.is_empty()) {
                        let node_uid = match self.core_object::<Node>("nodes", None, &node).await {
                            Ok(n) => n.metadata.uid.unwrap_or_default(),
                            Err(ApiError::NotFound { .. }) => String::new(),
                            Err(e) => return Err(e),
                        };
                        kube.node = Some(ObjectRef {
                            name: node,
                            uid: node_uid,
                        });
                    }
                    uid
                }
                ("", "Secret") => {
                    let secret: Secret = self.core_object("secrets", Some(&ns), &obj).await?;
                    let uid = secret.metadata.uid.unwrap_or_default();
                    kube.secret = Some(ObjectRef {
                        name: obj.clone(),
                        uid: uid.clone(),
                    });
                    uid
                }
                ("", "Node") => {
                    let node: Node = self.core_object("nodes", None, &obj).await?;
                    let uid = node.metadata.uid.unwrap_or_default();
                    kube.node = Some(ObjectRef {
                        name: obj.clone(),
                        uid: uid.clone(),
                    });
                    uid
                }
                _ => {
                    return Err(ApiError::BadRequest(format!(
                        "cannot bind token to object of type {group}/{version}, Kind={kind}"
                    )))
                }
            };
            if let Some(want) = r.uid.as_deref().filter(|u| !u.is_empty() && *u != uid) {
                return Err(ApiError::ConflictMessage(format!(
                    "Operation cannot be fulfilled on {kind} \"{obj}\": the UID in the bound object reference ({want}) does not match the UID in record. The object might have been deleted and then recreated"
                )));
            }
        }
        let mut warnings = Vec::new();
        if let Some(max) = authn.max_expiration() {
            let max = i64::try_from(max.as_secs()).unwrap_or(i64::MAX);
            if exp > max {
                warnings.push(format!(
                    "requested expiration of {exp} seconds shortened to {max} seconds"
                ));
                exp = max;
            }
        }
        spec.expiration_seconds = Some(exp);
        let now = now_seconds();
        let iat = now.as_second();
        let claims = Claims {
            iss: authn.signer().issuer().to_string(),
            sub: format!("system:serviceaccount:{ns}:{name}"),
            aud: spec.audiences.clone(),
            exp: Some(iat + exp),
            iat: Some(iat),
            nbf: Some(iat),
            jti: Some(uuid::Uuid::new_v4().to_string()),
            kubernetes: kube,
        };
        let token = authn
            .signer()
            .sign(&claims)
            .map_err(|e| ApiError::Internal(format!("failed to generate token: {e}")))?;
        let expires =
            Timestamp::from_second(iat + exp).map_err(|e| ApiError::Internal(e.to_string()))?;
        let out = json!({
            "kind": "TokenRequest",
            "apiVersion": AUTHN_VERSION,
            "metadata": {
                "name": name,
                "namespace": ns,
                "uid": sa_uid,
                "creationTimestamp": now.to_string(),
            },
            "spec": spec,
            "status": {"token": token, "expirationTimestamp": expires.to_string()},
        });
        Ok(with_warnings(
            json_response(
                StatusCode::CREATED,
                serde_json::to_vec(&out).map_err(|e| ApiError::Internal(e.to_string()))?,
            ),
            &warnings,
        ))
    }

    /// `POST /apis/authentication.k8s.io/v1/tokenreviews`: the token authenticated as a
    /// request's bearer token would be, for spec.audiences (default: the API server's).
    pub(crate) async fn token_review(&self, body: &[u8]) -> Result<Response<Body>, ApiError> {
        let authn = self.authn()?;
        let review: TokenReview = decode(body, "TokenReview")?;
        let token = review.spec.token.clone().unwrap_or_default();
        if token.is_empty() {
            return Err(ApiError::BadRequest(
                "token is required for TokenReview in authentication".into(),
            ));
        }
        let asked = review.spec.audiences.clone().filter(|a| !a.is_empty());
        let status = match authn
            .authenticate(&self.store, &token, asked.as_deref())
            .await
        {
            Ok(a) => {
                let u = a.user;
                let mut user = serde_json::Map::new();
                user.insert("username".into(), u.name.into());
                if !u.uid.is_empty() {
                    user.insert("uid".into(), u.uid.into());
                }
                if !u.groups.is_empty() {
                    user.insert("groups".into(), json!(u.groups));
                }
                if !u.extra.is_empty() {
                    user.insert("extra".into(), json!(u.extra));
                }
                json!({"authenticated": true, "user": user, "audiences": a.audiences})
            }
            // Go leaves `authenticated: false` out; the (empty) user is a struct, so it stays.
            Err(refused) => json!({"user": {}, "error": refused.message()}),
        };
        let mut spec = json!({"token": token});
        if let Some(a) = asked {
            spec["audiences"] = json!(a);
        }
        let out = json!({
            "kind": "TokenReview",
            "apiVersion": AUTHN_VERSION,
            "metadata": {"creationTimestamp": null},
            "spec": spec,
            "status": status,
        });
        Ok(value_response(StatusCode::CREATED, &out))
    }
}
