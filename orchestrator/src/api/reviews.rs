//! The access reviews and who-am-I (authorization.k8s.io/v1 SelfSubjectAccessReview,
//! SubjectAccessReview, LocalSubjectAccessReview, SelfSubjectRulesReview;
//! authentication.k8s.io/v1 SelfSubjectReview), answered from the same RBAC decision every
//! request gets (`server/authz`): `kubectl auth can-i`, `kubectl auth can-i --list` and
//! `kubectl auth whoami` read them.
//!
//! RBAC's escalation check on writes of roles and bindings is `escalation.rs`.

use std::sync::Arc;

use http::{Response, StatusCode};
use k8s_openapi::api::{
    authorization::v1::{NonResourceAttributes, ResourceAttributes},
    rbac::v1::PolicyRule,
};
use serde_json::{json, Value};

use super::{error::ApiError, registry::CreateOnly, tokens, value_response, Api, Body};
use crate::server::{
    auth::User,
    authz::{Attributes, Authorizer, Decision},
};

fn attrs_of(
    res: Option<&ResourceAttributes>,
    non: Option<&NonResourceAttributes>,
) -> Result<Attributes, ApiError> {
    match (res, non) {
        (Some(r), None) => Ok(Attributes {
            verb: r.verb.clone().unwrap_or_default(),
            resource_request: true,
            api_group: r.group.clone().unwrap_or_default(),
            api_version: r.version.clone().unwrap_or_default(),
            namespace: r.namespace.clone().unwrap_or_default(),
            resource: r.resource.clone().unwrap_or_default(),
            subresource: r.subresource.clone().unwrap_or_default(),
            name: r.name.clone().unwrap_or_default(),
            path: String::new(),
        }),
        (None, Some(n)) => Ok(Attributes {
            verb: n.verb.clone().unwrap_or_default(),
            path: n.path.clone().unwrap_or_default(),
            ..Default::default()
        }),
        (Some(_), Some(_)) => Err(invalid_spec(
            "cannot specify both resourceAttributes and nonResourceAttributes",
        )),
        (None, None) => Err(invalid_spec(
            "exactly one of nonResourceAttributes or resourceAttributes must be specified",
        )),
    }
}

fn invalid_spec(why: &str) -> ApiError {
    ApiError::Invalid {
        kind: "SubjectAccessReview.authorization.k8s.io".into(),
        name: String::new(),
        causes: vec![super::error::Cause {
            reason: "FieldValueRequired",
            field: "spec.resourceAttributes".into(),
            message: why.into(),
        }],
    }
}

fn status_of(d: &Decision) -> Value {
    match d {
        Decision::Allow => json!({"allowed": true, "reason": "RBAC: allowed"}),
        Decision::Deny(reason) if reason.is_empty() => json!({"allowed": false}),
        Decision::Deny(reason) => json!({"allowed": false, "reason": reason}),
    }
}

fn rule_json(r: &PolicyRule) -> (Option<Value>, Option<Value>) {
    match r.non_resource_urls.as_ref().filter(|u| !u.is_empty()) {
        Some(urls) => (
            None,
            Some(json!({"verbs": r.verbs, "nonResourceURLs": urls})),
        ),
        None => {
            let mut v =
                json!({"verbs": r.verbs, "apiGroups": r.api_groups, "resources": r.resources});
            if let Some(n) = r.resource_names.as_ref().filter(|n| !n.is_empty()) {
                v["resourceNames"] = json!(n);
            }
            (Some(v), None)
        }
    }
}

impl Api {
    fn authz(&self) -> Result<&Arc<Authorizer>, ApiError> {
        self.authz.as_ref().ok_or(ApiError::UnknownPath)
    }

    /// A create of one of `CREATE_ONLY`.
    pub(crate) async fn review(
        &self,
        c: &CreateOnly,
        ns: Option<&str>,
        body: &[u8],
        user: Option<&User>,
    ) -> Result<Response<Body>, ApiError> {
        if c.plural == "tokenreviews" {
            return self.token_review(body).await;
        }
        let me = user.cloned().unwrap_or_default();
        let mut v = super::verbs::parse_json(body)?;
        if !v.is_object() {
            return Err(ApiError::BadRequest(format!(
                "{} must be a JSON object",
                c.kind
            )));
        }
        let api_version = format!("{}/v1", c.group);
        v["apiVersion"] = json!(api_version);
        v["kind"] = json!(c.kind);
        v.as_object_mut().map(|m| m.remove("status"));
        if v["metadata"].is_null() {
            v["metadata"] = json!({"creationTimestamp": null});
        }
        let spec = v["spec"].clone();
        let status = match c.plural {
            "selfsubjectreviews" => {
                let mut ui = json!({"username": me.name, "groups": me.groups});
                if !me.uid.is_empty() {
                    ui["uid"] = json!(me.uid);
                }
                if !me.extra.is_empty() {
                    ui["extra"] = json!(me.extra);
                }
                json!({"userInfo": ui})
            }
            "selfsubjectaccessreviews" | "subjectaccessreviews" | "localsubjectaccessreviews" => {
                let res: Option<ResourceAttributes> =
                    tokens::decode_value(&spec["resourceAttributes"], c.kind)?;
                let non: Option<NonResourceAttributes> =
                    tokens::decode_value(&spec["nonResourceAttributes"], c.kind)?;
                let mut a = attrs_of(res.as_ref(), non.as_ref())?;
                let subject = if c.plural == "selfsubjectaccessreviews" {
                    me
                } else {
                    let groups: Vec<String> =
                        tokens::decode_value::<Option<Vec<String>>>(&spec["groups"], c.kind)?
                            .unwrap_or_default();
                    let subject = User {
                        name: spec["user"].as_str().unwrap_or_default().to_string(),
                        uid: spec["uid"].as_str().unwrap_or_default().to_string(),
                        groups,
                        extra: tokens::decode_value::<Option<_>>(&spec["extra"], c.kind)?
                            .unwrap_or_default(),
                    };
                    if subject.name.is_empty() && subject.groups.is_empty() {
                        return Err(invalid_spec(
                            "at least one of user or group must be specified",
                        ));
                    }
                    subject
                };
                if c.plural == "localsubjectaccessreviews" {
                    let want = ns.unwrap_or_default();
                    if a.namespace.is_empty() {
                        a.namespace = want.to_string();
                    } else if a.namespace != want {
                        return Err(invalid_spec(
                            "spec.resourceAttributes.namespace must match metadata.namespace",
                        ));
                    }
                }
                status_of(&self.authz()?.authorize(&subject, &a))
            }
            "selfsubjectrulesreviews" => {
                let rns = spec["namespace"].as_str().unwrap_or_default();
                let mut resource = Vec::new();
                let mut non = Vec::new();
                for r in self.authz()?.policy().rules_for(&me, rns) {
                    let (a, b) = rule_json(&r);
                    resource.extend(a);
                    non.extend(b);
                }
                json!({"resourceRules": resource, "nonResourceRules": non, "incomplete": false})
            }
            _ => return Err(ApiError::UnknownPath),
        };
        v["status"] = status;
        Ok(value_response(StatusCode::CREATED, &v))
    }
}
