//! What an idle cluster costs, and pod start when one node starts many pods at once.
//! - Two lab nodes (API server with controllers, two node runtimes heartbeating every second,
//!   a control agent per node with the overlay and without discovery — this lab has no
//!   identity service, so no Pod watch either, since 4bc106b), left idle: CPU seconds per minute of each
//!   agent, node runtime and the API server (from /proc), and how many times the Node objects
//!   changed (each change wakes every watcher of Nodes).
//! - 50 pods pinned to node 1 at once: pod start p50/p90 from the node runtime's own timings
//!   (`/debug/pod-starts`: sandbox + CNI ADD + process).
//!
//! Run: `cargo build --release --bins && cargo bench -p meshwork-e2e --bench node_idle` (root).
//! `MESHWORK_BENCH_IDLE_SECS` sets the idle window (default 60).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "bench code: a panic with its location is the failure report"
)]

use std::time::{Duration, Instant};

use serde_json::json;

#[path = "../tests/support/orch.rs"]
mod orch;
use meshwork_lab::stats::pct;
use orch::Orch;

const PODS: usize = 50;

/// utime + stime of a process, in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may contain spaces) in parentheses.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    // SAFETY: sysconf with a valid name.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / hz
}

fn main() {
    let idle: u64 = std::env::var("MESHWORK_BENCH_IDLE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let mut o = Orch::start_opts("bench_idle", &[], false);
    let agents = vec![o.start_agent(0), o.start_agent(1)];
    for i in 0..2 {
        o.wait("the agent to sync", || {
            o.node_get(i, 10256, "/healthz")
                .starts_with("HTTP/1.0 200")
                .then_some(())
        });
    }
    let pid = |p: &orch::Proc| p.pid();
    let mut watched: Vec<(String, u32)> = vec![("apiserver".into(), pid(&o.procs[0]))];
    for (i, a) in agents.iter().enumerate() {
        watched.push((format!("agent n{}", i + 1), pid(a)));
    }
    for (i, r) in o.runtimes.iter().enumerate() {
        watched.push((format!("node runtime n{}", i + 1), pid(r)));
    }

    // 1. Idle.
    let passes = |o: &Orch| -> Vec<(u64, u64)> {
        (0..2)
            .map(|i| {
                let m = o.node_get(i, 10256, "/metrics");
                let get = |name: &str| {
                    m.lines()
                        .find(|l| l.starts_with(name))
                        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                        .map_or(0, |v| v as u64)
                };
                (
                    get("meshwork_control_sync_duration_seconds_count"),
                    get("meshwork_control_overlay_syncs_total"),
                )
            })
            .collect()
    };
    let passes0 = passes(&o);
    let before: Vec<f64> = watched.iter().map(|(_, p)| cpu_secs(*p)).collect();
    // Every write of a Node object, as a watcher of Nodes (each agent) receives it.
    let node_watch = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &o.nodes[0].netns,
            orch::KUBECTL,
            "--kubeconfig",
        ])
        .arg(&o.kubeconfig)
        .args(["get", "nodes", "--watch-only", "-o", "name"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    // The measurement is the window itself: nothing to wait on.
    std::thread::sleep(Duration::from_secs(idle));
    let secs = t.elapsed().as_secs_f64();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(node_watch.id() as i32, libc::SIGTERM) };
    let out = node_watch.wait_with_output().unwrap();
    let node_events = String::from_utf8_lossy(&out.stdout).lines().count();
    println!("idle 2-node cluster, {secs:.0} s (node runtimes heartbeat every 1 s):");
    for ((name, p), b) in watched.iter().zip(&before) {
        let per_min = (cpu_secs(*p) - b) * 60.0 / secs;
        println!("  {name:<16} {per_min:.3} CPU s/min");
    }
    println!("  Node object changes seen by a Node watcher: {node_events}");
    for (i, ((s0, o0), (s1, o1))) in passes0.iter().zip(passes(&o)).enumerate() {
        println!(
            "  agent n{}: {} Service passes, {} overlay syncs to the kernel (0 means not counted by this build)",
            i + 1,
            s1 - s0,
            o1 - o0
        );
    }

    // 2. 50 pods on one node at once.
    let deploy = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "burst", "namespace": "default"},
        "spec": {
            "replicas": PODS,
            "selector": {"matchLabels": {"app": "burst"}},
            "template": {"metadata": {"labels": {"app": "burst"}}, "spec": {
                "nodeName": "n1", "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "c", "image": "busybox", "command": ["sleep", "600"]}]}}
        }
    });
    let to_ready = o.apply_ready(&deploy, PODS, Duration::from_secs(300));
    let timings = o.pod_starts(0);
    let [mut total, mut sandbox, mut cni, mut process] = orch::start_columns(&timings);
    println!(
        "{PODS} pods pinned to n1, applied at once: all Ready in {:.2} s",
        to_ready.as_secs_f64()
    );
    println!(
        "  pod start p50 {:.1} ms, p90 {:.1} ms ({} starts); sandbox / CNI ADD / process p50: {:.1} / {:.1} / {:.1} ms",
        pct(&mut total, 0.5),
        pct(&mut total, 0.9),
        total.len(),
        pct(&mut sandbox, 0.5),
        pct(&mut cni, 0.5),
        pct(&mut process, 0.5),
    );
    o.kubectl(&["delete", "deploy", "burst", "--wait=true"]);
    o.wait_long("the pods to go", Duration::from_secs(300), || {
        o.kubectl(&["get", "pods", "-l", "app=burst", "-o", "name"])
            .is_empty()
            .then_some(())
    });
    drop(agents);
    o.procs.truncate(1);
}
