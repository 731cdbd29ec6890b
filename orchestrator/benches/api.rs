//! The API server end to end (HTTPS, kube-rs client, the release `meshwork-orchestrator`
//! binary), SQLite vs etcd in the same run: create/get/list at 10k objects, create throughput,
//! watch fan-out to 50 watchers, `kubectl apply` of 1000 Services, server RSS.
//!
//! Run: `cargo bench -p meshwork-orchestrator --bench api` (etcd and kubectl 1.33 from the
//! machine, as scripts/setup.sh installs them).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "bench code: a panic with its location is the failure report"
)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::{
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use common::ServerProc;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service};
use kube::{
    api::{PostParams, WatchEvent, WatchParams},
    Api, ResourceExt,
};
use meshwork_lab::kubectl::KUBECTL;
use meshwork_orchestrator_store::testing::Etcd;
use serde_json::json;

const N: usize = 10_000;
const WRITERS: usize = 16;
const CONCURRENT: usize = 2_000;
const WATCHERS: usize = 50;
const FANOUT_WRITES: usize = 200;
const APPLY: usize = 1_000;

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e6
}

fn service(i: usize) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": format!("svc-{i:05}"), "labels": {"app": "web"}},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}], "selector": {"app": format!("web-{i}")}},
    }))
    .unwrap()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

struct Figures {
    create: (f64, f64, f64),
    concurrent: f64,
    get: (f64, f64),
    list_ms: f64,
    watch: (f64, f64),
    apply_s: (f64, f64),
    rss_mib: f64,
    etcd_rss_mib: Option<f64>,
}

async fn ensure_ns(client: &kube::Client, name: &str) {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
}

async fn run(
    label: &str,
    server: &ServerProc,
    etcd_pid: Option<u32>,
    home: &std::path::Path,
) -> Figures {
    let client = kube::Client::try_from(common::client_config(&server.kubeconfig).await).unwrap();
    let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
    let pp = PostParams::default();

    // Sequential creates: latency of one acknowledged (committed) create.
    let mut lat = Vec::with_capacity(N);
    let t = Instant::now();
    for i in 0..N {
        let s = service(i);
        let t1 = Instant::now();
        svcs.create(&pp, &s).await.unwrap();
        lat.push(t1.elapsed());
    }
    let per_s = N as f64 / t.elapsed().as_secs_f64();
    let create = (pct(&mut lat, 0.5), pct(&mut lat, 0.99), per_s);

    // Concurrent creates: WRITERS clients at once.
    ensure_ns(&client, "load").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "load");
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let cms = cms.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..CONCURRENT / WRITERS {
                let cm: ConfigMap = serde_json::from_value(
                    json!({"metadata": {"name": format!("cm-{w}-{i}")}, "data": {"k": "v"}}),
                )
                .unwrap();
                cms.create(&PostParams::default(), &cm).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let concurrent = CONCURRENT as f64 / t.elapsed().as_secs_f64();

    // Gets of random objects among the 10k.
    let mut lat = Vec::with_capacity(1000);
    for i in 0..1000 {
        let name = format!("svc-{:05}", (i * 7919) % N);
        let t1 = Instant::now();
        svcs.get(&name).await.unwrap();
        lat.push(t1.elapsed());
    }
    let get = (pct(&mut lat, 0.5), pct(&mut lat, 0.99));

    // Full list of 10k Services as JSON (bytes received, not decoded: the server's cost).
    let mut lat = Vec::new();
    for _ in 0..10 {
        let req = http::Request::get("/api/v1/namespaces/default/services")
            .body(Vec::new())
            .unwrap();
        let t1 = Instant::now();
        let body = client.request_text(req).await.unwrap();
        lat.push(t1.elapsed());
        assert!(body.len() > N * 100);
    }
    let list_ms = pct(&mut lat, 0.5) / 1e3;

    // Watch fan-out: WATCHERS watches, FANOUT_WRITES updates; delay from the write's start
    // to each watcher's receipt.
    ensure_ns(&client, "fan").await;
    let fan: Api<ConfigMap> = Api::namespaced(client.clone(), "fan");
    let obj = fan
        .create(
            &pp,
            &serde_json::from_value(json!({"metadata": {"name": "x"}, "data": {"i": "0"}}))
                .unwrap(),
        )
        .await
        .unwrap();
    let starts = Arc::new(std::sync::Mutex::new(std::collections::HashMap::<
        String,
        Instant,
    >::new()));
    let mut watchers = Vec::new();
    for _ in 0..WATCHERS {
        let mut s = fan
            .watch(&WatchParams::default(), &obj.resource_version().unwrap())
            .await
            .unwrap()
            .boxed();
        let starts = starts.clone();
        watchers.push(tokio::spawn(async move {
            let mut got = Vec::with_capacity(FANOUT_WRITES);
            while got.len() < FANOUT_WRITES {
                match s.next().await.unwrap().unwrap() {
                    WatchEvent::Modified(o) => {
                        let at = Instant::now();
                        let i = o.data.unwrap()["i"].clone();
                        let start = loop {
                            if let Some(t) = starts.lock().unwrap().get(&i).copied() {
                                break t;
                            }
                            tokio::task::yield_now().await;
                        };
                        got.push(at - start);
                    }
                    WatchEvent::Bookmark(_) => {}
                    other => panic!("{other:?}"),
                }
            }
            got
        }));
    }
    for i in 1..=FANOUT_WRITES {
        let mut o = fan.get("x").await.unwrap();
        o.data = Some([("i".to_string(), i.to_string())].into());
        starts.lock().unwrap().insert(i.to_string(), Instant::now());
        fan.replace("x", &pp, &o).await.unwrap();
    }
    let mut lat = Vec::new();
    for w in watchers {
        lat.extend(
            tokio::time::timeout(Duration::from_secs(60), w)
                .await
                .unwrap()
                .unwrap(),
        );
    }
    let watch = (pct(&mut lat, 0.5), pct(&mut lat, 0.99));

    let rss_mib = rss_kib(server.child.id()) as f64 / 1024.0;
    let etcd_rss_mib = etcd_pid.map(|p| rss_kib(p) as f64 / 1024.0);

    // kubectl apply -f of 1000 Services (create), then again (all unchanged).
    ensure_ns(&client, "apply").await;
    let yaml: String = (0..APPLY)
        .map(|i| {
            format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: a-{i}\n  namespace: apply\nspec:\n  selector: {{app: a-{i}}}\n  ports:\n  - {{name: http, port: 80, targetPort: 8080}}\n---\n")
        })
        .collect();
    let file = home.join(format!("apply-{label}.yaml"));
    std::fs::write(&file, yaml).unwrap();
    let apply = || {
        let t = Instant::now();
        let out = Command::new(KUBECTL)
            .arg("--kubeconfig")
            .arg(&server.kubeconfig)
            .arg("--cache-dir")
            .arg(home.join("cache"))
            .env("HOME", home)
            .args(["apply", "-f"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), APPLY);
        t.elapsed().as_secs_f64()
    };
    let apply_s = (apply(), apply());

    Figures {
        create,
        concurrent,
        get,
        list_ms,
        watch,
        apply_s,
        rss_mib,
        etcd_rss_mib,
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::Builder::new()
        .prefix("mwapi-bench-")
        .tempdir()
        .unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();

    let sqlite = {
        let server = ServerProc::start(&dir.path().join("sqlite"), &[]);
        rt.block_on(run("sqlite", &server, None, &home))
    };
    let etcd = rt.block_on(async {
        let (_store, etcd) = Etcd::start(meshwork_orchestrator_store::DEFAULT_HISTORY).await;
        let server = ServerProc::start(
            &dir.path().join("etcd"),
            &["--store", "etcd", "--etcd-endpoints", etcd.url()],
        );
        let f = run("etcd", &server, Some(etcd.pid()), &home).await;
        drop(server);
        drop(etcd);
        f
    });

    println!("\nAPI server over HTTPS (kube-rs client), {N} Services; same run, same machine\n");
    println!("| figure | SQLite (FULL) | etcd | SQLite/etcd |");
    println!("|---|---|---|---|");
    let row = |name: &str, a: f64, b: f64, unit: &str| {
        println!("| {name} | {a:.0} {unit} | {b:.0} {unit} | {:.2}× |", a / b);
    };
    row("create p50", sqlite.create.0, etcd.create.0, "µs");
    row("create p99", sqlite.create.1, etcd.create.1, "µs");
    row("creates/s, 1 client", sqlite.create.2, etcd.create.2, "/s");
    row(
        &format!("creates/s, {WRITERS} clients"),
        sqlite.concurrent,
        etcd.concurrent,
        "/s",
    );
    row("get p50", sqlite.get.0, etcd.get.0, "µs");
    row("get p99", sqlite.get.1, etcd.get.1, "µs");
    row(
        &format!("list {N} (JSON) p50"),
        sqlite.list_ms,
        etcd.list_ms,
        "ms",
    );
    row(
        &format!("watch delivery to {WATCHERS} watchers p50"),
        sqlite.watch.0,
        etcd.watch.0,
        "µs",
    );
    row(
        &format!("watch delivery to {WATCHERS} watchers p99"),
        sqlite.watch.1,
        etcd.watch.1,
        "µs",
    );
    println!(
        "| kubectl apply {APPLY} Services (create / unchanged) | {:.2} s / {:.2} s | {:.2} s / {:.2} s | {:.2}× |",
        sqlite.apply_s.0, sqlite.apply_s.1, etcd.apply_s.0, etcd.apply_s.1, sqlite.apply_s.0 / etcd.apply_s.0
    );
    println!(
        "| server RSS at {} objects | {:.0} MiB | {:.0} MiB (+ etcd {:.0} MiB) | {:.2}× of server+etcd |",
        N + CONCURRENT,
        sqlite.rss_mib,
        etcd.rss_mib,
        etcd.etcd_rss_mib.unwrap_or(0.0),
        sqlite.rss_mib / (etcd.rss_mib + etcd.etcd_rss_mib.unwrap_or(0.0))
    );
}
