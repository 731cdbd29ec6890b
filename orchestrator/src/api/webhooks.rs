//! Dynamic admission: the API server calls the webhooks that Mutating- and
//! ValidatingWebhookConfigurations register, as kube-apiserver's `MutatingAdmissionWebhook`
//! and `ValidatingAdmissionWebhook` plugins do (the rules and traps are digested in
//! ARCHITECTURE.md, "Admission webhooks"):
//!
//! - a webhook is called for an operation (CREATE, UPDATE) on a resource its rules name, when
//!   its namespaceSelector takes the object's namespace (a Namespace: its own labels) and its
//!   objectSelector the object's labels;
//! - the call is an `admission.k8s.io/v1` AdmissionReview POSTed over HTTPS, the server
//!   verified against the configuration's `caBundle`, within `timeoutSeconds`;
//! - a mutating webhook may answer a base64 JSON Patch (RFC 6902), applied at once, so the
//!   next webhook sees it; the result is validated again like any write;
//! - a denial becomes the request's error, with the webhook's code (at least 400) and
//!   message; a webhook that cannot be called or answers garbage fails the request under
//!   `failurePolicy: Fail` (500, naming the webhook) and is passed over under `Ignore`.
//!
//! Not done: DELETE and CONNECT operations, `reinvocationPolicy: IfNeeded`, matchConditions,
//! `matchPolicy: Equivalent` across versions (rules match the version asked for). The
//! configurations themselves are never sent to webhooks (kube exempts them too, so a broken
//! webhook can always be removed).

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use base64::Engine;
use http_body_util::{BodyExt, Full, Limited};
use k8s_openapi::{
    api::admissionregistration::v1::{RuleWithOperations, ValidatingWebhook, WebhookClientConfig},
    apimachinery::pkg::apis::meta::v1::LabelSelector,
};
use meshwork_orchestrator_patch::{PatchType, Schema};
use meshwork_orchestrator_store::Store;
use rustls_pki_types::{pem::PemObject, CertificateDer, ServerName};
use serde_json::{json, Value};

use super::{error::ApiError, selector::LabelSelector as Parsed, Api};

pub const GROUP: &str = "admissionregistration.k8s.io";
/// How long the server keeps the registered webhooks before it reads them again (its own
/// writes to them take effect at once; another API server's after this).
const CACHE_TTL: Duration = Duration::from_secs(2);
/// The largest AdmissionReview answer read (kube-apiserver's request limit).
const MAX_RESPONSE: usize = 3 * 1024 * 1024;

/// One registered webhook.
#[derive(Clone, Debug)]
pub(crate) struct Hook {
    pub name: String,
    pub mutating: bool,
    pub client: WebhookClientConfig,
    pub rules: Vec<RuleWithOperations>,
    pub fail_closed: bool,
    pub namespace_selector: Option<LabelSelector>,
    pub object_selector: Option<LabelSelector>,
    pub timeout: Duration,
}

/// The registered webhooks, as last read.
#[derive(Default)]
pub(crate) struct Cache {
    hooks: Mutex<Option<(Instant, Arc<Vec<Hook>>)>>,
}

/// What is being admitted.
pub(crate) struct Request<'a> {
    pub group: &'a str,
    pub version: &'a str,
    pub kind: &'a str,
    pub plural: &'a str,
    pub sub: Option<&'a str>,
    pub ns: Option<&'a str>,
    pub name: &'a str,
    pub op: &'static str,
    pub user: Option<&'a crate::server::auth::User>,
    pub dry_run: bool,
}

fn any_or(list: Option<&Vec<String>>, want: &str) -> bool {
    list.into_iter().flatten().any(|x| x == "*" || x == want)
}

/// Whether `rule` names this request (group, version, resource or `res/sub`, scope).
fn rule_matches(rule: &RuleWithOperations, r: &Request<'_>) -> bool {
    let resource = match r.sub {
        Some(s) => format!("{}/{s}", r.plural),
        None => r.plural.to_string(),
    };
    let res_ok = rule.resources.iter().flatten().any(|x| {
        x == "*/*"
            || *x == resource
            || (x == "*" && r.sub.is_none())
            || (r.sub.is_some() && *x == format!("{}/*", r.plural))
            || (r.sub.is_some() && x.strip_prefix("*/") == r.sub)
    });
    let scope_ok = match rule.scope.as_deref().unwrap_or("*") {
        "Cluster" => r.ns.is_none(),
        "Namespaced" => r.ns.is_some(),
        _ => true,
    };
    any_or(rule.operations.as_ref(), r.op)
        && any_or(rule.api_groups.as_ref(), r.group)
        && any_or(rule.api_versions.as_ref(), r.version)
        && res_ok
        && scope_ok
}

fn selector_matches(sel: Option<&LabelSelector>, labels: &Value) -> bool {
    let Some(sel) = sel else { return true };
    let s = super::rules::apps::label_selector_string(Some(sel));
    if s.is_empty() {
        return true;
    }
    let labels: std::collections::BTreeMap<String, String> =
        serde_json::from_value(labels.clone()).unwrap_or_default();
    Parsed::parse(&s).is_ok_and(|p| p.matches(&labels))
}

fn call_failed(hook: &Hook, why: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(format!("failed calling webhook \"{}\": {why}", hook.name))
}

impl Api {
    /// Forgets the registered webhooks (a configuration was written here).
    pub(crate) fn webhooks_changed(&self) {
        *self
            .webhooks
            .hooks
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
    }

    async fn hooks(&self) -> Result<Arc<Vec<Hook>>, ApiError> {
        if let Some((at, hooks)) = &*self
            .webhooks
            .hooks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
        {
            if at.elapsed() < CACHE_TTL {
                return Ok(hooks.clone());
            }
        }
        let mut out = Vec::new();
        for plural in [
            "mutatingwebhookconfigurations",
            "validatingwebhookconfigurations",
        ] {
            let kind = self
                .registry
                .find(GROUP, "v1", plural)
                .ok_or(ApiError::UnknownPath)?;
            let (items, _) = self
                .store
                .list(&kind.info().prefix(None))
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            let mutating = plural.starts_with("mutating");
            for it in items {
                let c: Value = serde_json::from_slice(&it.value)
                    .map_err(|e| ApiError::Internal(e.to_string()))?;
                // The fields read here are the same in both flavours (a mutating webhook's
                // reinvocationPolicy is not used): one decoding serves both.
                for w in c["webhooks"].as_array().into_iter().flatten() {
                    let w: ValidatingWebhook = serde_json::from_value(w.clone())
                        .map_err(|e| ApiError::Internal(e.to_string()))?;
                    out.push(Hook {
                        name: w.name,
                        mutating,
                        client: w.client_config,
                        rules: w.rules.unwrap_or_default(),
                        fail_closed: w.failure_policy.as_deref() != Some("Ignore"),
                        namespace_selector: w.namespace_selector,
                        object_selector: w.object_selector,
                        timeout: Duration::from_secs(
                            w.timeout_seconds.unwrap_or(10).clamp(1, 30) as u64
                        ),
                    });
                }
            }
        }
        let hooks = Arc::new(out);
        *self
            .webhooks
            .hooks
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), hooks.clone()));
        Ok(hooks)
    }

    /// Whether any webhook of this flavour is registered for this request's group at all: every
    /// write of the API passes here (kubelets' status updates among them), and without
    /// webhooks it must not pay for decoding the object.
    async fn any_hooks(&self, r: &Request<'_>, mutating: bool) -> Result<bool, ApiError> {
        if r.group == GROUP {
            return Ok(false);
        }
        Ok(self.hooks().await?.iter().any(|h| h.mutating == mutating))
    }

    /// The webhooks of one flavour that this request and object concern.
    async fn matching(
        &self,
        r: &Request<'_>,
        object: &Value,
        mutating: bool,
    ) -> Result<Vec<Hook>, ApiError> {
        let hooks = self.hooks().await?;
        let mut ns_labels: Option<Value> = None;
        let mut out = Vec::new();
        for h in hooks.iter().filter(|h| h.mutating == mutating) {
            if !h.rules.iter().any(|rule| rule_matches(rule, r)) {
                continue;
            }
            if !selector_matches(h.object_selector.as_ref(), &object["metadata"]["labels"]) {
                continue;
            }
            let ns_ok = match (r.ns, r.plural) {
                (_, "namespaces") if r.group.is_empty() => {
                    selector_matches(h.namespace_selector.as_ref(), &object["metadata"]["labels"])
                }
                (Some(ns), _) => {
                    if ns_labels.is_none() {
                        let nsobj = self.core_json("namespaces", None, ns).await;
                        ns_labels =
                            Some(nsobj.map_or(Value::Null, |n| n["metadata"]["labels"].clone()));
                    }
                    selector_matches(
                        h.namespace_selector.as_ref(),
                        ns_labels.as_ref().unwrap_or(&Value::Null),
                    )
                }
                (None, _) => true,
            };
            if ns_ok {
                out.push(h.clone());
            }
        }
        Ok(out)
    }

    /// Runs the mutating webhooks over `object`; the object they leave (None: none changed
    /// it).
    pub(crate) async fn mutate(
        &self,
        r: &Request<'_>,
        object: &[u8],
        old: Option<&[u8]>,
    ) -> Result<Option<Value>, ApiError> {
        if !self.any_hooks(r, true).await? {
            return Ok(None);
        }
        let mut obj: Value =
            serde_json::from_slice(object).map_err(|e| ApiError::Internal(e.to_string()))?;
        let hooks = self.matching(r, &obj, true).await?;
        if hooks.is_empty() {
            return Ok(None);
        }
        let old: Option<Value> = old.and_then(|o| serde_json::from_slice(o).ok());
        let mut changed = false;
        for h in &hooks {
            match self.call(h, r, &obj, old.as_ref()).await {
                Ok(Some(patched)) => {
                    obj = patched;
                    changed = true;
                }
                Ok(None) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(changed.then_some(obj))
    }

    /// Runs the validating webhooks over the object to be written.
    pub(crate) async fn validate_webhooks(
        &self,
        r: &Request<'_>,
        object: &[u8],
        old: Option<&[u8]>,
    ) -> Result<(), ApiError> {
        if !self.any_hooks(r, false).await? {
            return Ok(());
        }
        let obj: Value =
            serde_json::from_slice(object).map_err(|e| ApiError::Internal(e.to_string()))?;
        let hooks = self.matching(r, &obj, false).await?;
        let old: Option<Value> = old.and_then(|o| serde_json::from_slice(o).ok());
        // kube calls them in parallel; any denial denies.
        let results =
            futures::future::join_all(hooks.iter().map(|h| self.call(h, r, &obj, old.as_ref())))
                .await;
        for res in results {
            res?;
        }
        Ok(())
    }

    /// One webhook call. Ok(Some(object)): a mutating webhook's patch applied. A failure is
    /// an error under failurePolicy Fail and nothing under Ignore; a denial always an error.
    async fn call(
        &self,
        h: &Hook,
        r: &Request<'_>,
        obj: &Value,
        old: Option<&Value>,
    ) -> Result<Option<Value>, ApiError> {
        let uid = uuid::Uuid::new_v4().to_string();
        let gvk = json!({"group": r.group, "version": r.version, "kind": r.kind});
        let gvr = json!({"group": r.group, "version": r.version, "resource": r.plural});
        let user = r.user.map_or(
            json!({"username": "system:apiserver", "groups": ["system:masters"]}),
            |u| json!({"username": u.name, "uid": u.uid, "groups": u.groups, "extra": u.extra}),
        );
        let mut req = json!({
            "uid": uid, "kind": gvk, "resource": gvr, "requestKind": gvk, "requestResource": gvr,
            "name": r.name, "operation": r.op, "userInfo": user, "object": obj,
            "oldObject": old, "dryRun": r.dry_run,
            "options": {"apiVersion": "meta.k8s.io/v1",
                        "kind": if r.op == "CREATE" { "CreateOptions" } else { "UpdateOptions" }},
        });
        if let Some(ns) = r.ns {
            req["namespace"] = json!(ns);
        }
        if let Some(s) = r.sub {
            req["subResource"] = json!(s);
        }
        let review =
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": req});
        let answer = match tokio::time::timeout(h.timeout, self.post(h, &review)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!(
                "failed to call webhook: context deadline exceeded ({} s)",
                h.timeout.as_secs()
            )),
        };
        let checked = answer.and_then(|v| {
            let resp = &v["response"];
            if v["apiVersion"] != "admission.k8s.io/v1" || v["kind"] != "AdmissionReview" {
                return Err("received invalid webhook response: expected an admission.k8s.io/v1 AdmissionReview".into());
            }
            if resp["uid"] != uid.as_str() {
                return Err(format!(
                    "received invalid webhook response: expected response.uid=\"{uid}\", got \"{}\"",
                    resp["uid"].as_str().unwrap_or_default()
                ));
            }
            match resp["allowed"].as_bool() {
                Some(a) => Ok((a, resp.clone())),
                None => Err("received invalid webhook response: response.allowed is missing".into()),
            }
        });
        let (allowed, resp) = match checked {
            Ok(x) => x,
            Err(why) if h.fail_closed => return Err(call_failed(h, why)),
            Err(why) => {
                tracing::warn!(webhook = %h.name, error = %why, "webhook failed; ignored (failurePolicy Ignore)");
                return Ok(None);
            }
        };
        if !allowed {
            let code = resp["status"]["code"].as_u64().unwrap_or(0).max(400) as u16;
            let msg = resp["status"]["message"].as_str().unwrap_or("");
            let deny = format!("admission webhook \"{}\" denied the request", h.name);
            let message = if msg.is_empty() {
                format!("{deny} without explanation")
            } else {
                format!("{deny}: {msg}")
            };
            return Err(ApiError::Rejected { code, message });
        }
        let Some(patch) = resp["patch"].as_str().filter(|p| !p.is_empty()) else {
            return Ok(None);
        };
        let applied = (|| {
            if !h.mutating {
                return Err("a validating webhook may not patch".to_string());
            }
            if resp["patchType"] != "JSONPatch" {
                return Err(format!("unsupported patchType {}", resp["patchType"]));
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(patch)
                .map_err(|e| format!("patch is not base64: {e}"))?;
            let ops: Value =
                serde_json::from_slice(&bytes).map_err(|e| format!("patch is not JSON: {e}"))?;
            meshwork_orchestrator_patch::apply_value(obj, &ops, PatchType::Json, Schema::UNTYPED)
                .map_err(|e| format!("applying the patch: {e}"))
        })();
        match applied {
            Ok(v) => Ok(Some(v)),
            Err(why) if h.fail_closed => Err(call_failed(
                h,
                format!("received invalid webhook response: {why}"),
            )),
            Err(why) => {
                tracing::warn!(webhook = %h.name, error = %why, "webhook patch failed; ignored (failurePolicy Ignore)");
                Ok(None)
            }
        }
    }

    /// POSTs the review over HTTPS to the webhook; the answer parsed, or why not.
    async fn post(&self, h: &Hook, review: &Value) -> Result<Value, String> {
        let (addr, host, path) = self.resolve(&h.client).await?;
        let url = format!("https://{host}{path}");
        let fail =
            |e: &dyn std::fmt::Display| format!("failed to call webhook: Post \"{url}\": {e}");
        let mut roots = rustls::RootCertStore::empty();
        if let Some(ca) = &h.client.ca_bundle {
            for c in CertificateDer::pem_slice_iter(&ca.0) {
                let c = c.map_err(|e| fail(&format!("caBundle: {e}")))?;
                roots.add(c).map_err(|e| fail(&format!("caBundle: {e}")))?;
            }
        }
        if roots.is_empty() {
            // kube-apiserver would fall back to the system's roots; this server has none to
            // offer, so it says what is missing.
            return Err(fail(
                &"clientConfig.caBundle holds no certificate: the webhook's server cannot be verified",
            ));
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(&e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        // host:port, [v6]:port
        let bare = match host.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(""),
            None => host.rsplit_once(':').map_or(host.as_str(), |(h, _)| h),
        };
        let server_name = ServerName::try_from(bare.to_string()).map_err(|e| fail(&e))?;
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| fail(&e))?;
        let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(server_name, tcp)
            .await
            .map_err(|e| fail(&e))?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| fail(&e))?;
        tokio::spawn(conn);
        let body = serde_json::to_vec(review).map_err(|e| fail(&e))?;
        let req = http::Request::post(&path)
            .header(http::header::HOST, host.as_str())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(bytes::Bytes::from(body)))
            .map_err(|e| fail(&e))?;
        let resp = send.send_request(req).await.map_err(|e| fail(&e))?;
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| fail(&e))?
            .to_bytes();
        if !status.is_success() {
            return Err(format!(
                "received invalid webhook response: HTTP {status}: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            ));
        }
        serde_json::from_slice(&bytes)
            .map_err(|e| format!("received invalid webhook response: {e}"))
    }

    /// Where the webhook is: (address to connect to, host for the URL, TLS and Host, path).
    /// A Service reference goes to one of its ready endpoints (kube-apiserver with aggregator
    /// routing), its certificate checked for `name.namespace.svc`.
    async fn resolve(
        &self,
        c: &WebhookClientConfig,
    ) -> Result<(std::net::SocketAddr, String, String), String> {
        if let Some(url) = &c.url {
            let u: http::Uri = url.parse().map_err(|e| format!("invalid url {url}: {e}"))?;
            let host = u
                .host()
                .ok_or_else(|| format!("invalid url {url}: no host"))?;
            let port = u.port_u16().unwrap_or(443);
            let path = u.path_and_query().map_or("/".into(), |p| p.to_string());
            let addr = tokio::net::lookup_host((host.trim_matches(['[', ']']), port))
                .await
                .map_err(|e| format!("failed to call webhook: resolving {host}: {e}"))?
                .next()
                .ok_or_else(|| format!("failed to call webhook: {host} has no address"))?;
            return Ok((addr, format!("{host}:{port}"), path));
        }
        let s = c
            .service
            .as_ref()
            .ok_or("clientConfig has neither url nor service")?;
        let port = s.port.unwrap_or(443);
        let path = s.path.clone().unwrap_or_else(|| "/".into());
        let host = format!("{}.{}.svc", s.name, s.namespace);
        let svc = self
            .core_json("services", Some(&s.namespace), &s.name)
            .await
            .map_err(|_| {
                format!(
                    "failed to call webhook: service \"{}/{}\" not found",
                    s.namespace, s.name
                )
            })?;
        let sp = svc["spec"]["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["port"] == port)
            .cloned()
            .ok_or_else(|| format!("failed to call webhook: service {host} has no port {port}"))?;
        let slices = self
            .registry
            .find("discovery.k8s.io", "v1", "endpointslices")
            .ok_or("no EndpointSlices")?;
        let (items, _) = self
            .store
            .list(&slices.info().prefix(Some(&s.namespace)))
            .await
            .map_err(|e| e.to_string())?;
        for it in items {
            let Ok(sl) = serde_json::from_slice::<Value>(&it.value) else {
                continue;
            };
            if sl["metadata"]["labels"]["kubernetes.io/service-name"] != s.name.as_str() {
                continue;
            }
            let Some(target) = sl["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["name"] == sp["name"] || (sp["name"].is_null() && p["name"] == ""))
                .and_then(|p| p["port"].as_u64())
            else {
                continue;
            };
            for ep in sl["endpoints"].as_array().into_iter().flatten() {
                if ep["conditions"]["ready"] == false {
                    continue;
                }
                if let Some(ip) = ep["addresses"][0].as_str().and_then(|a| a.parse().ok()) {
                    return Ok((
                        std::net::SocketAddr::new(ip, target as u16),
                        format!("{host}:{port}"),
                        path,
                    ));
                }
            }
        }
        Err(format!(
            "failed to call webhook: service {host} has no ready endpoints"
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;

    fn req<'a>(plural: &'a str, sub: Option<&'a str>, ns: Option<&'a str>) -> Request<'a> {
        Request {
            group: "",
            version: "v1",
            kind: "Pod",
            plural,
            sub,
            ns,
            name: "p",
            op: "CREATE",
            user: None,
            dry_run: false,
        }
    }

    fn rule(v: Value) -> RuleWithOperations {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn rules_match_operation_group_version_resource_and_scope() {
        let pods = rule(
            json!({"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}),
        );
        assert!(rule_matches(&pods, &req("pods", None, Some("ns"))));
        assert!(!rule_matches(
            &pods,
            &req("pods", Some("status"), Some("ns"))
        ));
        assert!(!rule_matches(&pods, &req("services", None, Some("ns"))));
        let mut update = req("pods", None, Some("ns"));
        update.op = "UPDATE";
        assert!(!rule_matches(&pods, &update));
        let all = rule(
            json!({"operations": ["*"], "apiGroups": ["*"], "apiVersions": ["*"], "resources": ["*/*"], "scope": "Cluster"}),
        );
        assert!(!rule_matches(&all, &req("pods", None, Some("ns"))));
        assert!(rule_matches(&all, &req("nodes", Some("status"), None)));
        let subs = rule(
            json!({"operations": ["*"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods/*"]}),
        );
        assert!(rule_matches(
            &subs,
            &req("pods", Some("status"), Some("ns"))
        ));
        assert!(!rule_matches(&subs, &req("pods", None, Some("ns"))));
    }

    #[test]
    fn selectors() {
        let sel: LabelSelector = serde_json::from_value(json!({"matchExpressions": [
            {"key": "meshwork.io/inject", "operator": "In", "values": ["enabled"]}]}))
        .unwrap();
        assert!(selector_matches(
            Some(&sel),
            &json!({"meshwork.io/inject": "enabled"})
        ));
        assert!(!selector_matches(Some(&sel), &json!({"other": "x"})));
        assert!(!selector_matches(Some(&sel), &Value::Null));
        assert!(selector_matches(
            Some(&LabelSelector::default()),
            &Value::Null
        ));
        assert!(selector_matches(None, &Value::Null));
    }
}
