//! ADD/DEL latency of the meshwork plugin vs the reference bridge + host-local plugins
//! (Debian containernetworking-plugins), measured in the same run, invoked the same way (the
//! libcni-style invoker, exec'd inside a lab node), interleaved pod by pod so machine noise
//! hits both alike. Then 100 concurrent ADDs per plugin: wall time and distinct addresses.
//!
//! Run: `cargo bench -p meshwork-cni --bench add_del` (root; see BENCHMARKS.md).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic with its location is the failure report"
)]

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use meshwork_cni_spec::{invoke::RuntimeConf, Invoker, NetConfList};
use meshwork_lab::{Lab, PodNs};
use serde_json::json;

const PODS: usize = 100;

fn rt(id: &str, pod: &PodNs) -> RuntimeConf {
    RuntimeConf {
        container_id: id.into(),
        netns: pod.path_str(),
        ifname: "eth0".into(),
        ..Default::default()
    }
}

struct Subject {
    name: &'static str,
    list: NetConfList,
    inv: Invoker,
    pods: Vec<PodNs>,
    add: Vec<Duration>,
    del: Vec<Duration>,
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1e3
}

fn main() {
    let lab = Lab::new("bench_add_del");
    let (n1, n2) = (lab.node("bench-mw"), lab.node("bench-ref"));
    let ours: NetConfList = serde_json::from_value(json!({
        "cniVersion": "1.0.0", "name": "bench",
        "plugins": [{"type": "meshwork", "bridge": "mw0", "mtu": 1450,
            "dataDir": lab.dir().join("mw-state"),
            "ipam": {"subnet": "10.244.0.0/23", "routes": [{"dst": "10.244.0.0/16"}]}}]
    }))
    .unwrap();
    let reference: NetConfList = serde_json::from_value(json!({
        "cniVersion": "1.0.0", "name": "bench",
        "plugins": [{"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false,
            "mtu": 1450,
            "ipam": {"type": "host-local", "subnet": "10.245.0.0/23",
                     "dataDir": lab.dir().join("ref-state"),
                     "routes": [{"dst": "10.245.0.0/16"}]}}]
    }))
    .unwrap();
    let mut subjects = [
        Subject {
            name: "meshwork",
            list: ours,
            inv: lab.invoker(&n1),
            pods: (0..PODS)
                .map(|i| lab.pod_netns(&n1, &format!("p{i}")))
                .collect(),
            add: vec![],
            del: vec![],
        },
        Subject {
            name: "bridge+host-local",
            list: reference,
            inv: lab.invoker(&n2),
            pods: (0..PODS)
                .map(|i| lab.pod_netns(&n2, &format!("p{i}")))
                .collect(),
            add: vec![],
            del: vec![],
        },
    ];
    // Warm-up: first exec pays page-cache and bridge creation.
    for s in &subjects {
        let warm = lab.pod_netns(if s.name == "meshwork" { &n1 } else { &n2 }, "warm");
        s.inv.add(&s.list, &rt("warm", &warm)).unwrap();
    }

    for i in 0..PODS {
        for s in subjects.iter_mut() {
            let t = Instant::now();
            s.inv
                .add(&s.list, &rt(&format!("c{i}"), &s.pods[i]))
                .unwrap();
            s.add.push(t.elapsed());
        }
    }
    for i in 0..PODS {
        for s in subjects.iter_mut() {
            let t = Instant::now();
            s.inv
                .del(&s.list, &rt(&format!("c{i}"), &s.pods[i]), None)
                .unwrap();
            s.del.push(t.elapsed());
        }
    }

    println!("CNI ADD/DEL latency, {PODS} pods each, sequential, interleaved (ms):");
    println!(
        "{:<20} {:>10} {:>10} {:>10} {:>10}",
        "plugin", "ADD p50", "ADD p90", "DEL p50", "DEL p90"
    );
    let mut p50s = vec![];
    for s in subjects.iter_mut() {
        let (a50, a90) = (pct(&mut s.add, 0.5), pct(&mut s.add, 0.9));
        let (d50, d90) = (pct(&mut s.del, 0.5), pct(&mut s.del, 0.9));
        println!(
            "{:<20} {a50:>10.2} {a90:>10.2} {d50:>10.2} {d90:>10.2}",
            s.name
        );
        p50s.push((a50, d50));
    }
    println!(
        "ratio meshwork/reference: ADD p50 {:.2}x, DEL p50 {:.2}x",
        p50s[0].0 / p50s[1].0,
        p50s[0].1 / p50s[1].1
    );

    // The kernel floor of DEL: the same kernel state as a pod (host veth up on the bridge, peer
    // up with addresses in the pod netns), deleted in-process over netlink: no exec, no IPAM.
    let floor_node = lab.node("bench-floor");
    let floor_inv = lab.invoker(&floor_node);
    let floor_list = subjects[0].list.clone();
    let host_veths: Vec<String> = (0..PODS)
        .map(|i| {
            let p = lab.pod_netns(&floor_node, &format!("f{i}"));
            let r = floor_inv
                .add(&floor_list, &rt(&format!("f{i}"), &p))
                .unwrap();
            r.interfaces[1].name.clone()
        })
        .collect();
    let tokio_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut floor: Vec<Duration> = tokio_rt.block_on(async {
        let nl = meshwork_netlink::Netlink::connect_in(&lab.open(&floor_node.netns)).unwrap();
        let mut v = Vec::new();
        for name in &host_veths {
            let idx = nl.link_by_name(name).await.unwrap().unwrap().index;
            let t = Instant::now();
            nl.delete_link(idx).await.unwrap();
            v.push(t.elapsed());
        }
        v
    });
    println!(
        "kernel floor of DEL: in-process RTM_DELLINK of a wired pod veth p50 {:.2} ms, p90 {:.2} ms",
        pct(&mut floor, 0.5),
        pct(&mut floor, 0.9)
    );

    println!("\n{PODS} concurrent ADDs (one thread each):");
    for s in subjects.iter() {
        let node = if s.name == "meshwork" { &n1 } else { &n2 };
        let pods: Vec<PodNs> = (0..PODS)
            .map(|i| lab.pod_netns(node, &format!("cc{i}")))
            .collect();
        let t = Instant::now();
        let ips: Vec<String> = std::thread::scope(|sc| {
            let hs: Vec<_> = pods
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    sc.spawn(move || {
                        let r = s.inv.add(&s.list, &rt(&format!("cc{i}"), p)).unwrap();
                        r.ips[0].address.addr().to_string()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let wall = t.elapsed();
        let distinct: HashSet<_> = ips.iter().collect();
        println!(
            "{:<20} wall {:>8.1} ms, {} distinct addresses of {PODS}",
            s.name,
            wall.as_secs_f64() * 1e3,
            distinct.len()
        );
        assert_eq!(distinct.len(), PODS, "{}: duplicate addresses", s.name);
    }
}
