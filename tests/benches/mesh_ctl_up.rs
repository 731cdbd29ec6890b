//! `mesh-ctl up` as a user meets it, timed: from `up` to a usable cluster (nodes Ready, DNS
//! answering through the eBPF datapath from the host), `kubectl run` → the pod Running as a
//! watching client sees it, and — in the same run, for the same pods — the node runtime's own
//! pod start figures (sandbox, CNI ADD, process) from its `/debug/pod-starts`; then `down`.
//!
//! Run: `cargo build --release --bins && cargo bench -p meshwork-e2e --bench mesh_ctl_up`
//! (root; no other `mesh-ctl up` cluster on the machine: the host routes are shared).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "bench code: a panic with its location is the failure report"
)]

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    runtime::{watcher, WatchStreamExt},
    Api,
};
use meshwork_lab::{cgroup::lab_binary, kubectl::KUBECTL, stats::pct};
use serde_json::Value;

const CYCLES: usize = 5;
const PODS_PER_CYCLE: usize = 10;

fn mesh_ctl(state: &Path, kc: &Path, args: &[&str]) -> Output {
    let mut c = Command::new(lab_binary("mesh-ctl"));
    c.args(args)
        .args([
            "--lab-name",
            "mesh_ctl_bench",
            "--host-link",
            "mwl-bench-host",
        ])
        .arg("--kubeconfig")
        .arg(kc)
        .arg("--state-dir")
        .arg(state);
    if args[0] == "up" {
        c.arg("--cni-plugin").arg(meshwork_lab::cni_plugin_binary());
    }
    c.output().unwrap()
}

fn kubectl(kc: &Path, args: &[&str]) -> String {
    let out = Command::new(KUBECTL)
        .arg("--kubeconfig")
        .arg(kc)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// GET from the host (the node's port is reached over the host link).
fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

struct Down<'a>(&'a Path, &'a Path);
impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = mesh_ctl(self.0, self.1, &["down"]);
    }
}

fn main() {
    meshwork_lab::require_root();
    let dir = tempfile::Builder::new()
        .prefix("mwl-mesh_ctl_bench-")
        .tempdir()
        .unwrap();
    let state: PathBuf = dir.path().join("state");
    let kc: PathBuf = dir.path().join("kubeconfig");
    let (mut up_wall, mut down_wall, mut run_to_running) = (Vec::new(), Vec::new(), Vec::new());
    let mut node_side: HashMap<&str, Vec<f64>> = HashMap::new();
    let rt = tokio::runtime::Runtime::new().unwrap();
    for cycle in 0..CYCLES {
        let t = Instant::now();
        let out = mesh_ctl(&state, &kc, &["up", "--nodes", "2"]);
        let guard = Down(&state, &kc);
        assert!(
            out.status.success(),
            "up: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        up_wall.push(t.elapsed().as_secs_f64());
        if cycle == 0 {
            println!("{}", String::from_utf8_lossy(&out.stdout));
        }

        // A watching client records when each pod is first seen Running.
        let running: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
        let seen = running.clone();
        let admin = state.join("apiserver").join("admin.kubeconfig");
        let watch = rt.spawn(async move {
            let client = meshwork_kube_watch::client(Some(&admin)).await.unwrap();
            let pods: Api<Pod> = Api::namespaced(client, "default");
            let mut s = watcher(pods, watcher::Config::default())
                .applied_objects()
                .boxed();
            while let Some(Ok(p)) = s.next().await {
                let phase = p.status.as_ref().and_then(|s| s.phase.clone());
                if phase.as_deref() == Some("Running") {
                    let name = p.metadata.name.clone().unwrap_or_default();
                    seen.lock()
                        .unwrap()
                        .entry(name)
                        .or_insert_with(Instant::now);
                }
            }
        });
        // The watch is established once it reports the (empty) initial list: give it a pod
        // it must see first.
        for i in 0..PODS_PER_CYCLE {
            let name = format!("bench-{i}");
            let t = Instant::now();
            kubectl(
                &kc,
                &["run", &name, "--image=busybox", "--", "sleep", "3600"],
            );
            let deadline = t + Duration::from_secs(30);
            let at = loop {
                if let Some(at) = running.lock().unwrap().get(&name) {
                    break *at;
                }
                assert!(Instant::now() < deadline, "{name} not Running in 30 s");
                std::thread::sleep(Duration::from_millis(2));
            };
            run_to_running.push((at - t).as_secs_f64() * 1e3);
        }
        watch.abort();
        for ip in ["198.18.0.1", "198.18.0.2"] {
            let v: Value =
                serde_json::from_str(&http_get(&format!("{ip}:10250"), "/debug/pod-starts"))
                    .unwrap();
            for t in v.as_array().unwrap() {
                for k in ["total_ms", "sandbox_ms", "cni_ms", "process_ms"] {
                    node_side.entry(k).or_default().push(t[k].as_f64().unwrap());
                }
            }
        }
        let t = Instant::now();
        drop(guard);
        down_wall.push(t.elapsed().as_secs_f64());
        assert!(!state.join("apiserver").exists(), "down left the state");
    }
    println!(
        "mesh-ctl up, {CYCLES} cycles of up → {PODS_PER_CYCLE} × kubectl run → down (2 nodes):"
    );
    let mut up2 = up_wall.clone();
    println!(
        "  up → Ready (nodes Ready, DNS answering): p50 {:.2} s, min {:.2}, max {:.2}",
        pct(&mut up2, 0.5),
        pct(&mut up_wall.clone(), 0.0),
        pct(&mut up_wall, 1.0)
    );
    println!(
        "  kubectl run → Running (watching client): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (n={})",
        pct(&mut run_to_running, 0.5),
        pct(&mut run_to_running, 0.99),
        pct(&mut run_to_running, 1.0),
        run_to_running.len()
    );
    for k in ["total_ms", "sandbox_ms", "cni_ms", "process_ms"] {
        let v = node_side.get_mut(k).unwrap();
        println!(
            "  node runtime pod start {k:<11} p50 {:.1} ms, p99 {:.1} ms (n={})",
            pct(v, 0.5),
            pct(v, 0.99),
            v.len()
        );
    }
    println!("  down: p50 {:.2} s", pct(&mut down_wall, 0.5));
}
