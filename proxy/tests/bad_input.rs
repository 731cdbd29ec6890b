//! Bad input at the outbound listener (the app's side; the inbound's plaintext side runs the
//! same HTTP servers, `accept.rs`): a malformed request gets 400, oversized headers 431, a
//! client that never finishes its headers is cut off at the header-read timeout, a garbage
//! HTTP/2 frame gets the connection closed; each is counted by reason, and the proxy keeps
//! serving everyone else.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic with its location is the failure report"
)]

use std::{
    sync::{atomic::AtomicUsize, Arc},
    time::{Duration, Instant},
};

mod support;

use meshwork_proxy::{
    drain::Watch,
    outbound::{self, discover::Static, Outbound},
};
use support::{backend, get};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// Everything the proxy sends until it closes (or 5 s pass).
async fn reply(conn: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut out)).await;
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_clients_get_their_error_and_everyone_else_is_served() {
    let (b, _) = backend(Duration::ZERO, Arc::new(AtomicUsize::new(0))).await;
    let mut d = Static::default();
    d.parse_entry(&format!("web:80={b}")).unwrap();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let p = l.local_addr().unwrap();
    let out = Outbound::new(
        outbound::Config {
            header_read_timeout: Duration::from_millis(500),
            ..Default::default()
        },
        Arc::new(support::NoCreds),
        d,
    );
    let metrics = out.metrics.clone();
    tokio::spawn(out.serve(l, Watch::never()));
    // A well-behaved client, busy on one connection across all of it.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let good = tokio::spawn(async move {
        let mut conn = TcpStream::connect(p).await.unwrap();
        let mut n = 0;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            assert_eq!(get(&mut conn).await, 200);
            n += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        n
    });

    let mut c = TcpStream::connect(p).await.unwrap();
    c.write_all(b"GET http://web:80/ HTTP/1.1\r\nHost web\r\n\r\n")
        .await
        .unwrap();
    let r = reply(&mut c).await;
    assert!(
        r.starts_with(b"HTTP/1.1 400"),
        "{:?}",
        String::from_utf8_lossy(&r)
    );

    let mut c = TcpStream::connect(p).await.unwrap();
    let big = "a".repeat(512 * 1024);
    let req = format!("GET http://web:80/ HTTP/1.1\r\nHost: web\r\nx-big: {big}\r\n\r\n");
    let _ = c.write_all(req.as_bytes()).await;
    let r = reply(&mut c).await;
    assert!(
        r.starts_with(b"HTTP/1.1 431"),
        "{:?}",
        String::from_utf8_lossy(&r[..r.len().min(64)])
    );

    // Slowloris: headers that never end.
    let mut c = TcpStream::connect(p).await.unwrap();
    c.write_all(b"GET http://web:80/ HTTP/1.1\r\nHost: web\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let r = reply(&mut c).await;
    let held = started.elapsed();
    assert!(
        held < Duration::from_secs(3),
        "a slow client held its connection {held:?}: {:?}",
        String::from_utf8_lossy(&r)
    );

    // HTTP/2: the preface, then a SETTINGS frame whose length is not a multiple of 6.
    let mut c = TcpStream::connect(p).await.unwrap();
    c.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    c.write_all(&[0, 0, 5, 4, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5])
        .await
        .unwrap();
    let r = reply(&mut c).await;
    // The server's frames: a GOAWAY (type 7) with an error code (its last 4 payload bytes).
    let mut i = 0;
    let mut goaway = None;
    while i + 9 <= r.len() {
        let len = usize::from(r[i]) << 16 | usize::from(r[i + 1]) << 8 | usize::from(r[i + 2]);
        if r[i + 3] == 7 && len >= 8 && i + 9 + len <= r.len() {
            let p = &r[i + 9..i + 9 + len];
            goaway = Some(u32::from_be_bytes([p[4], p[5], p[6], p[7]]));
        }
        i += 9 + len;
    }
    assert!(
        goaway.is_some_and(|code| code != 0),
        "no GOAWAY with an error: {r:02x?}"
    );

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let served = good.await.expect("the good client saw a failure");
    assert!(served > 10, "the good client was served {served} times");
    let text = metrics.encode();
    for reason in [
        "malformed_http",
        "headers_too_large",
        "header_timeout",
        "http2_protocol",
    ] {
        let line = format!("meshwork_proxy_refused_total{{reason=\"{reason}\"}} 1");
        assert!(text.contains(&line), "{line} not in\n{text}");
    }
}

/// A client that stalls in a body the proxy holds (a POST within the 64 KiB cap) is answered
/// 408 at the request timeout, and never reaches the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_stalling_in_a_held_body_gets_408_at_the_request_timeout() {
    let (b, hits) = backend(Duration::ZERO, Arc::new(AtomicUsize::new(0))).await;
    let mut d = Static::default();
    d.parse_entry(&format!("web:80={b}")).unwrap();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let p = l.local_addr().unwrap();
    let out = Outbound::new(
        outbound::Config {
            request_timeout: Some(Duration::from_millis(400)),
            ..Default::default()
        },
        Arc::new(support::NoCreds),
        d,
    );
    tokio::spawn(out.serve(l, Watch::never()));
    let mut c = TcpStream::connect(p).await.unwrap();
    c.write_all(
        b"POST http://web:80/ HTTP/1.1\r\nHost: web\r\nContent-Length: 100\r\n\r\n0123456789",
    )
    .await
    .unwrap();
    let started = Instant::now();
    let r = reply(&mut c).await;
    assert!(
        r.starts_with(b"HTTP/1.1 408"),
        "{:?}",
        String::from_utf8_lossy(&r)
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(hits.load(std::sync::atomic::Ordering::Relaxed), 0);
}

/// A connection to `to` from `from` (a loopback address other than 127.0.0.1 stands for a
/// caller elsewhere in the cluster).
async fn connect_from(from: &str, to: std::net::SocketAddr) -> TcpStream {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind(format!("{from}:0").parse().unwrap()).unwrap();
    s.connect(to).await.unwrap()
}

/// `GET /live` from `from` to the admin port at `admin`, and the whole answer.
async fn live(from: &str, admin: std::net::SocketAddr) -> String {
    let mut s = connect_from(from, admin).await;
    s.write_all(b"GET /live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    String::from_utf8(reply(&mut s).await).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_port_caps_connections_per_caller_and_closes_silent_ones() {
    let l = TcpListener::bind("0.0.0.0:0").await.unwrap();
    let admin: std::net::SocketAddr = format!("127.0.0.1:{}", l.local_addr().unwrap().port())
        .parse()
        .unwrap();
    let metrics = meshwork_proxy::metrics::Metrics::new();
    tokio::spawn(meshwork_proxy::admin::serve(
        l,
        metrics.clone(),
        Arc::new(meshwork_proxy::admin::State::default()),
    ));
    // One caller sending nothing holds every slot it may have.
    let mut silent = Vec::new();
    for _ in 0..16 {
        silent.push(connect_from("127.0.0.2", admin).await);
    }
    // One more from it is closed at once, and counted.
    let mut extra = connect_from("127.0.0.2", admin).await;
    let mut b = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), extra.read(&mut b))
        .await
        .expect("a connection past the caller's cap is closed at once");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    assert_eq!(
        support::metric(
            &metrics,
            "meshwork_proxy_refused_total{reason=\"admin_connections\"}"
        ),
        Some(1)
    );
    // Another caller (the node's kubelet, say) is still answered, and so is localhost.
    for from in ["127.0.0.3", "127.0.0.1"] {
        let out = live(from, admin).await;
        assert!(out.starts_with("HTTP/1.1 200"), "{from}: {out}");
    }
    // The silent ones are closed at the header-read timeout (5 s), which frees the slots.
    for mut s in silent {
        let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut b))
            .await
            .expect("a silent admin connection is closed at the header-read timeout");
        assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    }
    let out = live("127.0.0.2", admin).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}
