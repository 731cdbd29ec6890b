//! The outbound balancer and breaker through the real outbound stack on loopback (plaintext
//! endpoints, so only balancing is in play): of three backends, the one 50 ms slower gets few
//! requests; a backend answering 503 is ejected after Linkerd's seven consecutive failures and
//! probed back once it recovers.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic with its location is the failure report"
)]

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use meshwork_proxy::outbound::{self, breaker, discover::Static, Outbound};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// A backend that waits `delay`, then answers 200, or 503 while `failing` is set.
async fn backend(delay: Duration, failing: Arc<AtomicBool>) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = l.accept().await.unwrap();
            let (h, failing) = (h.clone(), failing.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let (h, failing) = (h.clone(), failing.clone());
                    async move {
                        h.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(delay).await;
                        let mut r = http::Response::new(http_body_util::Full::new(
                            bytes::Bytes::from_static(b"ok"),
                        ));
                        if failing.load(Ordering::Relaxed) {
                            *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
                        }
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (addr, hits)
}

async fn proxy(cfg: outbound::Config, backends: &[SocketAddr]) -> SocketAddr {
    let mut d = Static::default();
    let eps: Vec<String> = backends.iter().map(|a| a.to_string()).collect();
    d.parse_entry(&format!("web:80={}", eps.join(","))).unwrap();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    // No mesh endpoints here: the credentials are never asked for.
    tokio::spawn(Outbound::new(cfg, Arc::new(NoCreds), d).serve(l));
    addr
}

struct NoCreds;
impl meshwork_proxy::tls::Credentials for NoCreds {
    fn id(&self) -> &meshwork_identity::spiffe::SpiffeId {
        unreachable!("plaintext endpoints only")
    }
    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        unreachable!("plaintext endpoints only")
    }
    fn client_config(&self, _: &meshwork_identity::spiffe::SpiffeId) -> Arc<rustls::ClientConfig> {
        unreachable!("plaintext endpoints only")
    }
}

/// One request through the proxy on a kept-alive connection: the status.
async fn get(conn: &mut TcpStream) -> u16 {
    conn.write_all(b"GET http://web:80/ HTTP/1.1\r\nHost: web:80\r\n\r\n")
        .await
        .unwrap();
    // Small responses: read until the 2-byte body has come.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = conn.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the proxy closed the connection");
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_string)
                })
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if body.len() >= len {
                return head.split_whitespace().nth(1).unwrap().parse().unwrap();
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_50ms_slower_gets_under_10_percent() {
    let ok = Arc::new(AtomicBool::new(false));
    let (a, ha) = backend(Duration::ZERO, ok.clone()).await;
    let (b, hb) = backend(Duration::ZERO, ok.clone()).await;
    let (slow, hs) = backend(Duration::from_millis(50), ok.clone()).await;
    let p = proxy(outbound::Config::default(), &[a, b, slow]).await;
    let mut conn = TcpStream::connect(p).await.unwrap();
    for _ in 0..300 {
        assert_eq!(get(&mut conn).await, 200);
    }
    let (na, nb, ns) = (
        ha.load(Ordering::Relaxed),
        hb.load(Ordering::Relaxed),
        hs.load(Ordering::Relaxed),
    );
    assert_eq!(na + nb + ns, 300);
    assert!(
        ns < 30,
        "the slow backend got {ns} of 300 ({na}, {nb}, {ns})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_backend_is_ejected_and_probed_back() {
    let healthy = Arc::new(AtomicBool::new(false));
    let failing = Arc::new(AtomicBool::new(true));
    let (good, hg) = backend(Duration::ZERO, healthy).await;
    let (bad, hb) = backend(Duration::ZERO, failing.clone()).await;
    let cfg = outbound::Config {
        breaker: breaker::Config {
            min_penalty: Duration::from_millis(300),
            max_penalty: Duration::from_millis(300),
            jitter: 0.0,
            ..breaker::Config::default()
        },
        ..outbound::Config::default()
    };
    let p = proxy(cfg, &[good, bad]).await;
    let mut conn = TcpStream::connect(p).await.unwrap();
    // Until the failing backend has had its seven failures, some requests fail.
    let mut failed = 0;
    for _ in 0..200 {
        if get(&mut conn).await == 503 {
            failed += 1;
        }
    }
    assert_eq!(failed, hb.load(Ordering::Relaxed), "every 503 came from it");
    assert!(
        (7..=9).contains(&failed),
        "ejected after 7 failures in a row (a probe or two may follow): {failed}"
    );
    assert!(hg.load(Ordering::Relaxed) >= 190);
    // Recovered: once the penalty is over the next request is its probe, which succeeds; it
    // is back among the candidates (P2C then sends it what its load earns), and nothing fails.
    failing.store(false, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(350)).await;
    let before = hb.load(Ordering::Relaxed);
    assert_eq!(get(&mut conn).await, 200);
    assert_eq!(
        hb.load(Ordering::Relaxed),
        before + 1,
        "the probe went to it"
    );
    for _ in 0..200 {
        assert_eq!(get(&mut conn).await, 200);
    }
}
