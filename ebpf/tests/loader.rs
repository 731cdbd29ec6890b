//! The loader on a real kernel: layout vs BTF, attach + pin, restart without flushing,
//! uninstall, per-node isolation.
#![cfg(target_os = "linux")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic with its location is the failure report"
)]

use std::{collections::HashMap, net::Ipv4Addr, time::Duration};

use meshwork_ebpf::{abi, Algorithm, Backend, BpfDatapath, Config, Datapath, Frontend, Service};
use meshwork_lab::{sh, Lab, Node};

fn config(lab: &Lab, node: &Node) -> Config {
    let mut c = Config::new(&node.name, lab.cgroup(node));
    c.pin_dir = lab.bpf_pin_dir(node);
    c
}

fn svc(vip: [u8; 4], port: u16, backends: &[([u8; 4], u16)]) -> Service {
    Service {
        frontend: Frontend::tcp(Ipv4Addr::from(vip), port),
        backends: backends
            .iter()
            .map(|(a, p)| Backend::new(Ipv4Addr::from(*a), *p))
            .collect(),
        algorithm: Algorithm::Random,
        affinity: None,
    }
}

/// `bpftool btf dump` of an object: struct name → (size, field → byte offset).
fn btf_structs(obj: &[u8]) -> HashMap<String, (usize, HashMap<String, usize>)> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("o.o");
    std::fs::write(&path, obj).unwrap();
    let out = sh(&[
        "bpftool",
        "btf",
        "dump",
        "file",
        path.to_str().unwrap(),
        "format",
        "raw",
    ]);
    let mut res = HashMap::new();
    let mut cur: Option<(String, usize, HashMap<String, usize>)> = None;
    for line in out.lines() {
        if line.starts_with('[') {
            if let Some((n, s, f)) = cur.take() {
                res.insert(n, (s, f));
            }
            if let Some(rest) = line.split("] STRUCT '").nth(1) {
                let name = rest.split('\'').next().unwrap().to_string();
                let size = meshwork_lab::field_after(rest, "size=").parse().unwrap();
                cur = Some((name, size, HashMap::new()));
            }
        } else if let Some((_, _, fields)) = cur.as_mut() {
            let t = line.trim();
            if let (Some(name), Some(off)) = (t.split('\'').nth(1), t.split("bits_offset=").nth(1))
            {
                let bits: usize = off.split(' ').next().unwrap().parse().unwrap();
                fields.insert(name.to_string(), bits / 8);
            }
        }
    }
    if let Some((n, s, f)) = cur {
        res.insert(n, (s, f));
    }
    res
}

#[test]
fn rust_abi_matches_the_btf_of_both_objects() {
    for obj in [meshwork_ebpf::SOCK_LB_OBJ, meshwork_ebpf::TC_NODEPORT_OBJ] {
        let btf = btf_structs(obj);
        for (name, size, fields) in abi::layouts() {
            let (bsize, bfields) = btf.get(name).unwrap_or_else(|| panic!("{name} not in BTF"));
            assert_eq!(size, *bsize, "size of {name}");
            for (f, off) in fields {
                assert_eq!(Some(&off), bfields.get(f), "offset of {name}.{f}");
            }
        }
    }
}

fn cgroup_progs(lab: &Lab, node: &Node) -> String {
    sh(&[
        "bpftool",
        "cgroup",
        "show",
        lab.cgroup(node).to_str().unwrap(),
    ])
}

#[test]
fn programs_stay_attached_and_maps_survive_the_loader() {
    let lab = Lab::new("ebpf_restart");
    let node = lab.node("n1");
    let mut dp = BpfDatapath::open(config(&lab, &node)).unwrap();
    let mut a = svc(
        [10, 96, 0, 10],
        80,
        &[([10, 244, 1, 2], 8080), ([10, 244, 2, 3], 8080)],
    );
    // A backend on another node (SNATed by tc) is read back as such.
    a.backends[1].remote = true;
    let mut b = svc([10, 96, 0, 11], 53, &[([10, 244, 1, 4], 53)]);
    b.algorithm = Algorithm::Maglev;
    b.affinity = Some(Duration::from_secs(30));
    dp.upsert(&a).unwrap();
    dp.upsert(&b).unwrap();
    let progs = cgroup_progs(&lab, &node);
    for p in [
        "connect4",
        "sendmsg4",
        "recvmsg4",
        "getpeername4",
        "connect6",
        "sendmsg6",
        "recvmsg6",
        "getpeername6",
    ] {
        assert!(progs.contains(p), "{p} not attached: {progs}");
    }
    drop(dp);

    // Loader gone: programs still attached, maps still pinned.
    let progs = cgroup_progs(&lab, &node);
    assert!(progs.contains("connect4"), "{progs}");
    assert!(lab.bpf_pin_dir(&node).join("mw_services").exists());

    // A new loader reads back what is programmed; nothing was flushed.
    let mut dp = BpfDatapath::open(config(&lab, &node)).unwrap();
    let listed = dp.list().unwrap();
    assert_eq!(listed, vec![a.clone(), b.clone()]);
    // And it does not attach a second copy.
    assert_eq!(cgroup_progs(&lab, &node).matches("connect4").count(), 1);

    // Updates after restart work and recycle state (no leaked slot tables or backends).
    let a2 = svc([10, 96, 0, 10], 80, &[([10, 244, 1, 9], 8080)]);
    dp.upsert(&a2).unwrap();
    assert!(dp.remove(&b.frontend).unwrap());
    assert!(!dp.remove(&b.frontend).unwrap());
    // Old tables and backends outlive an update by a grace period, then go.
    dp.settle();
    assert_eq!(dp.list().unwrap(), vec![a2]);
    let backends = sh(&[
        "bpftool",
        "map",
        "dump",
        "pinned",
        lab.bpf_pin_dir(&node).join("mw_backends").to_str().unwrap(),
    ]);
    assert_eq!(
        backends.matches("\"key\"").count(),
        1,
        "one backend left: {backends}"
    );

    let pin_dir = dp.pin_dir().to_path_buf();
    dp.uninstall().unwrap();
    assert!(!pin_dir.exists(), "uninstall leaves nothing in bpffs");
    let progs = cgroup_progs(&lab, &node);
    assert!(!progs.contains("connect4"), "{progs}");
}

#[test]
fn each_node_has_its_own_maps_and_cgroup() {
    let lab = Lab::new("ebpf_two_nodes");
    let (n1, n2) = (lab.node("n1"), lab.node("n2"));
    let mut d1 = BpfDatapath::open(config(&lab, &n1)).unwrap();
    let mut d2 = BpfDatapath::open(config(&lab, &n2)).unwrap();
    d1.upsert(&svc([10, 96, 0, 1], 80, &[([10, 244, 1, 2], 80)]))
        .unwrap();
    d2.upsert(&svc([10, 96, 0, 2], 80, &[([10, 244, 2, 2], 80)]))
        .unwrap();
    assert_eq!(d1.list().unwrap().len(), 1);
    assert_eq!(
        d1.list().unwrap()[0].frontend.addr,
        Ipv4Addr::new(10, 96, 0, 1)
    );
    assert_eq!(
        d2.list().unwrap()[0].frontend.addr,
        Ipv4Addr::new(10, 96, 0, 2)
    );
    d1.uninstall().unwrap();
    assert_eq!(
        d2.list().unwrap().len(),
        1,
        "n2 unaffected by n1's uninstall"
    );
    d2.uninstall().unwrap();
}

/// Sends UDP datagrams from `from` to `to` until the tc ingress program on the uplink counts
/// one for `frontend`, or 3 s pass. Counting is the witness that tc runs on the
/// device: Debian's bpftool 7.1 cannot list TCX attachments.
fn tc_counts(
    lab: &Lab,
    from: &Node,
    to: std::net::SocketAddr,
    dp: &BpfDatapath,
    f: &Frontend,
) -> u64 {
    let before = dp.stats(f).unwrap().unwrap().packets;
    let t = std::time::Instant::now();
    let mut sent = 0;
    while t.elapsed() < Duration::from_secs(3) {
        lab.open(&from.netns)
            .run(|| {
                let s = std::net::UdpSocket::bind("10.99.0.2:0").unwrap();
                s.send_to(b"ping", to).unwrap();
            })
            .unwrap();
        sent += 1;
        if dp.stats(f).unwrap().unwrap().packets > before {
            return sent;
        }
        // Polling a kernel counter: nothing to wait on.
        std::thread::sleep(Duration::from_millis(50));
    }
    0
}

/// A pinned tc link survives its loader, but not its device: after the uplink is recreated
/// (a node's namespace rebuilt, a device added again), the next loader attaches again instead
/// of reading back a link the kernel has detached.
#[test]
fn tc_pins_on_a_recreated_uplink_are_attached_again() {
    let lab = Lab::new("ebpf_stale_tc");
    let node = lab.node("n1");
    let peer = lab.node("n2");
    let mut cfg = config(&lab, &node);
    cfg.uplink = Some(meshwork_ebpf::Uplink {
        netns: Some(node.path()),
        name: "mwup0".into(),
    });
    // The uplink: a veth from n1 to n2 (addresses inside the lab only).
    let uplink = || {
        sh(&[
            "ip",
            "-n",
            &node.netns,
            "link",
            "add",
            "mwup0",
            "type",
            "veth",
            "peer",
            "name",
            "mwup0p",
            "netns",
            &peer.netns,
        ]);
        sh(&[
            "ip",
            "-n",
            &node.netns,
            "addr",
            "add",
            "10.99.0.1/24",
            "dev",
            "mwup0",
        ]);
        sh(&[
            "ip",
            "-n",
            &peer.netns,
            "addr",
            "add",
            "10.99.0.2/24",
            "dev",
            "mwup0p",
        ]);
        sh(&["ip", "-n", &node.netns, "link", "set", "mwup0", "up"]);
        sh(&["ip", "-n", &peer.netns, "link", "set", "mwup0p", "up"]);
    };
    let frontend = Frontend::udp(Ipv4Addr::new(10, 99, 0, 1), 30053);
    let to: std::net::SocketAddr = "10.99.0.1:30053".parse().unwrap();
    uplink();
    let mut dp = BpfDatapath::open(cfg.clone()).unwrap();
    dp.upsert(&Service {
        frontend,
        backends: vec![Backend::new(Ipv4Addr::new(10, 99, 0, 1), 53)],
        algorithm: Algorithm::Random,
        affinity: None,
    })
    .unwrap();
    assert!(
        tc_counts(&lab, &peer, to, &dp, &frontend) > 0,
        "tc on the first uplink"
    );
    drop(dp);
    assert!(lab.bpf_pin_dir(&node).join("links/mw_nodeport_in").exists());

    sh(&["ip", "-n", &node.netns, "link", "del", "mwup0"]);
    uplink();
    let dp = BpfDatapath::open(cfg.clone()).unwrap();
    assert!(
        tc_counts(&lab, &peer, to, &dp, &frontend) > 0,
        "tc attached again to the recreated uplink"
    );
    // A loader with the device unchanged keeps the links it finds (no second attachment: one
    // datagram counts once).
    drop(dp);
    let dp = BpfDatapath::open(cfg).unwrap();
    let before = dp.stats(&frontend).unwrap().unwrap().packets;
    let sent = tc_counts(&lab, &peer, to, &dp, &frontend);
    assert!(sent > 0);
    let t = std::time::Instant::now();
    let counted = loop {
        let n = dp.stats(&frontend).unwrap().unwrap().packets - before;
        if n >= sent || t.elapsed() > Duration::from_secs(3) {
            break n;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(counted, sent, "each datagram counted once");
    dp.uninstall().unwrap();
}
