//! One mesh session between two proxies carries everything from one pod to another's port:
//! requests as HTTP/2 streams and opaque TCP as CONNECT streams (`outbound/tunnel.rs`). What
//! that must not cost: more long-lived tunnels than hyper's default stream limit (200) all
//! work at once, and one tunnel whose app stops reading does not stall the others (a stream
//! may hold only its own window, not the whole session's).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic with its location is the failure report"
)]

use std::{net::SocketAddr, time::Duration};

mod support;

use meshwork_proxy::inbound::{self};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
};

/// A line server: a first line `stall` makes it read nothing more on that connection (an app
/// that stopped reading); any other line is answered `echo <line>`, and so on.
async fn line_app() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let (r, mut w) = tcp.into_split();
                let mut r = BufReader::new(r);
                let mut line = String::new();
                while r.read_line(&mut line).await.unwrap_or(0) > 0 {
                    if line == "stall\n" {
                        // Holds the connection, reads nothing.
                        std::future::pending::<()>().await;
                    }
                    if w.write_all(format!("echo {line}").as_bytes())
                        .await
                        .is_err()
                    {
                        return;
                    }
                    line.clear();
                }
            });
        }
    });
    addr
}

/// A client proxy whose `db.default.svc.cluster.local:7000` is `app` behind a server proxy
/// (a port that is not opaque: the tunnels' bytes are detected, then relayed).
async fn pair(app: SocketAddr) -> SocketAddr {
    mesh_pair(app).await.outbound
}

async fn mesh_pair(app: SocketAddr) -> support::MeshPair {
    let cfg = inbound::Config {
        // Every tunnel's first bytes come at once; a short timeout is not waited on.
        detect_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    support::mesh_pair(app, "db.default.svc.cluster.local:7000", cfg).await
}

/// A CONNECT tunnel to the app through the client proxy, its answer's head read.
async fn tunnel(proxy: SocketAddr) -> TcpStream {
    support::connect_tunnel(proxy, "db.default.svc.cluster.local:7000").await
}

/// A line through `s` and its echo.
async fn echo(s: &mut TcpStream, line: &str) -> String {
    s.write_all(format!("{line}\n").as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    while !out.ends_with(b"\n") {
        assert_eq!(s.read(&mut b).await.unwrap(), 1, "{out:?}");
        out.push(b[0]);
    }
    String::from_utf8(out).unwrap()
}

/// Lets the process hold `n` descriptors (a fresh machine's soft limit is 1,024).
fn descriptors(n: u64) {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the struct passed, nothing else.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut l), 0);
        if l.rlim_cur < n {
            assert!(
                l.rlim_max >= n,
                "this test needs {n} descriptors; the hard limit is {}",
                l.rlim_max
            );
            l.rlim_cur = n;
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &l), 0);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_long_lived_tunnels_than_hyper_allows_streams_all_work_at_once() {
    // Four descriptors per tunnel: the client's, both proxies' sides, the app's.
    descriptors(4096);
    let proxy = pair(line_app().await).await;
    let mut open = Vec::new();
    for i in 0..300 {
        let mut s = tokio::time::timeout(Duration::from_secs(10), tunnel(proxy))
            .await
            .unwrap_or_else(|_| panic!("tunnel {i} not opened within 10 s"));
        assert_eq!(
            echo(&mut s, &format!("hello {i}")).await,
            format!("echo hello {i}\n")
        );
        open.push(s);
    }
    // All still open and working.
    for (i, s) in open.iter_mut().enumerate() {
        assert_eq!(
            echo(s, &format!("again {i}")).await,
            format!("echo again {i}\n")
        );
    }
}

/// A tunnel whose app reads nothing after `stall`, written to until every buffer on the way is
/// full (the kernel's on both loopback hops, then the proxies' as far as their windows allow):
/// until a write waits a whole second. (Were the path not full yet, the rest of the test would
/// pass with any windows: this only makes it able to fail.)
async fn stalled_tunnel(proxy: SocketAddr) -> TcpStream {
    let mut stalled = tunnel(proxy).await;
    stalled.write_all(b"stall\n").await.unwrap();
    let chunk = vec![b'x'; 64 * 1024];
    let mut written = 0usize;
    while tokio::time::timeout(Duration::from_secs(1), stalled.write_all(&chunk))
        .await
        .is_ok()
    {
        written += chunk.len();
        assert!(
            written < 1 << 30,
            "1 GiB went into a tunnel whose app reads nothing"
        );
    }
    stalled
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_whose_app_stopped_reading_do_not_stall_the_others() {
    let proxy = pair(line_app().await).await;
    // Three: one stalled stream holds less than its window here, for a reason of h2's (with
    // both windows at 256 KiB, one alone stalls nothing), so one would not tell a stream
    // window as large as the connection's from ours (1/16 of it); three stall the session
    // with both windows at 256 KiB or at 1 MiB.
    let mut stalled = Vec::new();
    for _ in 0..3 {
        stalled.push(stalled_tunnel(proxy).await);
    }
    // Another tunnel on the same session: its bytes must still get through.
    let mut other = tunnel(proxy).await;
    // A short first line: the server's proxy detects it as not HTTP (a long run of token
    // characters would still read as the start of a request line).
    let hello = tokio::time::timeout(Duration::from_secs(10), echo(&mut other, "hello"));
    assert_eq!(
        hello.await.expect("the other tunnel stalled"),
        "echo hello\n"
    );
    for i in 0..20 {
        let line = format!("{i}{}", "y".repeat(60 * 1024));
        let got = tokio::time::timeout(Duration::from_secs(10), echo(&mut other, &line))
            .await
            .unwrap_or_else(|_| panic!("round {i}: the other tunnel stalled"));
        assert_eq!(got.len(), line.len() + 6, "round {i}");
    }
    drop(stalled);
}

/// A tunnel is the mesh's transport for TCP: the server's proxy counts it as a TCP connection
/// to the app, not as a request of the app's (an inbound 2xx of no duration per connection);
/// and the app's connection to its proxy is counted closed when it closes, not when the
/// CONNECT was answered (hyper's connection ends there, the socket goes on in the splice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_is_counted_as_tcp_not_as_a_request() {
    let pair = mesh_pair(line_app().await).await;
    let mut s = tunnel(pair.outbound).await;
    assert_eq!(echo(&mut s, "hello").await, "echo hello\n");
    let closed = || {
        support::metric(
            &pair.outbound_metrics,
            "meshwork_proxy_tcp_close_total{direction=\"outbound\"}",
        )
    };
    assert_eq!(closed(), Some(0), "counted closed while it is open");
    drop(s);
    tokio::time::timeout(Duration::from_secs(10), async {
        while closed() != Some(1) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("its close was not counted: {:?}", closed()));
    let text = pair.inbound_metrics.encode();
    let requests: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("meshwork_proxy_requests_total{"))
        .collect();
    assert!(requests.is_empty(), "{requests:?}");
    let opens: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("meshwork_proxy_tcp_open_total{"))
        .collect();
    assert!(
        !opens.is_empty(),
        "the tunnel's connections are counted: {text}"
    );
}
