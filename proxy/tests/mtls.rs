//! The outbound and inbound stacks on loopback, with certificates signed by the identity
//! service's own CA code (`meshwork_identity::ca`) and verified by its SPIFFE verifiers:
//! an app's request through its outbound proxy reaches the server app through the server's
//! inbound proxy over mutual TLS 1.3, and the server app sees the client's SPIFFE ID; a forged
//! identity header never reaches an app; a peer proving the wrong identity gets no request; a
//! strict inbound refuses plaintext but the app's probes; an HTTP/1 CONNECT in an opaque
//! session reaches only the session's port, and HTTP inside it is looked at again; an endpoint
//! outside the mesh gets plaintext; an address that discovery lists again under another
//! identity gets a new session proving it, and the old session is closed.
//! (The lab test with captures, pods and the identity service itself comes with the binary.)
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
    time::Duration,
};

mod support;

use meshwork_destination_api::pb;
use meshwork_identity::spiffe::SpiffeId;
use meshwork_proxy::drain::Watch;
use meshwork_proxy::{
    inbound::{self, Inbound, Policy},
    outbound::{discover::Static, resolve::Resolver, Outbound},
    tls::Credentials,
};
use support::{app, forged_get, raw_mesh, test_ca, Creds};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// A loopback address where connections are refused for as long as the socket lives: bound,
/// not listening, so no other test's listener can take the port meanwhile (a port merely
/// let go can be, under a parallel run).
fn refusing() -> (tokio::net::TcpSocket, SocketAddr) {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let a = s.local_addr().unwrap();
    (s, a)
}

async fn listen() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

/// One HTTP/1.1 request through the outbound proxy at `proxy` (absolute form, as to an HTTP
/// proxy), with a forged identity header: (status, proxy error header, body).
async fn get(proxy: SocketAddr, authority: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let req = format!(
        "GET http://{authority}/ HTTP/1.1\r\nHost: {authority}\r\n\
         meshwork-client-id: spiffe://cluster.local/ns/kube-system/sa/admin\r\n\
         Connection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let perr = head
        .lines()
        .find_map(|l| l.strip_prefix("meshwork-proxy-error: "))
        .unwrap_or("")
        .to_string();
    // Chunked bodies: keep the lines that are not chunk sizes.
    let body = body
        .lines()
        .filter(|l| !l.is_empty() && u64::from_str_radix(l.trim(), 16).is_err())
        .collect::<Vec<_>>()
        .join("\n");
    (status, perr, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_between_proxies_carries_the_client_identity() {
    let ca = test_ca();
    let client = Creds::new(&ca, "spiffe://cluster.local/ns/default/sa/client");
    let web = Creds::new(&ca, "spiffe://cluster.local/ns/default/sa/web");
    let (app_addr, hits) = app("127.0.0.1").await;

    // The server pod's inbound proxy, in front of its app.
    let (l, inbound_addr) = listen().await;
    tokio::spawn(Inbound::new(inbound::Config::default(), web.clone()).serve(l, Watch::never()));

    let mut d = Static::default();
    let port = inbound_addr.port();
    d.parse_entry(&format!(
        "web.default.svc.cluster.local:80={app_addr}@{port}@spiffe://cluster.local/ns/default/sa/web"
    ))
    .unwrap();
    // Discovery names the wrong identity for the same proxy: it must not get the request.
    d.parse_entry(&format!(
        "db.default.svc.cluster.local:5432={app_addr}@{port}@spiffe://cluster.local/ns/default/sa/db"
    ))
    .unwrap();
    // An endpoint outside the mesh: plaintext straight to it.
    d.parse_entry(&format!("legacy.default.svc.cluster.local:80={app_addr}"))
        .unwrap();
    let (l, outbound_addr) = listen().await;
    // A request no endpoint can take waits this long for one (the handshake below).
    let cfg = meshwork_proxy::outbound::Config {
        failfast: Duration::from_millis(300),
        ..Default::default()
    };
    tokio::spawn(Outbound::new(cfg, client.clone(), d).serve(l, Watch::never()));

    // Through both proxies: the app sees the verified client, not the forged header.
    for _ in 0..3 {
        let (status, perr, body) = get(outbound_addr, "web.default.svc.cluster.local:80").await;
        assert_eq!((status, perr.as_str()), (200, ""));
        assert_eq!(body, "spiffe://cluster.local/ns/default/sa/client");
    }
    assert_eq!(hits.load(Ordering::Relaxed), 3);

    // The wrong identity: refused in the handshake, nothing reaches the app (the request waits
    // the fail-fast timeout for another endpoint, then hears why). The server's proxy takes
    // the unknown server name for the app's own TLS, addressed to the listener itself: it
    // must close it, not relay it to itself (that loop once made this take seconds on an idle
    // machine and hang under load).
    let started = std::time::Instant::now();
    let (status, perr, _) = get(outbound_addr, "db.default.svc.cluster.local:5432").await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(status, 502, "{perr}");
    assert!(perr.contains("mTLS") && perr.contains("sa/db"), "{perr}");
    assert_eq!(hits.load(Ordering::Relaxed), 3);

    // Outside the mesh: plaintext, and the forged header is still removed.
    let (status, _, body) = get(outbound_addr, "legacy.default.svc.cluster.local:80").await;
    assert_eq!((status, body.as_str()), (200, "none"));

    // No endpoints: a clear 503 from the proxy.
    let (status, perr, _) = get(outbound_addr, "nope.default.svc.cluster.local:80").await;
    assert_eq!(status, 503);
    assert!(perr.contains("no endpoints"), "{perr}");
}

/// A mesh session lasts no longer than the client certificate it was opened with (short
/// lives are the mesh's revocation): at its expiry the server's proxy ends the session with a
/// GOAWAY, and no later stream on it is served as that identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_session_ends_when_its_client_certificate_expires() {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use meshwork_proxy::transport_header::{SessionProtocol, TransportHeader};
    let ca = test_ca();
    let web = Creds::new(&ca, "spiffe://cluster.local/ns/default/sa/web");
    let client = Creds::with_life(
        &ca,
        "spiffe://cluster.local/ns/default/sa/client",
        Duration::from_secs(2),
    );
    let (app_addr, _) = app("127.0.0.1").await;
    let (l, inbound_addr) = listen().await;
    tokio::spawn(Inbound::new(inbound::Config::default(), web.clone()).serve(l, Watch::never()));
    let header = TransportHeader {
        port: app_addr.port(),
        protocol: SessionProtocol::Http2,
    };
    let tls = raw_mesh(&client, inbound_addr, &web.id, header).await;
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    // As a client proxy sends an app's HTTP/1.1 request (the app here speaks HTTP/1.1).
    let req = || {
        http::Request::get("http://web/")
            .header("meshwork-orig-proto", "HTTP/1.1")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap()
    };
    let resp = send.send_request(req()).await.unwrap();
    assert_eq!(resp.status(), 200);
    // The certificate expires within 2 s: the session ends then, not at the next drain.
    tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("the session outlived its client certificate")
        .unwrap()
        .unwrap();
    assert!(send.send_request(req()).await.is_err());
}

/// The server's credentials as its identity client keeps them: replaced by a renewed
/// certificate while the proxy runs.
struct Rotating {
    id: SpiffeId,
    now: std::sync::Mutex<Arc<Creds>>,
}

impl Credentials for Rotating {
    fn id(&self) -> &SpiffeId {
        &self.id
    }
    fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.now.lock().unwrap().server_config()
    }
    fn client_config(&self, peer: &SpiffeId) -> Arc<rustls::ClientConfig> {
        self.now.lock().unwrap().client_config(peer)
    }
}

/// The client side of the same rule: a client proxy's session takes no new request after
/// the server certificate it proved expires (the server has renewed by then); the next
/// request gets a new session, in which the server proves its current certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_session_takes_no_requests_past_its_server_certificate() {
    let ca = test_ca();
    let id = "spiffe://cluster.local/ns/default/sa/web";
    let made = tokio::time::Instant::now();
    let web = Arc::new(Rotating {
        id: SpiffeId::parse(id).unwrap(),
        now: std::sync::Mutex::new(Creds::with_life(&ca, id, Duration::from_secs(2))),
    });
    let client = Creds::new(&ca, "spiffe://cluster.local/ns/default/sa/client");
    let (app_addr, hits) = app("127.0.0.1").await;
    let (l, inbound_addr) = listen().await;
    tokio::spawn(Inbound::new(inbound::Config::default(), web.clone()).serve(l, Watch::never()));
    let mut d = Static::default();
    d.parse_entry(&format!(
        "web.default.svc.cluster.local:80={app_addr}@{}@{id}",
        inbound_addr.port()
    ))
    .unwrap();
    let outbound = Outbound::new(Default::default(), client, d);
    let (l, addr) = listen().await;
    tokio::spawn(outbound.clone().serve(l, Watch::never()));
    let sessions = || {
        support::metric(
            &outbound.metrics,
            "meshwork_proxy_tls_handshakes_total{direction=\"outbound\",result=\"ok\"}",
        )
    };
    let (status, perr, _) = get(addr, "web.default.svc.cluster.local:80").await;
    assert_eq!(status, 200, "{perr}");
    // Renewed, as the identity client does well before expiry.
    *web.now.lock().unwrap() = Creds::new(&ca, id);
    let (status, perr, _) = get(addr, "web.default.svc.cluster.local:80").await;
    assert_eq!(status, 200, "{perr}");
    assert_eq!(sessions(), Some(1), "a live session is reused");
    // Past the first certificate's expiry (whole seconds in the certificate).
    tokio::time::sleep_until(made + Duration::from_millis(3500)).await;
    let (status, perr, _) = get(addr, "web.default.svc.cluster.local:80").await;
    assert_eq!(status, 200, "{perr}");
    assert_eq!(
        sessions(),
        Some(2),
        "the request went on the session whose server certificate expired"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 3);
}

/// A peer that takes the TCP connection and never answers the TLS handshake: the session
/// attempt ends at its bound (3 s), counted as a TLS timeout, and the request hears why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_stalling_the_handshake_is_counted_as_a_tls_timeout() {
    let ca = test_ca();
    let client = Creds::new(&ca, "spiffe://cluster.local/ns/default/sa/client");
    let (l, stall) = listen().await;
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            held.push(l.accept().await.unwrap().0);
        }
    });
    let mut d = Static::default();
    d.parse_entry(&format!(
        "web.default.svc.cluster.local:80=127.0.0.1:8080@{}@spiffe://cluster.local/ns/default/sa/web",
        stall.port()
    ))
    .unwrap();
    let cfg = meshwork_proxy::outbound::Config {
        failfast: Duration::from_millis(300),
        ..Default::default()
    };
    let outbound = Outbound::new(cfg, client, d);
    let (l, addr) = listen().await;
    tokio::spawn(outbound.clone().serve(l, Watch::never()));
    let (status, perr, _) = get(addr, "web.default.svc.cluster.local:80").await;
    assert_eq!(status, 502, "{perr}");
    assert_eq!(
        support::metric(
            &outbound.metrics,
            "meshwork_proxy_tls_handshakes_total{direction=\"outbound\",result=\"timeout\"}"
        ),
        Some(1),
        "{}",
        outbound.metrics.encode()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_policy_strict_refuses_plaintext_and_permissive_strips_forged_identity() {
    let ca = test_ca();
    let web = Creds::new(&ca, "spiffe://cluster.local/ns/default/sa/web");
    // Plaintext goes to the app port the connection was addressed to, which kernel steering
    // keeps as the accepted socket's address (issue 15). On loopback: the app on 127.0.0.2:P,
    // the inbound proxies on 127.0.0.1:P and 127.0.0.3:P, the app reached on its address.
    let (app_addr, hits) = app("127.0.0.2").await;
    let port = app_addr.port();
    let cfg = |policy| inbound::Config {
        policy,
        app_ip: Some(app_addr.ip()),
        ..Default::default()
    };
    let strict = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    tokio::spawn(Inbound::new(cfg(Policy::Strict), web.clone()).serve(strict, Watch::never()));
    let permissive = TcpListener::bind(("127.0.0.3", port)).await.unwrap();
    tokio::spawn(
        Inbound::new(cfg(Policy::Permissive), web.clone()).serve(permissive, Watch::never()),
    );

    let request = b"GET / HTTP/1.1\r\nHost: web\r\n\
        meshwork-client-id: spiffe://cluster.local/ns/kube-system/sa/admin\r\n\
        Connection: close\r\n\r\n";
    let send = |to: SocketAddr| async move {
        let mut s = TcpStream::connect(to).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
            .await
            .expect("an answer or a close")
            .unwrap_or(0);
        String::from_utf8_lossy(&buf).into_owned()
    };
    let refused = send(SocketAddr::new([127, 0, 0, 1].into(), port)).await;
    assert_eq!(refused, "", "strict: plaintext gets no answer");
    assert_eq!(
        hits.load(Ordering::Relaxed),
        0,
        "strict: the app saw nothing"
    );

    let answered = send(SocketAddr::new([127, 0, 0, 3].into(), port)).await;
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
    assert!(
        support::body_of(&answered) == "none",
        "permissive: a plaintext client's identity header is removed: {answered}"
    );
    assert_eq!(hits.load(Ordering::Relaxed), 1);

    // Strict, on a port the app's probes use: the probes' GETs reach the app (kubelet is
    // outside the mesh), any other request gets a 403 saying why.
    let probed = TcpListener::bind(("127.0.0.4", port)).await.unwrap();
    let probes = inbound::Config {
        probe_paths: vec![(port, "/healthz".into())],
        ..cfg(Policy::Strict)
    };
    tokio::spawn(Inbound::new(probes, web.clone()).serve(probed, Watch::never()));
    let at = SocketAddr::new([127, 0, 0, 4].into(), port);
    let ask = |line: &'static str| async move {
        let mut s = TcpStream::connect(at).await.unwrap();
        let req = format!("{line} HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out)).await;
        out
    };
    let probe = ask("GET /healthz").await;
    assert!(probe.starts_with("HTTP/1.1 200"), "{probe}");
    assert_eq!(hits.load(Ordering::Relaxed), 2);
    for line in ["GET /", "GET /healthz?x=1", "POST /healthz"] {
        let other = ask(line).await;
        assert!(
            other.starts_with("HTTP/1.1 403") && other.contains("strict inbound policy"),
            "{line}: {other}"
        );
    }
    // The probe's path, asking to switch protocols: a byte stream to the app from outside
    // the mesh, not a probe.
    let mut ws = TcpStream::connect(at).await.unwrap();
    ws.write_all(
        b"GET /healthz HTTP/1.1\r\nHost: web\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    )
    .await
    .unwrap();
    let mut out = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), ws.read(&mut out))
        .await
        .expect("an answer")
        .unwrap();
    let out = String::from_utf8_lossy(&out[..n]);
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
    assert_eq!(
        hits.load(Ordering::Relaxed),
        2,
        "only the probe reached the app"
    );

    // A plaintext HTTP/2 client (permissive) may open hyper's usual 200 streams at once, not
    // a mesh session's 10,000.
    let tcp = TcpStream::connect(SocketAddr::new([127, 0, 0, 3].into(), port))
        .await
        .unwrap();
    let (mut h2c, mut conn) = h2::client::handshake(tcp).await.unwrap();
    let (resp, _) = h2c
        .send_request(http::Request::get("http://web/").body(()).unwrap(), true)
        .unwrap();
    // Answered (a 502: this app speaks HTTP/1.1 only), so the server's settings are in.
    tokio::select! {
        r = resp => r.unwrap(),
        r = &mut conn => panic!("the connection ended first: {r:?}"),
    };
    assert_eq!(conn.max_concurrent_send_streams(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_can_neither_bring_its_own_identity_header_nor_reach_the_proxys_ports() {
    use meshwork_proxy::transport_header::{SessionProtocol, TransportHeader};
    let ca = test_ca();
    let client = Creds::new(&ca, "spiffe://cluster.local/ns/default/sa/client");
    let web = Creds::new(&ca, "spiffe://cluster.local/ns/default/sa/web");
    let (app_addr, hits) = app("127.0.0.1").await;
    // Something on a port the proxy calls its own (its outbound, say): never reached.
    let (outbound_like, outbound_port) = listen().await;
    let reached = Arc::new(AtomicUsize::new(0));
    let r = reached.clone();
    tokio::spawn(async move {
        loop {
            let _ = outbound_like.accept().await.unwrap();
            r.fetch_add(1, Ordering::Relaxed);
        }
    });
    let (l, inbound_addr) = listen().await;
    let cfg = inbound::Config {
        proxy_ports: vec![outbound_port.port()],
        ..Default::default()
    };
    tokio::spawn(Inbound::new(cfg, web.clone()).serve(l, Watch::never()));

    // "Opaque" bytes that are HTTP with a forged header: the app sees the peer's real ID.
    let mut tls = raw_mesh(
        &client,
        inbound_addr,
        &web.id,
        TransportHeader {
            port: app_addr.port(),
            protocol: SessionProtocol::Opaque,
        },
    )
    .await;
    let out = forged_get(&mut tls).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        support::body_of(&out) == "spiffe://cluster.local/ns/default/sa/client",
        "the app sees who the peer is, not what it claims: {out}"
    );
    assert_eq!(hits.load(Ordering::Relaxed), 1);

    // An HTTP/1 CONNECT inside an opaque session (what a peer sends for opaque TCP it could
    // not put on HTTP/2): tunnelled to the session's port, and HTTP inside the tunnel is
    // looked at again, forged header and all; another port is refused.
    let connect = |port: u16| {
        let (client, web_id) = (client.clone(), web.id.clone());
        async move {
            let mut tls = raw_mesh(
                &client,
                inbound_addr,
                &web_id,
                TransportHeader {
                    port: app_addr.port(),
                    protocol: SessionProtocol::Opaque,
                },
            )
            .await;
            let req =
                format!("CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
            tls.write_all(req.as_bytes()).await.unwrap();
            // The answer's head only: what follows belongs to the tunnel.
            let mut head = Vec::new();
            while !head.ends_with(b"\r\n\r\n") {
                let mut b = [0u8; 1];
                match tls.read(&mut b).await {
                    Ok(1) => head.push(b[0]),
                    _ => break,
                }
            }
            (String::from_utf8_lossy(&head).into_owned(), tls)
        }
    };
    let (head, mut tls) = connect(app_addr.port()).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let out = forged_get(&mut tls).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        support::body_of(&out) == "spiffe://cluster.local/ns/default/sa/client",
        "inside the tunnel too, the app sees who the peer is: {out}"
    );
    assert_eq!(hits.load(Ordering::Relaxed), 2);
    let (head, _) = connect(outbound_port.port()).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");

    // A transport header naming the proxy's own ports: closed, nothing reached.
    for port in [outbound_port.port(), inbound_addr.port()] {
        let mut tls = raw_mesh(
            &client,
            inbound_addr,
            &web.id,
            TransportHeader {
                port,
                protocol: SessionProtocol::Opaque,
            },
        )
        .await;
        let _ = tls.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let mut buf = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut buf))
            .await
            .expect("closed at once")
            .unwrap_or(0);
        assert_eq!(n, 0, "port {port}: no answer");
    }
    assert_eq!(
        reached.load(Ordering::Relaxed),
        0,
        "the proxy's own port was reached"
    );
    assert_eq!(hits.load(Ordering::Relaxed), 2);
}

/// The control agent's discovery API as the proxy reads it: every authority's answer is what
/// `set` holds, pushed again on each change.
struct Discovery(tokio::sync::watch::Receiver<Vec<pb::Endpoint>>);

type Updates =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::Update, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl pb::destination_server::Destination for Discovery {
    type GetStream = Updates;

    async fn get(
        &self,
        _: tonic::Request<pb::GetDestination>,
    ) -> Result<tonic::Response<Updates>, tonic::Status> {
        let updates =
            futures::stream::unfold((self.0.clone(), true), |(mut rx, first)| async move {
                if !first {
                    rx.changed().await.ok()?;
                }
                let endpoints = rx.borrow_and_update().clone();
                let u = pb::Update {
                    endpoints,
                    ..Default::default()
                };
                Some((Ok(u), (rx, false)))
            });
        Ok(tonic::Response::new(Box::pin(updates)))
    }
}

/// A discovery server on loopback answering from `rx`, and a resolver (with its proxy's
/// metrics) reading it.
async fn discovery(
    rx: tokio::sync::watch::Receiver<Vec<pb::Endpoint>>,
) -> (Resolver, Arc<meshwork_proxy::metrics::Metrics>) {
    let (dl, addr) = listen().await;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(pb::destination_server::DestinationServer::new(Discovery(
                rx,
            )))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(dl)),
    );
    let metrics = meshwork_proxy::metrics::Metrics::new();
    let resolver = Resolver::api(
        Static::default(),
        &addr.to_string(),
        None,
        Duration::from_secs(3),
        metrics.clone(),
    )
    .unwrap();
    (resolver, metrics)
}

/// A TCP relay to `to` that counts the connections open through it.
async fn counted_relay(to: SocketAddr) -> (SocketAddr, Arc<AtomicUsize>) {
    let (l, addr) = listen().await;
    let open = Arc::new(AtomicUsize::new(0));
    let o = open.clone();
    tokio::spawn(async move {
        loop {
            let (mut near, _) = l.accept().await.unwrap();
            o.fetch_add(1, Ordering::SeqCst);
            let o = o.clone();
            tokio::spawn(async move {
                if let Ok(mut far) = TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut near, &mut far).await;
                }
                o.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (addr, open)
}

/// Polls `f` every 20 ms until it holds, for at most 5 s; false if it never did.
async fn eventually<F: AsyncFnMut() -> bool>(mut f: F) -> bool {
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < until {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_listed_again_under_another_identity_gets_a_new_session_and_the_old_one_closes()
{
    // A pod IP reused by a pod of another ServiceAccount: discovery lists the same address and
    // proxy port with a new identity. The old session proved the old identity; a request must
    // not ride it, and it must not be kept open for an endpoint nobody lists any more.
    let ca = test_ca();
    let client = Creds::new(&ca, "spiffe://cluster.local/ns/default/sa/client");
    let web = Creds::new(&ca, "spiffe://cluster.local/ns/default/sa/web");
    let (app_addr, hits) = app("127.0.0.1").await;
    let (l, inbound_addr) = listen().await;
    tokio::spawn(Inbound::new(inbound::Config::default(), web).serve(l, Watch::never()));
    // The sessions to the inbound proxy, counted on the way.
    let (relay, open) = counted_relay(inbound_addr).await;

    let endpoint = |identity: &str| pb::Endpoint {
        addr: app_addr.to_string(),
        weight: 1,
        zone: String::new(),
        mesh: Some(pb::Mesh {
            identity: identity.into(),
            proxy_port: relay.port().into(),
        }),
        protocol: 0,
    };
    let (set, rx) =
        tokio::sync::watch::channel(vec![endpoint("spiffe://cluster.local/ns/default/sa/web")]);
    let (resolver, metrics) = discovery(rx).await;
    let (l, outbound_addr) = listen().await;
    tokio::spawn(
        Outbound::with(Default::default(), client, resolver, metrics).serve(l, Watch::never()),
    );

    const WEB: &str = "web.default.svc.cluster.local:80";
    for _ in 0..3 {
        let (status, perr, body) = get(outbound_addr, WEB).await;
        assert_eq!((status, perr.as_str()), (200, ""));
        assert_eq!(body, "spiffe://cluster.local/ns/default/sa/client");
    }
    assert_eq!(
        open.load(Ordering::SeqCst),
        1,
        "one session for three requests"
    );

    set.send_replace(vec![endpoint("spiffe://cluster.local/ns/default/sa/web2")]);
    // Once the proxy has the new set, a request demands the new identity in a handshake of
    // its own (which the proxy there, still proving sa/web, fails) instead of riding the old
    // session to the old identity.
    let mut last = String::new();
    let refused = eventually(async || {
        let (status, perr, _) = get(outbound_addr, WEB).await;
        last = format!("{status} {perr}");
        status == 502 && perr.contains("sa/web2")
    })
    .await;
    assert!(refused, "still answered over the old session: {last}");
    // (Requests before the update arrived went to the old identity, as they should.) From now
    // on nothing reaches the app: the next request is refused again, or told the endpoint is
    // in its reconnect back-off.
    let before = hits.load(Ordering::SeqCst);
    let (status, perr, _) = get(outbound_addr, WEB).await;
    assert!(matches!(status, 502 | 503), "{status} {perr}");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        before,
        "a request rode the old session"
    );
    // And the old session is let go.
    let closed = eventually(async || open.load(Ordering::SeqCst) == 0).await;
    assert!(
        closed,
        "{} connection(s) to the inbound proxy still open",
        open.load(Ordering::SeqCst)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_server_pods_app_refused_waits_for_discoverys_next_endpoint() {
    // A rolling update as the client's proxy sees it: the old pod's app is gone (its proxy
    // still up) before discovery has told the client's proxy of the new pod. The old pod's
    // proxy hands the request back unprocessed (REFUSED_STREAM); the client's proxy waits for
    // an endpoint instead of answering 502, and the request is served once the new pod is
    // listed. With no new endpoint, it is answered when the fail-fast timeout is over, and the
    // next request at once.
    let ca = test_ca();
    let client = Creds::new(&ca, "spiffe://cluster.local/ns/default/sa/client");
    let web = Creds::new(&ca, "spiffe://cluster.local/ns/default/sa/web");
    let (_gone, gone_app) = refusing();
    let (live_app, hits) = app("127.0.0.1").await;
    let (l, old_proxy) = listen().await;
    let old = Inbound::new(inbound::Config::default(), web.clone());
    tokio::spawn(old.clone().serve(l, Watch::never()));
    let (l, new_proxy) = listen().await;
    tokio::spawn(Inbound::new(inbound::Config::default(), web).serve(l, Watch::never()));
    let endpoint = web_endpoint;
    let old_ep = endpoint(gone_app, old_proxy);
    let (set, rx) = tokio::sync::watch::channel(vec![old_ep.clone()]);
    let (resolver, metrics) = discovery(rx).await;
    let failfast = Duration::from_secs(2);
    let cfg = meshwork_proxy::outbound::Config {
        failfast,
        ..Default::default()
    };
    let (l, outbound_addr) = listen().await;
    tokio::spawn(Outbound::with(cfg, client, resolver, metrics.clone()).serve(l, Watch::never()));

    const WEB: &str = "web.default.svc.cluster.local:80";
    let waiting = tokio::spawn(get(outbound_addr, WEB));
    // The old pod's proxy has refused it (its app is gone) ...
    let refused_line = "direction=\"inbound\"";
    let refused = eventually(async || {
        let text = old.metrics.encode();
        text.lines()
            .any(|l| l.contains(refused_line) && l.contains("status_class=\"5xx\""))
    })
    .await;
    assert!(refused, "the old pod's proxy never refused the request");
    assert!(
        !waiting.is_finished(),
        "answered before the new pod was listed"
    );
    // ... and the request is still waiting when discovery lists the new pod.
    set.send_replace(vec![old_ep.clone(), endpoint(live_app, new_proxy)]);
    let (status, perr, body) = waiting.await.unwrap();
    assert_eq!((status, perr.as_str()), (200, ""), "{body}");
    assert_eq!(body, "spiffe://cluster.local/ns/default/sa/client");
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // A Service whose set is empty (a Recreate rollout between its pods): the request waits
    // for a set instead of a 503, and is served once one comes.
    set.send_replace(vec![]);
    let updates = |m: &meshwork_proxy::metrics::Metrics| {
        support::metric(m, "meshwork_proxy_discovery_updates_total").unwrap_or(0)
    };
    let before = updates(&metrics);
    const EMPTY: &str = "web.default.svc.cluster.local:9090";
    let waiting = tokio::spawn(get(outbound_addr, EMPTY));
    // Its discovery stream has said "none" ...
    let heard = eventually(async || updates(&metrics) > before).await;
    assert!(heard, "no discovery answer for {EMPTY}");
    assert!(
        !waiting.is_finished(),
        "answered with no endpoints to go to"
    );
    // ... and the new pod comes.
    set.send_replace(vec![endpoint(live_app, new_proxy)]);
    let (status, perr, _) = waiting.await.unwrap();
    assert_eq!((status, perr.as_str()), (200, ""));

    // Only the old pod listed, its app still gone: the answer comes after the fail-fast
    // timeout, saying why; the next one at once.
    set.send_replace(vec![old_ep]);
    const OTHER: &str = "web.default.svc.cluster.local:8080";
    let start = tokio::time::Instant::now();
    let (status, perr, _) = get(outbound_addr, OTHER).await;
    let first = start.elapsed();
    assert!(matches!(status, 502 | 503), "{status} {perr}");
    assert!(perr.contains("refused"), "{perr}");
    assert!(
        first >= failfast,
        "answered after {first:?}, before the fail-fast timeout"
    );
    let start = tokio::time::Instant::now();
    let (status, perr, _) = get(outbound_addr, OTHER).await;
    assert!(matches!(status, 502 | 503), "{status} {perr}");
    assert!(
        start.elapsed() < failfast / 2,
        "failing fast took {:?}",
        start.elapsed()
    );
}

/// A `web` pod's endpoint: its app's address, behind its proxy at `proxy`.
fn web_endpoint(app: SocketAddr, proxy: SocketAddr) -> pb::Endpoint {
    pb::Endpoint {
        addr: app.to_string(),
        weight: 1,
        zone: String::new(),
        mesh: Some(pb::Mesh {
            identity: "spiffe://cluster.local/ns/default/sa/web".into(),
            proxy_port: proxy.port().into(),
        }),
        protocol: 0,
    }
}

/// A POST of `len` patterned bytes to `authority` through the outbound proxy at `proxy`, in a
/// task of its own: (the task, whose output is the whole answer; the length; the byte sum).
fn post_through(
    proxy: SocketAddr,
    authority: &'static str,
    len: usize,
) -> (tokio::task::JoinHandle<String>, usize, u64) {
    let body: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let sum: u64 = body.iter().map(|b| u64::from(*b)).sum();
    let task = tokio::spawn(async move {
        let mut s = TcpStream::connect(proxy).await.unwrap();
        let head = format!(
            "POST http://{authority}/ HTTP/1.1\r\nHost: {authority}\r\nContent-Length: {len}\r\n\
             Connection: close\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(&body).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    });
    (task, len, sum)
}

/// An app that answers each request with its body's length and byte sum.
async fn body_app() -> SocketAddr {
    use http_body_util::BodyExt;
    let (l, addr) = listen().await;
    support::serve_http1(l, |req: http::Request<hyper::body::Incoming>| async move {
        let body = req.into_body().collect().await?.to_bytes();
        let sum: u64 = body.iter().map(|b| u64::from(*b)).sum();
        let text = format!("len={} sum={sum}", body.len());
        Ok::<_, hyper::Error>(http::Response::new(http_body_util::Full::new(
            bytes::Bytes::from(text),
        )))
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_too_large_to_replay_waits_out_an_endpoint_it_cannot_reach_and_arrives_whole() {
    // A rolling update where the old pod is gone altogether (its proxy too) before the client's
    // proxy hears of the new one. A POST, and a body over the 64 KiB replay cap: nothing can
    // resend it once read. But no session was made, so its body was never read: it waits for
    // an endpoint, as a replayable request would, instead of a 502, and arrives whole.
    let ca = test_ca();
    let client = Creds::new(&ca, "spiffe://cluster.local/ns/default/sa/client");
    let web = Creds::new(&ca, "spiffe://cluster.local/ns/default/sa/web");
    let live_app = body_app().await;
    let (l, new_proxy) = listen().await;
    tokio::spawn(Inbound::new(inbound::Config::default(), web).serve(l, Watch::never()));
    let (_gone, gone_proxy) = refusing();
    let endpoint = web_endpoint;
    let old_ep = endpoint(live_app, gone_proxy);
    let (set, rx) = tokio::sync::watch::channel(vec![old_ep.clone()]);
    let (resolver, metrics) = discovery(rx).await;
    let cfg = meshwork_proxy::outbound::Config {
        failfast: Duration::from_secs(5),
        ..Default::default()
    };
    let (l, outbound_addr) = listen().await;
    tokio::spawn(Outbound::with(cfg, client, resolver, metrics.clone()).serve(l, Watch::never()));

    const WEB: &str = "web.default.svc.cluster.local:80";
    let (post, len, sum) = post_through(outbound_addr, WEB, 128 * 1024);
    // The connect to the gone pod's proxy has failed ...
    let failed = eventually(async || {
        support::metric(&metrics, "meshwork_proxy_outbound_queued_requests").unwrap_or(0) == 1
    })
    .await;
    assert!(failed, "the POST never waited for an endpoint");
    assert!(
        !post.is_finished(),
        "answered before the new pod was listed"
    );
    // ... and the POST goes to the new pod once it is listed, its body whole.
    set.send_replace(vec![old_ep, endpoint(live_app, new_proxy)]);
    let out = post.await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.ends_with(&format!("len={len} sum={sum}")), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_post_the_old_pods_proxy_refused_goes_to_the_new_pod() {
    // A rolling update again, with a POST: the old pod's app is gone and its proxy hands the
    // request back unprocessed (REFUSED_STREAM). Its body (8 KiB, declared) was held, so the
    // client's proxy sends it again to the new pod once it is listed, instead of a 502 — a
    // POST is never retried after a failure, but a request nobody processed is not one.
    let ca = test_ca();
    let client = Creds::new(&ca, "spiffe://cluster.local/ns/default/sa/client");
    let web = Creds::new(&ca, "spiffe://cluster.local/ns/default/sa/web");
    let (_gone, gone_app) = refusing();
    let live_app = body_app().await;
    let (l, old_proxy) = listen().await;
    let old = Inbound::new(inbound::Config::default(), web.clone());
    tokio::spawn(old.clone().serve(l, Watch::never()));
    let (l, new_proxy) = listen().await;
    tokio::spawn(Inbound::new(inbound::Config::default(), web).serve(l, Watch::never()));
    let old_ep = web_endpoint(gone_app, old_proxy);
    let (set, rx) = tokio::sync::watch::channel(vec![old_ep.clone()]);
    let (resolver, metrics) = discovery(rx).await;
    let cfg = meshwork_proxy::outbound::Config {
        failfast: Duration::from_secs(5),
        ..Default::default()
    };
    let (l, outbound_addr) = listen().await;
    tokio::spawn(Outbound::with(cfg, client, resolver, metrics).serve(l, Watch::never()));

    const WEB: &str = "web.default.svc.cluster.local:80";
    let (post, len, sum) = post_through(outbound_addr, WEB, 8 * 1024);
    let refused = eventually(async || {
        old.metrics
            .encode()
            .lines()
            .any(|l| l.contains("direction=\"inbound\"") && l.contains("status_class=\"5xx\""))
    })
    .await;
    assert!(refused, "the old pod's proxy never refused the POST");
    assert!(
        !post.is_finished(),
        "the POST was answered before the new pod was listed: {}",
        post.await.unwrap()
    );
    set.send_replace(vec![old_ep, web_endpoint(live_app, new_proxy)]);
    let out = post.await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.ends_with(&format!("len={len} sum={sum}")), "{out}");
}

/// Discovery is mutual TLS over the identity library's own transport (the one the control
/// agent serves with): a proxy gets endpoints from an agent proving the agent's identity, and
/// nothing from a server of the same mesh proving another; the agent's side refuses a client
/// without a certificate, and a plaintext one, in the handshake.
#[tokio::test]
async fn discovery_is_mutual_tls_and_the_agent_must_prove_its_identity() {
    const AGENT: &str = "spiffe://cluster.local/ns/kube-system/sa/meshwork-control";
    let ca = test_ca();
    let proxy = Creds::new(&ca, "spiffe://cluster.local/ns/default/sa/client");
    let endpoint = pb::Endpoint {
        addr: "10.244.1.5:8080".into(),
        weight: 1,
        ..Default::default()
    };
    let (_set, rx) = tokio::sync::watch::channel(vec![endpoint]);
    // A discovery server proving `id`, counting the handshakes it refused.
    let serve = async |id: &str| {
        let (l, addr) = listen().await;
        let refused = Arc::new(AtomicUsize::new(0));
        let r = refused.clone();
        let tls = Arc::unwrap_or_clone(Creds::new(&ca, id).server_config());
        let incoming = meshwork_identity::transport::incoming(l, tls, move |_| {
            r.fetch_add(1, Ordering::SeqCst);
        });
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(pb::destination_server::DestinationServer::new(Discovery(
                    rx.clone(),
                )))
                .serve_with_incoming(incoming),
        );
        (addr, refused)
    };
    let agent = SpiffeId::parse(AGENT).unwrap();
    let resolve = async |addr: SocketAddr, tls: Option<rustls::ClientConfig>| {
        let metrics = meshwork_proxy::metrics::Metrics::new();
        let r = Resolver::api(
            Static::default(),
            &addr.to_string(),
            tls,
            Duration::from_secs(1),
            metrics.clone(),
        )
        .unwrap();
        let got = r.get("web.default.svc.cluster.local:80").await;
        (got.map(|eps| eps.len()), metrics)
    };
    let mtls = Arc::unwrap_or_clone(proxy.client_config(&agent));

    let (real, refused) = serve(AGENT).await;
    let (got, _) = resolve(real, Some(mtls.clone())).await;
    assert_eq!(got, Some(1), "no endpoints from the agent over mutual TLS");
    assert_eq!(refused.load(Ordering::SeqCst), 0);

    // A workload of the same mesh listening where the agent should be.
    let (imposter, _) = serve("spiffe://cluster.local/ns/default/sa/evil").await;
    let (got, metrics) = resolve(imposter, Some(mtls)).await;
    assert_eq!(
        got, None,
        "endpoints taken from a server that is not the agent"
    );
    assert!(
        support::metric(&metrics, "meshwork_proxy_discovery_errors_total").unwrap_or(0) >= 1,
        "the refused agent was not counted as a discovery error"
    );

    // Clients the agent must refuse: no certificate, and plaintext gRPC.
    let no_cert = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(meshwork_identity::verify::ServerVerifier {
        bundle: meshwork_identity::verify::Bundle::new(ca.anchors.clone()),
        expect: meshwork_identity::verify::Expect::Identity(agent.clone()),
    }))
    .with_no_client_auth();
    let (got, _) = resolve(real, Some(no_cert)).await;
    assert_eq!(
        got, None,
        "endpoints given to a client without a certificate"
    );
    let (got, _) = resolve(real, None).await;
    assert_eq!(got, None, "endpoints given to a plaintext client");
    assert!(
        refused.load(Ordering::SeqCst) >= 2,
        "the agent's side did not refuse both in the handshake ({} refused)",
        refused.load(Ordering::SeqCst)
    );
}
