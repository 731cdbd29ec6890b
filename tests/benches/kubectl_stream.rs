//! `kubectl exec` and `kubectl port-forward` through the bundled API server and node runtime
//! (the lab harness of tests/tests/orchestrator.rs; kubectl 1.33 runs in node 1's namespace,
//! where the API server is). In the same run:
//! - `kubectl exec box -- true`, round trip as the user waits for it, against `kubectl get pod
//!   box` (the same kubectl start, TLS and one API round trip: the floor exec adds to);
//! - an echo transfer of 64 MiB each way to the pod's echo server, through `kubectl
//!   port-forward` (kubectl → API server → node runtime → pod, WebSocket) and directly to the
//!   pod's IP from node 1 (the same server, the same bytes).
//!
//! Run: `cargo bench -p meshwork-e2e --bench kubectl_stream` (root).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "bench code: a panic with its location is the failure report"
)]

#[path = "../tests/support/orch.rs"]
mod orch;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use meshwork_lab::{stats::pct, Netns};
use orch::{Orch, KUBECTL};
use serde_json::json;

const ROUND_TRIPS: usize = 40;
const TRANSFERS: usize = 3;
const BYTES: usize = 64 * 1024 * 1024;
const LOCAL_PORT: u16 = 19000;

fn timed(o: &Orch, args: &[&str]) -> f64 {
    let t = Instant::now();
    o.kubectl(args);
    t.elapsed().as_secs_f64() * 1e3
}

/// Sends BYTES to the echo server at `addr` and reads them back; MB/s each way.
fn echo(ns: &Netns, addr: SocketAddr) -> f64 {
    ns.run(move || {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).unwrap();
        s.set_nodelay(true).unwrap();
        let mut w = s.try_clone().unwrap();
        let t = Instant::now();
        let writer = std::thread::spawn(move || {
            let chunk = vec![0x5au8; 256 * 1024];
            let mut left = BYTES;
            while left > 0 {
                let n = left.min(chunk.len());
                w.write_all(&chunk[..n]).unwrap();
                left -= n;
            }
            w.shutdown(std::net::Shutdown::Write).unwrap();
        });
        let mut r = s;
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0;
        while got < BYTES {
            let n = r.read(&mut buf).unwrap();
            assert!(n > 0, "echo ended after {got} bytes");
            assert!(buf[..n].iter().all(|b| *b == 0x5a), "echoed bytes differ");
            got += n;
        }
        writer.join().unwrap();
        BYTES as f64 / 1e6 / t.elapsed().as_secs_f64()
    })
    .unwrap()
}

fn main() {
    let o = Orch::start_opts("kstream_bench", &[], false);
    o.apply(&json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "box"},
        "spec": {"nodeName": "n1", "containers": [{
            "name": "main", "image": "busybox",
            "command": ["sh", "-c", "nc -ll -p 9000 -e cat & exec sleep 3600"],
        }]},
    }));
    let ip = o.wait("box Running with an IP", || {
        let p = o.json(&["get", "pod", "box"]);
        (p["status"]["phase"] == "Running")
            .then(|| p["status"]["podIP"].as_str().map(str::to_string))
            .flatten()
    });
    let ns = Netns::open(o.nodes[0].path()).unwrap();
    let pod: SocketAddr = format!("{ip}:9000").parse().unwrap();
    o.wait("the echo server answering", || {
        ns.run(|| TcpStream::connect_timeout(&pod, Duration::from_millis(200)).ok())
            .unwrap()
            .map(|_| ())
    });

    let (mut exec, mut get) = (Vec::new(), Vec::new());
    for _ in 0..ROUND_TRIPS {
        exec.push(timed(&o, &["exec", "box", "--", "true"]));
        get.push(timed(&o, &["get", "pod", "box", "-o", "name"]));
    }

    let mut pf = Command::new("ip")
        .args(["netns", "exec", &o.nodes[0].netns, KUBECTL, "--kubeconfig"])
        .arg(&o.kubeconfig)
        .args(["port-forward", "pod/box", &format!("{LOCAL_PORT}:9000")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(pf.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains("Forwarding from 127.0.0.1"), "{first}");
    let local: SocketAddr = format!("127.0.0.1:{LOCAL_PORT}").parse().unwrap();
    let (mut direct, mut forwarded) = (Vec::new(), Vec::new());
    for _ in 0..TRANSFERS {
        direct.push(echo(&ns, pod));
        forwarded.push(echo(&ns, local));
    }
    let _ = pf.kill();
    let _ = pf.wait();

    let (e50, e99) = (pct(&mut exec, 0.5), pct(&mut exec, 0.99));
    let (g50, g99) = (pct(&mut get, 0.5), pct(&mut get, 0.99));
    let (d, f) = (pct(&mut direct, 0.5), pct(&mut forwarded, 0.5));
    println!("kubectl exec / port-forward, {ROUND_TRIPS} round trips, {TRANSFERS} × 64 MiB echo each way");
    println!("| measure | p50 | p99 |");
    println!("|---|---|---|");
    println!("| `kubectl exec box -- true` | {e50:.0} ms | {e99:.0} ms |");
    println!("| `kubectl get pod box` (floor) | {g50:.0} ms | {g99:.0} ms |");
    println!("| exec − floor | {:.0} ms | |", e50 - g50);
    println!();
    println!("| echo transfer, MB/s each way (median of {TRANSFERS}) | MB/s |");
    println!("|---|---|");
    println!("| direct to the pod IP from node 1 | {d:.0} |");
    println!("| through `kubectl port-forward` | {f:.0} |");
    println!("| port-forward / direct | {:.2} |", f / d);
}
