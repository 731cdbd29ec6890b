//! One discovery answer at cluster scale, through the index the agent keeps
//! (`control/src/destination/index.rs`) against the scan it replaced (every Service, slice
//! and, for a pod's address, pod read per answer), in the same run (BENCHMARKS.md, "Control
//! agent convergence"). `cargo bench -p meshwork-control --bench discovery`;
//! `MESHWORK_BENCH_SERVICES` sets the Service count (default 10,000; a slice each with two
//! endpoints, two pods each).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "bench code: a panic with its location is the failure report"
)]

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    core::v1::{Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::runtime::{reflector, watcher};
use meshwork_control::destination::{resolve, Lookup, Naming, Objects, Scan, SharedIndex};
use meshwork_service_model::Key;
use serde_json::json;

fn objects(n: usize) -> (Vec<Service>, Vec<EndpointSlice>, Vec<Pod>) {
    let (mut svcs, mut slices, mut pods) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        let (hi, lo) = (i / 250, i % 250 + 1);
        svcs.push(
            serde_json::from_value(json!({
                "metadata": {"name": format!("svc{i}"), "namespace": "bench"},
                "spec": {"clusterIP": format!("10.96.{hi}.{lo}"),
                         "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
            }))
            .unwrap(),
        );
        let ips = [
            format!("10.{}.{hi}.{lo}", 100),
            format!("10.{}.{hi}.{lo}", 101),
        ];
        let eps: Vec<_> = ips
            .iter()
            .enumerate()
            .map(|(j, ip)| {
                json!({"addresses": [ip], "conditions": {"ready": true},
                                  "targetRef": {"kind": "Pod", "name": format!("svc{i}-{j}")}})
            })
            .collect();
        slices.push(
            serde_json::from_value(json!({
                "metadata": {"name": format!("svc{i}-1"), "namespace": "bench",
                             "labels": {"kubernetes.io/service-name": format!("svc{i}")}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                "endpoints": eps,
            }))
            .unwrap(),
        );
        for (j, ip) in ips.iter().enumerate() {
            pods.push(
                serde_json::from_value(json!({
                    "metadata": {"name": format!("svc{i}-{j}"), "namespace": "bench",
                                 "annotations": {"meshwork.io/proxy-inbound-port": "4143"}},
                    "spec": {"serviceAccountName": "bench", "containers": []},
                    "status": {"phase": "Running", "podIP": ip},
                }))
                .unwrap(),
            );
        }
    }
    (svcs, slices, pods)
}

/// Mean time of one `resolve` of each authority.
fn time(objs: &dyn Lookup, authorities: &[String], naming: &Naming) -> Duration {
    let rounds = 3;
    let start = Instant::now();
    for _ in 0..rounds {
        for a in authorities {
            let (u, _) = resolve(a, objs, naming);
            assert!(!u.unknown && !u.endpoints.is_empty(), "{a}: {u:?}");
        }
    }
    start.elapsed() / (rounds * authorities.len()) as u32
}

fn main() {
    let n: usize = std::env::var("MESHWORK_BENCH_SERVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let (svcs, slices, pods) = objects(n);
    let (services, mut sw) = reflector::store::<Service>();
    let (slice_store, mut lw) = reflector::store::<EndpointSlice>();
    let (pod_store, mut pw) = reflector::store::<Pod>();
    let index = SharedIndex::default();
    // Listed (empty), then each object as the watch would apply it, the index kept alongside.
    sw.apply_watcher_event(&watcher::Event::InitDone);
    lw.apply_watcher_event(&watcher::Event::InitDone);
    pw.apply_watcher_event(&watcher::Event::InitDone);
    for s in &svcs {
        sw.apply_watcher_event(&watcher::Event::Apply(s.clone()));
        index.write().unwrap().service(s, false);
    }
    for s in &slices {
        lw.apply_watcher_event(&watcher::Event::Apply(s.clone()));
        index.write().unwrap().slice(s, false);
    }
    for p in &pods {
        pw.apply_watcher_event(&watcher::Event::Apply(p.clone()));
        index.write().unwrap().pod(p, false);
    }
    let naming = Naming {
        cluster_domain: "cluster.local".into(),
        trust_domain: "cluster.local".into(),
        node: "node-0".into(),
    };
    let indexed = Objects {
        index: &index,
        services: &services,
        slices: &slice_store,
        pods: &pod_store,
    };
    let (all_svcs, all_slices) = (services.state(), slice_store.state());
    let all_pods: HashMap<Key, Arc<Pod>> = pod_store
        .state()
        .into_iter()
        .map(|p| {
            let k = (
                p.metadata.namespace.clone().unwrap(),
                p.metadata.name.clone().unwrap(),
            );
            (k, p)
        })
        .collect();
    let scan = Scan {
        svcs: &all_svcs,
        slices: &all_slices,
        pods: &all_pods,
    };
    // Spread over the cluster: names, ClusterIPs and pod addresses.
    let pick: Vec<usize> = (0..50).map(|k| k * n / 50).collect();
    let by_name: Vec<String> = pick
        .iter()
        .map(|i| format!("svc{i}.bench.svc.cluster.local:80"))
        .collect();
    let by_ip: Vec<String> = pick
        .iter()
        .map(|i| format!("10.96.{}.{}:80", i / 250, i % 250 + 1))
        .collect();
    let by_pod: Vec<String> = pick
        .iter()
        .map(|i| format!("10.100.{}.{}:8080", i / 250, i % 250 + 1))
        .collect();
    // The first lookup builds the index from the stores (as after the agent's first list).
    let started = Instant::now();
    assert!(indexed.service_at("10.96.0.1".parse().unwrap()).is_some());
    let built = started.elapsed();
    println!(
        "{n} Services, {} slices, {} pods; the index built from the stores in {:.1} ms",
        slices.len(),
        pods.len(),
        built.as_secs_f64() * 1e3
    );
    println!("| authority | index µs/answer | scan µs/answer | scan / index |");
    println!("|---|---|---|---|");
    for (what, list) in [
        ("Service name", &by_name),
        ("ClusterIP", &by_ip),
        ("pod address", &by_pod),
    ] {
        let i = time(&indexed, list, &naming);
        let s = time(&scan, list, &naming);
        println!(
            "| {what} | {:.1} | {:.1} | {:.0}× |",
            i.as_secs_f64() * 1e6,
            s.as_secs_f64() * 1e6,
            s.as_secs_f64() / i.as_secs_f64()
        );
    }
}
