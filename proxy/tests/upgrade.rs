//! HTTP/1.1 upgrades (WebSocket's handshake) through the outbound and inbound stacks on
//! loopback: to a meshed endpoint (a CONNECT stream on the mTLS session, the server's proxy
//! setting the client identity) and to one outside the mesh (plain TCP), the 101 comes back
//! and bytes then pass both ways, transformed by the app, until the client closes; an app
//! that does not switch protocols is answered as it answered.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic with its location is the failure report"
)]

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
};

mod support;

use meshwork_proxy::{
    drain::Watch,
    inbound::{self, Inbound},
    outbound::{discover::Static, Outbound},
};
use support::{test_ca, Creds};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// An app that switches to its `echo` protocol (answers each read upper-cased until the
/// client closes), saying in a header which client identity the request carried; anything
/// else gets a 426 naming the upgrade it saw. Counts the connections it accepts.
async fn echo_app() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = l.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |mut req: http::Request<hyper::body::Incoming>| async move {
                        let id = req
                            .headers()
                            .get("meshwork-client-id")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("none")
                            .to_string();
                        let seen = req
                            .headers()
                            .get(http::header::UPGRADE)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("none")
                            .to_string();
                        let echo = seen == "echo";
                        let mut resp = http::Response::new(http_body_util::Full::new(
                            bytes::Bytes::from(format!("echo, not {seen}\n")),
                        ));
                        if !echo {
                            *resp.status_mut() = http::StatusCode::UPGRADE_REQUIRED;
                            return Ok::<_, std::convert::Infallible>(resp);
                        }
                        let on = hyper::upgrade::on(&mut req);
                        tokio::spawn(async move {
                            let mut io = hyper_util::rt::TokioIo::new(on.await.unwrap());
                            let mut buf = [0u8; 1024];
                            loop {
                                let n = io.read(&mut buf).await.unwrap_or(0);
                                if n == 0 {
                                    break;
                                }
                                buf[..n].make_ascii_uppercase();
                                io.write_all(&buf[..n]).await.unwrap();
                            }
                        });
                        *resp.body_mut() = http_body_util::Full::new(bytes::Bytes::new());
                        *resp.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
                        let h = resp.headers_mut();
                        h.insert(http::header::UPGRADE, "echo".parse().unwrap());
                        h.insert(http::header::CONNECTION, "upgrade".parse().unwrap());
                        h.insert("seen-client-id", id.parse().unwrap());
                        Ok(resp)
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    (addr, accepted)
}

/// Sends an upgrade request for `protocol` to `authority` through the outbound proxy (with a
/// forged identity header); returns the connection and the response head.
async fn upgrade(proxy: SocketAddr, authority: &str, protocol: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let req = format!(
        "GET http://{authority}/chat HTTP/1.1\r\nHost: {authority}\r\n\
         Connection: Upgrade\r\nUpgrade: {protocol}\r\n\
         meshwork-client-id: spiffe://cluster.local/ns/kube-system/sa/admin\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut b).await.unwrap(),
            1,
            "closed in the head: {head:?}"
        );
        head.push(b[0]);
    }
    (s, String::from_utf8(head).unwrap().to_ascii_lowercase())
}

/// Writes `text` on the switched connection and reads back what the app made of it.
async fn echo(s: &mut TcpStream, text: &str) -> String {
    s.write_all(text.as_bytes()).await.unwrap();
    let mut got = vec![0u8; text.len()];
    s.read_exact(&mut got).await.unwrap();
    String::from_utf8(got).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_switch_protocols_through_both_proxies_and_outside_the_mesh() {
    let ca = test_ca();
    let client = Creds::new(&ca, "spiffe://cluster.local/ns/default/sa/client");
    let web = Creds::new(&ca, "spiffe://cluster.local/ns/default/sa/web");
    let (app, accepted) = echo_app().await;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let inbound_port = l.local_addr().unwrap().port();
    tokio::spawn(Inbound::new(inbound::Config::default(), web).serve(l, Watch::never()));
    // Each Service also lists an endpoint nobody answers at (a pod gone): an upgrade that
    // cannot reach it goes to the other, as a request would, never a 502.
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let mut d = Static::default();
    let id = "spiffe://cluster.local/ns/default/sa/web";
    d.parse_entry(&format!(
        "web.default.svc.cluster.local:80={dead}@{}@{id},{app}@{inbound_port}@{id}",
        dead.port()
    ))
    .unwrap();
    d.parse_entry(&format!("legacy.default.svc.cluster.local:80={dead},{app}"))
        .unwrap();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let outbound = l.local_addr().unwrap();
    tokio::spawn(Outbound::new(Default::default(), client, d).serve(l, Watch::never()));

    for (authority, identity) in [
        // Meshed: the server's proxy says who the client is (the forged header never arrives).
        (
            "web.default.svc.cluster.local:80",
            "spiffe://cluster.local/ns/default/sa/client",
        ),
        // Outside the mesh: plain TCP, and nobody vouches for the client.
        ("legacy.default.svc.cluster.local:80", "none"),
    ] {
        // Several, so that the dead endpoint is picked (P2C) and sat out in turn.
        for _ in 0..5 {
            let (_, head) = upgrade(outbound, authority, "echo").await;
            assert!(head.starts_with("http/1.1 101"), "{authority}: {head}");
        }
        let before = accepted.load(Ordering::SeqCst);
        let (mut s, head) = upgrade(outbound, authority, "echo").await;
        assert!(head.starts_with("http/1.1 101"), "{authority}: {head}");
        // One connection to the app for the upgrade: none made and dropped on the way.
        assert_eq!(accepted.load(Ordering::SeqCst) - before, 1, "{authority}");
        assert!(head.contains("upgrade: echo"), "{authority}: {head}");
        assert!(
            head.contains(&format!("seen-client-id: {identity}")),
            "{authority}: {head}"
        );
        // Both ways, more than once, on the same connection.
        assert_eq!(echo(&mut s, "hello").await, "HELLO");
        assert_eq!(echo(&mut s, "over the mesh").await, "OVER THE MESH");
        // The client closes its side: the app's loop ends, and so does the connection.
        s.shutdown().await.unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "{authority}: {rest:?}");

        // An app that does not switch: its answer, as it gave it. An offer of h2c alone is
        // not passed on: the request arrives as plain HTTP/1.1.
        for (offer, seen) in [("chat", "echo, not chat\n"), ("h2c", "echo, not none\n")] {
            let (mut s, head) = upgrade(outbound, authority, offer).await;
            assert!(
                head.starts_with("http/1.1 426"),
                "{authority} {offer}: {head}"
            );
            let mut body = vec![0u8; seen.len()];
            s.read_exact(&mut body).await.unwrap();
            assert_eq!(
                String::from_utf8(body).unwrap(),
                seen,
                "{authority} {offer}"
            );
        }
    }
}

/// An app that takes the upgrade request and never answers: with a request timeout the
/// client gets a 504 once it passes, as any request would (it waited for ever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_the_app_never_answers_ends_at_the_request_timeout() {
    let app = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_addr = app.local_addr().unwrap();
    let (held_tx, mut held) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = app.accept().await.unwrap();
            let mut b = [0u8; 1024];
            let _ = s.read(&mut b).await;
            // Kept open, unanswered, for the test's length.
            let _ = held_tx.send(s);
        }
    });
    let mut d = Static::default();
    d.parse_entry(&format!("silent.default.svc.cluster.local:80={app_addr}"))
        .unwrap();
    let cfg = meshwork_proxy::outbound::Config {
        request_timeout: Some(std::time::Duration::from_millis(300)),
        ..Default::default()
    };
    let ca = test_ca();
    let client = Creds::new(&ca, "spiffe://cluster.local/ns/default/sa/client");
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let outbound = l.local_addr().unwrap();
    tokio::spawn(Outbound::new(cfg, client, d).serve(l, Watch::never()));

    let started = std::time::Instant::now();
    let (_, head) = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        upgrade(outbound, "silent.default.svc.cluster.local:80", "echo"),
    )
    .await
    .expect("no answer 5 s after the upgrade request: the request timeout did not apply");
    assert!(head.starts_with("http/1.1 504"), "{head}");
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    // The request did reach the app (the wait was for its answer, not for an endpoint).
    assert!(held.try_recv().is_ok());
}
