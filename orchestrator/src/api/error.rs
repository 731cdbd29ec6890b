//! One error type for every handler; it becomes a `meta.k8s.io/v1` Status in one place
//! (`ApiError::status`), so reason, code and message always agree with kube-apiserver's.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Status, StatusCause, StatusDetails};
use meshwork_orchestrator_store::StoreError;

/// What a request failed with. `resource` is the plural with its group (`deployments.apps`),
/// as kube-apiserver names it in messages.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{resource} \"{name}\" not found")]
    NotFound { resource: String, name: String },
    #[error("{resource} \"{name}\" already exists")]
    AlreadyExists { resource: String, name: String },
    #[error("Operation cannot be fulfilled on {resource} \"{name}\": the object has been modified; please apply your changes to the latest version and try again")]
    Conflict { resource: String, name: String },
    /// Semantic validation (422): `kind`/`name` as in `Deployment.apps "web" is invalid`.
    #[error("{kind} \"{name}\" is invalid: {}", causes.iter().map(|c| format!("{}: {}", c.field, c.message)).collect::<Vec<_>>().join(", "))]
    Invalid {
        kind: String,
        name: String,
        causes: Vec<Cause>,
    },
    /// 409 with a message of its own (a pod already bound, ...).
    #[error("{0}")]
    ConflictMessage(String),
    /// 503: a node the request is proxied to cannot be reached.
    #[error("{0}")]
    ServiceUnavailable(String),
    #[error("{0}")]
    BadRequest(String),
    /// Well-formed but not applicable (a JSON patch test that failed, ...): 422 without causes.
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    NotAcceptable(String),
    #[error("the server could not find the requested resource")]
    UnknownPath,
    #[error("the server does not allow this method on the requested resource")]
    MethodNotAllowed,
    #[error("the body of the request was in an unknown format - accepted media types include: {accepted}")]
    UnsupportedMediaType { accepted: &'static str },
    #[error("{0}")]
    Forbidden(String),
    /// An authorization denial, worded as kube-apiserver's `NewForbidden`: `resource` is the
    /// qualified plural (empty for a non-resource path), `why` says who cannot do what.
    #[error("{}", denied_message(resource, name, why))]
    Denied {
        resource: String,
        name: String,
        why: String,
    },
    #[error("Unauthorized")]
    Unauthorized,
    #[error("the request is too large: limit is {limit} bytes")]
    TooLarge { limit: usize },
    /// Watch from a compacted revision (sent in-stream, never as an HTTP error).
    #[error("too old resource version: {requested} ({oldest})")]
    Expired { requested: i64, oldest: i64 },
    #[error("internal error: {0}")]
    Internal(String),
    /// A denial with a code and message of someone else's (an admission webhook's).
    #[error("{message}")]
    Rejected { code: u16, message: String },
}

fn denied_message(resource: &str, name: &str, why: &str) -> String {
    match (resource, name) {
        ("", _) => format!("forbidden: {why}"),
        (r, "") => format!("{r} is forbidden: {why}"),
        (r, n) => format!("{r} \"{n}\" is forbidden: {why}"),
    }
}

/// One field-level problem of an Invalid object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// `FieldValueInvalid`, `FieldValueRequired`, `FieldValueNotSupported`, ...
    pub reason: &'static str,
    pub field: String,
    pub message: String,
}

impl Cause {
    pub fn invalid(field: impl Into<String>, value: &str, why: &str) -> Self {
        Cause {
            reason: "FieldValueInvalid",
            field: field.into(),
            message: format!("Invalid value: \"{value}\": {why}"),
        }
    }
    pub fn required(field: impl Into<String>) -> Self {
        Cause {
            reason: "FieldValueRequired",
            field: field.into(),
            message: "Required value".into(),
        }
    }
    pub fn unsupported(field: impl Into<String>, value: &str, allowed: &[&str]) -> Self {
        let allowed = allowed
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ");
        Cause {
            reason: "FieldValueNotSupported",
            field: field.into(),
            message: format!("Unsupported value: \"{value}\": supported values: {allowed}"),
        }
    }
}

impl ApiError {
    pub fn code(&self) -> u16 {
        match self {
            ApiError::NotFound { .. } | ApiError::UnknownPath => 404,
            ApiError::AlreadyExists { .. } | ApiError::Conflict { .. } => 409,
            ApiError::Invalid { .. } => 422,
            ApiError::ConflictMessage(_) => 409,
            ApiError::ServiceUnavailable(_) => 503,
            ApiError::BadRequest(_) => 400,
            ApiError::Unprocessable(_) => 422,
            ApiError::NotAcceptable(_) => 406,
            ApiError::MethodNotAllowed => 405,
            ApiError::UnsupportedMediaType { .. } => 415,
            ApiError::Unauthorized => 401,
            ApiError::Forbidden(_) | ApiError::Denied { .. } => 403,
            ApiError::TooLarge { .. } => 413,
            ApiError::Expired { .. } => 410,
            ApiError::Internal(_) => 500,
            ApiError::Rejected { code, .. } => *code,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            ApiError::NotFound { .. } | ApiError::UnknownPath => "NotFound",
            ApiError::AlreadyExists { .. } => "AlreadyExists",
            ApiError::Conflict { .. } => "Conflict",
            ApiError::Invalid { .. } => "Invalid",
            ApiError::ConflictMessage(_) => "Conflict",
            ApiError::ServiceUnavailable(_) => "ServiceUnavailable",
            ApiError::BadRequest(_) => "BadRequest",
            ApiError::Unprocessable(_) => "Invalid",
            ApiError::NotAcceptable(_) => "NotAcceptable",
            ApiError::MethodNotAllowed => "MethodNotAllowed",
            ApiError::UnsupportedMediaType { .. } => "UnsupportedMediaType",
            ApiError::Unauthorized => "Unauthorized",
            ApiError::Forbidden(_) | ApiError::Denied { .. } => "Forbidden",
            ApiError::TooLarge { .. } => "RequestEntityTooLarge",
            ApiError::Expired { .. } => "Expired",
            ApiError::Internal(_) => "InternalError",
            ApiError::Rejected { code, .. } => match code {
                401 => "Unauthorized",
                403 => "Forbidden",
                404 => "NotFound",
                409 => "Conflict",
                422 => "Invalid",
                429 => "TooManyRequests",
                500.. => "InternalError",
                _ => "BadRequest",
            },
        }
    }

    pub fn status(&self) -> Status {
        let details = match self {
            ApiError::NotFound { resource, name }
            | ApiError::AlreadyExists { resource, name }
            | ApiError::Conflict { resource, name } => {
                let (kind, group) = resource.split_once('.').unwrap_or((resource, ""));
                Some(StatusDetails {
                    name: Some(name.clone()),
                    group: (!group.is_empty()).then(|| group.to_string()),
                    kind: Some(kind.to_string()),
                    ..Default::default()
                })
            }
            ApiError::Denied { resource, name, .. } if !resource.is_empty() => {
                let (kind, group) = resource.split_once('.').unwrap_or((resource, ""));
                Some(StatusDetails {
                    name: (!name.is_empty()).then(|| name.clone()),
                    group: (!group.is_empty()).then(|| group.to_string()),
                    kind: Some(kind.to_string()),
                    ..Default::default()
                })
            }
            ApiError::Invalid { kind, name, causes } => {
                let (kind, group) = kind.split_once('.').unwrap_or((kind, ""));
                Some(StatusDetails {
                    name: Some(name.clone()),
                    group: (!group.is_empty()).then(|| group.to_string()),
                    kind: Some(kind.to_string()),
                    causes: Some(
                        causes
                            .iter()
                            .map(|c| StatusCause {
                                field: Some(c.field.clone()),
                                message: Some(c.message.clone()),
                                reason: Some(c.reason.to_string()),
                            })
                            .collect(),
                    ),
                    ..Default::default()
                })
            }
            _ => None,
        };
        Status {
            code: Some(i32::from(self.code())),
            details,
            message: Some(self.to_string()),
            reason: Some(self.reason().to_string()),
            status: Some("Failure".into()),
            ..Default::default()
        }
    }

    pub fn from_store(e: StoreError, resource: &str, name: &str) -> Self {
        match e {
            StoreError::AlreadyExists { .. } => ApiError::AlreadyExists {
                resource: resource.into(),
                name: name.into(),
            },
            StoreError::NotFound { .. } => ApiError::NotFound {
                resource: resource.into(),
                name: name.into(),
            },
            StoreError::Conflict { .. } => ApiError::Conflict {
                resource: resource.into(),
                name: name.into(),
            },
            StoreError::Expired { requested, oldest } => ApiError::Expired { requested, oldest },
            StoreError::Backend(m) => ApiError::Internal(m),
        }
    }
}

/// Serializes a Status with apiVersion/kind (k8s-openapi's Status is not a `Resource` with a
/// fixed kind in lists, so the envelope is written here).
pub fn status_json(status: &Status) -> serde_json::Value {
    let mut v = serde_json::to_value(status).unwrap_or_default();
    if let Some(m) = v.as_object_mut() {
        m.insert("kind".into(), "Status".into());
        m.insert("apiVersion".into(), "v1".into());
        m.entry("metadata").or_insert_with(|| serde_json::json!({}));
    }
    v
}
