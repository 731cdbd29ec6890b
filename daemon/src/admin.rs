//! The small HTTP endpoint node components serve for probes and scraping (`/healthz`,
//! `/ready`, `/metrics`, ...): HTTP/1.1, one handler mapping a path to (status, body).

use std::{convert::Infallible, sync::Arc};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Maps a request path to a status code and a text body.
pub type Handler = Arc<dyn Fn(&str) -> (u16, String) + Send + Sync>;

/// What `/metrics` serves: prometheus-client writes the OpenMetrics text format (`# EOF`,
/// counters' `# TYPE` without `_total`), so it says so. Prometheus reads a body by its type:
/// called the classic text format, counters lose their type; with no type at all, Prometheus
/// 3 refuses the scrape unless told a fallback.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `handler` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, handler: Handler) {
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(_) => {
                // Out of descriptors or the like: back off instead of spinning.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let h = handler.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (code, body) = h(req.uri().path());
                let mut r = Response::new(Full::new(Bytes::from(body)));
                *r.status_mut() =
                    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let kind = if req.uri().path() == "/metrics" && code == 200 {
                    OPENMETRICS
                } else {
                    "text/plain; charset=utf-8"
                };
                r.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static(kind),
                );
                async move { Ok::<_, Infallible>(r) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// `/metrics` is labelled as the OpenMetrics text it is; other paths as plain text.
    #[tokio::test]
    async fn metrics_say_they_are_openmetrics() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(serve(l, Arc::new(|_: &str| (200, "# EOF\n".to_string()))));
        for (path, kind) in [
            ("/metrics", OPENMETRICS),
            ("/healthz", "text/plain; charset=utf-8"),
        ] {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            s.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            assert!(
                out.to_ascii_lowercase()
                    .contains(&format!("content-type: {kind}")),
                "{path}: {out}"
            );
        }
    }
}
