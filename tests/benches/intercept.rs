//! Interception: Meshwork's eBPF (cgroup connect4 + sockops + getsockopt, `ebpf/src/mesh.rs`)
//! against the istio-cni layout, an iptables `nat OUTPUT -j REDIRECT` rule in the pod's own
//! network namespace, and against no interception at all. Same run, rounds interleaved.
//!
//! Three lab nodes stand for three pods, each with a "proxy" on 127.0.0.1:4140 that accepts,
//! reads `SO_ORIGINAL_DST` (as a proxy must; answered by conntrack for iptables and by the
//! getsockopt program for eBPF) and echoes. A client process in the node's cgroup
//! (`mwlab-client`):
//! - `tcp-lat`: connect() latency to 10.99.0.1:80, redirected to the proxy (direct: the
//!   proxy's address itself);
//! - `tcp-req`: a new connection per request, 1 KiB each way (the proxy's accept and
//!   SO_ORIGINAL_DST included);
//! - `tcp-rtt`: 1 KiB each way on one established connection (per-packet cost only).
//!
//! Run: `cargo bench -p meshwork-e2e --bench intercept` (root). MESHWORK_BENCH_ROUNDS (7),
//! MESHWORK_BENCH_COUNT (2000).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "bench code: a panic with its location is the failure report"
)]

use std::{
    io::{Read, Write},
    net::TcpListener,
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use meshwork_ebpf::mesh::{Interceptor, MeshPod};
use meshwork_lab::{cgroup::lab_binary, Lab, Node};

const PROXY: &str = "127.0.0.1:4140";
const TARGET: &str = "10.99.0.1:80";

fn env_or(name: &str, d: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

/// The stand-in proxy: accept, SO_ORIGINAL_DST, echo until EOF.
fn proxy(lab: &Lab, node: &Node, stop: Arc<AtomicBool>) {
    let l: TcpListener = lab
        .open(&node.netns)
        .run(|| TcpListener::bind(PROXY))
        .unwrap()
        .unwrap();
    l.set_nonblocking(false).unwrap();
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let Ok((mut s, _)) = l.accept() else { continue };
            std::thread::spawn(move || {
                let _ = s.set_nodelay(true);
                // SAFETY: sockaddr_in is plain old data.
                let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
                let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
                // SAFETY: getsockopt into a sockaddr_in of the given size.
                unsafe {
                    libc::getsockopt(
                        s.as_raw_fd(),
                        libc::SOL_IP,
                        80,
                        (&mut sa as *mut libc::sockaddr_in).cast(),
                        &mut len,
                    )
                };
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
}

fn run(lab: &Lab, node: &Node, mode: &str, addr: &str, count: usize) -> [f64; 3] {
    let out = lab.run_in_node(
        node,
        &node.netns,
        lab_binary("mwlab-client").to_str().unwrap(),
        &[mode, addr, &count.to_string()],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Vec<f64> = text
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    assert!(v.len() >= 3, "{mode} {addr} on {}: {text}", node.name);
    [v[0], v[1], v[2]]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    meshwork_lab::require_root();
    let rounds = env_or("MESHWORK_BENCH_ROUNDS", 7);
    let count = env_or("MESHWORK_BENCH_COUNT", 2000);
    let lab = Lab::new("bench_icpt");
    let (ebpf, ipt, direct) = (lab.node("e"), lab.node("i"), lab.node("d"));
    let stop = Arc::new(AtomicBool::new(false));
    for n in [&ebpf, &ipt, &direct] {
        // A route for the target range (iptables' REDIRECT happens after the route lookup);
        // the eBPF hook rewrites before routing and needs none, but gets the same. Via the
        // node's lab uplink: nothing is sent there (both redirect locally), and the lab
        // underlay has no way out anyway.
        lab.exec(
            &n.netns,
            &["ip", "route", "add", "10.99.0.0/24", "dev", &n.uplink],
        );
        proxy(&lab, n, stop.clone());
    }
    // istio-cni's layout, reduced to the one rule that matters here.
    lab.exec(
        &ipt.netns,
        &[
            "iptables",
            "-t",
            "nat",
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "-d",
            "10.99.0.0/24",
            "-j",
            "REDIRECT",
            "--to-ports",
            "4140",
        ],
    );
    // Meshwork's: the node's cgroup stands for the pod's; no proxy container to exempt.
    let pin = format!("{}-mesh", lab.bpf_pin_dir(&ebpf).display());
    let mut i = Interceptor::open(std::path::Path::new(&pin)).unwrap();
    i.attach("bench", &lab.cgroup(&ebpf)).unwrap();
    let cookie = meshwork_ebpf::sys::netns_cookie(&ebpf.path()).unwrap();
    i.enable(
        cookie,
        &MeshPod {
            proxy_cgroup: 0,
            outbound_port: 4140,
            skip_outbound_ports: vec![],
            skip_outbound_nets: vec![],
        },
    )
    .unwrap();

    println!(
        "interception, µs: p50 / p90 / p99 of {count} per round, median of {rounds} interleaved rounds"
    );
    println!(
        "{:<34} | {:>22} | {:>22} | {:>22}",
        "", "none (to the proxy)", "eBPF (Meshwork)", "iptables REDIRECT"
    );
    for (mode, what) in [
        ("tcp-lat", "connect()"),
        ("tcp-req", "new connection + 1 KiB echo"),
        ("tcp-rtt", "1 KiB echo, established"),
    ] {
        let mut cols: Vec<Vec<[f64; 3]>> = vec![Vec::new(); 3];
        for _ in 0..rounds {
            cols[0].push(run(&lab, &direct, mode, PROXY, count));
            cols[1].push(run(&lab, &ebpf, mode, TARGET, count));
            cols[2].push(run(&lab, &ipt, mode, TARGET, count));
        }
        let m: Vec<[f64; 3]> = cols
            .iter()
            .map(|c| {
                [
                    median(c.iter().map(|x| x[0]).collect()),
                    median(c.iter().map(|x| x[1]).collect()),
                    median(c.iter().map(|x| x[2]).collect()),
                ]
            })
            .collect();
        println!(
            "{what:<34} | {:>6.1} {:>6.1} {:>7.1} | {:>6.1} {:>6.1} {:>7.1} | {:>6.1} {:>6.1} {:>7.1}",
            m[0][0], m[0][1], m[0][2], m[1][0], m[1][1], m[1][2], m[2][0], m[2][1], m[2][2]
        );
        println!(
            "{:<34} | {:>22} | {:>22} | {:>22}",
            "  added p50 over none",
            "",
            format!("+{:.1}", m[1][0] - m[0][0]),
            format!("+{:.1}", m[2][0] - m[0][0])
        );
    }
    stop.store(true, Ordering::Relaxed);
    i.remove("bench", Some(cookie), None).unwrap();
}
