//! What the built proxy binary loads: libm.so stays out (its text would be resident in every
//! sidecar; BENCHMARKS.md, "The proxy pair": idle RSS). `proxy/src/main.rs` defines the C
//! maths functions the proxy's dependencies call; a new one would bring the library back.
//! And the binary's lifecycle before it has a certificate: `POST /shutdown` ends it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic with its location is the failure report"
)]

use std::{
    io::{BufRead, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

#[test]
fn the_proxy_does_not_load_libm() {
    let bin = env!("CARGO_BIN_EXE_meshwork-proxy");
    let out = std::process::Command::new("ldd")
        .arg(bin)
        .output()
        .unwrap_or_else(|e| panic!("running ldd (Debian's libc-bin): {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "ldd {bin}: {out:?}");
    assert!(
        text.contains("libc.so"),
        "ldd {bin} listed no libc:\n{text}"
    );
    assert!(
        !text.contains("libm.so"),
        "the proxy loads libm.so again: something calls a C maths function that proxy/src/main.rs \
         does not define from the libm crate (`nm -D --undefined-only {bin}` names it)\n{text}"
    );
}

/// A free loopback port (bound, then let go for the process to bind).
fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// With the identity service away the proxy waits for its first certificate; a `POST
/// /shutdown` then (a Job's app done, say) ends it, not only a certificate's arrival.
#[test]
fn shutdown_is_heard_while_waiting_for_the_first_certificate() {
    let dir = std::env::temp_dir().join(format!("mw-proxy-binary-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let anchor =
        meshwork_identity::ca::generate_anchor("cluster.local", Duration::from_secs(24 * 3600))
            .unwrap();
    std::fs::write(dir.join("anchors.pem"), &anchor.cert_pem).unwrap();
    std::fs::write(dir.join("token"), "not-a-token").unwrap();
    // Nothing listens at `identity`: the proxy keeps asking for its certificate.
    let (admin, identity) = (free_port(), free_port());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_meshwork-proxy"))
        .args(["--identity-addr", &identity.to_string()])
        .args(["--identity", "spiffe://cluster.local/ns/default/sa/job"])
        .arg("--token-path")
        .arg(dir.join("token"))
        .arg("--trust-anchors")
        .arg(dir.join("anchors.pem"))
        .args(["--admin-listen", &admin.to_string()])
        .args(["--outbound-listen", &free_port().to_string()])
        .args(["--inbound-listen", &free_port().to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = i32::try_from(child.id()).unwrap();
    let log = child.stderr.take().unwrap();
    // Its exit, told by a thread that waits for it.
    let (exited, exit) = std::sync::mpsc::channel();
    let reaped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let r = reaped.clone();
    std::thread::spawn(move || {
        let status = child.wait();
        r.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = exited.send(status);
    });
    // Killed if the test ends first (not once reaped: its pid may be another's by then).
    let _kill = KillUnlessReaped { pid, reaped };
    // Its log says when it waits (the admin port is bound before that).
    let mut lines = std::io::BufReader::new(log).lines();
    loop {
        let line = lines
            .next()
            .expect("the proxy exited before it waited for a certificate")
            .unwrap();
        if line.contains("waiting for a certificate") {
            break;
        }
    }
    let mut conn = TcpStream::connect(admin).unwrap();
    conn.write_all(
        b"POST /shutdown HTTP/1.1\r\nHost: proxy\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let status = exit
        .recv_timeout(Duration::from_secs(10))
        .expect("the proxy still runs 10 s after POST /shutdown")
        .unwrap();
    assert!(status.success(), "{status}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Kills the process `pid` when dropped, unless it has been reaped.
struct KillUnlessReaped {
    pid: i32,
    reaped: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for KillUnlessReaped {
    fn drop(&mut self) {
        if !self.reaped.load(std::sync::atomic::Ordering::SeqCst) {
            // SAFETY: kill(2) with a pid and a signal number touches no memory of ours.
            unsafe { libc::kill(self.pid, libc::SIGKILL) };
        }
    }
}
