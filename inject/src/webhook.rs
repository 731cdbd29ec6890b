//! The injector's admission webhook: an AdmissionReview v1 for a Pod CREATE in, the same
//! review out with `allowed: true` and, when the pod or its namespace asks for it
//! (`meshwork.io/inject: enabled`), a JSON Patch that adds the proxy (`inject_pod`).
//!
//! Anything it cannot read is answered with HTTP 400 and a message, and a namespace it cannot
//! look up with HTTP 503: the API server then applies the configuration's failurePolicy
//! instead of admitting a pod that should have been meshed.

use serde_json::{json, Value};

use crate::{inject_pod, wants_injection, Config};

/// Why a review got no answer: HTTP status and message.
#[derive(Debug)]
pub struct Refusal {
    pub status: u16,
    pub message: String,
}

fn bad(message: impl Into<String>) -> Refusal {
    Refusal {
        status: 400,
        message: message.into(),
    }
}

/// Reads an AdmissionReview and says which namespace's metadata the answer needs (None: it
/// can be answered without).
pub fn namespace_needed(review: &Value) -> Option<String> {
    let req = &review["request"];
    if req["kind"]["kind"] != "Pod" || req["operation"] != "CREATE" {
        return None;
    }
    // The namespace's annotations matter for what the pod leaves unsaid: whether it is
    // meshed and, if it is, its proxy's settings.
    let ann = &req["object"]["metadata"]["annotations"];
    let said = |k: &str| ann[k].is_string();
    if said(crate::INJECT)
        && (ann[crate::INJECT] != "enabled"
            || (said(crate::INBOUND_POLICY) && said(meshwork_destination_api::OPAQUE_PORTS)))
    {
        return None;
    }
    req["namespace"].as_str().map(str::to_string)
}

/// The answer to `review`; `ns_meta` is the pod's namespace's metadata when
/// `namespace_needed` asked for it.
pub fn review(review: &Value, ns_meta: Option<&Value>, cfg: &Config) -> Result<Value, Refusal> {
    if review["apiVersion"] != "admission.k8s.io/v1" || review["kind"] != "AdmissionReview" {
        return Err(bad("expected an admission.k8s.io/v1 AdmissionReview"));
    }
    let req = &review["request"];
    let uid = req["uid"]
        .as_str()
        .ok_or_else(|| bad("request.uid is missing"))?;
    let mut response = json!({"uid": uid, "allowed": true});
    let pod = &req["object"];
    if req["kind"]["kind"] == "Pod" && req["operation"] == "CREATE" {
        if !pod["spec"].is_object() {
            return Err(bad("request.object is not a pod"));
        }
        let (mut meta, mut spec) = (pod["metadata"].clone(), pod["spec"].clone());
        if meta.is_null() {
            meta = json!({});
        }
        let inject = wants_injection(&meta, &spec, ns_meta)
            && match inject_pod(&mut meta, &mut spec, ns_meta, cfg) {
                Ok(changed) => changed,
                // Denied with the reason (kubectl prints it), not admitted unmeshed.
                Err(e) => {
                    response["allowed"] = json!(false);
                    response["status"] = json!({"code": 400, "message": e.to_string()});
                    false
                }
            };
        if inject {
            let patch = json!([
                {"op": "add", "path": "/metadata", "value": meta},
                {"op": "replace", "path": "/spec", "value": spec},
            ]);
            use base64::Engine;
            response["patchType"] = json!("JSONPatch");
            response["patch"] =
                json!(base64::engine::general_purpose::STANDARD.encode(patch.to_string()));
        }
    }
    Ok(
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use base64::Engine;

    use super::*;

    fn pod_review(ann: Value) -> Value {
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
            "uid": "u1", "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "operation": "CREATE", "namespace": "app",
            "object": {"metadata": {"name": "p", "annotations": ann},
                       "spec": {"containers": [{"name": "c", "image": "i"}]}}}})
    }

    #[test]
    fn patches_an_opted_in_pod_and_answers_the_rest_unchanged() {
        let cfg = Config::default();
        let all = json!({crate::INJECT: "enabled", crate::INBOUND_POLICY: "permissive",
                         meshwork_destination_api::OPAQUE_PORTS: "5432"});
        assert_eq!(namespace_needed(&pod_review(all)), None);
        // Opted in, but the namespace may still set the proxy's policy.
        let r = pod_review(json!({crate::INJECT: "enabled"}));
        assert_eq!(namespace_needed(&r).as_deref(), Some("app"));
        let a = review(&r, None, &cfg).unwrap();
        assert_eq!(a["response"]["uid"], "u1");
        assert_eq!(a["response"]["allowed"], true);
        let patch = base64::engine::general_purpose::STANDARD
            .decode(a["response"]["patch"].as_str().unwrap())
            .unwrap();
        let ops: Value = serde_json::from_slice(&patch).unwrap();
        assert_eq!(
            ops[1]["value"]["initContainers"][0]["name"],
            crate::PROXY_CONTAINER
        );
        // No annotation: the namespace decides.
        let r = pod_review(json!({}));
        assert_eq!(namespace_needed(&r).as_deref(), Some("app"));
        let off = review(&r, Some(&json!({})), &cfg).unwrap();
        assert!(off["response"]["patch"].is_null());
        let on = json!({"annotations": {crate::INJECT: "enabled"}});
        assert!(review(&r, Some(&on), &cfg).unwrap()["response"]["patch"].is_string());
    }

    #[test]
    fn a_bad_policy_annotation_denies_the_pod_with_the_reason() {
        let cfg = Config::default();
        let r = pod_review(json!({crate::INJECT: "enabled"}));
        let ns = json!({"annotations": {crate::INBOUND_POLICY: "strictt"}});
        let a = review(&r, Some(&ns), &cfg).unwrap();
        assert_eq!(a["response"]["allowed"], false, "{a}");
        assert!(a["response"]["patch"].is_null());
        let msg = a["response"]["status"]["message"].as_str().unwrap();
        assert!(
            msg.contains(crate::INBOUND_POLICY) && msg.contains("strictt"),
            "{msg}"
        );
        // The same namespace does not stop a pod that is not meshed.
        let off = pod_review(json!({crate::INJECT: "disabled"}));
        assert_eq!(
            review(&off, Some(&ns), &cfg).unwrap()["response"]["allowed"],
            true
        );
    }

    #[test]
    fn garbage_is_refused() {
        let cfg = Config::default();
        assert_eq!(
            review(&json!({"x": 1}), None, &cfg).unwrap_err().status,
            400
        );
        let mut r = pod_review(json!({}));
        r["request"]["uid"] = Value::Null;
        assert!(review(&r, None, &cfg).is_err());
        let mut r = pod_review(json!({}));
        r["request"]["object"] = json!("nope");
        assert!(review(&r, None, &cfg).is_err());
    }
}
