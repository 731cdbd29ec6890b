//! The node agent's HTTP endpoint (the kubelet's port): `/containerLogs/<ns>/<pod>/<container>`
//! with `follow`, `previous`, `tailLines`, `limitBytes` (what the API server proxies
//! `pods/log` to), `/healthz`, `/metrics` (Prometheus) and `/debug/pod-starts` (start-latency
//! breakdown, JSON).

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

pub async fn serve(listener: tokio::net::TcpListener, logs: LogIndex, metrics: Arc<NodeMetrics>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (logs, metrics) = (logs.clone(), metrics.clone());
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (logs, metrics) = (logs.clone(), metrics.clone());
                async move { Ok::<_, Infallible>(handle(req, logs, &metrics).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

async fn handle(req: Request<Incoming>, logs: LogIndex, metrics: &NodeMetrics) -> Response<Body> {
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
