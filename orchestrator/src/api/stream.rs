//! `pods/exec`, `pods/attach` and `pods/portforward`: the upgraded (streaming) pod
//! subresources. As kube-apiserver does for the kubelet, the API server checks the request
//! (authentication and authorization happened in `server/`; the pod, its node and the
//! container here), then proxies the upgrade to the node runtime's `/exec/<ns>/<pod>/<c>`,
//! `/attach/...` or `/portForward/<ns>/<pod>` and splices the two upgraded connections. The
//! protocols (WebSocket remotecommand, SPDY port-forward raw or over a WebSocket) are spoken by
//! the node runtime (`node/exec.rs`, `node/portforward.rs`), never interpreted here.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, request::Parts, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::TokioIo;

use super::{error::ApiError, pods::pod_container, Api, Body, Query, Target};

/// Request headers the node does not get (credentials, and what the hop sets itself).
const DROPPED: &[&str] = &[
    "authorization",
    "host",
    "content-length",
    "transfer-encoding",
];

fn is_upgrade(parts: &Parts) -> bool {
    let has = |name: header::HeaderName, want: &str| {
        parts
            .headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(want)))
    };
    has(header::CONNECTION, "upgrade") && parts.headers.contains_key(header::UPGRADE)
}

impl Api {
    /// pods/<name>/{exec,attach,portforward}, GET (WebSocket) or POST (SPDY).
    pub(crate) async fn pod_stream(
        self: Arc<Self>,
        target: Target,
        mut parts: Parts,
    ) -> Result<Response<Body>, ApiError> {
        if !matches!(parts.method, http::Method::GET | http::Method::POST) {
            return Err(ApiError::MethodNotAllowed);
        }
        let sub = target.sub.clone().unwrap_or_default();
        let query = Query::parse(parts.uri.query());
        let pod = self.pod_of(&target).await?;
        let ns = target.ns.clone().unwrap_or_default();
        let name = target.name().to_string();
        let raw_query = parts.uri.query().unwrap_or("").to_string();
        let path = match sub.as_str() {
            "exec" | "attach" => {
                let container = pod_container(&pod, query.get("container"))?;
                if sub == "exec" && !raw_query.split('&').any(|kv| kv.starts_with("command=")) {
                    return Err(ApiError::BadRequest(
                        "you must specify at least 1 command".into(),
                    ));
                }
                let node_path = if sub == "exec" { "exec" } else { "attach" };
                format!("/{node_path}/{ns}/{name}/{container}")
            }
            _ => format!("/portForward/{ns}/{name}"),
        };
        if !is_upgrade(&parts) {
            return Err(ApiError::BadRequest("Upgrade request required".into()));
        }
        // HTTP/2 connections cannot be upgraded (kubectl streams over HTTP/1.1).
        let Some(client_up) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
            return Err(ApiError::BadRequest(
                "Upgrade request required (this connection cannot be upgraded)".into(),
            ));
        };
        let phase = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_default();
        if matches!(phase.as_str(), "Succeeded" | "Failed") {
            return Err(ApiError::BadRequest(format!(
                "cannot {sub} into a container in a completed pod; current phase is {phase}"
            )));
        }
        let (host, port) = self.node_endpoint(&pod).await?;
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        let unavailable = |e: &dyn std::fmt::Display| {
            ApiError::ServiceUnavailable(format!("node {node} ({host}:{port}): {e}"))
        };
        let addr = format!(
            "{}:{port}",
            host.trim_start_matches('[').trim_end_matches(']')
        );
        let tcp = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            tokio::net::TcpStream::connect(&addr),
        )
        .await
        .map_err(|_| unavailable(&"did not answer"))?
        .map_err(|e| unavailable(&e))?;
        let _ = tcp.set_nodelay(true);
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(tcp))
                .await
                .map_err(|e| unavailable(&e))?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        let uri = if raw_query.is_empty() {
            path
        } else {
            format!("{path}?{raw_query}")
        };
        let mut req = http::Request::builder()
            .method(parts.method.clone())
            .uri(&uri)
            .header(header::HOST, format!("{host}:{port}"));
        for (k, v) in &parts.headers {
            if !DROPPED.contains(&k.as_str()) {
                req = req.header(k, v);
            }
        }
        let req = req
            .body(Empty::new())
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let mut resp =
            tokio::time::timeout(std::time::Duration::from_secs(30), sender.send_request(req))
                .await
                .map_err(|_| unavailable(&"did not answer"))?
                .map_err(|e| unavailable(&e))?;
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            let code = resp.status();
            let msg = super::pods::node_message(resp.into_body()).await;
            return Err(if code.is_client_error() {
                ApiError::BadRequest(msg)
            } else {
                ApiError::ServiceUnavailable(msg)
            });
        }
        let node_up = hyper::upgrade::on(&mut resp);
        let mut out = Response::new(Full::new(Bytes::new()).boxed());
        *out.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        for (k, v) in resp.headers() {
            out.headers_mut().append(k, v.clone());
        }
        tokio::spawn(async move {
            let (Ok(c), Ok(n)) = (client_up.await, node_up.await) else {
                return;
            };
            let (mut c, mut n) = (TokioIo::new(c), TokioIo::new(n));
            let _ = tokio::io::copy_bidirectional(&mut c, &mut n).await;
        });
        Ok(out)
    }
}
