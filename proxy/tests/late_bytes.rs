//! What the inbound proxy does with a connection whose first bytes do not say HTTP at once
//! (`inbound::serve_detected`, `detect::request_line`): a client that waits out the detection
//! timeout and then sends HTTP, plaintext or inside a mesh session, gets its request served
//! as HTTP (so a forged identity header is removed) while a server-speaks-first app still gets
//! its relay; a request line that lenient apps accept but hyper does not gets a 400 instead of
//! reaching the app raw; plaintext to an opaque port is relayed without waiting for detection.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic with its location is the failure report"
)]

use std::{net::SocketAddr, time::Duration};

mod support;

use meshwork_proxy::{
    drain::Watch,
    inbound::{self, Inbound},
    transport_header::{SessionProtocol, TransportHeader},
};
use support::{forged_get, raw_mesh, serve_http1, test_ca, Creds};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};

/// An HTTP app on `127.0.0.2` answering every request with the identity header it received
/// ("none"); each connection it accepts is reported on the channel, so a test knows when the
/// proxy gave up detecting and connected.
async fn http_app() -> (SocketAddr, mpsc::UnboundedReceiver<()>) {
    let l = TcpListener::bind("127.0.0.2:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let (inner, inner_addr) = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        (l, a)
    };
    serve_http1(inner, |req| async move {
        let id = support::client_ids(req.headers());
        Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
            bytes::Bytes::from(id),
        )))
    });
    // Each accepted connection is reported, then spliced to the HTTP server behind.
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = l.accept().await.unwrap();
            let _ = tx.send(());
            tokio::spawn(async move {
                let mut back = TcpStream::connect(inner_addr).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut tcp, &mut back).await;
            });
        }
    });
    (addr, rx)
}

/// A server-speaks-first app on `127.0.0.2`: a greeting on accept, then one line echoed.
async fn greeting_app() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.2:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let (r, mut w) = tcp.into_split();
                w.write_all(b"220 ready\r\n").await.unwrap();
                let mut line = String::new();
                let _ = BufReader::new(r).read_line(&mut line).await;
                let _ = w.write_all(format!("echo {line}").as_bytes()).await;
            });
        }
    });
    addr
}

/// An inbound proxy on `127.0.0.3:<port>` for each port, its apps on `127.0.0.2` (plaintext
/// goes to the app port a connection was addressed to, as kernel steering keeps it).
async fn inbound(cfg: inbound::Config, creds: std::sync::Arc<Creds>, ports: &[u16]) {
    let cfg = inbound::Config {
        app_ip: Some([127, 0, 0, 2].into()),
        ..cfg
    };
    for port in ports {
        let l = TcpListener::bind(("127.0.0.3", *port)).await.unwrap();
        tokio::spawn(Inbound::new(cfg.clone(), creds.clone()).serve(l, Watch::never()));
    }
}

/// A silent client of the greeting app through the proxy at `127.0.0.3:<port>`: the greeting
/// arrives within 5 s (else `why` fails the test), then a line is echoed.
async fn greeted_through(port: u16, why: &str) {
    let s = TcpStream::connect(("127.0.0.3", port)).await.unwrap();
    let (r, mut w) = s.into_split();
    let mut r = BufReader::new(r);
    let mut greeting = String::new();
    tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut greeting))
        .await
        .expect(why)
        .unwrap();
    assert_eq!(greeting, "220 ready\r\n");
    w.write_all(b"HELO x\r\n").await.unwrap();
    assert_eq!(answer(&mut r).await, "echo HELO x\r\n");
}

/// Reads `io` to its end (at most 5 s) as text.
async fn answer<S: AsyncReadExt + Unpin>(io: &mut S) -> String {
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), io.read_to_end(&mut buf))
        .await
        .expect("an answer or a close within 5 s");
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_waits_out_detection_still_cannot_forge_the_identity_header() {
    let ca = test_ca();
    let client = Creds::new(&ca, "spiffe://cluster.local/ns/default/sa/client");
    let web = Creds::new(&ca, "spiffe://cluster.local/ns/default/sa/web");
    let (app, mut accepted) = http_app().await;
    let greeter = greeting_app().await;
    let mesh = TcpListener::bind("127.0.0.3:0").await.unwrap();
    let mesh_addr = mesh.local_addr().unwrap();
    let cfg = inbound::Config {
        detect_timeout: Duration::from_millis(300),
        app_ip: Some([127, 0, 0, 2].into()),
        ..Default::default()
    };
    tokio::spawn(Inbound::new(cfg.clone(), web.clone()).serve(mesh, Watch::never()));
    inbound(cfg, web.clone(), &[app.port(), greeter.port()]).await;

    // Plaintext, permissive: silent until the proxy has connected to the app (detection
    // over), then a request with a forged identity. Served as HTTP: the header is removed.
    let mut s = TcpStream::connect(("127.0.0.3", app.port())).await.unwrap();
    accepted.recv().await.unwrap();
    let out = forged_get(&mut s).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        support::body_of(&out) == "none",
        "a plaintext client's late identity header reached the app: {out}"
    );
    while accepted.try_recv().is_ok() {}

    // The same inside a mesh session the peer calls opaque: the app sees the peer's own ID.
    let mut tls = raw_mesh(
        &client,
        mesh_addr,
        &web.id,
        TransportHeader {
            port: app.port(),
            protocol: SessionProtocol::Opaque,
        },
    )
    .await;
    accepted.recv().await.unwrap();
    let out = forged_get(&mut tls).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        support::body_of(&out) == "spiffe://cluster.local/ns/default/sa/client",
        "a peer's late identity header reached the app: {out}"
    );

    // A server-speaks-first app on a port not marked opaque: its greeting reaches the silent
    // client once detection is over, and the rest is relayed as before.
    greeted_through(greeter.port(), "the greeting within 5 s").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_lines_lenient_apps_accept_get_a_400_not_the_app() {
    let ca = test_ca();
    let web = Creds::new(&ca, "spiffe://cluster.local/ns/default/sa/web");
    let (app, mut accepted) = http_app().await;
    inbound(Default::default(), web, &[app.port()]).await;
    // Python's http.server reads each of these as a GET with its headers (CPython 3.11's
    // `parse_request`: the line split on any whitespace of latin-1, control characters kept,
    // HTTP/0.9's two words).
    for line in [
        &b"GET  / HTTP/1.1"[..],
        b"GET / HTTP/1.1 ",
        b" GET / HTTP/1.1",
        b"GET\t/\tHTTP/1.1",
        b"GET /\x7f HTTP/1.1",
        b"GET / HTTP/1.1\x0b",
        b"GET / HTTP/1.1\r",
        b"GET\x0c/\x1cHTTP/1.1",
        b"GET\xa0/\x85HTTP/1.1",
        b"GET /admin",
    ] {
        let mut s = TcpStream::connect(("127.0.0.3", app.port())).await.unwrap();
        let mut req = line.to_vec();
        req.extend_from_slice(
            b"\r\nHost: web\r\nmeshwork-client-id: spiffe://cluster.local/ns/x/sa/admin\r\n\r\n",
        );
        s.write_all(&req).await.unwrap();
        let out = answer(&mut s).await;
        let line = String::from_utf8_lossy(line);
        assert!(out.starts_with("HTTP/1.1 400"), "{line:?}: {out}");
    }
    // hyper's own 400 would say the same: that no connection reached the app says whose.
    assert!(
        accepted.try_recv().is_err(),
        "the app was connected: the request line went to it raw"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_to_an_opaque_port_is_relayed_without_waiting_for_detection() {
    let ca = test_ca();
    let web = Creds::new(&ca, "spiffe://cluster.local/ns/default/sa/web");
    let greeter = greeting_app().await;
    let cfg = inbound::Config {
        // Were the connection detected, the greeting would wait this long.
        detect_timeout: Duration::from_secs(60),
        opaque_ports: vec![greeter.port()..=greeter.port()],
        ..Default::default()
    };
    inbound(cfg, web, &[greeter.port()]).await;
    greeted_through(
        greeter.port(),
        "the greeting within 5 s, not after detection's 60",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_still_lets_the_apps_probe_through_on_an_opaque_port() {
    let ca = test_ca();
    let web = Creds::new(&ca, "spiffe://cluster.local/ns/default/sa/web");
    let (app, _) = http_app().await;
    let cfg = inbound::Config {
        policy: inbound::Policy::Strict,
        opaque_ports: vec![app.port()..=app.port()],
        probe_paths: vec![(app.port(), "/healthz".into())],
        ..Default::default()
    };
    inbound(cfg, web, &[app.port()]).await;
    let mut s = TcpStream::connect(("127.0.0.3", app.port())).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let out = answer(&mut s).await;
    assert!(out.starts_with("HTTP/1.1 200"), "the probe: {out}");
    // Anything else plaintext is still refused.
    let mut s = TcpStream::connect(("127.0.0.3", app.port())).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let out = answer(&mut s).await;
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
}
