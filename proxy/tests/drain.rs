//! Graceful drain through the real outbound stack on loopback: a request in flight when the
//! drain begins finishes with its answer, its connection then closes, the listener takes no
//! new connection, and the drain reports everything done within the grace period. A tunnel
//! holds the drain until it closes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic with its location is the failure report"
)]

use std::{sync::Arc, time::Duration};

mod support;

use meshwork_proxy::{
    drain,
    outbound::{discover::Static, Outbound},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Notify,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_requests_finish_and_nothing_new_is_taken() {
    // A backend that answers 300 ms after it has the request, and says when it has it.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = l.local_addr().unwrap();
    let got = Arc::new(Notify::new());
    let g = got.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = l.accept().await.unwrap();
            let g = g.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let g = g.clone();
                    async move {
                        g.notify_one();
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from_static(b"done")),
                        ))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    let mut d = Static::default();
    d.parse_entry(&format!("web:80={backend}")).unwrap();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = l.local_addr().unwrap();
    let (signal, watch) = drain::channel();
    let creds: Arc<dyn meshwork_proxy::tls::Credentials> = Arc::new(support::NoCreds);
    let serving = tokio::spawn(Outbound::new(Default::default(), creds, d).serve(l, watch));

    let mut conn = TcpStream::connect(proxy).await.unwrap();
    conn.write_all(b"GET http://web:80/ HTTP/1.1\r\nHost: web:80\r\n\r\n")
        .await
        .unwrap();
    // The drain begins while the backend holds the request.
    got.notified().await;
    let draining = tokio::spawn(signal.drain(Duration::from_secs(5)));
    // The accept loop ends: new connections are refused.
    tokio::time::timeout(Duration::from_secs(2), serving)
        .await
        .expect("the listener closes when the drain begins")
        .unwrap();
    assert!(
        TcpStream::connect(proxy).await.is_err(),
        "a new connection after the drain"
    );
    // The request in flight gets its answer, then the connection closes (keep-alive ends).
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), conn.read_to_string(&mut out))
        .await
        .expect("the connection closes after its last answer")
        .unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.ends_with("done"), "{out}");
    assert!(
        draining.await.unwrap(),
        "every connection finished within the grace"
    );
}

/// A CONNECT tunnel (or a WebSocket) outlives the HTTP/1 connection it was made on: hyper's
/// connection ends at the upgrade, so the tunnel itself must hold the drain, or the proxy
/// would exit under it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbound_tunnel_holds_the_drain_until_it_closes() {
    // An echo backend.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let mut d = Static::default();
    d.parse_entry(&format!("db:7000={backend}")).unwrap();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = l.local_addr().unwrap();
    let (signal, watch) = drain::channel();
    let creds: Arc<dyn meshwork_proxy::tls::Credentials> = Arc::new(support::NoCreds);
    let serving = tokio::spawn(Outbound::new(Default::default(), creds, d).serve(l, watch));

    let mut tunnel = support::connect_tunnel(proxy, "db:7000").await;
    let echo = async |t: &mut TcpStream| {
        t.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        t.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
    };
    echo(&mut tunnel).await;

    let mut draining = tokio::spawn(signal.drain(Duration::from_secs(30)));
    tokio::time::timeout(Duration::from_secs(2), serving)
        .await
        .expect("the listener closes when the drain begins")
        .unwrap();
    // The tunnel still carries bytes, and the drain waits for it...
    echo(&mut tunnel).await;
    assert!(
        !draining.is_finished(),
        "the drain ended with a tunnel open"
    );
    // ...until it closes.
    drop(tunnel);
    let done = tokio::time::timeout(Duration::from_secs(10), &mut draining)
        .await
        .expect("the drain did not end when the tunnel closed")
        .unwrap();
    assert!(done, "every connection finished within the grace");
}
