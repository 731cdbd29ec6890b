//! The transport metrics (`tcp_read_bytes`, `tcp_write_bytes`, by direction): every byte an
//! accepted connection carries counts once, whatever the stack does with it — an HTTP request
//! over the mesh, and a CONNECT tunnel whose bytes the proxy also relays. The outbound
//! proxy's counts are exactly what the client sent and received; the inbound proxy's are
//! the mesh session's (TLS included).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic with its location is the failure report"
)]

use std::{
    sync::{atomic::AtomicUsize, Arc},
    time::Duration,
};

mod support;

use meshwork_proxy::{
    inbound::{self},
    metrics::Metrics,
};
use support::backend;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// The value of `name{direction="<direction>"}` in `metrics`' exposition.
fn counter(metrics: &Metrics, name: &str, direction: &str) -> u64 {
    let series = format!("meshwork_proxy_{name}_total{{direction=\"{direction}\"}}");
    support::metric(metrics, &series).map_or(0, |v| v as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_byte_of_an_accepted_connection_counts_once() {
    let (app, _) = backend(Duration::ZERO, Arc::new(AtomicUsize::new(0))).await;
    let support::MeshPair {
        outbound: outbound_addr,
        outbound_metrics: out_metrics,
        inbound_metrics,
    } = support::mesh_pair(
        app,
        "web.default.svc.cluster.local:80",
        inbound::Config::default(),
    )
    .await;

    let (mut sent, mut received) = (0u64, 0u64);
    // An HTTP request, over the mesh.
    let req = b"GET http://web.default.svc.cluster.local/ HTTP/1.1\r\n\
                Host: web.default.svc.cluster.local\r\nConnection: close\r\n\r\n";
    let mut s = TcpStream::connect(outbound_addr).await.unwrap();
    s.write_all(req).await.unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).await.unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    sent += req.len() as u64;
    received += answer.len() as u64;
    assert_eq!(counter(&out_metrics, "tcp_read_bytes", "outbound"), sent);
    assert_eq!(
        counter(&out_metrics, "tcp_write_bytes", "outbound"),
        received
    );

    // A CONNECT tunnel to the same Service, and a request inside it: the relayed bytes count
    // once, as the connection's, not again as the tunnel's.
    let connect = b"CONNECT web.default.svc.cluster.local:80 HTTP/1.1\r\n\
                    Host: web.default.svc.cluster.local:80\r\n\r\n";
    let mut s = TcpStream::connect(outbound_addr).await.unwrap();
    s.write_all(connect).await.unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).await.unwrap(), 1, "{head:?}");
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"), "{head:?}");
    let inner = b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n";
    s.write_all(inner).await.unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).await.unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    drop(s);
    sent += (connect.len() + inner.len()) as u64;
    received += (head.len() + answer.len()) as u64;
    // Every byte the client sent was read before the answer it got, and every byte it got
    // was written: the counts are exact already.
    assert_eq!(counter(&out_metrics, "tcp_read_bytes", "outbound"), sent);
    assert_eq!(
        counter(&out_metrics, "tcp_write_bytes", "outbound"),
        received
    );

    // The server's proxy counts its mesh session, TLS records and HTTP/2 framing included
    // (so no exact figure to hold it to): both ways moved.
    assert!(counter(&inbound_metrics, "tcp_read_bytes", "inbound") > 0);
    assert!(counter(&inbound_metrics, "tcp_write_bytes", "inbound") > 0);
}
