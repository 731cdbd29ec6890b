//! meshwork-dns (answering from live API state: 10k Services in the bundled API server) vs
//! knot (an equivalent zone file), the same run, server pinned to CPU 0 and dnsperf to CPU 1:
//! server CPU per query at a fixed 50k queries/s, latency p50/p90/p99 at a fixed 20k
//! queries/s (dnsperf -v logs each answer's latency), and unlimited-rate queries/s (dnsperf
//! itself is near its own limit there, so that figure only bounds a fast server from below).
//! Two query mixes: all existing names, and 10% NXDOMAIN.
//!
//! Run: `cargo bench -p meshwork-dns --bench dnsperf` (dnsperf, knot, util-linux from
//! scripts/setup.sh; root not needed).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "bench code: a panic with its location is the failure report"
)]

use std::{
    io::{BufRead, Write},
    net::UdpSocket,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use k8s_openapi::api::core::v1::Service;
use kube::{api::PostParams, Api};
use meshwork_orchestrator::server::{self, ServerConfig};
use meshwork_orchestrator_store::{AnyStore, SqliteStore, SqliteSync};

const SERVICES: usize = 10_000;
const FIXED_CPU_QPS: u32 = 50_000;
const FIXED_LAT_QPS: u32 = 20_000;
const SECONDS: u32 = 8;

fn ip(i: usize) -> String {
    format!("10.96.{}.{}", 1 + i / 250, 1 + i % 250)
}

use meshwork_lab::proc::Proc;

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// utime + stime of a process and all its threads, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

fn dnsperf(port: u16, queries: &Path, qps: Option<u32>, verbose: bool) -> (String, u64) {
    let mut c = Command::new("taskset");
    c.args([
        "-c",
        "1",
        "dnsperf",
        "-s",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-l",
        &SECONDS.to_string(),
    ])
    .arg("-d")
    .arg(queries)
    .args(["-c", "1", "-T", "1", "-q", "500"]);
    if let Some(q) = qps {
        c.args(["-Q", &q.to_string()]);
    }
    if verbose {
        c.arg("-v");
    }
    let out = c.output().expect("dnsperf (scripts/setup.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let completed = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Queries completed:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("dnsperf output:\n{text}"));
    (text, completed)
}

fn qps_of(text: &str) -> f64 {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Queries per second:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

fn latencies(text: &str) -> (f64, f64, f64) {
    let mut v: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("> "))
        .filter_map(|l| l.split_whitespace().last()?.parse().ok())
        .collect();
    v.sort_by(f64::total_cmp);
    assert!(v.len() > 1000, "per-query latencies from dnsperf -v");
    let p = |q: f64| v[((v.len() - 1) as f64 * q) as usize] * 1e3;
    (p(0.5), p(0.9), p(0.99))
}

struct Row {
    cpu_us: f64,
    lat: (f64, f64, f64),
    qps: f64,
}

fn measure(pid: u32, port: u16, queries: &Path) -> Row {
    // Warm-up (caches on both sides), then the three runs.
    let _ = dnsperf(port, queries, Some(FIXED_CPU_QPS), false);
    let c0 = cpu_seconds(pid);
    let (_, done) = dnsperf(port, queries, Some(FIXED_CPU_QPS), false);
    let cpu_us = (cpu_seconds(pid) - c0) * 1e6 / done as f64;
    let (text, _) = dnsperf(port, queries, Some(FIXED_LAT_QPS), true);
    let lat = latencies(&text);
    let (text, _) = dnsperf(port, queries, None, false);
    Row {
        cpu_us,
        lat,
        qps: qps_of(&text),
    }
}

fn wait_answers(port: u16) {
    for _ in 0..200 {
        let out = Command::new("dig")
            .args([
                "@127.0.0.1",
                "-p",
                &port.to_string(),
                "+short",
                "+time=1",
                "+tries=1",
            ])
            .arg(format!("svc-{:05}.default.svc.cluster.local", SERVICES - 1))
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout).trim() == ip(SERVICES - 1) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("server on {port} never answered");
}

fn knot(dir: &Path) -> (Proc, u16) {
    let port = free_udp_port();
    let mut zone = String::from("$ORIGIN cluster.local.\n$TTL 5\n@ SOA ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 5\n@ NS ns.dns.cluster.local.\nns.dns A 10.96.0.10\ndns-version TXT \"1.1.0\"\n");
    for i in 0..SERVICES {
        let n = format!("svc-{i:05}.default.svc");
        zone.push_str(&format!(
            "{n} A {}\n_http._tcp.{n} SRV 0 100 80 {n}.cluster.local.\n",
            ip(i)
        ));
    }
    std::fs::write(dir.join("cluster.local.zone"), zone).unwrap();
    let conf = format!(
        "server:\n  listen: 127.0.0.1@{port}\n  rundir: {d}\n  udp-workers: 1\n  tcp-workers: 1\n  background-workers: 1\ndatabase:\n  storage: {d}\nlog:\n  - target: stderr\n    any: error\nzone:\n  - domain: cluster.local\n    file: {d}/cluster.local.zone\n    zonefile-sync: -1\n    journal-content: none\n",
        d = dir.display()
    );
    std::fs::write(dir.join("knot.conf"), conf).unwrap();
    let child = Command::new("taskset")
        .args(["-c", "0", "knotd", "-c"])
        .arg(dir.join("knot.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("knotd (Debian knot; scripts/setup.sh installs it)");
    (Proc::from(child), port)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::Builder::new()
        .prefix("mwdns-bench-")
        .tempdir()
        .unwrap();
    let store = SqliteStore::open(&dir.path().join("state.db"), SqliteSync::Normal).unwrap();
    let mut cfg = ServerConfig::new(dir.path().to_path_buf());
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    let api = rt
        .block_on(server::start_with(cfg, AnyStore::Sqlite(store)))
        .unwrap();
    rt.block_on(async {
        let client = meshwork_kube_watch::client(Some(&api.admin_kubeconfig))
            .await
            .unwrap();
        let svcs: Api<Service> = Api::namespaced(client, "default");
        let mut tasks = Vec::new();
        for w in 0..8 {
            let svcs = svcs.clone();
            tasks.push(tokio::spawn(async move {
                for i in (w..SERVICES).step_by(8) {
                    let s: Service = serde_json::from_value(serde_json::json!({
                        "metadata": {"name": format!("svc-{i:05}")},
                        "spec": {"clusterIP": ip(i), "ports": [{"name": "http", "port": 80}]}}))
                    .unwrap();
                    svcs.create(&PostParams::default(), &s).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });

    let port = free_udp_port();
    let mut child = Command::new("taskset")
        .args([
            "-c",
            "0",
            env!("CARGO_BIN_EXE_meshwork-dns"),
            "--kubeconfig",
        ])
        .arg(&api.admin_kubeconfig)
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--admin-listen",
            "127.0.0.1:0",
            "--upstream",
            "127.0.0.1:9",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    lines.next().unwrap().unwrap();
    std::thread::spawn(move || lines.for_each(drop));
    let mw = Proc::from(child);
    wait_answers(port);
    let knot_dir = dir.path().join("knot");
    std::fs::create_dir_all(&knot_dir).unwrap();
    let (kn, knot_port) = knot(&knot_dir);
    wait_answers(knot_port);

    let hits = dir.path().join("hits.txt");
    let mixed = dir.path().join("mixed.txt");
    let (mut h, mut m) = (
        std::fs::File::create(&hits).unwrap(),
        std::fs::File::create(&mixed).unwrap(),
    );
    for i in 0..SERVICES {
        let j = (i * 7919) % SERVICES;
        writeln!(h, "svc-{j:05}.default.svc.cluster.local A").unwrap();
        if i % 10 == 0 {
            writeln!(m, "nx-{j:05}.default.svc.cluster.local A").unwrap();
        } else {
            writeln!(m, "svc-{j:05}.default.svc.cluster.local A").unwrap();
        }
    }
    drop((h, m));

    let mut rows = Vec::new();
    for (mix, file) in [("existing names", &hits), ("10% NXDOMAIN", &mixed)] {
        let a = measure(mw.pid(), port, file);
        let b = measure(kn.pid(), knot_port, file);
        rows.push((mix, a, b));
    }
    println!("\nDNS: {SERVICES} Services, server on CPU 0, dnsperf on CPU 1 (same run)\n");
    println!(
        "| mix | server | CPU µs/query @ {}k qps | p50 / p90 / p99 ms @ {}k qps | unlimited qps |",
        FIXED_CPU_QPS / 1000,
        FIXED_LAT_QPS / 1000
    );
    println!("|---|---|---|---|---|");
    for (mix, a, b) in &rows {
        for (name, r) in [("meshwork-dns", a), ("knot", b)] {
            println!(
                "| {mix} | {name} | {:.2} | {:.3} / {:.3} / {:.3} | {:.0} |",
                r.cpu_us, r.lat.0, r.lat.1, r.lat.2, r.qps
            );
        }
        println!(
            "| {mix} | **ratio** | {:.2}× | {:.2}× p99 | {:.2}× |",
            a.cpu_us / b.cpu_us,
            a.lat.2 / b.lat.2,
            a.qps / b.qps
        );
    }
    drop(api);
}
