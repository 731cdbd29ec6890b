//! The eBPF socket LB vs kube-proxy's iptables layout, same run, same kind of backend (a pod
//! on the client's node behind the bridge), same client binary:
//! - connect() latency: direct to the backend, through a VIP with the eBPF socket LB (node 1),
//!   through a VIP with an iptables DNAT ruleset like kube-proxy's iptables mode (node 2), and a
//!   non-service connect on the iptables node (it too walks KUBE-SERVICES), at 1, 10k and 100k
//!   services; ratios are against the direct connect on node 1 (no rules);
//! - time to program N services (eBPF map updates vs `iptables-restore` of the same services),
//!   and one incremental update with N programmed;
//! - in-kernel cost per connect from BPF run-time stats (BPF_ENABLE_STATS, no sysctl change).
//!
//! Run: `cargo build --release --bins && cargo bench -p meshwork-e2e --bench service_lb` (root).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "bench code: a panic with its location is the failure report"
)]

use std::{
    io::Write,
    net::{Ipv4Addr, SocketAddr},
    time::Instant,
};

use meshwork_ebpf::{Algorithm, Backend, BpfDatapath, Config, Datapath, Frontend, Service};
use meshwork_lab::cluster::LabCluster;
use meshwork_lab::{Lab, Node};

const CONNECTS: &str = "2000";
const ROUNDS: usize = 3;

fn vip(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(10, 96 + (i >> 16) as u8, (i >> 8) as u8, i as u8)
}

/// kube-proxy iptables mode: KUBE-SERVICES → KUBE-SVC-x → KUBE-SEP-x (DNAT), matched linearly.
fn iptables_rules(n: u32, backend: SocketAddr) -> String {
    let mut out = String::from("*nat\n:KUBE-SERVICES - [0:0]\n");
    for i in 0..n {
        out += &format!(":KUBE-SVC-{i:08X} - [0:0]\n:KUBE-SEP-{i:08X} - [0:0]\n");
    }
    out += "-A OUTPUT -j KUBE-SERVICES\n";
    for i in 0..n {
        out += &format!(
            "-A KUBE-SERVICES -d {}/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-{i:08X}\n\
             -A KUBE-SVC-{i:08X} -j KUBE-SEP-{i:08X}\n\
             -A KUBE-SEP-{i:08X} -p tcp -m tcp -j DNAT --to-destination {backend}\n",
            vip(i)
        );
    }
    out + "COMMIT\n"
}

/// One round of `tcp-lat` from `node`'s netns: (p50, p90, p99) µs.
fn round(c: &LabCluster, node: &Node, addr: SocketAddr) -> (f64, f64, f64) {
    let out = c.lab.run_in_node(
        node,
        &node.netns,
        "mwlab-client",
        &["tcp-lat", &addr.to_string(), CONNECTS],
    );
    let s = String::from_utf8_lossy(&out.stdout).to_string();
    let v: Vec<f64> = s
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    assert_eq!(
        v.len(),
        4,
        "client said {s:?} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (v[0], v[1], v[2])
}

/// Runs every target once per round, interleaved, so drift hits all alike; the per-target
/// result is the round with the median p50.
fn interleaved(c: &LabCluster, targets: &[(&Node, SocketAddr)]) -> Vec<(f64, f64, f64)> {
    let mut per: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); targets.len()];
    for _ in 0..ROUNDS {
        for (i, (node, addr)) in targets.iter().enumerate() {
            per[i].push(round(c, node, *addr));
        }
    }
    per.into_iter()
        .map(|mut r| {
            r.sort_by(|a, b| a.0.total_cmp(&b.0));
            r[ROUNDS / 2]
        })
        .collect()
}

fn program_cost(name: &str) -> Option<(u64, u64)> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.name_as_str() == Some(name))
        .map(|p| (p.run_time().as_nanos() as u64, p.run_count()))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let c = LabCluster::new(Lab::new("bench_service_lb"), 2)
        .await
        .unwrap();
    let (n1, n2) = (c.nodes[0].node.clone(), c.nodes[1].node.clone());
    let (b1, b2) = (c.add_pod(0, "b1").unwrap(), c.add_pod(1, "b2").unwrap());
    let (a1, a2) = (
        SocketAddr::new(b1.ip(), 8080),
        SocketAddr::new(b2.ip(), 8080),
    );
    let _s1 = c.lab.sink_server(&b1.ns.netns, a1);
    let _s2 = c.lab.sink_server(&b2.ns.netns, a2);
    // iptables DNAT happens after the route lookup, so node 2 needs a route for the service
    // range (kube-proxy nodes have a default route); lab-only, via its own bridge. The socket
    // LB on node 1 rewrites before routing and needs none.
    c.lab.exec(
        &n2.netns,
        &["ip", "route", "add", "10.96.0.0/11", "dev", "mw0"],
    );
    let mut cfg = Config::new(&n1.name, c.lab.cgroup(&n1));
    cfg.pin_dir = c.lab.bpf_pin_dir(&n1);
    let mut dp = BpfDatapath::open(cfg).unwrap();
    let backend = match a1 {
        SocketAddr::V4(a) => Backend::new(*a.ip(), a.port()),
        _ => unreachable!(),
    };

    println!("connect() latency in µs (p50 / p90 / p99 of {CONNECTS} connects, median of {ROUNDS} rounds)");
    println!(
        "{:>8} | {:>22} | {:>22} | {:>22} | {:>22} | {:>7} | {:>7} | {:>10} | {:>12} | {:>10}",
        "services",
        "direct (node 1)",
        "VIP eBPF socket LB",
        "non-svc, ipt node",
        "VIP iptables DNAT",
        "eBPF/dir",
        "ipt/dir",
        "eBPF prog",
        "iptables-rst",
        "1 update"
    );
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).unwrap();
    let mut programmed = 0u32;
    for n in [1u32, 10_000, 100_000] {
        // eBPF: program services programmed..n (incremental from the previous size).
        let t = Instant::now();
        for i in programmed..n {
            dp.upsert(&Service {
                frontend: Frontend::tcp(vip(i), 80),
                backends: vec![backend],
                algorithm: Algorithm::Random,
                affinity: None,
            })
            .unwrap();
        }
        let prog_time = t.elapsed();
        let prog_n = n - programmed;
        programmed = n;
        // One incremental update with n programmed.
        let t = Instant::now();
        dp.upsert(&Service {
            frontend: Frontend::tcp(vip(n / 2), 80),
            backends: vec![backend],
            algorithm: Algorithm::Random,
            affinity: None,
        })
        .unwrap();
        let one = t.elapsed();

        // iptables: the same n services in node 2's own netfilter.
        let rules = iptables_rules(n, a2);
        let path = c.lab.dir().join("rules");
        std::fs::File::create(&path)
            .unwrap()
            .write_all(rules.as_bytes())
            .unwrap();
        let t = Instant::now();
        let out = c
            .lab
            .exec_out(&n2.netns, &["iptables-restore", path.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ipt_time = t.elapsed();

        let target = SocketAddr::new(vip(n / 2).into(), 80);
        let before = program_cost("mw_connect4").unwrap_or_default();
        // In-kernel cost: one round of each kind alone, between stats reads.
        round(&c, &n1, a1);
        let mid = program_cost("mw_connect4").unwrap_or_default();
        round(&c, &n1, target);
        let after = program_cost("mw_connect4").unwrap_or_default();
        let r = interleaved(&c, &[(&n1, a1), (&n1, target), (&n2, a2), (&n2, target)]);
        let (direct, ebpf, direct2, ipt) = (r[0], r[1], r[2], r[3]);
        let per = |a: (u64, u64), b: (u64, u64)| (b.0 - a.0) as f64 / (b.1 - a.1).max(1) as f64;
        println!(
            "{n:>8} | {:>6.1} {:>6.1} {:>7.1} | {:>6.1} {:>6.1} {:>7.1} | {:>6.1} {:>6.1} {:>7.1} | {:>6.1} {:>6.1} {:>7.1} | {:>6.2}x | {:>6.2}x | {:>7.1} ms | {:>9.1} ms | {:>7.1} µs",
            direct.0, direct.1, direct.2, ebpf.0, ebpf.1, ebpf.2, direct2.0, direct2.1, direct2.2, ipt.0, ipt.1, ipt.2,
            ebpf.0 / direct.0, ipt.0 / direct.0,
            prog_time.as_secs_f64() * 1e3, ipt_time.as_secs_f64() * 1e3, one.as_secs_f64() * 1e6
        );
        println!(
            "         in-kernel mw_connect4: {:.0} ns/run on a miss (direct), {:.0} ns/run on a VIP hit; eBPF programmed {prog_n} new services",
            per(before, mid),
            per(mid, after)
        );
        let _ = c.lab.exec_out(&n2.netns, &["iptables", "-t", "nat", "-F"]);
        let _ = c.lab.exec_out(&n2.netns, &["iptables", "-t", "nat", "-X"]);
    }
    dp.uninstall().unwrap();
}
