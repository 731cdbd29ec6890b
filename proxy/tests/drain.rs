//! Graceful drain through the real outbound stack on loopback: a request in flight when the
//! drain begins finishes with its answer, its connection then closes, the listener takes no
//! new connection, and the drain reports everything done within the grace period.
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
