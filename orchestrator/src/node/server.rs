//! The node agent's HTTP endpoint (the kubelet's port): `/containerLogs/<ns>/<pod>/<container>`
//! with `follow`, `previous`, `tailLines`, `limitBytes` (what the API server proxies
//! `pods/log` to), `/exec/<ns>/<pod>/<container>` and `/attach/...` (WebSocket remotecommand,
//! `exec.rs`) and
//! `/portForward/<ns>/<pod>` (SPDY, raw or over a WebSocket, `portforward.rs`) — the targets of
//! `pods/exec` and `pods/portforward` — plus `/healthz`, `/metrics` (Prometheus) and
//! `/debug/pod-starts` (start-latency breakdown, JSON).

use std::{convert::Infallible, io::SeekFrom, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::{kubelet::LogIndex, metrics::NodeMetrics};

type Body = BoxBody<Bytes, Infallible>;

fn text(code: StatusCode, msg: impl Into<String>) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(msg.into())).boxed());
    *r.status_mut() = code;
    r
}

/// Serves until the listener fails; exec, attach and port-forward only for peers in
/// `streams_from` (the API server, this node).
pub async fn serve(
    listener: tokio::net::TcpListener,
    logs: LogIndex,
    metrics: Arc<NodeMetrics>,
    streams_from: Arc<Vec<std::net::IpAddr>>,
) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let (logs, metrics) = (logs.clone(), metrics.clone());
        let trusted = streams_from.contains(&peer.ip().to_canonical());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (logs, metrics) = (logs.clone(), metrics.clone());
                async move { Ok::<_, Infallible>(handle(req, logs, &metrics, trusted).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn handle(
    req: Request<Incoming>,
    logs: LogIndex,
    metrics: &NodeMetrics,
    trusted: bool,
) -> Response<Body> {
    if ["/exec/", "/attach/", "/portForward/"]
        .iter()
        .any(|p| req.uri().path().starts_with(p))
    {
        if !trusted {
            return text(
                StatusCode::FORBIDDEN,
                "exec, attach and port-forward are accepted from the API server only",
            );
        }
        return stream(req, &logs);
    }
    let path = req.uri().path().to_string();
    let q: Vec<(String, String)> =
        form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let get = |k: &str| q.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segs.as_slice() {
        ["healthz"] => text(StatusCode::OK, "ok"),
        ["metrics"] => text(StatusCode::OK, metrics.encode()),
        ["debug", "pod-starts"] => {
            let view = logs.lock().unwrap_or_else(|p| p.into_inner());
            let body = serde_json::to_vec(&view.timings).unwrap_or_default();
            Response::new(Full::new(Bytes::from(body)).boxed())
        }
        ["containerLogs", ns, pod, container] => {
            let entry = {
                let view = logs.lock().unwrap_or_else(|p| p.into_inner());
                view.pods
                    .get(&(ns.to_string(), pod.to_string()))
                    .and_then(|m| m.get(*container))
                    .cloned()
            };
            let Some((dir, attempt, running)) = entry else {
                return text(
                    StatusCode::NOT_FOUND,
                    format!("container \"{container}\" in pod \"{pod}\" is waiting to start or not found on this node"),
                );
            };
            let previous = get("previous").is_some_and(|v| v == "true");
            let attempt = if previous {
                match attempt.checked_sub(1) {
                    Some(a) => a,
                    None => {
                        return text(
                            StatusCode::BAD_REQUEST,
                            format!("previous terminated container \"{container}\" in pod \"{pod}\" not found"),
                        )
                    }
                }
            } else {
                attempt
            };
            let file = dir.join(format!("{attempt}.log"));
            let follow = get("follow").is_some_and(|v| v == "true") && !previous && running;
            let tail = get("tailLines").and_then(|v| v.parse::<usize>().ok());
            let limit = get("limitBytes").and_then(|v| v.parse::<usize>().ok());
            let Ok(content) = tokio::fs::read(&file).await else {
                return text(
                    StatusCode::NOT_FOUND,
                    format!("log of {container} not found"),
                );
            };
            let mut start = 0;
            if let Some(n) = tail {
                let mut seen = 0;
                start = content.len();
                let body = content.strip_suffix(b"\n").unwrap_or(&content);
                for (i, b) in body.iter().enumerate().rev() {
                    if *b == b'\n' {
                        seen += 1;
                        if seen == n {
                            start = i + 1;
                            break;
                        }
                    }
                    if i == 0 {
                        start = 0;
                    }
                }
                if n == 0 {
                    start = content.len();
                }
            }
            let mut first = content[start..].to_vec();
            if let Some(l) = limit {
                first.truncate(l);
            }
            if !follow {
                return Response::new(Full::new(Bytes::from(first)).boxed());
            }
            // Follow: what is there, then appended bytes until the run ends (next attempt
            // appears) or the client goes away.
            let offset = content.len() as u64;
            let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
            let next = dir.join(format!("{}.log", attempt + 1));
            tokio::spawn(async move {
                if tx.send(Bytes::from(first)).await.is_err() {
                    return;
                }
                let Ok(mut f) = tokio::fs::File::open(&file).await else {
                    return;
                };
                let _ = f.seek(SeekFrom::Start(offset)).await;
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match f.read(&mut buf).await {
                        Ok(0) => {
                            if next.exists() || tx.is_closed() {
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        Ok(n) => {
                            if tx.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                                return;
                            }
                        }
                        Err(_) => return,
                    }
                }
            });
            let stream = futures::stream::unfold(rx, |mut rx| async move {
                rx.recv()
                    .await
                    .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
            });
            Response::new(BodyExt::boxed(StreamBody::new(stream)))
        }
        _ => text(StatusCode::NOT_FOUND, "not found"),
    }
}

fn header<'a>(req: &'a Request<Incoming>, name: &str) -> &'a str {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// A 101 answer to a WebSocket upgrade with the chosen subprotocol.
fn ws_accept(req: &Request<Incoming>, protocol: &str) -> Response<Body> {
    let key = header(req, "sec-websocket-key");
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let mut r = Response::new(Full::new(Bytes::new()).boxed());
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    for (k, v) in [
        ("upgrade", "websocket"),
        ("connection", "Upgrade"),
        ("sec-websocket-accept", accept.as_str()),
        ("sec-websocket-protocol", protocol),
    ] {
        if let Ok(v) = http::HeaderValue::from_str(v) {
            h.insert(k, v);
        }
    }
    r
}

/// The first of `ours` the client offered in Sec-WebSocket-Protocol.
fn pick_protocol(req: &Request<Incoming>, ours: &[&'static str]) -> Option<&'static str> {
    let offered: Vec<String> = req
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(',').map(|p| p.trim().to_string()))
        .collect();
    ours.iter()
        .copied()
        .find(|p| offered.iter().any(|o| o == p))
}

/// `/exec/<ns>/<pod>/<container>` and `/portForward/<ns>/<pod>`: checks the request, answers
/// 101 and serves the upgraded connection in a task of its own.
fn stream(mut req: Request<Incoming>, logs: &LogIndex) -> Response<Body> {
    let path = req.uri().path().to_string();
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let q: Vec<(String, String)> =
        form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let (ns, pod, container) = match segs.as_slice() {
        ["exec" | "attach", ns, pod, c] => (*ns, *pod, Some(*c)),
        ["portForward", ns, pod] => (*ns, *pod, None),
        _ => return text(StatusCode::NOT_FOUND, "not found"),
    };
    let dirs: Vec<(String, std::path::PathBuf)> = {
        let view = logs.lock().unwrap_or_else(|p| p.into_inner());
        view.pods
            .get(&(ns.to_string(), pod.to_string()))
            .map(|m| {
                m.iter()
                    .map(|(n, (d, _, _))| (n.clone(), d.clone()))
                    .collect()
            })
            .unwrap_or_default()
    };
    if dirs.is_empty() {
        return text(
            StatusCode::NOT_FOUND,
            format!("pod \"{pod}\" in namespace \"{ns}\" not found on this node"),
        );
    }
    let websocket = header(&req, "upgrade").eq_ignore_ascii_case("websocket");
    let on_upgrade = hyper::upgrade::on(&mut req);
    match container {
        Some(c) => {
            let Some((_, dir)) = dirs.iter().find(|(n, _)| n == c) else {
                return text(
                    StatusCode::NOT_FOUND,
                    format!("container not found (\"{c}\")"),
                );
            };
            let target = match super::exec::find(dir) {
                Ok(t) => t,
                Err(e) => return text(StatusCode::BAD_REQUEST, e),
            };
            let attach = segs[0] == "attach";
            let ereq = super::exec::ExecRequest::from_query(&q);
            if ereq.command.is_empty() && !attach {
                return text(
                    StatusCode::BAD_REQUEST,
                    "you must specify at least 1 command",
                );
            }
            if !(ereq.stdin || ereq.stdout || ereq.stderr) {
                return text(
                    StatusCode::BAD_REQUEST,
                    "you must specify at least one of stdin, stdout, stderr",
                );
            }
            let Some(proto) = websocket
                .then(|| pick_protocol(&req, super::exec::PROTOCOLS))
                .flatten()
            else {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "exec needs a WebSocket upgrade with one of the subprotocols {}",
                        super::exec::PROTOCOLS.join(", ")
                    ),
                );
            };
            let Ok(shim) = std::env::current_exe() else {
                return text(StatusCode::INTERNAL_SERVER_ERROR, "locating the shim");
            };
            let resp = ws_accept(&req, proto);
            tokio::spawn(async move {
                let Some(ws) = server_websocket(on_upgrade).await else {
                    return;
                };
                if attach {
                    super::exec::serve_attach(ws, target).await;
                } else {
                    super::exec::serve(ws, shim, target, ereq).await;
                }
            });
            resp
        }
        None => {
            // Any container of the pod leads to its sandbox (the network namespace).
            let Some(sandbox) = dirs
                .iter()
                .find_map(|(_, d)| super::exec::find(d).ok().map(|t| t.sandbox))
            else {
                return text(
                    StatusCode::BAD_REQUEST,
                    format!("pod {pod} has no running container"),
                );
            };
            let netns = sandbox.netns_path.clone();
            let pod = pod.to_string();
            if websocket {
                if pick_protocol(&req, &[super::portforward::TUNNEL_PROTOCOL]).is_none() {
                    return text(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "port-forward over WebSocket needs the subprotocol {}",
                            super::portforward::TUNNEL_PROTOCOL
                        ),
                    );
                }
                let resp = ws_accept(&req, super::portforward::TUNNEL_PROTOCOL);
                tokio::spawn(async move {
                    let Some(ws) = server_websocket(on_upgrade).await else {
                        return;
                    };
                    let io = super::portforward::ws_bytes(ws);
                    super::portforward::serve_spdy(io, netns, pod).await;
                });
                return resp;
            }
            if !header(&req, "upgrade").eq_ignore_ascii_case("SPDY/3.1") {
                return text(
                    StatusCode::BAD_REQUEST,
                    "port-forward needs an upgrade to SPDY/3.1 or a WebSocket",
                );
            }
            let mut resp = Response::new(Full::new(Bytes::new()).boxed());
            *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            let h = resp.headers_mut();
            h.insert("connection", http::HeaderValue::from_static("Upgrade"));
            h.insert("upgrade", http::HeaderValue::from_static("SPDY/3.1"));
            h.insert(
                "x-stream-protocol-version",
                http::HeaderValue::from_static(super::portforward::PROTOCOL),
            );
            tokio::spawn(async move {
                let Ok(up) = on_upgrade.await else { return };
                super::portforward::serve_spdy(TokioIo::new(up), netns, pod).await;
            });
            resp
        }
    }
}

/// The server side of an accepted WebSocket upgrade (exec, attach and port-forward share it);
/// None if the client went away before the upgrade completed.
async fn server_websocket(
    on_upgrade: hyper::upgrade::OnUpgrade,
) -> Option<tokio_tungstenite::WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>> {
    let up = on_upgrade.await.ok()?;
    Some(
        tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(up),
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            None,
        )
        .await,
    )
}
