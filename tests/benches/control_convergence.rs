//! Control agent convergence: API write acknowledged → datapath entry present, read straight
//! from the agent's pinned maps by this process (`meshwork_ebpf::Observer`), on a lab node
//! with the bundled API server (SQLite, no controllers: the benchmark writes the
//! EndpointSlices) and `meshwork-control` programming the eBPF socket LB.
//! - 10,000 Services × 10 endpoints (100,000 endpoints): bulk load time, agent RSS;
//! - 200 single-endpoint changes, one at a time, p50/p99;
//! - the same under churn of 100 other endpoint updates per second.
//!
//! Run: `cargo build --release --bins && cargo bench -p meshwork-e2e --bench control_convergence`
//! (root). `MESHWORK_BENCH_SERVICES` changes the scale.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "bench code: a panic with its location is the failure report"
)]

use std::{
    net::Ipv4Addr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use futures::StreamExt;
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::{
    api::{Patch, PatchParams, PostParams},
    Api,
};
use meshwork_ebpf::{Frontend, Observer};
use meshwork_lab::Lab;

#[path = "../tests/support/orch.rs"]
mod orch;
use serde_json::json;

const PER_SERVICE: u32 = 10;
const PROBES: usize = 200;
const CHURN_PER_S: u64 = 100;

fn endpoint_ip(i: u32, j: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 64, 0, 0)) + i * PER_SERVICE + j)
}

fn slice(i: u32, first: Ipv4Addr) -> EndpointSlice {
    let eps: Vec<_> = (0..PER_SERVICE)
        .map(|j| {
            let ip = if j == 0 { first } else { endpoint_ip(i, j) };
            json!({"addresses": [ip.to_string()], "conditions": {"ready": true}})
        })
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": format!("s{i}"), "namespace": "default", "labels": {"kubernetes.io/service-name": format!("s{i}")}},
        "addressType": "IPv4",
        "endpoints": eps,
        "ports": [{"name": "", "port": 8080, "protocol": "TCP"}],
    }))
    .unwrap()
}

use meshwork_lab::stats::pct;

fn rss_mib(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn main() {
    let services: u32 = std::env::var("MESHWORK_BENCH_SERVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let lab = Lab::new("bench_conv");
    let n = lab.node("n1");
    let ip = n.underlay_ip.to_string();
    let (_api, data) = orch::start_apiserver(&lab, &n, &["--controllers=false"]);
    let kc = data.join("admin.kubeconfig");
    let pins = lab.bpf_pin_dir(&n);
    let admin_addr: std::net::SocketAddr = format!("{ip}:10256").parse().unwrap();
    let agent = orch::start_agent(&lab, &n, &kc, None, None);
    let agent_pid = agent.pid();
    let t = Instant::now();
    let obs = loop {
        if let Ok(o) = Observer::open(&pins) {
            break o;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "agent never pinned its maps"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let obs = Arc::new(obs);

    let report = lab
        .open(&n.netns)
        .run(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                let client = meshwork_kube_watch::client(Some(&kc)).await.unwrap();
                let svcs: Api<Service> = Api::namespaced(client.clone(), "default");
                let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");

                // Bulk load.
                let t0 = Instant::now();
                let ips: Vec<Ipv4Addr> = futures::stream::iter(0..services)
                    .map(|i| {
                        let (svcs, slices) = (svcs.clone(), slices.clone());
                        async move {
                            let s: Service = serde_json::from_value(json!({
                                "metadata": {"name": format!("s{i}")},
                                "spec": {"ports": [{"port": 80, "targetPort": 8080}]}
                            }))
                            .unwrap();
                            let s = svcs.create(&PostParams::default(), &s).await.unwrap();
                            slices.create(&PostParams::default(), &slice(i, endpoint_ip(i, 0))).await.unwrap();
                            s.spec.unwrap().cluster_ip.unwrap().parse::<Ipv4Addr>().unwrap()
                        }
                    })
                    .buffered(32)
                    .collect()
                    .await;
                let written = t0.elapsed();
                let fronts: Vec<Frontend> = ips.iter().map(|ip| Frontend::tcp(*ip, 80)).collect();
                loop {
                    let done = fronts
                        .iter()
                        .rev()
                        .take(50)
                        .all(|f| obs.backends(f).ok().flatten().is_some_and(|b| b.len() == PER_SERVICE as usize));
                    if done && obs.len() >= services as usize {
                        break;
                    }
                    assert!(t0.elapsed() < Duration::from_secs(600), "bulk load never converged");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let loaded = t0.elapsed();
                let rss_loaded = rss_mib(agent_pid);

                let next = Arc::new(AtomicU64::new(0));
                let fresh = {
                    let next = next.clone();
                    move || Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 192, 0, 0)) + next.fetch_add(1, Ordering::SeqCst) as u32)
                };
                // One change: a new first endpoint for service i; acknowledged → programmed.
                let probe = |i: u32| {
                    let (slices, obs, f, new) = (slices.clone(), obs.clone(), fronts[i as usize], fresh());
                    async move {
                        let body = serde_json::to_value(slice(i, new)).unwrap();
                        slices.patch(&format!("s{i}"), &PatchParams::default(), &Patch::Merge(body)).await.unwrap();
                        let acked = Instant::now();
                        let want = meshwork_ebpf::Backend::new(new, 8080);
                        loop {
                            if obs.backends(&f).ok().flatten().is_some_and(|b| b.contains(&want)) {
                                return acked.elapsed().as_secs_f64() * 1e3;
                            }
                            assert!(acked.elapsed() < Duration::from_secs(30), "service {i} never converged");
                            // Poll without spinning: a busy poller would take a core from the
                            // agent on a 2-core machine (the timer rounds to ~1 ms).
                            tokio::time::sleep(Duration::from_micros(200)).await;
                        }
                    }
                };
                let mut quiet = Vec::new();
                for k in 0..PROBES {
                    quiet.push(probe((k as u32 * 7919) % services).await);
                }
                // Churn: 100 updates/s to other services while probing.
                let stop = Arc::new(AtomicBool::new(false));
                let churn = {
                    let (slices, stop, fresh) = (slices.clone(), stop.clone(), fresh.clone());
                    tokio::spawn(async move {
                        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / CHURN_PER_S));
                        let mut i = 1u32;
                        let mut n = 0u64;
                        while !stop.load(Ordering::SeqCst) {
                            tick.tick().await;
                            let body = serde_json::to_value(slice(i, fresh())).unwrap();
                            slices.patch(&format!("s{i}"), &PatchParams::default(), &Patch::Merge(body)).await.unwrap();
                            i = (i + 2) % services;
                            n += 1;
                        }
                        n
                    })
                };
                let t_churn = Instant::now();
                let mut busy = Vec::new();
                for k in 0..PROBES {
                    // Even-numbered services: never touched by the churn writer (odd ones).
                    busy.push(probe(((k as u32 * 7919) % (services / 2)) * 2).await);
                }
                stop.store(true, Ordering::SeqCst);
                let churned = churn.await.unwrap();
                let churn_rate = churned as f64 / t_churn.elapsed().as_secs_f64();
                let rss_after = rss_mib(agent_pid);
                let metrics = {
                    use std::io::{Read, Write};
                    let mut c = std::net::TcpStream::connect(admin_addr).unwrap();
                    write!(c, "GET /metrics HTTP/1.0\r\n\r\n").unwrap();
                    let mut out = String::new();
                    c.read_to_string(&mut out).unwrap();
                    out
                };
                let field = |name: &str| -> f64 {
                    metrics
                        .lines()
                        .find(|l| l.contains(name) && !l.starts_with('#'))
                        .and_then(|l| l.split_whitespace().last()?.parse().ok())
                        .unwrap_or(f64::NAN)
                };
                let passes = field("sync_duration_seconds_count");
                let mean_pass_ms = field("sync_duration_seconds_sum") / passes * 1e3;
                format!(
                    "\n## control agent convergence ({services} services, {} endpoints)\n\
                     bulk: written in {:.1} s, programmed {:.1} s after the first write; agent RSS {:.0} MiB\n\
                     quiet: write acknowledged -> datapath, {PROBES} changes: p50 {:.2} ms, p99 {:.2} ms\n\
                     churn ({churn_rate:.0} other updates/s): p50 {:.2} ms, p99 {:.2} ms; agent RSS {:.0} MiB\n\
                     agent sync passes: {passes:.0}, mean {mean_pass_ms:.2} ms (bulk load included)\n",
                    services * PER_SERVICE,
                    written.as_secs_f64(),
                    loaded.as_secs_f64(),
                    rss_loaded,
                    pct(&mut quiet.clone(), 0.5),
                    pct(&mut quiet, 0.99),
                    pct(&mut busy.clone(), 0.5),
                    pct(&mut busy, 0.99),
                    rss_after,
                )
            })
        })
        .unwrap();
    println!("{report}");
    drop(agent);
    // The agent leaves the datapath in place on exit; this lab's pins go with the lab.
}
