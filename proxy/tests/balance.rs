//! The outbound balancer, breaker and retries through the real outbound stack on loopback
//! (plaintext endpoints, so mTLS is not in play): of three backends, the one 50 ms slower gets
//! few requests; a backend answering 503 is hidden by retries, ejected after Linkerd's seven
//! consecutive failures and probed back once it recovers; one that resets every connection
//! stops getting them within a second and is probed back in once it serves again; one that
//! refused a connect and then answers 503 is judged on its answers by the breaker, not kept
//! out by the reconnect back-off; one failing 20% is hidden by retries; a gRPC
//! server failing in its trailers is ejected too; when everything fails
//! the budget keeps retries at 20% + 10/s.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic with its location is the failure report"
)]

use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

mod support;

use support::{backend, get, proxy, read_status};

use meshwork_proxy::drain::Watch;
use meshwork_proxy::outbound::{self, breaker, discover::Static, retry, Outbound};
use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpStream},
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_50ms_slower_gets_under_10_percent() {
    let never = || Arc::new(AtomicUsize::new(0));
    let (a, ha) = backend(Duration::ZERO, never()).await;
    let (b, hb) = backend(Duration::ZERO, never()).await;
    let (slow, hs) = backend(Duration::from_millis(50), never()).await;
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
    let failing = Arc::new(AtomicUsize::new(1));
    let (good, hg) = backend(Duration::ZERO, Arc::new(AtomicUsize::new(0))).await;
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
    // Each 503 is retried on the healthy backend, so the client sees none; after seven in a
    // row the failing backend is ejected (a probe or two may follow within the run).
    for _ in 0..200 {
        assert_eq!(get(&mut conn).await, 200);
    }
    let bad_hits = hb.load(Ordering::Relaxed);
    assert!(
        (7..=9).contains(&bad_hits),
        "ejected after 7 failures in a row: {bad_hits}"
    );
    assert_eq!(hg.load(Ordering::Relaxed), 200);
    // Recovered: once the penalty is over the next request is its probe, which succeeds; it
    // is back among the candidates (P2C then sends it what its load earns), and nothing fails.
    failing.store(0, Ordering::Relaxed);
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

/// A gRPC server that fails every call with UNAVAILABLE in a trailers-only answer (HTTP 200):
/// the breaker counts those as failures, as Linkerd's classification does, and ejects it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_backend_answering_unavailable_is_ejected_not_one_answering_not_found() {
    let grpc = |code: &'static str| async move {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        support::serve_http1(l, move |_req| {
            h.fetch_add(1, Ordering::Relaxed);
            async move {
                let r = http::Response::builder()
                    .header("content-type", "application/grpc")
                    .header("grpc-status", code)
                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                    .unwrap();
                Ok::<_, std::convert::Infallible>(r)
            }
        });
        (addr, hits)
    };
    // 200 calls through the proxy at `p`, each answered 200 (gRPC's status is in a header).
    let calls = async |p| {
        let mut conn = TcpStream::connect(p).await.unwrap();
        for _ in 0..200 {
            conn.write_all(
                b"POST http://web:80/pkg.Svc/Call HTTP/1.1\r\nHost: web:80\r\n\
                  content-type: application/grpc\r\ncontent-length: 0\r\n\r\n",
            )
            .await
            .unwrap();
            assert_eq!(read_status(&mut conn).await, 200);
        }
    };
    let (good, hg) = grpc("0").await;
    let (bad, hb) = grpc("14").await;
    let p = proxy(outbound::Config::default(), &[good, bad]).await;
    calls(p).await;
    // Out after its seventh failure in a row (a probe or two may follow); counted as answers,
    // it would get about half. (P2C may give it fewer than seven in all when the machine's
    // noise makes it look slower: no lower bound.)
    let bad_hits = hb.load(Ordering::Relaxed);
    assert!(
        bad_hits <= 12,
        "ejected after 7 failures in a row: {bad_hits} of 200 (good: {})",
        hg.load(Ordering::Relaxed)
    );
    // NOT_FOUND is the client's error, as a 404 is: a backend answering nothing else stays
    // in (the only one: each call reaches it; ejected, calls would wait for it, then 503).
    let (not_found, hn) = grpc("5").await;
    let p = proxy(outbound::Config::default(), &[not_found]).await;
    calls(p).await;
    let n = hn.load(Ordering::Relaxed);
    assert_eq!(n, 200, "a backend answering NOT_FOUND was kept out");
}

/// A gRPC server over HTTP/2 answering every call with one message and then `code` in the
/// trailers (how a server reports an error met while it answers): its address and calls.
async fn grpc_h2_trailers(code: &'static str) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    use http_body_util::BodyExt;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = l.accept().await.unwrap();
            // The message and the trailers go as two writes: Nagle would hold the second.
            tcp.set_nodelay(true).unwrap();
            let h = h.clone();
            let svc = hyper::service::service_fn(move |_req| {
                h.fetch_add(1, Ordering::Relaxed);
                async move {
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", http::HeaderValue::from_static(code));
                    // An empty message: flag 0, length 0.
                    let body = http_body_util::Full::new(bytes::Bytes::from_static(&[0; 5]))
                        .with_trailers(async move { Some(Ok(trailers)) });
                    let r = http::Response::builder()
                        .header("content-type", "application/grpc")
                        .body(body)
                        .unwrap();
                    Ok::<_, std::convert::Infallible>(r)
                }
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc),
            );
        }
    });
    (addr, hits)
}

/// 200 gRPC calls over HTTP/2 through the proxy at `p`, each read to its end: the
/// `grpc-status` of each from its trailers.
async fn grpc_h2_calls(p: std::net::SocketAddr) -> Vec<String> {
    use http_body_util::BodyExt;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let tcp = TcpStream::connect(p).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut statuses = Vec::new();
    for _ in 0..200 {
        let req = http::Request::post("http://web:80/pkg.Svc/Call")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                &[0; 5],
            )))
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let collected = resp.into_body().collect().await.unwrap();
        let status = collected
            .trailers()
            .and_then(|t| t.get("grpc-status"))
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        statuses.push(status);
    }
    statuses
}

/// A gRPC server that fails calls with UNAVAILABLE in the trailers, after its answer began,
/// is ejected like one failing in the headers (Linkerd classifies at the stream's end); one
/// answering NOT_FOUND there is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_backend_failing_in_its_trailers_is_ejected() {
    let (good, hg) = grpc_h2_trailers("0").await;
    let (bad, hb) = grpc_h2_trailers("14").await;
    let p = proxy(outbound::Config::default(), &[good, bad]).await;
    let statuses = grpc_h2_calls(p).await;
    let bad_hits = hb.load(Ordering::Relaxed);
    assert_eq!(
        statuses.iter().filter(|s| *s == "14").count(),
        bad_hits,
        "the trailers reach the client as sent"
    );
    // Judged as answers, it would get about half (no lower bound: see the test above).
    assert!(
        bad_hits <= 12,
        "ejected after 7 failures in a row: {bad_hits} of 200 (good: {})",
        hg.load(Ordering::Relaxed)
    );
    // The only backend, answering NOT_FOUND in its trailers: every call reaches it.
    let (not_found, hn) = grpc_h2_trailers("5").await;
    let p = proxy(outbound::Config::default(), &[not_found]).await;
    let statuses = grpc_h2_calls(p).await;
    assert!(statuses.iter().all(|s| s == "5"), "{statuses:?}");
    assert_eq!(hn.load(Ordering::Relaxed), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_hide_a_backend_failing_20_percent() {
    let (a, ha) = backend(Duration::ZERO, Arc::new(AtomicUsize::new(5))).await;
    let (b, _) = backend(Duration::ZERO, Arc::new(AtomicUsize::new(0))).await;
    let (c, _) = backend(Duration::ZERO, Arc::new(AtomicUsize::new(0))).await;
    let p = proxy(outbound::Config::default(), &[a, b, c]).await;
    let mut conn = TcpStream::connect(p).await.unwrap();
    for i in 0..300 {
        assert_eq!(get(&mut conn).await, 200, "request {i}");
    }
    assert!(
        ha.load(Ordering::Relaxed) >= 5,
        "the flaky backend was used and failed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_caps_retries_when_everything_fails() {
    let always = || Arc::new(AtomicUsize::new(1));
    let (a, ha) = backend(Duration::ZERO, always()).await;
    let (b, hb) = backend(Duration::ZERO, always()).await;
    // The breaker off, so every request reaches a backend and only the budget limits retries.
    let cfg = outbound::Config {
        breaker: breaker::Config {
            max_failures: u32::MAX,
            min_success_rate: 0.0,
            ..breaker::Config::default()
        },
        retry: retry::Config {
            limit: 10,
            ..retry::Config::default()
        },
        ..outbound::Config::default()
    };
    let budget = cfg.retry.budget.clone();
    let p = proxy(cfg, &[a, b]).await;
    let mut conn = TcpStream::connect(p).await.unwrap();
    let n = 500;
    let started = std::time::Instant::now();
    for _ in 0..n {
        assert_eq!(get(&mut conn).await, 503);
    }
    let secs = started.elapsed().as_secs_f64().max(1.0);
    let retries = ha.load(Ordering::Relaxed) + hb.load(Ordering::Relaxed) - n;
    // 20% of requests, plus the reserve: 10/s over the 10 s window (tower's TpsBudget starts
    // with it), plus 10/s for each second the run took.
    let cap = f64::from(budget.percent) * n as f64
        + f64::from(budget.min_per_sec) * (budget.ttl.as_secs_f64() + secs);
    assert!(retries > 0, "retries happen while the budget lasts");
    assert!(
        (retries as f64) <= cap,
        "{retries} retries for {n} requests: over the budget's {cap:.0}"
    );
    // Without the budget, a limit of 10 would have meant up to 10 × 500.
    assert!(retries < n, "{retries}");
}

/// Each Service has its own budget (Linkerd's is per ServiceProfile): a healthy Service's
/// requests do not pay for retries to a failing one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_services_requests_do_not_fund_anothers_retries() {
    let (good, _) = backend(Duration::ZERO, Arc::new(AtomicUsize::new(0))).await;
    let (bad, hits) = backend(Duration::ZERO, Arc::new(AtomicUsize::new(1))).await;
    // The breaker off, so every request to the failing one reaches it.
    let cfg = outbound::Config {
        breaker: breaker::Config {
            max_failures: u32::MAX,
            min_success_rate: 0.0,
            ..breaker::Config::default()
        },
        ..outbound::Config::default()
    };
    let budget = cfg.retry.budget.clone();
    let mut d = Static::default();
    d.parse_entry(&format!("web:80={good}")).unwrap();
    d.parse_entry(&format!("bad:80={bad}")).unwrap();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let p = l.local_addr().unwrap();
    tokio::spawn(Outbound::new(cfg, Arc::new(support::NoCreds), d).serve(l, Watch::never()));
    let mut conn = TcpStream::connect(p).await.unwrap();
    let started = std::time::Instant::now();
    // Deposits enough to fund a retry for every request that follows, were it shared.
    for _ in 0..2000 {
        assert_eq!(get(&mut conn).await, 200);
    }
    let n = 300;
    for _ in 0..n {
        conn.write_all(b"GET http://bad:80/ HTTP/1.1\r\nHost: bad:80\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_status(&mut conn).await, 503);
    }
    let secs = started.elapsed().as_secs_f64().max(1.0);
    let retries = hits.load(Ordering::Relaxed) - n;
    // Its own: 20% of its requests plus the reserve and 10/s (as in the test above).
    let cap = f64::from(budget.percent) * n as f64
        + f64::from(budget.min_per_sec) * (budget.ttl.as_secs_f64() + secs);
    assert!(
        (retries as f64) <= cap && retries < n,
        "{retries} retries for {n} failing requests: over its own budget's {cap:.0}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_its_timeout_gets_a_504_quickly() {
    let (slow, _) = backend(Duration::from_secs(5), Arc::new(AtomicUsize::new(0))).await;
    let cfg = outbound::Config {
        request_timeout: Some(Duration::from_millis(200)),
        ..outbound::Config::default()
    };
    let p = proxy(cfg, &[slow]).await;
    let mut conn = TcpStream::connect(p).await.unwrap();
    let started = std::time::Instant::now();
    assert_eq!(get(&mut conn).await, 504);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(2),
        "{took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_shorter_than_the_failfast_wait_is_a_504_and_fails_nothing_fast() {
    // The only endpoint refuses connections: a request waits for it to come back, but its own
    // timeout (300 ms) ends the wait long before the fail-fast timeout (3 s) would. It is
    // answered 504, and the next request waits its own time again: one request's timeout
    // does not mark the Service as down.
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let cfg = outbound::Config {
        request_timeout: Some(Duration::from_millis(300)),
        ..outbound::Config::default()
    };
    let p = proxy(cfg, &[dead]).await;
    let mut conn = TcpStream::connect(p).await.unwrap();
    for i in 0..2 {
        let started = std::time::Instant::now();
        assert_eq!(get(&mut conn).await, 504, "request {i}");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_secs(2),
            "request {i}: {took:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_of_requests_waiting_for_an_endpoint_is_bounded() {
    // The only endpoint refuses connections, and one request may wait at a time: the first
    // waits (the gauge says so), the second is answered at once, and the first hears why
    // its endpoint failed once the fail-fast timeout is over.
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let cfg = outbound::Config {
        queue_capacity: 1,
        failfast: Duration::from_secs(2),
        ..outbound::Config::default()
    };
    let mut d = Static::default();
    d.parse_entry(&format!("web:80={dead}")).unwrap();
    let out = Outbound::new(cfg, Arc::new(support::NoCreds), d);
    let metrics = out.metrics.clone();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let p = l.local_addr().unwrap();
    tokio::spawn(out.serve(l, Watch::never()));
    let gauge =
        || support::metric(&metrics, "meshwork_proxy_outbound_queued_requests").unwrap_or(-1);
    let first = tokio::spawn(async move {
        let mut conn = TcpStream::connect(p).await.unwrap();
        get(&mut conn).await
    });
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    while gauge() != 1 {
        assert!(
            tokio::time::Instant::now() < until,
            "the first request never queued"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = std::time::Instant::now();
    let mut conn = TcpStream::connect(p).await.unwrap();
    assert_eq!(get(&mut conn).await, 503);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(metrics
        .encode()
        .contains("meshwork_proxy_refused_total{reason=\"queue_full\"} 1"));
    assert_eq!(first.await.unwrap(), 502);
    assert_eq!(gauge(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_one_service_keeps_anothers_ejections() {
    let (good, _) = backend(Duration::ZERO, Arc::new(AtomicUsize::new(0))).await;
    let (bad, hb) = backend(Duration::ZERO, Arc::new(AtomicUsize::new(1))).await;
    let (other, ho) = backend(Duration::ZERO, Arc::new(AtomicUsize::new(0))).await;
    let mut d = Static::default();
    d.parse_entry(&format!("web:80={good},{bad}")).unwrap();
    d.parse_entry(&format!("other:80={other}")).unwrap();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let p = l.local_addr().unwrap();
    let creds: Arc<dyn meshwork_proxy::tls::Credentials> = Arc::new(support::NoCreds);
    // A penalty far longer than the test: a loaded machine must not see the probe come.
    let cfg = outbound::Config {
        breaker: breaker::Config {
            min_penalty: Duration::from_secs(60),
            ..Default::default()
        },
        ..outbound::Config::default()
    };
    tokio::spawn(Outbound::new(cfg, creds, d).serve(l, Watch::never()));
    let mut conn = TcpStream::connect(p).await.unwrap();
    let send = |authority: &'static str| {
        format!("GET http://{authority}/ HTTP/1.1\r\nHost: {authority}\r\n\r\n")
    };
    // The balancer prefers the faster endpoint, so how many requests it takes until the
    // failing one has had its 7 depends on the machine: send until it has, then some more.
    let mut sent = 0;
    while hb.load(Ordering::Relaxed) < 7 && sent < 2000 {
        conn.write_all(send("web:80").as_bytes()).await.unwrap();
        assert_eq!(read_status(&mut conn).await, 200);
        sent += 1;
    }
    for _ in 0..50 {
        conn.write_all(send("web:80").as_bytes()).await.unwrap();
        assert_eq!(read_status(&mut conn).await, 200);
    }
    let ejected_at = hb.load(Ordering::Relaxed);
    assert!(
        (7..=9).contains(&ejected_at),
        "{ejected_at} after {sent} + 50"
    );
    // Requests to another Service, then to web again, within web's 1 s penalty.
    for _ in 0..5 {
        conn.write_all(send("other:80").as_bytes()).await.unwrap();
        assert_eq!(read_status(&mut conn).await, 200);
    }
    assert_eq!(ho.load(Ordering::Relaxed), 5);
    for _ in 0..20 {
        conn.write_all(send("web:80").as_bytes()).await.unwrap();
        assert_eq!(read_status(&mut conn).await, 200);
    }
    assert_eq!(hb.load(Ordering::Relaxed), ejected_at, "still ejected");
}

/// A backend that resets every connection (SO_LINGER 0) while `resetting`, and answers 200
/// otherwise; each accepted connection is stamped with when it came.
async fn resetting_backend(
    resetting: Arc<std::sync::atomic::AtomicBool>,
) -> (
    std::net::SocketAddr,
    Arc<std::sync::Mutex<Vec<(std::time::Instant, bool)>>>,
) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = l.accept().await.unwrap();
            let reset = resetting.load(Ordering::Relaxed);
            s2.lock().unwrap().push((std::time::Instant::now(), reset));
            if reset {
                tcp.set_zero_linger().unwrap();
                drop(tcp);
                continue;
            }
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from_static(b"ok")),
                    ))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_resetting_every_connection_is_out_within_a_second_and_probed_back() {
    let resetting = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let (good, _) = backend(Duration::ZERO, Arc::new(AtomicUsize::new(0))).await;
    let (bad, seen) = resetting_backend(resetting.clone()).await;
    let metrics = meshwork_proxy::metrics::Metrics::new();
    let p = support::proxy_with(outbound::Config::default(), &[good, bad], metrics.clone()).await;
    let mut conn = TcpStream::connect(p).await.unwrap();
    let start = std::time::Instant::now();
    // Two and a half seconds of requests every 5 ms: none fails (retries), and the resetting
    // backend sees connections only in its first second and as probes after each penalty.
    while start.elapsed() < Duration::from_millis(2500) {
        assert_eq!(get(&mut conn).await, 200);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let stamps: Vec<Duration> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|(t, _)| *t - start)
        .collect();
    // Out within the first second, then only tried alone. Which mechanism takes it out is a
    // race with the reset: a reset before the pooled connection is in use is a failed
    // connect, and from it every failure doubles the reconnect back-off (100 ms, 200 ms, ...:
    // Linkerd's); resets of requests in flight are failures the breaker counts, and 7 in a
    // row eject it (Linkerd's breaker; then a probe when each penalty ends, 1 s, then 2 s,
    // jitter 0.5). Never again in a run of requests.
    assert!(!stamps.is_empty(), "the resetting backend was never tried");
    let backoff_or_ejected = metrics.ejections.get() >= 1 || stamps.len() <= 6;
    assert!(
        backoff_or_ejected,
        "neither ejected nor spaced by the reconnect back-off: {stamps:?}"
    );
    let early = stamps
        .iter()
        .filter(|t| **t < Duration::from_secs(1))
        .count();
    assert!(
        early <= 8,
        "{early} connections in the first second (7 failures, then at most one probe): {stamps:?}"
    );
    let late = &stamps[early.saturating_sub(1)..];
    assert!(
        late.windows(2)
            .all(|w| w[1] - w[0] >= Duration::from_millis(300)),
        "still tried in a run after the first second: {stamps:?}"
    );
    assert!(
        stamps.len() - early <= 3,
        "{} connections after the first second (probes only): {stamps:?}",
        stamps.len() - early
    );
    // Recovered: a probe finds it serving and it takes requests again.
    resetting.store(false, Ordering::Relaxed);
    let back = std::time::Instant::now();
    loop {
        assert_eq!(get(&mut conn).await, 200);
        let served = seen.lock().unwrap().iter().filter(|(_, r)| !*r).count();
        if served > 0 {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(6),
            "no probe reached the recovered backend"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A pod that refused a connection (still starting) and then answers 503 (still warming up)
/// is judged by the breaker on its answers, not kept out by the reconnect back-off: once it
/// listens, requests reach it at once, until the breaker's seven failures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_after_a_failed_connect_are_the_breakers_not_the_back_offs() {
    // A port nothing listens on yet: bound, not listening (kept, so no other test's listener
    // can take it meanwhile).
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = sock.local_addr().unwrap();
    let cfg = outbound::Config {
        retry: retry::Config {
            limit: 0,
            ..Default::default()
        },
        failfast: Duration::from_secs(2),
        ..Default::default()
    };
    let p = proxy(cfg, &[addr]).await;
    let mut conn = TcpStream::connect(p).await.unwrap();
    // The first request finds the port closed; it waits (the only endpoint sits out its
    // back-off) while the pod comes up answering 503.
    conn.write_all(b"GET http://web:80/ HTTP/1.1\r\nHost: web:80\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let l = sock.listen(1024).unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    support::serve_http1(l, move |_req| {
        h.fetch_add(1, Ordering::Relaxed);
        async {
            let mut r = http::Response::new(http_body_util::Full::new(bytes::Bytes::from_static(
                b"warming up",
            )));
            *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
            Ok::<_, std::convert::Infallible>(r)
        }
    });
    assert_eq!(read_status(&mut conn).await, 503);
    // Five more, each answered by the pod without sitting out a back-off in between (they
    // would wait 200, 400, 800, 1600 ms if each 503 stepped it).
    let started = std::time::Instant::now();
    for _ in 0..5 {
        assert_eq!(get(&mut conn).await, 503);
    }
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "five answers took {:?}",
        started.elapsed()
    );
    assert_eq!(hits.load(Ordering::Relaxed), 6);
}
