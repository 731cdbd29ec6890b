//! The admin port (Linkerd's 4191): `/live` (the process answers), `/ready` (certified and
//! serving, not draining), `/metrics` (Prometheus text), `/tap` (the live request stream,
//! `tap.rs`), and `POST /shutdown`, which starts
//! the same graceful drain as SIGTERM; as in Linkerd, only a caller on loopback (the pod's
//! own containers) may ask for it.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, sync::Notify};

use crate::{http::Body, metrics::Metrics};

/// What the admin port reports and can ask for.
#[derive(Default)]
pub struct State {
    pub ready: AtomicBool,
    /// Notified by `POST /shutdown`.
    pub shutdown: Notify,
}

/// Connections served at once from one address other than loopback: kubelet's probes (from
/// the node), a scraper, need a few; past it a connection is closed at once, so that a caller
/// elsewhere in the cluster (the port is not loopback-only) can neither hold the process's
/// descriptors nor crowd out the node's probes. `localhost` (the pod's own containers,
/// `kubectl port-forward` and its taps) is not counted.
const MAX_CONNECTIONS_PER_ADDRESS: usize = 16;

/// How long a caller may take to send a request's headers, or keep an idle connection
/// (Linkerd's admin server detects within 1 s; kubelet and Prometheus send at once).
const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>, state: Arc<State>) {
    let quota = meshwork_daemon::quota::PerAddress::new(MAX_CONNECTIONS_PER_ADDRESS);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        // (`::ffff:127.0.0.1` on a dual-stack listener too.)
        let localhost = match peer.ip().to_canonical() {
            std::net::IpAddr::V4(v) => v == std::net::Ipv4Addr::LOCALHOST,
            std::net::IpAddr::V6(v) => v == std::net::Ipv6Addr::LOCALHOST,
        };
        let slot = if localhost {
            None
        } else {
            match quota.take(peer.ip()) {
                Some(s) => Some(s),
                None => {
                    metrics.refuse("admin_connections");
                    continue;
                }
            }
        };
        let (metrics, state) = (metrics.clone(), state.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let r = answer(&req, peer, &metrics, &state);
                async move { Ok::<_, Infallible>(r) }
            });
            let _ = crate::accept::h1(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut r = Response::new(crate::http::full(body));
    *r.status_mut() = status;
    r
}

fn answer(req: &Request<Incoming>, peer: SocketAddr, m: &Metrics, state: &State) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/live") => text(StatusCode::OK, "live\n".into()),
        (&Method::GET, "/ready") => {
            if state.ready.load(Ordering::Relaxed) {
                text(StatusCode::OK, "ready\n".into())
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n".into())
            }
        }
        (&Method::GET, "/metrics") => {
            let mut r = text(StatusCode::OK, m.encode());
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static(meshwork_daemon::admin::OPENMETRICS),
            );
            r
        }
        (&Method::GET, "/tap") => {
            if !peer.ip().to_canonical().is_loopback() {
                return text(
                    StatusCode::FORBIDDEN,
                    format!("tap is served to loopback callers only (kubectl port-forward), not {peer}\n"),
                );
            }
            if m.tap.receiver_count() >= crate::tap::MAX_TAPS {
                return text(
                    StatusCode::TOO_MANY_REQUESTS,
                    format!("at most {} taps at once\n", crate::tap::MAX_TAPS),
                );
            }
            let filter = crate::tap::Filter::from_query(req.uri().query());
            let mut r = Response::new(crate::tap::stream(m.tap.subscribe(), filter));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/jsonl"),
            );
            r
        }
        (&Method::POST, "/shutdown") => {
            if !peer.ip().to_canonical().is_loopback() {
                return text(
                    StatusCode::FORBIDDEN,
                    "shutdown is served to loopback callers only\n".into(),
                );
            }
            state.ready.store(false, Ordering::Relaxed);
            state.shutdown.notify_one();
            text(StatusCode::OK, "draining\n".into())
        }
        (_, "/live" | "/ready" | "/metrics" | "/shutdown") => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n".into(),
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}
