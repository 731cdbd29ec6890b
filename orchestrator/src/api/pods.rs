//! The pod subresources a scheduler and kubectl use: `pods/binding` (assign a node) and
//! `pods/log` (proxied to the node runtime that runs the pod, as kube-apiserver proxies to the
//! kubelet's `/containerLogs`).

use bytes::Bytes;
use futures::StreamExt;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use k8s_openapi::{
    api::core::v1::{Node, Pod, PodCondition},
    apimachinery::pkg::apis::meta::v1::Time,
};
use meshwork_orchestrator_store::Store;
use serde_json::{json, Value};

use super::{
    error::ApiError,
    kind::{now_seconds, Out, Write},
    value_response,
    verbs::{parse_json, Ctx},
    Api, Body,
};

/// Port the node runtime serves `/containerLogs` on when its Node does not say
/// (kubelet's default).
pub const DEFAULT_NODE_PORT: i32 = 10250;

impl Api {
    /// POST pods/<name>/binding: sets spec.nodeName once and records PodScheduled.
    pub(crate) async fn bind(&self, ctx: Ctx) -> Result<Response<Body>, ApiError> {
        let t = &ctx.target;
        let body = parse_json(&ctx.body)?;
        let node = body
            .pointer("/target/name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| ApiError::BadRequest("binding has no target.name".into()))?
            .to_string();
        let pod_name = t.name().to_string();
        self.update_with(t, false, |cur| {
            let mut pod: Pod =
                serde_json::from_slice(&cur.value).map_err(|e| ApiError::Internal(e.to_string()))?;
            if pod.metadata.deletion_timestamp.is_some() {
                return Err(ApiError::Conflict {
                    resource: "pods".into(),
                    name: pod_name.clone(),
                });
            }
            let spec = pod.spec.get_or_insert_with(Default::default);
            if let Some(n) = &spec.node_name {
                return Err(ApiError::ConflictMessage(format!(
                    "Operation cannot be fulfilled on pods/binding \"{pod_name}\": pod {pod_name} is already assigned to node \"{n}\""
                )));
            }
            spec.node_name = Some(node.clone());
            let status = pod.status.get_or_insert_with(Default::default);
            let conds = status.conditions.get_or_insert_with(Vec::new);
            conds.retain(|c| c.type_ != "PodScheduled");
            conds.push(PodCondition {
                type_: "PodScheduled".into(),
                status: "True".into(),
                last_transition_time: Some(Time(now_seconds())),
                ..Default::default()
            });
            let out = Out {
                write: Write::Put(
                    serde_json::to_vec(&pod).map_err(|e| ApiError::Internal(e.to_string()))?,
                ),
                warnings: Vec::new(),
            };
            Ok((out, None))
        })
        .await?;
        Ok(value_response(
            StatusCode::CREATED,
            &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
        ))
    }

    /// The pod a subresource request names.
    pub(crate) async fn pod_of(&self, t: &super::Target) -> Result<Pod, ApiError> {
        let cur = self.current(t).await?;
        serde_json::from_slice(&cur.value).map_err(|e| ApiError::Internal(e.to_string()))
    }

    /// The node runtime endpoint (host as in a URL, port) of the node a pod runs on.
    pub(crate) async fn node_endpoint(&self, pod: &Pod) -> Result<(String, i32), ApiError> {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let node_name = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .ok_or_else(|| {
                ApiError::BadRequest(format!("pod {name} does not have a host assigned"))
            })?;
        let node_kind = self
            .registry
            .find("", "v1", "nodes")
            .ok_or(ApiError::UnknownPath)?;
        let node = self
            .store
            .get(&node_kind.info().key(None, &node_name))
            .await
            .map_err(|e| ApiError::from_store(e, "nodes", &node_name))?
            .ok_or_else(|| ApiError::NotFound {
                resource: "nodes".into(),
                name: node_name.clone(),
            })?;
        let node: Node =
            serde_json::from_slice(&node.value).map_err(|e| ApiError::Internal(e.to_string()))?;
        let status = node.status.unwrap_or_default();
        let ip = status
            .addresses
            .iter()
            .flatten()
            .find(|a| a.type_ == "InternalIP")
            .map(|a| a.address.clone())
            .ok_or_else(|| {
                ApiError::ServiceUnavailable(format!("node {node_name} has no InternalIP"))
            })?;
        let port = status
            .daemon_endpoints
            .and_then(|d| d.kubelet_endpoint)
            .map(|e| e.port)
            .filter(|p| *p > 0)
            .unwrap_or(DEFAULT_NODE_PORT);
        let host = match ip.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V6(v6)) => format!("[{v6}]"),
            _ => ip.clone(),
        };
        Ok((host, port))
    }

    /// GET pods/<name>/log: streams from the node runtime of the pod's node.
    pub(crate) async fn pod_log(&self, ctx: Ctx) -> Result<Response<Body>, ApiError> {
        let t = &ctx.target;
        let pod = self.pod_of(t).await?;
        let container = pod_container(&pod, ctx.query.get("container"))?;
        let (host, port) = self.node_endpoint(&pod).await?;
        let node_name = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        let ip = &host;
        let qs = {
            let mut q = form_urlencoded::Serializer::new(String::new());
            for k in [
                "follow",
                "previous",
                "tailLines",
                "timestamps",
                "limitBytes",
            ] {
                if let Some(v) = ctx.query.get(k) {
                    q.append_pair(k, v);
                }
            }
            q.finish()
        };
        let url = format!(
            "http://{host}:{port}/containerLogs/{}/{}/{container}?{}",
            t.ns.as_deref().unwrap_or_default(),
            t.name(),
            qs
        );
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Empty<Bytes>>();
        let uri: http::Uri = url
            .parse()
            .map_err(|e| ApiError::Internal(format!("log URL {url}: {e}")))?;
        let resp = tokio::time::timeout(std::time::Duration::from_secs(10), client.get(uri))
            .await
            .map_err(|_| {
                ApiError::ServiceUnavailable(format!(
                    "node {node_name} ({ip}:{port}) did not answer"
                ))
            })?
            .map_err(|e| {
                ApiError::ServiceUnavailable(format!("node {node_name} ({ip}:{port}): {e}"))
            })?;
        let code = resp.status();
        if !code.is_success() {
            let msg = node_message(resp.into_body()).await;
            return Err(if code == StatusCode::NOT_FOUND {
                ApiError::BadRequest(msg)
            } else {
                ApiError::ServiceUnavailable(msg)
            });
        }
        // Frames go through until the node ends the stream or an error cuts it.
        let stream = resp.into_body().into_data_stream().take_while(|r| {
            let ok = r.is_ok();
            async move { ok }
        });
        let stream = stream.filter_map(|r| async move {
            r.ok()
                .map(|b| Ok::<_, std::convert::Infallible>(Frame::data(b)))
        });
        let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain"),
        );
        Ok(r)
    }
}

/// The container a request names (`container=`), or the pod's only one; kube-apiserver's
/// wording when it is missing or unknown.
pub(crate) fn pod_container(pod: &Pod, asked: Option<&str>) -> Result<String, ApiError> {
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let spec = pod.spec.clone().unwrap_or_default();
    let container = match asked {
        Some(c) if !c.is_empty() => c.to_string(),
        _ if spec.containers.len() == 1 => spec.containers[0].name.clone(),
        _ => {
            let names = |cs: &[k8s_openapi::api::core::v1::Container]| {
                cs.iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            };
            let inits = spec.init_containers.as_deref().unwrap_or_default();
            let or_init = if inits.is_empty() {
                String::new()
            } else {
                format!(" or one of the init containers: [{}]", names(inits))
            };
            return Err(ApiError::BadRequest(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]{or_init}",
                names(&spec.containers)
            )));
        }
    };
    // Init containers (native sidecars among them) have logs too.
    if !spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .any(|c| c.name == container)
    {
        return Err(ApiError::BadRequest(format!(
            "container {container} is not valid for pod {name}"
        )));
    }
    Ok(container)
}

/// The text of a node runtime's refusal (its body), for the Status the client gets.
pub(super) async fn node_message<B>(body: B) -> String
where
    B: hyper::body::Body,
{
    let bytes = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    String::from_utf8_lossy(&bytes).trim().to_string()
}
