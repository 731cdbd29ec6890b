//! The bundled orchestrator's figures, in the lab (two nodes, the API server with its
//! controllers on node 1, a node runtime per node, the CNI plugin wiring pods):
//! - `kubectl apply` of a 50-replica busybox Deployment to 50 Ready pods (wall);
//! - pod start latency per pod (agent sees the pod → every container started), split into
//!   sandbox (netns + cgroup), CNI ADD and process start — against podman in the same run and
//!   the same node starting the same busybox with the same CNI plugin (`podman run -d`,
//!   sequential: netns + CNI + runc create/start);
//! - EndpointSlice update latency after a readiness change: the node runtime's pod status
//!   write (Ready flips) → the slice showing it, both seen by one watching client.
//!
//! Run: `cargo build --release --bins && cargo bench -p meshwork-e2e --bench orchestrator` (root).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "bench code: a panic with its location is the failure report"
)]

#[path = "../tests/support/orch.rs"]
mod orch;
#[path = "../tests/support/podman.rs"]
mod podman_setup;

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use futures::StreamExt;
use k8s_openapi::api::{core::v1::Pod, discovery::v1::EndpointSlice};
use kube::{
    runtime::{watcher, WatchStreamExt},
    Api,
};
use orch::Orch;
use serde_json::{json, Value};

const REPLICAS: usize = 50;
const PODMAN_RUNS: usize = 20;
const FLIPS: usize = 10;
/// podman's cgroup parent (cgroupfs manager: created in every hierarchy, removed after the runs).
const PODMAN_CGROUP: &str = "/mwbench-podman";

/// Removes podman's cgroup parent from every hierarchy (v1 and the unified one), deepest first.
fn remove_podman_cgroups() {
    fn rm_tree(dir: &Path) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                rm_tree(&e.path());
            }
        }
        let _ = std::fs::remove_dir(dir);
    }
    let name = PODMAN_CGROUP.trim_start_matches('/');
    // conmon leaves its cgroup a moment after `podman rm` returns: retry for a few seconds.
    for _ in 0..50 {
        let mut left = false;
        for h in std::fs::read_dir("/sys/fs/cgroup")
            .into_iter()
            .flatten()
            .flatten()
        {
            let d = h.path().join(name);
            rm_tree(&d);
            left |= d.exists();
        }
        if !left {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    eprintln!("warning: podman's cgroup parent {PODMAN_CGROUP} could not be removed");
}

/// When a watching client saw the pod or the slice, and whether it was ready.
type Seen = (Instant, &'static str, bool);

use meshwork_lab::stats::pct;

fn deployment(name: &str, replicas: usize, probe: bool) -> Value {
    let mut c = json!({
        "name": "web", "image": "busybox",
        "command": ["sh", "-c", "mkdir -p /www && echo ok > /www/healthz && exec httpd -f -p 8080 -h /www"],
        "ports": [{"name": "http", "containerPort": 8080}],
    });
    if probe {
        c["readinessProbe"] = json!({"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 1, "failureThreshold": 1});
    }
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"terminationGracePeriodSeconds": 1, "containers": [c]}}
        }
    })
}

/// podman with private storage and config, running in node 1's namespace with the same CNI
/// plugin on its own bridge and subnet.
struct Podman {
    dir: PathBuf,
    netns: String,
    node: meshwork_lab::Node,
}

impl Podman {
    fn new(o: &Orch) -> Podman {
        let dir = o.lab.dir().join("podman");
        let conf = json!({
            "cniVersion": "1.0.0", "name": "mwbench",
            "plugins": [{"type": "meshwork", "bridge": "mwpm0", "dataDir": dir.join("cni-state"),
                         "ipam": {"subnet": "10.250.0.0/24"}}]
        });
        podman_setup::setup(
            &dir,
            &o.lab.cni_bin_dir().join("meshwork"),
            &conf,
            "mwbench",
        );
        Podman {
            dir,
            netns: o.nodes[0].netns.clone(),
            node: o.nodes[0].clone(),
        }
    }

    fn run(&self, o: &Orch, args: &[&str]) -> std::process::Output {
        let mut all = podman_setup::global_args(&self.dir);
        all.extend(args.iter().map(|a| a.to_string()));
        let argv: Vec<&str> = all.iter().map(String::as_str).collect();
        o.lab
            .command_in_node(&self.node, &self.netns, "/usr/bin/podman", &argv)
            .envs(podman_setup::env(&self.dir))
            .output()
            .unwrap()
    }

    fn ok(&self, o: &Orch, args: &[&str]) -> String {
        let out = self.run(o, args);
        assert!(
            out.status.success(),
            "podman {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

fn main() {
    let o = Orch::start_opts("bench_orch", &[], false);

    // 1. kubectl apply of 50 replicas → 50 Ready (no readiness probe: Ready when started).
    let to_ready = o.apply_ready(
        &deployment("fifty", REPLICAS, false),
        REPLICAS,
        Duration::from_secs(300),
    );

    // 2. Pod start breakdown from both agents.
    let timings: Vec<Value> = (0..o.nodes.len()).flat_map(|i| o.pod_starts(i)).collect();
    let [mut total, mut sandbox, mut cni, mut process] = orch::start_columns(&timings);
    o.kubectl(&["delete", "deploy", "fifty", "--wait=true"]);
    o.wait_long("the 50 pods to go", Duration::from_secs(300), || {
        o.kubectl(&["get", "pods", "-l", "app=fifty", "-o", "name"])
            .is_empty()
            .then_some(())
    });

    // 3. The peer: podman starting the same busybox with the same plugin on node 1.
    let archive = podman_setup::busybox_archive();
    let pm = Podman::new(&o);
    pm.ok(&o, &["load", "-q", "-i", archive.to_str().unwrap()]);
    let mut podman_ms = Vec::new();
    for i in 0..PODMAN_RUNS {
        let name = format!("b{i}");
        let t = Instant::now();
        pm.ok(
            &o,
            &[
                "run",
                "-d",
                "--cgroup-parent",
                PODMAN_CGROUP,
                "--name",
                &name,
                "localhost/meshwork-busybox:latest",
                "sleep",
                "600",
            ],
        );
        podman_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let _ = pm.run(&o, &["rm", "-f", "-a", "-t", "0"]);
    remove_podman_cgroups();

    // 4. EndpointSlice latency after readiness flips.
    let path = o.lab.dir().join("flip.json");
    std::fs::write(&path, deployment("flip", 3, true).to_string()).unwrap();
    o.kubectl(&["apply", "-f", path.to_str().unwrap()]);
    o.wait_long("3 ready flip pods", Duration::from_secs(120), || {
        let r = o.kubectl(&[
            "get",
            "deploy",
            "flip",
            "-o",
            "jsonpath={.status.readyReplicas}",
        ]);
        (r == "3").then_some(())
    });
    let pods = o.json(&["get", "pods", "-l", "app=flip"]);
    let target = pods["items"][0].clone();
    let uid = target["metadata"]["uid"].as_str().unwrap().to_string();
    let ip = target["status"]["podIP"].as_str().unwrap().to_string();
    let name = target["metadata"]["name"].as_str().unwrap().to_string();
    let node = o.node_index(target["spec"]["nodeName"].as_str().unwrap());
    let health = o.rootfs(node, &uid, "web").join("www/healthz");

    // (time, "pod"/"slice", ready) as one watching client sees them.
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let (kc, ns_path) = (o.kubeconfig.clone(), o.nodes[0].netns.clone());
    let watcher_thread = {
        let (seen, stop, name, ip) = (seen.clone(), stop.clone(), name.clone(), ip.clone());
        let netns = o.lab.open(&ns_path);
        std::thread::spawn(move || {
            netns
                .run(move || {
                    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                    rt.block_on(async move {
                        let client = meshwork_kube_watch::client(Some(&kc)).await.unwrap();
                        let pods = watcher(Api::<Pod>::namespaced(client.clone(), "default"), watcher::Config::default().fields(&format!("metadata.name={name}"))).applied_objects();
                        let slices = watcher(Api::<EndpointSlice>::namespaced(client, "default"), watcher::Config::default().labels("kubernetes.io/service-name=flip")).applied_objects();
                        futures::pin_mut!(pods, slices);
                        while !stop.load(Ordering::SeqCst) {
                            tokio::select! {
                                Some(Ok(p)) = pods.next() => {
                                    let ready = p.status.and_then(|s| s.conditions).unwrap_or_default().iter().any(|c| c.type_ == "Ready" && c.status == "True");
                                    seen.lock().unwrap().push((Instant::now(), "pod", ready));
                                }
                                Some(Ok(s)) = slices.next() => {
                                    if let Some(e) = s.endpoints.iter().find(|e| e.addresses.contains(&ip)) {
                                        let ready = e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false);
                                        seen.lock().unwrap().push((Instant::now(), "slice", ready));
                                    }
                                }
                                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                            }
                        }
                    })
                })
                .unwrap()
        })
    };
    o.kubectl(&["apply", "-f", &{
        let p = o.lab.dir().join("flip-svc.json");
        std::fs::write(&p, json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "flip", "namespace": "default"}, "spec": {"selector": {"app": "flip"}, "ports": [{"port": 80, "targetPort": "http"}]}}).to_string()).unwrap();
        p.display().to_string()
    }]);
    std::thread::sleep(Duration::from_secs(2));
    let mut ctl_ms = Vec::new();
    let mut e2e_ms = Vec::new();
    for i in 0..FLIPS * 2 {
        let want_ready = i % 2 == 1;
        let t_flip = Instant::now();
        if want_ready {
            std::fs::write(&health, "ok").unwrap();
        } else {
            std::fs::remove_file(&health).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let s = seen.lock().unwrap().clone();
            let pod_t = s
                .iter()
                .find(|(t, k, r)| *t >= t_flip && *k == "pod" && *r == want_ready)
                .map(|x| x.0);
            let slice_t = s
                .iter()
                .find(|(t, k, r)| *t >= t_flip && *k == "slice" && *r == want_ready)
                .map(|x| x.0);
            if let (Some(p), Some(sl)) = (pod_t, slice_t) {
                ctl_ms.push(sl.saturating_duration_since(p).as_secs_f64() * 1e3);
                e2e_ms.push(sl.duration_since(t_flip).as_secs_f64() * 1e3);
                break;
            }
            assert!(Instant::now() < deadline, "flip {i} not seen: {s:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    stop.store(true, Ordering::SeqCst);
    watcher_thread.join().unwrap();

    println!("\n## orchestrator (two lab nodes)");
    println!(
        "kubectl apply of a {REPLICAS}-replica Deployment -> {REPLICAS} Ready: {:.2} s",
        to_ready.as_secs_f64()
    );
    println!(
        "pod start, meshwork node runtime ({} pods): p50 {:.1} ms, p90 {:.1} ms [sandbox p50 {:.1}, CNI ADD p50 {:.1}, process p50 {:.1}]",
        total.len(),
        pct(&mut total.clone(), 0.5),
        pct(&mut total, 0.9),
        pct(&mut sandbox, 0.5),
        pct(&mut cni, 0.5),
        pct(&mut process, 0.5),
    );
    let (p50, p90) = (
        pct(&mut podman_ms.clone(), 0.5),
        pct(&mut podman_ms.clone(), 0.9),
    );
    println!("pod start, podman run -d (same plugin, same node, {PODMAN_RUNS} runs): p50 {p50:.1} ms, p90 {p90:.1} ms");
    let mut t2 = total.clone();
    println!(
        "ratio meshwork/podman: p50 {:.2}x, p90 {:.2}x",
        pct(&mut t2.clone(), 0.5) / p50,
        pct(&mut t2, 0.9) / p90
    );
    println!(
        "EndpointSlice after a readiness change ({} flips): pod status -> slice p50 {:.1} ms, p90 {:.1} ms; probe file change -> slice p50 {:.0} ms, p90 {:.0} ms (1 s probe period)",
        ctl_ms.len(),
        pct(&mut ctl_ms.clone(), 0.5),
        pct(&mut ctl_ms, 0.9),
        pct(&mut e2e_ms.clone(), 0.5),
        pct(&mut e2e_ms, 0.9),
    );
}
