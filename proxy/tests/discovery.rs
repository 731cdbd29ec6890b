//! An authority no Service answers to (the agent says `unknown`): the request gets its 503 at
//! once, not after the fail-fast wait. For an address (what an intercepted connection is
//! looked up by) the proxy keeps no stream open on the agent — an app reaching many addresses
//! outside the cluster must not hold one per address — and the answer stands a while; for a
//! name the stream stays, so a Service created later is seen at once. An authority left idle
//! gives back its stream and its sessions, mTLS or plaintext HTTP/2; a proxy follows at most
//! 1,000 authorities.
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

use meshwork_destination_api::pb;
use meshwork_proxy::{
    drain::Watch,
    outbound::{self, discover::Static, resolve::Resolver, Outbound},
};
use support::NoCreds;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};

/// Discovery where no address is known, and names are what `names` says (None: unknown):
/// every `Get` is counted, and a stream is reported on `closed` once the proxy lets go of it.
struct Nothing {
    gets: Arc<AtomicUsize>,
    closed: mpsc::UnboundedSender<()>,
    names: tokio::sync::watch::Receiver<Option<Vec<pb::Endpoint>>>,
}

type Updates =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::Update, tonic::Status>> + Send>>;

/// Reports on its channel when dropped (tonic drops a stream the client reset).
struct OnDrop(mpsc::UnboundedSender<()>);
impl Drop for OnDrop {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

fn update(eps: Option<Vec<pb::Endpoint>>) -> pb::Update {
    pb::Update {
        unknown: eps.is_none(),
        endpoints: eps.unwrap_or_default(),
        ..Default::default()
    }
}

/// What each test runs: `Nothing` on loopback with `names`, and a resolver (with its proxy's
/// metrics) reading it, whose first answer may take `first`. Also the count of `Get`s and
/// the report of streams let go.
struct Agent {
    resolver: Resolver,
    metrics: Arc<meshwork_proxy::metrics::Metrics>,
    gets: Arc<AtomicUsize>,
    closed: mpsc::UnboundedReceiver<()>,
}

async fn agent(
    names: tokio::sync::watch::Receiver<Option<Vec<pb::Endpoint>>>,
    first: Duration,
) -> Agent {
    let gets = Arc::new(AtomicUsize::new(0));
    let (closed_tx, closed) = mpsc::unbounded_channel();
    let dl = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let daddr = dl.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(pb::destination_server::DestinationServer::new(Nothing {
                gets: gets.clone(),
                closed: closed_tx,
                names,
            }))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(dl)),
    );
    let metrics = meshwork_proxy::metrics::Metrics::new();
    let resolver = resolver_at(daddr, first, metrics.clone());
    Agent {
        resolver,
        metrics,
        gets,
        closed,
    }
}

/// An outbound proxy (with `creds`) whose discovery lists `ep` for every name and which lets
/// an authority go after 300 ms without requests: its address, the count of the agent's
/// asks, and the report of streams let go. (The names' sender lives as long as the test.)
async fn idle_proxy(
    ep: pb::Endpoint,
    creds: Arc<dyn meshwork_proxy::tls::Credentials>,
) -> (
    std::net::SocketAddr,
    Arc<AtomicUsize>,
    mpsc::UnboundedReceiver<()>,
) {
    let (names_tx, names) = tokio::sync::watch::channel(Some(vec![ep]));
    std::mem::forget(names_tx);
    let Agent {
        resolver,
        metrics,
        gets,
        closed,
    } = agent(names, Duration::from_secs(10)).await;
    let resolver = resolver.idle_after(Duration::from_millis(300));
    let (_, proxy) = serve(Outbound::with(
        outbound::Config::default(),
        creds,
        resolver,
        metrics,
    ))
    .await;
    (proxy, gets, closed)
}

/// A resolver asking the discovery server at `addr` (plaintext), whose first answer may take
/// `first`.
fn resolver_at(
    addr: std::net::SocketAddr,
    first: Duration,
    metrics: Arc<meshwork_proxy::metrics::Metrics>,
) -> Resolver {
    Resolver::api(Static::default(), &addr.to_string(), None, first, metrics).unwrap()
}

/// An agent that takes connections and says nothing: its address.
async fn silent_agent() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            held.push(l.accept().await.unwrap().0);
        }
    });
    addr
}

/// `outbound` on a loopback port, serving until the test ends: it, and its address.
async fn serve(outbound: Arc<Outbound>) -> (Arc<Outbound>, std::net::SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = l.local_addr().unwrap();
    tokio::spawn(outbound.clone().serve(l, Watch::never()));
    (outbound, proxy)
}

#[tonic::async_trait]
impl pb::destination_server::Destination for Nothing {
    type GetStream = Updates;

    async fn get(
        &self,
        req: tonic::Request<pb::GetDestination>,
    ) -> Result<tonic::Response<Updates>, tonic::Status> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        let guard = OnDrop(self.closed.clone());
        let address = req
            .into_inner()
            .authority
            .starts_with(|c: char| c.is_ascii_digit());
        let names = self.names.clone();
        // The answer, then one on every change; an address's stays unknown (as the agent's
        // stream for it would stay open, unchanged).
        let updates = futures::stream::unfold(
            (guard, true, names),
            move |(g, first, mut names)| async move {
                if address {
                    if !first {
                        std::future::pending::<()>().await;
                    }
                    return Some((Ok(update(None)), (g, false, names)));
                }
                if !first {
                    names.changed().await.ok()?;
                }
                let u = update(names.borrow_and_update().clone());
                Some((Ok(u), (g, false, names)))
            },
        );
        Ok(tonic::Response::new(Box::pin(updates)))
    }
}

/// A Service of 60,000 meshed endpoints: one update of more than tonic's default 4 MiB
/// message limit, which the proxy still takes (it would keep its last set for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_of_60000_endpoints_reaches_the_proxy() {
    use prost::Message;
    let eps: Vec<pb::Endpoint> = (0..60_000u32)
        .map(|i| pb::Endpoint {
            addr: format!("10.{}.{}.{}:8080", i >> 16, (i >> 8) & 255, i & 255),
            weight: 10_000,
            zone: "zone-a".into(),
            mesh: Some(pb::Mesh {
                identity: "spiffe://cluster.local/ns/default/sa/web".into(),
                proxy_port: 4143,
            }),
            ..Default::default()
        })
        .collect();
    let size = update(Some(eps.clone())).encoded_len();
    assert!(size > 4 << 20, "the update is only {size} bytes");
    let (_names_tx, names) = tokio::sync::watch::channel(Some(eps));
    let agent = agent(names, Duration::from_secs(10)).await;
    let got = tokio::time::timeout(
        Duration::from_secs(20),
        agent.resolver.get("web.default.svc.cluster.local:80"),
    )
    .await
    .expect("no answer in 20 s");
    assert_eq!(got.map(|e| e.len()), Some(60_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_authority_is_answered_at_once_and_an_address_keeps_no_stream() {
    let (names_tx, names) = tokio::sync::watch::channel(None);
    // A fail-fast wait far longer than the test allows an answer: a 503 within it is one
    // given at once.
    let Agent {
        resolver,
        metrics,
        gets,
        mut closed,
    } = agent(names, Duration::from_secs(60)).await;
    let (outbound, proxy) = serve(Outbound::with(
        outbound::Config::default(),
        Arc::new(NoCreds),
        resolver,
        metrics,
    ))
    .await;
    let get = |host: &'static str| async move {
        let mut s = TcpStream::connect(proxy).await.unwrap();
        let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
            .await
            .expect("answered within 10 s (the fail-fast wait is 60)")
            .unwrap();
        out
    };

    // An address: 503 at once, twice, from one answer, on a stream the proxy let go.
    for _ in 0..2 {
        let out = get("10.96.7.7:80").await;
        assert!(out.starts_with("HTTP/1.1 503"), "{out}");
    }
    tokio::time::timeout(Duration::from_secs(10), closed.recv())
        .await
        .expect("the proxy kept the stream of an unknown address open")
        .unwrap();
    assert_eq!(gets.load(Ordering::SeqCst), 1, "asked once");

    // A name: 503 at once too, but its stream stays, and the Service's creation is seen.
    let name = "web.default.svc.cluster.local:80";
    let out = get("web.default.svc.cluster.local").await;
    assert!(out.starts_with("HTTP/1.1 503"), "{out}");
    assert_eq!(gets.load(Ordering::SeqCst), 2);
    let (app, _) = support::backend(Duration::ZERO, Arc::new(AtomicUsize::new(0))).await;
    let seen = outbound.resolver().current(name);
    names_tx.send_replace(Some(vec![pb::Endpoint {
        addr: app.to_string(),
        ..Default::default()
    }]));
    tokio::time::timeout(
        Duration::from_secs(10),
        outbound.resolver().changed(name, seen),
    )
    .await
    .expect("the Service's creation reached the proxy on the open stream");
    let out = get("web.default.svc.cluster.local").await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_eq!(gets.load(Ordering::SeqCst), 2, "on the same stream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_follows_at_most_1000_authorities() {
    let (_names_tx, names) = tokio::sync::watch::channel(Some(Vec::new()));
    let Agent {
        resolver, metrics, ..
    } = agent(names, Duration::from_secs(10)).await;
    // Names a client made up (Host headers), each a Service with no endpoints yet.
    for i in 0..1000 {
        let a = format!("s{i}.default.svc.cluster.local:80");
        assert!(resolver.get(&a).await.is_some(), "{a}");
    }
    assert!(resolver
        .get("s1000.default.svc.cluster.local:80")
        .await
        .is_none());
    assert_eq!(
        support::metric(
            &metrics,
            "meshwork_proxy_refused_total{reason=\"discovery_limit\"}"
        ),
        Some(1)
    );
    // One already followed is still answered.
    assert!(resolver
        .get("s7.default.svc.cluster.local:80")
        .await
        .is_some());
}

/// Addresses outside the mesh do not fill the table: an app reaching 1,000 of them within
/// their answers' 2 s still has the next one answered (unknown: passed through), not refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_addresses_make_room_in_a_full_table() {
    use meshwork_proxy::outbound::resolve::Lookup;
    let (_names_tx, names) = tokio::sync::watch::channel(None);
    let Agent {
        resolver, metrics, ..
    } = agent(names, Duration::from_secs(10)).await;
    for i in 0..1001u32 {
        let a = format!("10.{}.{}.{}:80", 96 + i / 65536, (i / 256) % 256, i % 256);
        let l = resolver.lookup(&a).await;
        assert!(matches!(l, Lookup::Unknown), "{a}: {l:?}");
    }
    assert_eq!(
        support::metric(
            &metrics,
            "meshwork_proxy_refused_total{reason=\"discovery_limit\"}"
        ),
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authority_left_idle_gives_back_its_stream_and_its_mesh_session() {
    use meshwork_proxy::inbound::{self, Inbound};
    let ca = support::test_ca();
    let client = support::Creds::new(&ca, "spiffe://cluster.local/ns/default/sa/client");
    let web = support::Creds::new(&ca, "spiffe://cluster.local/ns/default/sa/web");
    let (app, _) = support::backend(Duration::ZERO, Arc::new(AtomicUsize::new(0))).await;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let inbound_port = l.local_addr().unwrap().port();
    let inbound_metrics = meshwork_proxy::metrics::Metrics::new();
    tokio::spawn(
        Inbound::with(inbound::Config::default(), web, inbound_metrics.clone())
            .serve(l, Watch::never()),
    );
    let ep = pb::Endpoint {
        addr: app.to_string(),
        mesh: Some(pb::Mesh {
            identity: "spiffe://cluster.local/ns/default/sa/web".into(),
            proxy_port: inbound_port.into(),
        }),
        ..Default::default()
    };
    let (proxy, gets, mut closed) = idle_proxy(ep, client).await;
    let handshakes = || {
        support::metric(
            &inbound_metrics,
            "meshwork_proxy_tls_handshakes_total{direction=\"inbound\",result=\"ok\"}",
        )
        .unwrap_or(0)
    };
    let get = || async move {
        let mut s = TcpStream::connect(proxy).await.unwrap();
        support::get(&mut s).await
    };

    assert_eq!(get().await, 200);
    assert_eq!((gets.load(Ordering::SeqCst), handshakes()), (1, 1));
    // Nothing asks for it for longer than the idle timeout: the proxy lets the stream go by
    // itself (no request comes to make it look)...
    tokio::time::timeout(Duration::from_secs(10), closed.recv())
        .await
        .expect("an idle authority's stream was never let go")
        .unwrap();
    // ...and with it the balancer and the mesh session: the next request asks again and
    // makes a new session (a second handshake at the server's proxy).
    assert_eq!(get().await, 200);
    assert_eq!(
        (gets.load(Ordering::SeqCst), handshakes()),
        (2, 2),
        "asked again, and a new session"
    );
}

/// An endpoint outside the mesh speaking HTTP/2 prior knowledge: its address, the count of
/// connections it accepted, and a report of each one's end.
async fn h2_endpoint() -> (
    std::net::SocketAddr,
    Arc<AtomicUsize>,
    mpsc::UnboundedReceiver<()>,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let (ended_tx, ended) = mpsc::unbounded_channel();
    let accepted = Arc::new(AtomicUsize::new(0));
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = l.local_addr().unwrap();
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = l.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            let ended = ended_tx.clone();
            tokio::spawn(async move {
                let ok = hyper::service::service_fn(|_| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Empty::<bytes::Bytes>::new(),
                    ))
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), ok)
                    .await;
                let _ = ended.send(());
            });
        }
    });
    (app, accepted, ended)
}

/// A request from an app in HTTP/2 to `web:80` through the outbound proxy at `proxy`, on a
/// connection of its own: the status.
async fn h2_get(proxy: std::net::SocketAddr) -> http::StatusCode {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let tcp = TcpStream::connect(proxy).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get("http://web:80/")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    send.send_request(req).await.unwrap().status()
}

/// An app that speaks HTTP/2 (gRPC) to a Service outside the mesh gets a plaintext HTTP/2
/// session per endpoint; an authority let go lets its sessions go too, or a proxy would keep
/// a connection to every such endpoint it ever used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authority_left_idle_gives_back_its_plaintext_http2_session() {
    let (app, accepted, mut ended) = h2_endpoint().await;
    let ep = pb::Endpoint {
        addr: app.to_string(),
        ..Default::default()
    };
    let (proxy, gets, mut closed) = idle_proxy(ep, Arc::new(NoCreds)).await;

    assert_eq!(h2_get(proxy).await, 200);
    assert_eq!(h2_get(proxy).await, 200);
    assert_eq!(
        (gets.load(Ordering::SeqCst), accepted.load(Ordering::SeqCst)),
        (1, 1),
        "one stream, one session to the endpoint"
    );
    tokio::time::timeout(Duration::from_secs(10), closed.recv())
        .await
        .expect("an idle authority's stream was never let go")
        .unwrap();
    // The endpoint sees its session end, with no request to make the proxy look.
    tokio::time::timeout(Duration::from_secs(10), ended.recv())
        .await
        .expect("the plaintext HTTP/2 session outlived its authority")
        .unwrap();
    assert_eq!(h2_get(proxy).await, 200);
    assert_eq!(
        (gets.load(Ordering::SeqCst), accepted.load(Ordering::SeqCst)),
        (2, 2),
        "asked again, and a new session"
    );
}

/// A Service scaled to zero: a request waits for endpoints (then gets its 503), and the
/// sessions to the endpoints that went are let go meanwhile, not kept until the Service has
/// endpoints again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_scaled_to_zero_lets_its_endpoints_sessions_go() {
    let (app, _, mut ended) = h2_endpoint().await;
    let (names_tx, names) = tokio::sync::watch::channel(Some(vec![pb::Endpoint {
        addr: app.to_string(),
        ..Default::default()
    }]));
    let Agent {
        resolver, metrics, ..
    } = agent(names, Duration::from_secs(10)).await;
    let cfg = outbound::Config {
        failfast: Duration::from_secs(1),
        ..outbound::Config::default()
    };
    let (outbound, proxy) = serve(Outbound::with(cfg, Arc::new(NoCreds), resolver, metrics)).await;

    assert_eq!(h2_get(proxy).await, 200);
    let name = "web:80";
    let seen = outbound.resolver().current(name);
    names_tx.send_replace(Some(Vec::new()));
    tokio::time::timeout(
        Duration::from_secs(10),
        outbound.resolver().changed(name, seen),
    )
    .await
    .expect("the empty set reached the proxy");
    let waiting = tokio::spawn(h2_get(proxy));
    tokio::time::timeout(Duration::from_secs(10), ended.recv())
        .await
        .expect("the session to an endpoint that went was kept")
        .unwrap();
    assert_eq!(waiting.await.unwrap(), 503);
}

/// What the agent said of an unknown authority stands a while, then it is asked again at the
/// next request: an address after 2 s (its stream already ended), a name after 10 s (its
/// stream open until then, and let go when it is asked again). The clock is what is under
/// test here: the waits are the times themselves, with margins either side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_authorities_are_asked_again_once_their_answer_ran_out() {
    let (_names_tx, names) = tokio::sync::watch::channel(None);
    let Agent {
        resolver,
        gets,
        mut closed,
        ..
    } = agent(names, Duration::from_secs(10)).await;
    let (addr, name) = ("10.96.7.7:80", "web.default.svc.cluster.local:80");
    let asked = |n| assert_eq!(gets.load(Ordering::SeqCst), n, "asks of the agent");
    let let_go = async |closed: &mut mpsc::UnboundedReceiver<()>, what: &str| {
        tokio::time::timeout(Duration::from_secs(5), closed.recv())
            .await
            .unwrap_or_else(|_| panic!("{what}: its stream was not let go"))
            .unwrap();
    };
    let t0 = tokio::time::Instant::now();
    assert!(resolver.get(addr).await.is_none());
    assert!(resolver.get(name).await.is_none());
    asked(2);
    let_go(&mut closed, "the address, at once").await;

    tokio::time::sleep_until(t0 + Duration::from_secs(1)).await;
    assert!(resolver.get(addr).await.is_none());
    assert!(resolver.get(name).await.is_none());
    asked(2);

    tokio::time::sleep_until(t0 + Duration::from_secs(3)).await;
    assert!(resolver.get(addr).await.is_none());
    asked(3);
    let_go(&mut closed, "the address asked again").await;
    assert!(resolver.get(name).await.is_none());
    asked(3);
    assert!(
        closed.try_recv().is_err(),
        "the name's stream was let go early"
    );

    tokio::time::sleep_until(t0 + Duration::from_secs(11)).await;
    assert!(resolver.get(name).await.is_none());
    asked(4);
    let_go(&mut closed, "the name's first stream").await;
}

/// A request's place in the queue is held while it waits for an endpoint, not while its
/// attempt is in flight; and the fail-fast wait counts only the time it waited: an attempt
/// that took longer than the fail-fast timeout and failed still lets its retry wait for an
/// endpoint, instead of failing the authority fast at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fail_fast_wait_counts_waiting_not_attempts() {
    // The endpoint: its first request is answered 503 after 1.5 s, the rest 200 at once.
    let got = Arc::new(tokio::sync::Notify::new());
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = l.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let g = got.clone();
    support::serve_http1(l, move |_req| {
        let (g, seen) = (g.clone(), seen.clone());
        async move {
            let mut r = http::Response::new(http_body_util::Full::new(bytes::Bytes::new()));
            if seen.fetch_add(1, Ordering::SeqCst) == 0 {
                g.notify_one();
                tokio::time::sleep(Duration::from_millis(1500)).await;
                *r.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
            }
            Ok::<_, std::convert::Infallible>(r)
        }
    });
    let endpoint = || {
        Some(vec![pb::Endpoint {
            addr: backend.to_string(),
            ..Default::default()
        }])
    };
    let (names_tx, names) = tokio::sync::watch::channel(Some(Vec::new()));
    let Agent {
        resolver, metrics, ..
    } = agent(names, Duration::from_secs(10)).await;
    let cfg = outbound::Config {
        failfast: Duration::from_secs(1),
        ..outbound::Config::default()
    };
    let (outbound, proxy) = serve(Outbound::with(
        cfg,
        Arc::new(NoCreds),
        resolver,
        metrics.clone(),
    ))
    .await;
    let queued = || support::metric(&metrics, "meshwork_proxy_outbound_queued_requests");
    let until_queued = async |n: i64| {
        tokio::time::timeout(Duration::from_secs(5), async {
            while queued() != Some(n) {
                tokio::task::yield_now().await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("queued requests never {n}: {:?}", queued()));
    };
    let set = async |eps: Option<Vec<pb::Endpoint>>| {
        let seen = outbound.resolver().current("web:80");
        names_tx.send_replace(eps);
        tokio::time::timeout(
            Duration::from_secs(5),
            outbound.resolver().changed("web:80", seen),
        )
        .await
        .expect("the change reached the proxy");
    };

    // No endpoint yet: the request waits in the queue.
    let request = tokio::spawn(async move {
        let mut s = TcpStream::connect(proxy).await.unwrap();
        support::get(&mut s).await
    });
    until_queued(1).await;
    // An endpoint comes: the request goes to it and leaves the queue while it is in flight.
    set(endpoint()).await;
    got.notified().await;
    assert_eq!(
        queued(),
        Some(0),
        "a request in flight still holds a place in the queue"
    );
    // The Service loses it meanwhile; the attempt fails after longer than the fail-fast
    // timeout, and its retry waits for an endpoint, having waited only briefly so far...
    set(Some(Vec::new())).await;
    until_queued(1).await;
    // ...so it is still there when the endpoint comes back.
    set(endpoint()).await;
    assert_eq!(request.await.unwrap(), 200);
}

/// Discovery where the first four asks fail, the fifth is answered once and then fails, and
/// the rest are answered: the time of each ask is sent on `asks`.
struct Flaky {
    n: AtomicUsize,
    asks: mpsc::UnboundedSender<std::time::Instant>,
}

#[tonic::async_trait]
impl pb::destination_server::Destination for Flaky {
    type GetStream = Updates;

    async fn get(
        &self,
        _: tonic::Request<pb::GetDestination>,
    ) -> Result<tonic::Response<Updates>, tonic::Status> {
        use futures::StreamExt;
        let _ = self.asks.send(std::time::Instant::now());
        let n = self.n.fetch_add(1, Ordering::SeqCst) + 1;
        let answer = || Ok(update(Some(Vec::new())));
        match n {
            1..=4 => Err(tonic::Status::unavailable("not yet")),
            5 => Ok(tonic::Response::new(Box::pin(futures::stream::iter([
                answer(),
                Err(tonic::Status::internal("the agent went away")),
            ])))),
            _ => Ok(tonic::Response::new(Box::pin(
                futures::stream::iter([answer()]).chain(futures::stream::pending()),
            ))),
        }
    }
}

/// The reconnect back-off (100 ms doubling to 5 s) starts afresh after a stream that worked:
/// an agent that fails after a long good stream is asked again within the first step, not at
/// the back-off an earlier outage had reached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_worked_starts_the_reconnect_back_off_afresh() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let dl = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let daddr = dl.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(pb::destination_server::DestinationServer::new(Flaky {
                n: AtomicUsize::new(0),
                asks: tx,
            }))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(dl)),
    );
    let resolver = resolver_at(
        daddr,
        Duration::from_millis(100),
        meshwork_proxy::metrics::Metrics::new(),
    );
    let _ = resolver.get("web.default.svc.cluster.local:80").await;
    // Four failures take the back-off to 1.6 s (0.1 + 0.2 + 0.4 + 0.8 s waited); then the
    // stream that answers and fails, and the sixth ask.
    let mut asks = Vec::new();
    while asks.len() < 6 {
        let at = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("discovery asked only {} times", asks.len()))
            .unwrap();
        asks.push(at);
    }
    let gap = asks[5] - asks[4];
    // Afresh: 100 ms (± 25 %); not: 1.6 s (± 25 %).
    assert!(
        gap < Duration::from_millis(800),
        "asked again {gap:?} after a stream that worked"
    );
    assert!(
        asks[4] - asks[3] >= Duration::from_millis(600),
        "the back-off had grown first: {:?}",
        asks[4] - asks[3]
    );
}

/// A request's timeout covers discovery's first answer too: with the agent not answering, a
/// request with a 300 ms timeout gets its 504 then, not the 503 of discovery's own wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_timeout_covers_the_wait_for_discovery() {
    let daddr = silent_agent().await;
    let metrics = meshwork_proxy::metrics::Metrics::new();
    let resolver = resolver_at(daddr, Duration::from_secs(30), metrics.clone());
    let cfg = outbound::Config {
        request_timeout: Some(Duration::from_millis(300)),
        ..outbound::Config::default()
    };
    let (_, proxy) = serve(Outbound::with(cfg, Arc::new(NoCreds), resolver, metrics)).await;
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), support::get(&mut s))
        .await
        .expect("no answer within 10 s (the request timeout is 300 ms)");
    assert_eq!(status, 504);
}

/// Discovery tells "outside the mesh" (the agent says unknown: an intercepted connection is
/// passed through) from "no answer" (the agent away: it is closed, since the address may be a
/// meshed pod's, which must not get plaintext).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_answer_from_discovery_is_not_outside_the_mesh() {
    use meshwork_proxy::outbound::resolve::Lookup;
    let (_names_tx, names) = tokio::sync::watch::channel(None);
    let Agent { resolver, .. } = agent(names, Duration::from_secs(10)).await;
    let l = resolver.lookup("10.96.7.7:80").await;
    assert!(matches!(l, Lookup::Unknown), "{l:?}");
    // An agent that says nothing, past a 300 ms first-answer wait.
    let daddr = silent_agent().await;
    let silent = resolver_at(
        daddr,
        Duration::from_millis(300),
        meshwork_proxy::metrics::Metrics::new(),
    );
    let l = silent.lookup("10.96.7.7:80").await;
    assert!(matches!(l, Lookup::Unavailable), "{l:?}");
}
