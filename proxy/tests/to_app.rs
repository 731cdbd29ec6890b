//! The inbound proxy's connections to its app. HTTP/2: each client connection of the inbound
//! proxy (a peer pod's session, a plaintext client) gets its own HTTP/2 connection to the app,
//! as it would without the proxy; one client holding the app's stream limit with long calls
//! does not hold up another's, and a client's connection to the app closes when the client
//! goes. And every connection to the app comes from 127.0.0.6 (`inbound::APP_SOURCE`), and
//! both sockets of a relay carry TCP keep-alive.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic with its location is the failure report"
)]

use std::{sync::Arc, time::Duration};

mod support;

use hyper_util::rt::{TokioExecutor, TokioIo};
use meshwork_proxy::{
    drain::Watch,
    inbound::{self, Inbound},
};
use support::{test_ca, Creds};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{mpsc, Notify},
};

/// A request for `path` from a new HTTP/2 (prior knowledge) client connection to `to`: its
/// status, and the connection's handle (dropping it closes the connection).
async fn h2_get(
    to: std::net::SocketAddr,
    path: &str,
) -> (
    http::StatusCode,
    hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
) {
    let tcp = TcpStream::connect(to).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get(format!("http://app{path}"))
        .body(http_body_util::Empty::new())
        .unwrap();
    let status = send.send_request(req).await.unwrap().status();
    (status, send)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_client_has_its_own_http2_connection_to_the_app() {
    // The app: HTTP/2 with a limit of one stream per connection; `/slow` is answered once
    // `release` is notified. Each connection's end is reported.
    let l = TcpListener::bind("127.0.0.2:0").await.unwrap();
    let app = l.local_addr().unwrap();
    let (release, got) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let (ended_tx, mut ended) = mpsc::unbounded_channel();
    let (r, g) = (release.clone(), got.clone());
    tokio::spawn(async move {
        loop {
            let (tcp, _) = l.accept().await.unwrap();
            let (r, g, ended) = (r.clone(), g.clone(), ended_tx.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: hyper::Request<_>| {
                    let (r, g) = (r.clone(), g.clone());
                    async move {
                        if req.uri().path() == "/slow" {
                            g.notify_one();
                            r.notified().await;
                        }
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Empty::<bytes::Bytes>::new(),
                        ))
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .max_concurrent_streams(1)
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
                let _ = ended.send(());
            });
        }
    });
    // The inbound proxy on the app's port (plaintext goes to the port it was addressed to).
    let ca = test_ca();
    let web = Creds::new(&ca, "spiffe://cluster.local/ns/default/sa/web");
    let cfg = inbound::Config {
        app_ip: Some(app.ip()),
        ..Default::default()
    };
    let l = TcpListener::bind(("127.0.0.3", app.port())).await.unwrap();
    let proxy = l.local_addr().unwrap();
    tokio::spawn(Inbound::new(cfg, web).serve(l, Watch::never()));

    // A first client holds the app's one stream...
    let slow = tokio::spawn(h2_get(proxy, "/slow"));
    got.notified().await;
    // ...a second is answered meanwhile, on a connection of its own.
    let (status, fast) = tokio::time::timeout(Duration::from_secs(5), h2_get(proxy, "/fast"))
        .await
        .expect("a client waited behind another's stream at the app");
    assert_eq!(status, 200);
    // The second client goes: its connection to the app closes.
    drop(fast);
    tokio::time::timeout(Duration::from_secs(5), ended.recv())
        .await
        .expect("a client's connection to the app outlived the client")
        .unwrap();
    release.notify_one();
    let (status, _) = slow.await.unwrap();
    assert_eq!(status, 200);
}

/// The app sees the proxy's connections come from 127.0.0.6 (`inbound::APP_SOURCE`), the
/// address the kernel's steering lets through to it: HTTP/1 through the pooled client, and a
/// relay of bytes that are not HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_is_reached_from_the_proxys_own_source_address() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = TcpListener::bind("127.0.0.2:0").await.unwrap();
    let app = l.local_addr().unwrap();
    let (peers_tx, mut peers) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (mut tcp, peer) = l.accept().await.unwrap();
            let _ = peers_tx.send(peer.ip());
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let n = tcp.read(&mut buf).await.unwrap_or(0);
                let reply: &[u8] = if buf[..n].starts_with(b"GET") {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                } else {
                    b"pong"
                };
                let _ = tcp.write_all(reply).await;
            });
        }
    });
    let ca = test_ca();
    let web = Creds::new(&ca, "spiffe://cluster.local/ns/default/sa/web");
    let cfg = inbound::Config {
        app_ip: Some(app.ip()),
        detect_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let l = TcpListener::bind(("127.0.0.3", app.port())).await.unwrap();
    let proxy = l.local_addr().unwrap();
    tokio::spawn(Inbound::new(cfg, web).serve(l, Watch::never()));
    for (send, want) in [
        (
            &b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n"[..],
            "HTTP/1.1 200",
        ),
        (&b"ping\n"[..], "pong"),
    ] {
        let mut s = TcpStream::connect(proxy).await.unwrap();
        s.write_all(send).await.unwrap();
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
            .await
            .expect("an answer within 5 s")
            .unwrap();
        assert!(out.starts_with(want), "{out}");
        let from = peers.recv().await.unwrap();
        assert_eq!(from, meshwork_proxy::inbound::APP_SOURCE, "{want}");
    }
}

/// The sockets of a relay — the client's, accepted, and the proxy's to the app — carry TCP
/// keep-alive (10 s), so a peer that vanished without a FIN is found and the relay ends; the
/// kernel shows the timer (`ss -o`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relays_sockets_carry_keepalive() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = TcpListener::bind("127.0.0.2:0").await.unwrap();
    let app = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                let _ = tcp.read(&mut buf).await;
                let _ = tcp.write_all(b"pong\n").await;
                // Held open until the client goes.
                let _ = tcp.read(&mut buf).await;
            });
        }
    });
    let ca = test_ca();
    let web = Creds::new(&ca, "spiffe://cluster.local/ns/default/sa/web");
    let cfg = inbound::Config {
        app_ip: Some(app.ip()),
        ..Default::default()
    };
    let l = TcpListener::bind(("127.0.0.3", app.port())).await.unwrap();
    let proxy = l.local_addr().unwrap();
    tokio::spawn(Inbound::new(cfg, web).serve(l, Watch::never()));
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let client = s.local_addr().unwrap();
    s.write_all(b"ping\n").await.unwrap();
    let mut buf = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
        .await
        .expect("the relay's answer")
        .unwrap();
    let out = std::process::Command::new("ss")
        .args(["-tnoH", "state", "established"])
        .output()
        .expect("ss (iproute2) runs");
    let out = String::from_utf8_lossy(&out.stdout);
    // `ss` columns: queues, local, peer, timer; `local` may be a prefix.
    let line_of = |local: &str, peer: &str| {
        out.lines()
            .find(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() >= 4 && f[2].starts_with(local) && f[3] == peer
            })
            .unwrap_or_else(|| panic!("no socket {local} -> {peer} in:\n{out}"))
            .to_string()
    };
    let accepted = line_of(&proxy.to_string(), &client.to_string());
    assert!(accepted.contains("timer:(keepalive"), "{accepted}");
    let to_app = line_of("127.0.0.6:", &app.to_string());
    assert!(to_app.contains("timer:(keepalive"), "{to_app}");
}
