//! The eBPF Service load balancer with real sockets: backends are CNI-wired pods on two lab
//! nodes, clients are processes inside node 1's cgroup (where the socket hooks apply).
#![cfg(target_os = "linux")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic with its location is the failure report"
)]

use std::{
    collections::{BTreeMap, HashSet},
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use meshwork_ebpf::{Algorithm, Backend, BpfDatapath, Config, Datapath, Frontend, Service, Uplink};
use meshwork_lab::cluster::{LabCluster, Pod};
use meshwork_lab::{servers::IdentityServer, Lab};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

struct World {
    c: LabCluster,
    client: Pod,
    backends: Vec<Pod>,
    _servers: Vec<IdentityServer>,
}

impl World {
    async fn new(name: &str) -> World {
        let c = LabCluster::new(Lab::new(name), 2).await.unwrap();
        let client = c.add_pod(0, "client").unwrap();
        let backends: Vec<Pod> = [(0, "b0"), (0, "b1"), (1, "b2")]
            .iter()
            .map(|(n, name)| c.add_pod(*n, name).unwrap())
            .collect();
        let mut servers: Vec<IdentityServer> = backends
            .iter()
            .map(|b| {
                c.lab
                    .identity_server(&b.ns.netns, SocketAddr::new(b.ip(), 8080), &b.ns.name)
            })
            .collect();
        servers.extend(backends.iter().map(|b| {
            c.lab.identity_server(
                &b.ns.netns,
                SocketAddr::new(b.ip6().unwrap(), 8080),
                &b.ns.name,
            )
        }));
        World {
            c,
            client,
            backends,
            _servers: servers,
        }
    }

    fn datapath(&self, uplink: bool) -> BpfDatapath {
        let n1 = &self.c.nodes[0].node;
        let mut cfg = Config::new(&n1.name, self.c.lab.cgroup(n1));
        cfg.pin_dir = self.c.lab.bpf_pin_dir(n1);
        if uplink {
            cfg.uplink = Some(Uplink {
                netns: Some(n1.path()),
                name: n1.uplink.clone(),
            });
        }
        BpfDatapath::open(cfg).unwrap()
    }

    fn backend_set(&self, idx: &[usize]) -> Vec<Backend> {
        idx.iter()
            .map(|i| Backend::new(v4(self.backends[*i].ip()), 8080))
            .collect()
    }

    /// Runs mwlab-client from the client pod, inside node 1's cgroup.
    fn client(&self, args: &[&str]) -> Vec<String> {
        let out = self.c.lab.run_in_node(
            &self.c.nodes[0].node,
            &self.client.ns.netns,
            "mwlab-client",
            args,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }
}

fn v4(ip: std::net::IpAddr) -> Ipv4Addr {
    match ip {
        std::net::IpAddr::V4(v) => v,
        other => panic!("{other} is not IPv4"),
    }
}

fn tally(lines: &[String]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for l in lines {
        *m.entry(l.split(' ').next().unwrap_or("").to_string())
            .or_default() += 1;
    }
    m
}

fn service(frontend: Frontend, backends: Vec<Backend>) -> Service {
    Service {
        frontend,
        backends,
        algorithm: Algorithm::Random,
        affinity: None,
    }
}

#[tokio::test]
async fn tcp_and_udp_to_a_vip_spread_over_backends_and_the_peer_is_the_vip() {
    let w = World::new("lb_spread").await;
    let mut dp = w.datapath(false);
    let all = w.backend_set(&[0, 1, 2]);
    dp.upsert(&service(Frontend::tcp(VIP, 80), all.clone()))
        .unwrap();
    dp.upsert(&service(
        Frontend::udp(VIP, 53),
        all.iter().map(|b| Backend::new(b.addr, 8080)).collect(),
    ))
    .unwrap();

    let lines = w.client(&["tcp", "10.96.0.10:80", "90"]);
    let t = tally(&lines);
    assert_eq!(t.len(), 3, "every backend reached, none failed: {t:?}");
    assert!(t.values().all(|n| *n >= 10), "spread: {t:?}");
    // getpeername() shows the VIP, not the backend.
    assert!(
        lines.iter().all(|l| l.ends_with(" 10.96.0.10:80")),
        "{lines:?}"
    );
    // Backends see the client's own pod address: no SNAT.

    // Unconnected UDP: sendto(VIP) reaches backends, recvfrom() reports the VIP.
    let lines = w.client(&["udp", "10.96.0.10:53", "60"]);
    let t = tally(&lines);
    assert_eq!(t.len(), 3, "{t:?}");
    assert!(
        lines.iter().all(|l| l.ends_with(" 10.96.0.10:53")),
        "{lines:?}"
    );
    // Connected UDP too.
    let lines = w.client(&["udp-connected", "10.96.0.10:53", "5"]);
    assert!(
        lines
            .iter()
            .all(|l| !l.starts_with("ERR") && l.ends_with(" 10.96.0.10:53")),
        "{lines:?}"
    );

    let st = dp.stats(&Frontend::tcp(VIP, 80)).unwrap().unwrap();
    assert_eq!(st.connects, 90, "{st:?}");
    dp.uninstall().unwrap();
}

#[tokio::test]
async fn session_affinity_sticks_until_its_timeout() {
    let w = World::new("lb_affinity").await;
    let mut dp = w.datapath(false);
    let mut s = service(Frontend::tcp(VIP, 80), w.backend_set(&[0, 1, 2]));
    s.affinity = Some(Duration::from_secs(1));
    dp.upsert(&s).unwrap();
    let lines = w.client(&["tcp", "10.96.0.10:80", "30"]);
    assert_eq!(tally(&lines).len(), 1, "all on one backend: {lines:?}");
    // Idle past the timeout (no signal to wait on: the timeout is the behaviour under test).
    std::thread::sleep(Duration::from_millis(1300));
    let mut seen = HashSet::new();
    for _ in 0..20 {
        let l = w.client(&["tcp", "10.96.0.10:80", "1"]);
        seen.insert(l[0].split(' ').next().unwrap().to_string());
        std::thread::sleep(Duration::from_millis(1100));
        if seen.len() > 1 {
            break;
        }
    }
    assert!(
        seen.len() > 1,
        "after the timeout a new pick happens: {seen:?}"
    );

    // A backend removed from the service is never kept by affinity.
    s.affinity = Some(Duration::from_secs(60));
    dp.upsert(&s).unwrap();
    let first = w.client(&["tcp", "10.96.0.10:80", "1"])[0]
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    let keep: Vec<usize> = (0..3).filter(|i| w.backends[*i].ns.name != first).collect();
    s.backends = w.backend_set(&keep);
    dp.upsert(&s).unwrap();
    let lines = w.client(&["tcp", "10.96.0.10:80", "10"]);
    assert!(
        !tally(&lines).contains_key(&first),
        "{first} was removed: {lines:?}"
    );
    assert_eq!(tally(&lines).len(), 1, "and the new pick sticks: {lines:?}");
    dp.uninstall().unwrap();
}

#[tokio::test]
async fn zero_backends_fail_fast_and_are_counted() {
    let w = World::new("lb_zero").await;
    let mut dp = w.datapath(false);
    dp.upsert(&service(Frontend::tcp(VIP, 80), vec![])).unwrap();
    let start = Instant::now();
    let lines = w.client(&["tcp", "10.96.0.10:80", "5"]);
    let took = start.elapsed();
    // ECONNREFUSED, as kube-proxy's REJECT gives applications.
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with("ERR") && l.contains("refused")),
        "{lines:?}"
    );
    // A hang would be the 3 s client timeout per attempt.
    assert!(took < Duration::from_secs(2), "took {took:?}");
    // A UDP frontend with no backends: sendto() is refused at once too.
    dp.upsert(&service(Frontend::udp(VIP, 53), vec![])).unwrap();
    let udp = w.client(&["udp", "10.96.0.10:53", "1"]);
    assert!(
        udp[0].starts_with("ERR") && udp[0].contains("refused"),
        "{udp:?}"
    );
    let st = dp.stats(&Frontend::tcp(VIP, 80)).unwrap().unwrap();
    assert_eq!(st.no_backend, 5, "{st:?}");
    dp.uninstall().unwrap();
}

#[tokio::test]
async fn backend_updates_and_loader_restarts_under_a_connect_loop_lose_nothing() {
    let w = World::new("lb_churn").await;
    let mut dp = w.datapath(false);
    let f = Frontend::tcp(VIP, 80);
    dp.upsert(&service(f, w.backend_set(&[0, 1, 2]))).unwrap();
    let n1 = &w.c.nodes[0].node;
    let child =
        w.c.lab
            .command_in_node(
                n1,
                &w.client.ns.netns,
                "mwlab-client",
                &["tcp-loop", "10.96.0.10:80", "3000"],
            )
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
    let sets: [&[usize]; 4] = [&[0], &[1, 2], &[2], &[0, 1, 2]];
    let deadline = Instant::now() + Duration::from_millis(2500);
    let mut updates = 0;
    let mut restarts = 0;
    while Instant::now() < deadline {
        dp.upsert(&service(f, w.backend_set(sets[updates % sets.len()])))
            .unwrap();
        updates += 1;
        if updates % 50 == 0 {
            // The loader goes away and comes back: programs stay attached through pinned links,
            // the new loader adopts the pinned maps.
            drop(dp);
            std::thread::sleep(Duration::from_millis(20));
            dp = w.datapath(false);
            restarts += 1;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let ok: u64 = meshwork_lab::field_after(&stdout, "ok=").parse().unwrap();
    assert!(
        stdout.contains("fail=0"),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        ok > 200 && updates > 200 && restarts >= 3,
        "ok={ok} updates={updates} restarts={restarts}"
    );
    dp.uninstall().unwrap();
}

#[tokio::test]
async fn nodeport_from_another_node_and_locally() {
    let w = World::new("lb_nodeport").await;
    let mut dp = w.datapath(true);
    let n1 = w.c.nodes[0].node.clone();
    let n2 = w.c.nodes[1].node.clone();
    // Backends local to node 1 (the reply path runs back through its uplink).
    let np = Frontend::tcp(n1.underlay_ip, 30080);
    let mut s = service(np, w.backend_set(&[0, 1]));
    s.algorithm = Algorithm::Maglev;
    dp.upsert(&s).unwrap();

    // From node 2's namespace (outside node 1): tc DNAT on node 1's uplink.
    let mut seen = BTreeMap::new();
    for _ in 0..20 {
        let mut c =
            w.c.lab
                .tcp_connect(&n2.netns, SocketAddr::new(n1.underlay_ip.into(), 30080))
                .unwrap_or_else(|e| panic!("NodePort from n2: {e}"));
        use std::io::{Read, Write};
        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        // The client only ever talks to NodeIP:nodePort.
        assert_eq!(
            c.peer_addr().unwrap(),
            SocketAddr::new(n1.underlay_ip.into(), 30080)
        );
        c.write_all(b"hi\n").unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut reply = String::new();
        c.read_to_string(&mut reply).unwrap();
        *seen.entry(reply.trim().to_string()).or_insert(0) += 1;
    }
    assert!(seen.keys().all(|k| k == "b0" || k == "b1"), "{seen:?}");
    assert_eq!(seen.values().sum::<usize>(), 20);
    let st = dp.stats(&np).unwrap().unwrap();
    // One connect per flow, bytes per packet.
    assert_eq!(st.connects, 20, "{st:?}");
    assert!(st.packets > 20 && st.bytes > 0, "{st:?}");

    // An ExternalIP routed to node 1 (lab-only: 198.18.1.10 is in the lab's benchmark range and
    // node 2 routes it to node 1 over the lab underlay).
    let ext = Ipv4Addr::new(198, 18, 1, 10);
    dp.upsert(&service(Frontend::tcp(ext, 80), w.backend_set(&[1])))
        .unwrap();
    w.c.lab.exec(
        &n2.netns,
        &[
            "ip",
            "route",
            "add",
            "198.18.1.10/32",
            "via",
            &n1.underlay_ip.to_string(),
        ],
    );
    {
        use std::io::{Read, Write};
        let mut c =
            w.c.lab
                .tcp_connect(&n2.netns, SocketAddr::new(ext.into(), 80))
                .unwrap();
        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        c.write_all(b"hi\n").unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut reply = String::new();
        c.read_to_string(&mut reply).unwrap();
        assert_eq!(reply.trim(), "b1", "ExternalIP DNAT'd to its backend");
    }

    // Local connects to NodeIP:nodePort go through the socket hooks.
    let lines = w.client(&["tcp", &format!("{}:30080", n1.underlay_ip), "10"]);
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with("b0") || l.starts_with("b1")),
        "{lines:?}"
    );

    let pin_dir = dp.pin_dir().to_path_buf();
    dp.uninstall().unwrap();
    assert!(!pin_dir.exists());
    // Detached from the uplink: NodeIP:nodePort from outside is no longer translated, so
    // nothing answers there (the kernel refuses: no listener on 30080). Debian's bpftool 7.1
    // cannot list TCX attachments, so the traffic is the witness.
    let refused =
        w.c.lab
            .tcp_connect(&n2.netns, SocketAddr::new(n1.underlay_ip.into(), 30080));
    assert!(
        refused.is_err(),
        "NodePort still translated after uninstall"
    );
}

#[tokio::test]
async fn maglev_service_spreads_and_survives_removal_of_a_backend() {
    let w = World::new("lb_maglev").await;
    let mut dp = w.datapath(false);
    let mut s = service(Frontend::tcp(VIP, 80), w.backend_set(&[0, 1, 2]));
    s.algorithm = Algorithm::Maglev;
    dp.upsert(&s).unwrap();
    let t = tally(&w.client(&["tcp", "10.96.0.10:80", "60"]));
    assert_eq!(t.len(), 3, "{t:?}");
    s.backends = w.backend_set(&[0, 2]);
    dp.upsert(&s).unwrap();
    let t = tally(&w.client(&["tcp", "10.96.0.10:80", "40"]));
    assert_eq!(
        t.keys().cloned().collect::<Vec<_>>(),
        vec!["b0".to_string(), "b2".to_string()],
        "{t:?}"
    );
    assert_eq!(dp.list().unwrap()[0].algorithm, Algorithm::Maglev);
    dp.uninstall().unwrap();
}

#[tokio::test]
async fn open_connections_survive_updates_and_a_kill_9_loader_mid_update_loses_nothing() {
    let w = World::new("lb_kill9").await;
    let n1 = w.c.nodes[0].node.clone();
    let pin_dir = w.c.lab.bpf_pin_dir(&n1);
    let cgroup = w.c.lab.cgroup(&n1);
    let backs: Vec<String> = w
        .backend_set(&[0, 1, 2])
        .iter()
        .map(|b| format!("{}:{}", b.addr, b.port))
        .collect();
    let spec = format!("tcp:10.96.0.10:80={}", backs.join(","));
    let mwlb = |churn: bool| {
        let mut c = std::process::Command::new(meshwork_lab::cgroup::lab_binary("mwlb"));
        c.arg("--pin-dir")
            .arg(&pin_dir)
            .arg("program")
            .arg("--cgroup")
            .arg(&cgroup)
            .args(["--service", &spec]);
        if churn {
            c.arg("--churn");
        }
        c.stdout(std::process::Stdio::piped()).spawn().unwrap()
    };
    // Program once, then hold a connection open through the VIP.
    assert!(mwlb(false).wait().unwrap().success());
    let spawn = |mode: &str, ms: &str| {
        w.c.lab
            .command_in_node(
                &n1,
                &w.client.ns.netns,
                "mwlab-client",
                &[mode, "10.96.0.10:80", ms],
            )
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let hold = spawn("tcp-hold", "3000");
    let loop_ = spawn("tcp-loop", "3000");
    // A churning loader is killed -9 at arbitrary points of its updates, three times over.
    for _ in 0..3 {
        let mut l = mwlb(true);
        std::thread::sleep(Duration::from_millis(400));
        // SAFETY: SIGKILL to our child.
        unsafe { libc::kill(l.id() as i32, libc::SIGKILL) };
        l.wait().unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    let hold = hold.wait_with_output().unwrap();
    let loop_ = loop_.wait_with_output().unwrap();
    let held = String::from_utf8_lossy(&hold.stdout);
    let looped = String::from_utf8_lossy(&loop_.stdout);
    assert!(
        held.contains("fail=0") && !held.contains("ok=0 "),
        "held connection: {held}"
    );
    assert!(
        looped.contains("fail=0"),
        "connect loop: {looped} {}",
        String::from_utf8_lossy(&loop_.stderr)
    );
    // A fresh loader adopts whatever the killed one left and converges cleanly.
    let dp = w.datapath(false);
    let listed = dp.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert!(!listed[0].backends.is_empty());
    dp.uninstall().unwrap();
}

#[tokio::test]
async fn ipv6_vip_spreads_over_ipv6_backends_and_the_peer_is_the_vip() {
    let w = World::new("lb_ipv6").await;
    let mut dp = w.datapath(false);
    let vip6: std::net::Ipv6Addr = "fd00:10:96::10".parse().unwrap();
    let backs: Vec<Backend> = w
        .backends
        .iter()
        .map(|b| Backend::new(b.ip6().unwrap(), 8080))
        .collect();
    dp.upsert(&service(Frontend::tcp(vip6, 80), backs.clone()))
        .unwrap();
    dp.upsert(&service(Frontend::udp(vip6, 53), backs)).unwrap();
    // A v4 frontend with v6 backends is refused, not half-programmed.
    let bad = service(Frontend::tcp(VIP, 81), vec![Backend::new(vip6, 1)]);
    assert!(dp.upsert(&bad).is_err());

    let lines = w.client(&["tcp", "[fd00:10:96::10]:80", "60"]);
    let t = tally(&lines);
    assert_eq!(t.len(), 3, "every backend reached: {t:?} {:?}", &lines[..2]);
    assert!(
        lines.iter().all(|l| l.ends_with(" [fd00:10:96::10]:80")),
        "{lines:?}"
    );
    let lines = w.client(&["udp", "[fd00:10:96::10]:53", "30"]);
    assert_eq!(tally(&lines).len(), 3, "{lines:?}");
    assert!(
        lines.iter().all(|l| l.ends_with(" [fd00:10:96::10]:53")),
        "{lines:?}"
    );
    let listed = dp.list().unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed
        .iter()
        .all(|s| s.frontend.addr == std::net::IpAddr::V6(vip6) && s.backends.len() == 3));
    dp.uninstall().unwrap();
}
