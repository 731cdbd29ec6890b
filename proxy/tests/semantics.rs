//! HTTP semantics through a client proxy and a server proxy over mTLS, both sides HTTP/1.1 as
//! apps speak it (RFC 9110, 9112): trailers announced with `Trailer` reach the other end in
//! both directions; userinfo in an authority and a second Host are refused with a 400 and
//! their values stay out of the metrics; an absolute-form target's authority replaces Host; a
//! `Connection` header naming the identity header cannot remove it from an upgrade.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic with its location is the failure report"
)]

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use meshwork_proxy::{
    drain::Watch,
    inbound::{self, Inbound},
    metrics::Metrics,
    transport_header::{SessionProtocol, TransportHeader},
};
use support::{test_ca, Creds};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

type AppBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// The app: answers what it saw of the request as text — `host=<Host>`, `client=<identity
/// header>`, `body=<body>`, `trailer=<x-sum trailer>` — in a chunked body ending with an
/// `x-sum: 42` trailer it announces; an upgrade gets a 101 and then an echo of the identity header it came with.
async fn app() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |mut req: http::Request<hyper::body::Incoming>| async move {
                        let h = |n: &str| {
                            req.headers()
                                .get(n)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("none")
                                .to_string()
                        };
                        let (host, client, te) =
                            (h("host"), h("meshwork-client-id"), h("connection"));
                        if req.headers().contains_key(http::header::UPGRADE) {
                            let on = hyper::upgrade::on(&mut req);
                            tokio::spawn(async move {
                                let mut io = hyper_util::rt::TokioIo::new(on.await.unwrap());
                                io.write_all(format!("client={client}").as_bytes())
                                    .await
                                    .unwrap();
                                io.shutdown().await.unwrap();
                            });
                            let mut r = http::Response::new(empty());
                            *r.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
                            r.headers_mut().insert("upgrade", "echo".parse().unwrap());
                            r.headers_mut()
                                .insert("connection", "upgrade".parse().unwrap());
                            return Ok::<_, Infallible>(r);
                        }
                        let got = req.into_body().collect().await.unwrap();
                        let trailer = got
                            .trailers()
                            .and_then(|t| t.get("x-sum"))
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("none")
                            .to_string();
                        let forged = got
                            .trailers()
                            .and_then(|t| t.get("meshwork-client-id"))
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("none")
                            .to_string();
                        let body = String::from_utf8_lossy(&got.to_bytes()).into_owned();
                        let text = format!(
                            "host={host} client={client} body={body} trailer={trailer} \
                             trailer-client={forged} connection={te}"
                        );
                        let mut t = http::HeaderMap::new();
                        t.insert("x-sum", "42".parse().unwrap());
                        let frames: Vec<Result<Frame<Bytes>, Infallible>> =
                            vec![Ok(Frame::data(Bytes::from(text))), Ok(Frame::trailers(t))];
                        let mut r = http::Response::new(
                            StreamBody::new(futures::stream::iter(frames)).boxed(),
                        );
                        r.headers_mut()
                            .insert(http::header::TRAILER, "x-sum".parse().unwrap());
                        Ok(r)
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

fn empty() -> AppBody {
    http_body_util::Empty::new().boxed()
}

/// A client proxy whose `web.default.svc.cluster.local:80` is the app behind a server proxy.
async fn pair(app: SocketAddr) -> (SocketAddr, Arc<Metrics>, Arc<Metrics>) {
    let p = support::mesh_pair(
        app,
        "web.default.svc.cluster.local:80",
        inbound::Config::default(),
    )
    .await;
    (p.outbound, p.outbound_metrics, p.inbound_metrics)
}

/// Sends `req` on a new connection and reads until the proxy closes (at most 5 s).
async fn exchange(to: SocketAddr, req: &[u8]) -> String {
    send(&mut TcpStream::connect(to).await.unwrap(), req).await
}

/// Sends `req` on `io` and reads until the far side closes (at most 5 s).
async fn send<S: AsyncReadExt + AsyncWriteExt + Unpin>(io: &mut S, req: &[u8]) -> String {
    io.write_all(req).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), io.read_to_end(&mut out))
        .await
        .expect("an answer and a close within 5 s");
    String::from_utf8_lossy(&out).into_owned()
}

/// A server proxy alone, in front of the app, and what a peer needs to speak to it
/// directly (a client proxy refuses or rewrites much of what these tests send).
struct ServerProxy {
    client: Arc<Creds>,
    web: Arc<Creds>,
    inbound: SocketAddr,
    app: SocketAddr,
    metrics: Arc<Metrics>,
}

async fn server_proxy() -> ServerProxy {
    let app = app().await;
    let ca = test_ca();
    let client = Creds::new(&ca, "spiffe://cluster.local/ns/default/sa/client");
    let web = Creds::new(&ca, "spiffe://cluster.local/ns/default/sa/web");
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let inbound = l.local_addr().unwrap();
    let metrics = Metrics::new();
    tokio::spawn(
        Inbound::with(inbound::Config::default(), web.clone(), metrics.clone())
            .serve(l, Watch::never()),
    );
    ServerProxy {
        client,
        web,
        inbound,
        app,
        metrics,
    }
}

impl ServerProxy {
    /// A mesh session to the app's port, as a peer proxy opens one for opaque bytes.
    async fn session(&self) -> tokio_rustls::client::TlsStream<TcpStream> {
        support::raw_mesh(
            &self.client,
            self.inbound,
            &self.web.id,
            TransportHeader {
                port: self.app.port(),
                protocol: SessionProtocol::Opaque,
            },
        )
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_announced_with_trailer_cross_the_pair_both_ways() {
    let (proxy, _, _) = pair(app().await).await;
    let out = exchange(
        proxy,
        b"POST / HTTP/1.1\r\nHost: web.default.svc.cluster.local\r\nTE: trailers\r\n\
          Transfer-Encoding: chunked\r\nTrailer: x-sum, meshwork-client-id\r\n\
          Connection: close\r\n\r\n\
          3\r\nabc\r\n0\r\nx-sum: 7\r\n\
          meshwork-client-id: spiffe://cluster.local/ns/kube-system/sa/admin\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        out.contains("body=abc trailer=7 "),
        "the request's trailer reached the app: {out}"
    );
    assert!(
        out.to_ascii_lowercase().contains(" connection=te"),
        "TE goes on to an HTTP/1.1 app with Connection: TE (RFC 9110 §10.1.4): {out}"
    );
    assert!(
        out.contains("trailer-client=none"),
        "an identity in the trailers is removed like one in the headers: {out}"
    );
    assert!(
        out.to_ascii_lowercase().contains("\r\nx-sum: 42\r\n"),
        "the response's trailer reached the client: {out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn userinfo_and_a_second_host_get_a_400_and_stay_out_of_the_metrics() {
    let (proxy, out_metrics, in_metrics) = pair(app().await).await;
    for req in [
        &b"GET http://alice:s3cret@web.default.svc.cluster.local/ HTTP/1.1\r\n\
           Host: web.default.svc.cluster.local\r\nConnection: close\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: alice:s3cret@web.default.svc.cluster.local\r\n\
          Connection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: web.default.svc.cluster.local\r\nHost: s3cret.internal\r\n\
          Connection: close\r\n\r\n",
    ] {
        let out = exchange(proxy, req).await;
        assert!(
            out.starts_with("HTTP/1.1 400"),
            "{}: {out}",
            String::from_utf8_lossy(req)
        );
    }
    for m in [out_metrics, in_metrics] {
        let text = m.encode();
        assert!(!text.contains("s3cret"), "{text}");
    }
    // An absolute-form target's authority replaces Host (RFC 9112 §3.2.2): the app sees what
    // was routed.
    let out = exchange(
        proxy,
        b"GET http://web.default.svc.cluster.local/ HTTP/1.1\r\nHost: admin.internal\r\n\
          Connection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("host=web.default.svc.cluster.local "), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_naming_the_identity_header_cannot_remove_it_from_an_upgrade() {
    // A client proxy strips what `Connection` names before the server proxy sees it, so this
    // is a peer speaking for itself over a mesh session (what a compromised proxy can send).
    let server = server_proxy().await;
    let out = send(
        &mut server.session().await,
        b"GET / HTTP/1.1\r\nHost: web\r\n\
          Connection: upgrade, meshwork-client-id\r\nUpgrade: echo\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 101"), "{out}");
    assert!(
        out.ends_with("client=spiffe://cluster.local/ns/default/sa/client"),
        "the app must learn who the peer is: {out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_inside_a_tunnel_is_refused() {
    // A peer may tunnel to the session's port once; a CONNECT inside that tunnel would let
    // each level's streams multiply the last's.
    let server = server_proxy().await;
    let (app, mut tls) = (server.app, server.session().await);
    let connect = format!(
        "CONNECT 127.0.0.1:{0} HTTP/1.1\r\nHost: 127.0.0.1:{0}\r\n\r\n",
        app.port()
    );
    let mut heads = Vec::new();
    for _ in 0..2 {
        tls.write_all(connect.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut b))
                .await
                .expect("an answer within 5 s")
                .unwrap();
            assert_eq!(n, 1, "closed after {}", String::from_utf8_lossy(&head));
            head.push(b[0]);
        }
        heads.push(String::from_utf8_lossy(&head).into_owned());
    }
    assert!(
        heads[0].starts_with("HTTP/1.1 200"),
        "the tunnel: {}",
        heads[0]
    );
    assert!(
        heads[1].starts_with("HTTP/1.1 403"),
        "a tunnel inside it: {}",
        heads[1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_proxy_itself_refuses_userinfo_and_two_hosts_and_takes_host_from_the_target() {
    // What a peer sends it directly (a client proxy refuses or rewrites these first).
    let server = server_proxy().await;
    let send = |req: &'static [u8]| {
        let server = &server;
        async move { send(&mut server.session().await, req).await }
    };
    for req in [
        &b"GET http://alice:s3cret@web/ HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: web\r\nHost: s3cret.internal\r\nConnection: close\r\n\r\n",
    ] {
        let out = send(req).await;
        assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    }
    let metrics = server.metrics.encode();
    assert!(!metrics.contains("s3cret"), "{metrics}");
    // A Host that is not text stays the client's (it was once replaced by the app's address).
    let out = send(b"GET / HTTP/1.1\r\nHost: caf\xe9\r\nConnection: close\r\n\r\n").await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        out.contains("host=none "),
        "the app's own address as Host: {out}"
    );
    let out = send(
        b"GET http://web.default.svc.cluster.local/ HTTP/1.1\r\nHost: admin.internal\r\n\
          Connection: close\r\n\r\n",
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.contains("host=web.default.svc.cluster.local "), "{out}");
}
