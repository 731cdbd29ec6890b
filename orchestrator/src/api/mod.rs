//! The Kubernetes API: routing, the verbs, list/watch, discovery and openapi, on top of a
//! `Store`. Transport (TLS, authentication) lives in `server/`.

pub mod admission;
pub mod alloc;
mod delete;
mod ensure;
pub mod error;
mod escalation;
pub mod kind;
pub mod kubernetes_service;
pub(crate) mod noderestriction;
mod object;
pub mod openapi;
pub mod pods;
pub mod registry;
mod reviews;
mod rules;
pub mod selector;
mod stream;
pub mod table;
mod tokens;
pub mod validation;
mod verbs;
mod watch;
mod webhooks;

use std::{collections::HashMap, convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited};
use meshwork_orchestrator_store::AnyStore;
use serde_json::Value;

pub use error::ApiError;
use kind::KindOps;
use registry::Registry;

pub type Body = BoxBody<Bytes, Infallible>;

/// The Kubernetes minor this server implements; kubectl's dispatcher picks its binary by it.
pub const KUBE_MINOR: &str = "33";

#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// Largest request body accepted (kube-apiserver: 3 MiB).
    pub max_body: usize,
    /// Idle time after which a watch that asked for bookmarks gets one.
    pub bookmark_every: Duration,
    /// Longest watch when the client gives no timeoutSeconds.
    pub max_watch: Duration,
    /// Service CIDR, cluster DNS address and node-port range.
    pub services: alloc::ServiceRanges,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            max_body: 3 * 1024 * 1024,
            bookmark_every: Duration::from_secs(10),
            max_watch: Duration::from_secs(1800),
            services: alloc::ServiceRanges::default(),
        }
    }
}

pub struct Api {
    store: AnyStore,
    registry: &'static Registry,
    cfg: ApiConfig,
    alloc: alloc::Allocator,
    /// Token authentication and issuing (serviceaccounts/token, tokenreviews, issuer
    /// discovery); None: those answer 404.
    authn: Option<Arc<crate::server::auth::Authenticator>>,
    /// RBAC decisions for the access reviews and the escalation check; None: reviews
    /// answer 404 and role writes are not checked.
    authz: Option<Arc<crate::server::authz::Authorizer>>,
    /// The registered admission webhooks, as last read.
    webhooks: webhooks::Cache,
}

/// Where a request points inside a group/version.
pub(crate) struct Target {
    pub kind: &'static dyn KindOps,
    pub ns: Option<String>,
    pub name: Option<String>,
    pub sub: Option<String>,
    /// Who asks (None: the server itself, e.g. its bootstrap writes).
    pub user: Option<Arc<crate::server::auth::User>>,
}

impl Target {
    fn key(&self) -> Result<String, ApiError> {
        let name = self.name.as_deref().ok_or(ApiError::MethodNotAllowed)?;
        Ok(self.kind.info().key(self.ns.as_deref(), name))
    }
    fn name(&self) -> &str {
        self.name.as_deref().unwrap_or_default()
    }
    /// This request as admission webhooks see it.
    fn review<'a>(
        &'a self,
        op: &'static str,
        name: &'a str,
        dry_run: bool,
    ) -> webhooks::Request<'a> {
        let info = self.kind.info();
        webhooks::Request {
            group: info.group,
            version: info.version,
            kind: info.kind,
            plural: info.plural,
            sub: self.sub.as_deref(),
            ns: self.ns.as_deref(),
            name,
            op,
            user: self.user.as_deref(),
            dry_run,
        }
    }
}

pub(crate) struct Query(HashMap<String, String>);

impl Query {
    fn parse(q: Option<&str>) -> Self {
        Query(
            form_urlencoded::parse(q.unwrap_or_default().as_bytes())
                .into_owned()
                .collect(),
        )
    }
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }
    pub fn flag(&self, k: &str) -> bool {
        matches!(self.get(k), Some("true" | "1"))
    }
    pub fn dry_run(&self) -> Result<bool, ApiError> {
        match self.get("dryRun") {
            None | Some("") => Ok(false),
            Some("All") => Ok(true),
            Some(o) => Err(ApiError::BadRequest(format!(
                "dryRun: Unsupported value: \"{o}\": supported values: \"All\""
            ))),
        }
    }
}

pub fn json_response(code: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)).boxed());
    *r.status_mut() = code;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

pub fn value_response(code: StatusCode, v: &Value) -> Response<Body> {
    json_response(code, serde_json::to_vec(v).unwrap_or_default())
}

pub fn error_response(e: &ApiError) -> Response<Body> {
    let code = StatusCode::from_u16(e.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    value_response(code, &error::status_json(&e.status()))
}

fn to_value<T: serde::Serialize>(t: &T) -> Value {
    serde_json::to_value(t).unwrap_or_default()
}

impl Api {
    pub fn new(store: AnyStore, cfg: ApiConfig) -> Self {
        Api {
            store,
            registry: &registry::REGISTRY,
            alloc: alloc::Allocator::new(cfg.services.clone()),
            cfg,
            authn: None,
            authz: None,
            webhooks: webhooks::Cache::default(),
        }
    }

    /// The API with service account tokens: TokenRequest, TokenReview and issuer discovery.
    pub fn with_authenticator(mut self, authn: Arc<crate::server::auth::Authenticator>) -> Self {
        self.authn = Some(authn);
        self
    }

    /// The API with RBAC: access reviews and the escalation check on roles and bindings.
    pub fn with_authorizer(mut self, authz: Arc<crate::server::authz::Authorizer>) -> Self {
        self.authz = Some(authz);
        self
    }

    pub fn store(&self) -> &AnyStore {
        &self.store
    }

    /// Creates the namespaces every cluster has, if missing (idempotent across restarts).
    pub async fn bootstrap(&self) -> Result<(), ApiError> {
        use meshwork_orchestrator_store::{Store, StoreError};
        let kind = self
            .registry
            .find("", "v1", "namespaces")
            .ok_or(ApiError::UnknownPath)?;
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let key = kind.info().key(None, ns);
            let found = self
                .store
                .get(&key)
                .await
                .map_err(|e| ApiError::from_store(e, "namespaces", ns))?;
            if found.is_some() {
                continue;
            }
            let body = serde_json::json!({"metadata": {"name": ns}});
            let out = kind.create(body, None, validation::FieldValidation::Strict)?;
            if let kind::Write::Put(bytes) = out.write {
                match self.store.create(&key, bytes).await {
                    Ok(_) | Err(StoreError::AlreadyExists { .. }) => {}
                    Err(e) => return Err(ApiError::from_store(e, "namespaces", ns)),
                }
            }
        }
        Ok(())
    }

    /// Answers one request; every failure becomes a Status response.
    pub async fn handle<B>(self: Arc<Self>, req: Request<B>) -> Response<Body>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let protobuf = req
            .headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(meshwork_kube_protobuf::prefers_protobuf);
        let r = match self.route(req).await {
            Ok(r) => r,
            Err(e) => {
                if matches!(e, ApiError::Internal(_)) {
                    tracing::warn!(%method, %path, error = %e, "request failed");
                }
                error_response(&e)
            }
        };
        if protobuf {
            as_protobuf(r).await
        } else {
            r
        }
    }

    async fn route<B>(self: Arc<Self>, req: Request<B>) -> Result<Response<Body>, ApiError>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (parts, body) = req.into_parts();
        let path = parts.uri.path().trim_end_matches('/').to_string();
        let segs: Vec<&str> = path.split('/').skip(1).collect();
        let get = parts.method == Method::GET;
        match segs.as_slice() {
            ["healthz" | "livez" | "readyz", ..] if get => {
                return Ok(Response::new(Full::new(Bytes::from_static(b"ok")).boxed()))
            }
            ["version"] if get => return Ok(value_response(StatusCode::OK, &version())),
            ["api"] if get => {
                return Ok(value_response(
                    StatusCode::OK,
                    &with_kind(to_value(&Registry::api_versions()), "APIVersions", None),
                ))
            }
            ["apis"] if get => {
                return Ok(value_response(
                    StatusCode::OK,
                    &with_kind(to_value(&Registry::groups()), "APIGroupList", Some("v1")),
                ))
            }
            ["apis", group] if get => {
                let g = Registry::group(group).ok_or(ApiError::UnknownPath)?;
                return Ok(value_response(
                    StatusCode::OK,
                    &with_kind(to_value(&g), "APIGroup", Some("v1")),
                ));
            }
            ["api", version] if get && self.registry.serves("", version) => {
                return Ok(self.resource_list("", version));
            }
            ["apis", group, version] if get && self.registry.serves(group, version) => {
                return Ok(self.resource_list(group, version));
            }
            // Service account issuer discovery: the system:service-account-issuer-discovery
            // role lets service accounts read it (server/authz/bootstrap.rs).
            [".well-known", "openid-configuration"] if get => return self.openid_configuration(),
            ["openid", "v1", "jwks"] if get => return self.jwks(),
            ["openapi", "v2"] if get => {
                let proto = parts
                    .headers
                    .get(header::ACCEPT)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|a| {
                        a.contains(openapi::V2_PROTOBUF) || a.contains(openapi::V2_PROTOBUF_ANSWER)
                    });
                let version = version()["gitVersion"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let mut r = json_response(StatusCode::OK, openapi::v2(proto, &version));
                if proto {
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static(openapi::V2_PROTOBUF_ANSWER),
                    );
                }
                return Ok(r);
            }
            ["openapi", "v3"] if get => {
                return Ok(value_response(
                    StatusCode::OK,
                    &openapi::root(self.registry),
                ))
            }
            ["openapi", "v3", "api", v] if get && self.registry.serves("", v) => {
                return Ok(value_response(
                    StatusCode::OK,
                    &openapi::document(self.registry, "", v),
                ))
            }
            ["openapi", "v3", "apis", g, v] if get && self.registry.serves(g, v) => {
                return Ok(value_response(
                    StatusCode::OK,
                    &openapi::document(self.registry, g, v),
                ))
            }
            _ => {}
        }
        let (group, version, rest) = match segs.as_slice() {
            ["api", v, rest @ ..] => ("", *v, rest),
            ["apis", g, v, rest @ ..] => (*g, *v, rest),
            _ => return Err(ApiError::UnknownPath),
        };
        let user = parts
            .extensions
            .get::<Arc<crate::server::auth::User>>()
            .cloned();
        // Reviews are create-only, never-stored kinds (kube: a REST with only Create).
        let (review_ns, review_rest) = match rest {
            ["namespaces", ns, tail @ ..] => (Some(*ns), tail),
            _ => (None, rest),
        };
        if let Some(c) = registry::CREATE_ONLY.iter().find(|c| {
            version == "v1"
                && c.group == group
                && review_rest.first() == Some(&c.plural)
                && c.namespaced == review_ns.is_some()
        }) {
            if review_rest.len() > 1 {
                return Err(ApiError::UnknownPath);
            }
            if parts.method != Method::POST {
                return Err(ApiError::MethodNotAllowed);
            }
            let (body, _) = self.request_body(&parts, body).await?;
            return self.review(c, review_ns, &body, user.as_deref()).await;
        }
        let mut target = self.target(group, version, rest)?;
        target.user = user;
        if matches!(
            target.sub.as_deref(),
            Some("exec" | "attach" | "portforward")
        ) {
            return self.clone().pod_stream(target, parts).await;
        }
        let query = Query::parse(parts.uri.query());
        let accept = parts
            .headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let (body, content_type) = self.request_body(&parts, body).await?;
        let ctx = verbs::Ctx {
            target,
            query,
            accept,
            content_type,
            body,
        };
        self.restrict_node(&ctx, &parts.method).await?;
        // Writes to a namespaced kind need its namespace; subresources are not deletable.
        let scoped = ctx.target.ns.is_some() || !ctx.target.kind.info().namespaced;
        let sub = ctx.target.sub.is_some();
        match (&parts.method, ctx.target.name.is_some()) {
            (&Method::GET, false) if ctx.query.flag("watch") => self.clone().watch(ctx).await,
            (&Method::GET, false) => self.list(ctx).await,
            (&Method::POST, false) if scoped => self.create(ctx).await,
            (&Method::DELETE, false) if scoped && !ctx.target.kind.is_namespace() => {
                self.delete_collection(ctx).await
            }
            (&Method::POST, true) if ctx.target.sub.as_deref() == Some("binding") => {
                self.bind(ctx).await
            }
            (&Method::GET, true) if ctx.target.sub.as_deref() == Some("log") => {
                self.pod_log(ctx).await
            }
            (&Method::POST, true) if ctx.target.sub.as_deref() == Some("token") => {
                self.token_request(ctx).await
            }
            (_, true) if matches!(ctx.target.sub.as_deref(), Some("binding" | "log" | "token")) => {
                Err(ApiError::MethodNotAllowed)
            }
            (&Method::DELETE, true) if sub => Err(ApiError::MethodNotAllowed),
            // A watch streams whole objects: none through a subresource (kube serves none).
            (&Method::GET, true) if ctx.query.flag("watch") && sub => Err(ApiError::BadRequest(
                "watch is not supported on subresources".into(),
            )),
            (&Method::GET, true) if ctx.query.flag("watch") => self.clone().watch(ctx).await,
            (&Method::GET, true) => self.get(ctx).await,
            (&Method::PUT, true) => self.replace(ctx).await,
            (&Method::PATCH, true) => self.patch(ctx).await,
            (&Method::DELETE, true) => self.delete(ctx).await,
            _ => Err(ApiError::MethodNotAllowed),
        }
    }

    /// The request body as JSON with its content type. The verbs speak JSON (patches have
    /// their own types); protobuf bodies (kubectl's `create` generators, client-go typed
    /// clients) are transcoded here. CBOR is not spoken.
    async fn request_body<B>(
        &self,
        parts: &http::request::Parts,
        body: B,
    ) -> Result<(Bytes, String), ApiError>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let content_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json")
            .to_string();
        let body = if matches!(
            parts.method,
            Method::POST | Method::PUT | Method::PATCH | Method::DELETE
        ) {
            read_body(body, self.cfg.max_body).await?
        } else {
            Bytes::new()
        };
        let (body, content_type) = if !body.is_empty()
            && content_type.starts_with(meshwork_kube_protobuf::MEDIA_TYPE)
        {
            let obj = meshwork_kube_protobuf::decode_body(&body)
                .map_err(|e| ApiError::BadRequest(e.to_string()))?;
            let json = serde_json::to_vec(&obj).map_err(|e| ApiError::Internal(e.to_string()))?;
            (Bytes::from(json), "application/json".to_string())
        } else {
            (body, content_type)
        };
        if matches!(parts.method, Method::POST | Method::PUT)
            && !body.is_empty()
            && !content_type.starts_with("application/json")
            && !content_type.starts_with("*/*")
        {
            return Err(ApiError::UnsupportedMediaType {
                accepted: "application/json, application/vnd.kubernetes.protobuf",
            });
        }
        Ok((body, content_type))
    }

    fn resource_list(&self, group: &str, version: &str) -> Response<Body> {
        let v = with_kind(
            to_value(&self.registry.resources(group, version)),
            "APIResourceList",
            Some("v1"),
        );
        value_response(StatusCode::OK, &v)
    }

    /// Resolves `[namespaces/<ns>/]<plural>[/<name>[/<sub>]]`.
    fn target(&self, group: &str, version: &str, rest: &[&str]) -> Result<Target, ApiError> {
        let find = |plural: &str| {
            self.registry
                .find(group, version, plural)
                .ok_or(ApiError::UnknownPath)
        };
        let owned = |s: &&str| Some(s.to_string());
        let t = match rest {
            ["namespaces", ns, plural, tail @ ..] if !matches!(*plural, "status" | "finalize") => {
                let kind = find(plural)?;
                if !kind.info().namespaced {
                    return Err(ApiError::UnknownPath);
                }
                Target {
                    kind,
                    ns: Some(ns.to_string()),
                    name: tail.first().and_then(owned),
                    sub: tail.get(1).and_then(owned),
                    user: None,
                }
            }
            [plural, tail @ ..] => Target {
                kind: find(plural)?,
                ns: None,
                name: tail.first().and_then(owned),
                sub: tail.get(1).and_then(owned),
                user: None,
            },
            [] => return Err(ApiError::UnknownPath),
        };
        if rest.len() > if t.ns.is_some() { 5 } else { 3 } {
            return Err(ApiError::UnknownPath);
        }
        if t.kind.info().namespaced && t.name.is_some() && t.ns.is_none() {
            return Err(ApiError::UnknownPath);
        }
        match t.sub.as_deref() {
            None => {}
            Some("status") if t.kind.info().status => {}
            Some("scale") if t.kind.info().scale => {}
            Some("binding" | "log" | "exec" | "attach" | "portforward")
                if t.kind.info().plural == "pods" && t.kind.info().group.is_empty() => {}
            Some("token")
                if t.kind.info().plural == "serviceaccounts" && t.kind.info().group.is_empty() => {}
            Some(_) => return Err(ApiError::UnknownPath),
        }
        Ok(t)
    }
}

async fn read_body<B>(body: B, max: usize) -> Result<Bytes, ApiError>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    match Limited::new(body, max).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::TooLarge { limit: max })
        }
        Err(e) => Err(ApiError::BadRequest(format!(
            "reading the request body: {e}"
        ))),
    }
}

/// A whole JSON answer re-encoded as protobuf for a client that prefers it. Streams (watch,
/// logs) and renderings protobuf has no message for (Table) stay JSON, which every such
/// client also accepts.
async fn as_protobuf(r: Response<Body>) -> Response<Body> {
    use hyper::body::Body as _;
    let json = r
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v == "application/json");
    if !json || r.body().size_hint().exact().is_none() {
        return r;
    }
    let (mut parts, body) = r.into_parts();
    let bytes = match body.collect().await {
        Ok(c) => c.to_bytes(),
        Err(never) => match never {},
    };
    let encoded = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| meshwork_kube_protobuf::encode_object(&v).ok());
    let body = match encoded {
        Some(pb) => {
            parts.headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(meshwork_kube_protobuf::MEDIA_TYPE),
            );
            parts.headers.remove(header::CONTENT_LENGTH);
            Bytes::from(pb)
        }
        None => bytes,
    };
    Response::from_parts(parts, Full::new(body).boxed())
}

fn with_kind(mut v: Value, kind: &str, api_version: Option<&str>) -> Value {
    if let Some(m) = v.as_object_mut() {
        m.insert("kind".into(), kind.into());
        if let Some(av) = api_version {
            m.insert("apiVersion".into(), av.into());
        }
    }
    v
}

fn version() -> Value {
    serde_json::json!({
        "major": "1",
        "minor": KUBE_MINOR,
        "gitVersion": format!("v1.{KUBE_MINOR}.0-meshwork"),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "rustc",
        "platform": "linux/amd64",
    })
}
