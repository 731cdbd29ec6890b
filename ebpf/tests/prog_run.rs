//! The C datapath's functions run by the kernel under BPF_PROG_RUN, one input at a time, with
//! the maps programmed by the real programmer: the socket LB's decision (through the harness
//! object `bpf/tests/sock_lb_test.c`) and the tc NodePort programs on crafted packets
//! (checksums verified on the output). Drop reasons are read back per `abi::DropReason`, so a
//! renumbering on either side fails here.
#![cfg(target_os = "linux")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic with its location is the failure report"
)]

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsFd, AsRawFd},
    path::PathBuf,
    time::Duration,
};

use aya::{
    maps::{Array, MapData},
    programs::SchedClassifier,
    Ebpf, EbpfLoader,
};
use meshwork_ebpf::{
    abi::{DropReason, NpCfg},
    maps::KernelMaps,
    Algorithm, Backend, Frontend, Observer, Programmer, Service,
};
use meshwork_lab::Lab;

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;

/// `union bpf_attr`'s `test` member (uapi/linux/bpf.h), zero-padded.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    pad: u32,
}

const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// One pinned-map world: the objects loaded against a lab pin directory, and a programmer
/// writing the same maps.
struct World {
    _lab: Lab,
    pin_dir: PathBuf,
    objs: Vec<Ebpf>,
    prog: Programmer<KernelMaps>,
}

impl World {
    fn new(name: &str, objects: &[&[u8]]) -> World {
        meshwork_lab::require_root();
        let lab = Lab::new(name);
        let node = lab.node("n1");
        let pin_dir = lab.bpf_pin_dir(&node);
        std::fs::create_dir_all(&pin_dir).unwrap();
        let objs: Vec<Ebpf> = objects
            .iter()
            .map(|o| {
                EbpfLoader::new()
                    .default_map_pin_directory(&pin_dir)
                    .load(o)
                    .unwrap()
            })
            .collect();
        let prog = Programmer::new(KernelMaps::pinned(&pin_dir).unwrap()).unwrap();
        World {
            _lab: lab,
            pin_dir,
            objs,
            prog,
        }
    }

    fn load(&mut self, name: &str) -> i32 {
        let p = self
            .objs
            .iter_mut()
            .find_map(|o| o.program_mut(name))
            .unwrap_or_else(|| panic!("no program {name}"));
        let p: &mut SchedClassifier = p.try_into().unwrap();
        if p.fd().is_err() {
            p.load().unwrap();
        }
        p.fd().unwrap().as_fd().as_raw_fd()
    }

    /// Runs program `name` once on `data`; returns its verdict and the data after it.
    fn run(&mut self, name: &str, data: &[u8]) -> (u32, Vec<u8>) {
        let fd = self.load(name);
        let mut out = vec![0u8; data.len() + 64];
        let mut attr = TestRunAttr {
            prog_fd: fd as u32,
            data_size_in: data.len() as u32,
            data_size_out: out.len() as u32,
            data_in: data.as_ptr() as u64,
            data_out: out.as_mut_ptr() as u64,
            repeat: 1,
            ..Default::default()
        };
        // SAFETY: bpf(2) with a zero-initialised attr whose pointers outlive the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_TEST_RUN,
                &mut attr as *mut TestRunAttr,
                std::mem::size_of::<TestRunAttr>(),
            )
        };
        assert_eq!(
            rc,
            0,
            "BPF_PROG_TEST_RUN of {name}: {} (the kernel must support test runs of tc programs)",
            std::io::Error::last_os_error()
        );
        out.truncate(attr.data_size_out as usize);
        (attr.retval, out)
    }

    fn drops(&self, r: DropReason) -> u64 {
        let d = Observer::open(&self.pin_dir).unwrap().drops().unwrap();
        d.into_iter().find(|(x, _)| *x == r).unwrap().1
    }

    fn np_cfg(&mut self, snat: Ipv4Addr, ports: (u16, u16)) {
        let map = self
            .objs
            .iter_mut()
            .find_map(|o| o.map_mut("mw_np_cfg"))
            .unwrap();
        let mut arr: Array<&mut MapData, NpCfg> = Array::try_from(map).unwrap();
        let v = NpCfg {
            snat_addr: u32::from(snat).to_be(),
            snat_port_min: ports.0,
            snat_port_max: ports.1,
        };
        arr.set(0, v, 0).unwrap();
    }
}

// ---- the socket LB's decision ----

/// `struct mw_sock4` or `mw_sock6` (by the address's family) after the harness's 14-byte
/// header: cookie, netns cookie, address, port, protocol (TCP), padding to 8 bytes.
fn sock(cookie: u64, netns: u64, addr: impl Into<IpAddr>, port: u16) -> Vec<u8> {
    let mut v = vec![0u8; 14];
    v.extend_from_slice(&cookie.to_ne_bytes());
    v.extend_from_slice(&netns.to_ne_bytes());
    match addr.into() {
        IpAddr::V4(a) => v.extend_from_slice(&a.octets()),
        IpAddr::V6(a) => v.extend_from_slice(&a.octets()),
    }
    v.extend_from_slice(&port.to_be_bytes());
    v.extend_from_slice(&[6, 0]);
    while !(v.len() - 14).is_multiple_of(8) {
        v.push(0);
    }
    v
}

/// (verdict, address, port) out of a harness run.
fn verdict4(out: &[u8]) -> (i32, Ipv4Addr, u16) {
    let v = i32::from_ne_bytes(out[0..4].try_into().unwrap());
    let a = Ipv4Addr::from(<[u8; 4]>::try_from(&out[30..34]).unwrap());
    let p = u16::from_be_bytes(out[34..36].try_into().unwrap());
    (v, a, p)
}

fn verdict6(out: &[u8]) -> (i32, Ipv6Addr, u16) {
    let v = i32::from_ne_bytes(out[0..4].try_into().unwrap());
    let a = Ipv6Addr::from(<[u8; 16]>::try_from(&out[30..46]).unwrap());
    let p = u16::from_be_bytes(out[46..48].try_into().unwrap());
    (v, a, p)
}

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

fn service(port: u16, backends: &[u8], algorithm: Algorithm, affinity: bool) -> Service {
    Service {
        frontend: Frontend::tcp(VIP, port),
        backends: backends
            .iter()
            .map(|b| Backend::new(Ipv4Addr::new(10, 244, 0, *b), 8080))
            .collect(),
        algorithm,
        affinity: affinity.then(|| Duration::from_secs(60)),
    }
}

#[test]
fn socket_lb_translates_reverses_and_refuses() {
    let mut w = World::new("ebpf_progrun_sock", &[meshwork_ebpf::SOCK_LB_TEST_OBJ]);
    w.prog
        .upsert(&service(80, &[1], Algorithm::Random, false))
        .unwrap();
    w.prog
        .upsert(&service(81, &[], Algorithm::Random, false))
        .unwrap();

    // Not a frontend: untouched.
    let (_, out) = w.run(
        "mw_test_fwd4",
        &sock(1, 1, Ipv4Addr::new(10, 96, 0, 99), 80),
    );
    assert_eq!(verdict4(&out), (0, Ipv4Addr::new(10, 96, 0, 99), 80));

    // A frontend: the backend, and the reverse entry for that socket only.
    let (_, out) = w.run("mw_test_fwd4", &sock(7, 1, VIP, 80));
    assert_eq!(verdict4(&out), (0, Ipv4Addr::new(10, 244, 0, 1), 8080));
    let (_, out) = w.run(
        "mw_test_rev4",
        &sock(7, 1, Ipv4Addr::new(10, 244, 0, 1), 8080),
    );
    assert_eq!(verdict4(&out), (0, VIP, 80), "getpeername shows the VIP");
    let (_, out) = w.run(
        "mw_test_rev4",
        &sock(8, 1, Ipv4Addr::new(10, 244, 0, 1), 8080),
    );
    assert_eq!(
        verdict4(&out),
        (0, Ipv4Addr::new(10, 244, 0, 1), 8080),
        "another socket talking to the backend directly is not reversed"
    );
    let st = w.prog.stats(&Frontend::tcp(VIP, 80)).unwrap().unwrap();
    assert_eq!((st.connects, st.no_backend), (1, 0));

    // No backend: refused, counted per service and as a drop reason.
    assert_eq!(w.drops(DropReason::NoBackend), 0);
    let (_, out) = w.run("mw_test_fwd4", &sock(9, 1, VIP, 81));
    assert_eq!(verdict4(&out).0, -1);
    let st = w.prog.stats(&Frontend::tcp(VIP, 81)).unwrap().unwrap();
    assert_eq!((st.connects, st.no_backend), (0, 1));
    assert_eq!(w.drops(DropReason::NoBackend), 1);
    assert_eq!(w.drops(DropReason::SnatExhausted), 0);
}

#[test]
fn socket_lb_spreads_keeps_affinity_and_maglev_is_stable() {
    let mut w = World::new("ebpf_progrun_pick", &[meshwork_ebpf::SOCK_LB_TEST_OBJ]);
    // Random: every backend gets a fair share of 600 sockets.
    w.prog
        .upsert(&service(80, &[1, 2, 3], Algorithm::Random, false))
        .unwrap();
    let mut seen: HashMap<Ipv4Addr, u32> = HashMap::new();
    for cookie in 0..600 {
        let (_, out) = w.run("mw_test_fwd4", &sock(cookie, 1, VIP, 80));
        *seen.entry(verdict4(&out).1).or_default() += 1;
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen.values().all(|n| *n > 120), "{seen:?}");

    // ClientIP affinity: one pod (netns cookie) stays on one backend across sockets.
    w.prog
        .upsert(&service(81, &[1, 2, 3], Algorithm::Random, true))
        .unwrap();
    let per_pod: Vec<HashSet<Ipv4Addr>> = (1..=4u64)
        .map(|netns| {
            (0..30)
                .map(|c| {
                    let (_, out) = w.run("mw_test_fwd4", &sock(1000 + c, netns, VIP, 81));
                    verdict4(&out).1
                })
                .collect()
        })
        .collect();
    assert!(per_pod.iter().all(|s| s.len() == 1), "{per_pod:?}");

    // Maglev: a socket (cookie) maps to the same backend every time, and removing one of
    // four backends moves only the sockets that were on it.
    w.prog
        .upsert(&service(82, &[1, 2, 3, 4], Algorithm::Maglev, false))
        .unwrap();
    let pick = |w: &mut World, c: u64| verdict4(&w.run("mw_test_fwd4", &sock(c, 1, VIP, 82)).1).1;
    let before: Vec<Ipv4Addr> = (0..400).map(|c| pick(&mut w, c)).collect();
    let again: Vec<Ipv4Addr> = (0..400).map(|c| pick(&mut w, c)).collect();
    assert_eq!(before, again);
    w.prog
        .upsert(&service(82, &[1, 2, 3], Algorithm::Maglev, false))
        .unwrap();
    let after: Vec<Ipv4Addr> = (0..400).map(|c| pick(&mut w, c)).collect();
    let gone = Ipv4Addr::new(10, 244, 0, 4);
    let moved = before
        .iter()
        .zip(&after)
        .filter(|(b, a)| **b != gone && b != a)
        .count();
    assert!(after.iter().all(|a| *a != gone));
    // Maglev's bound: a little churn beyond the removed backend's share.
    assert!(moved < 40, "{moved} of 400 sockets moved needlessly");
}

#[test]
fn socket_lb_ipv6() {
    let mut w = World::new("ebpf_progrun_sock6", &[meshwork_ebpf::SOCK_LB_TEST_OBJ]);
    let vip: Ipv6Addr = "fd00:96::10".parse().unwrap();
    let be: Ipv6Addr = "fd00:244::5".parse().unwrap();
    w.prog
        .upsert(&Service {
            frontend: Frontend::tcp(vip, 443),
            backends: vec![Backend::new(be, 8443)],
            algorithm: Algorithm::Random,
            affinity: None,
        })
        .unwrap();
    w.prog
        .upsert(&Service {
            frontend: Frontend::tcp(vip, 444),
            backends: vec![],
            algorithm: Algorithm::Random,
            affinity: None,
        })
        .unwrap();
    let (_, out) = w.run("mw_test_fwd6", &sock(3, 1, vip, 443));
    assert_eq!(verdict6(&out), (0, be, 8443));
    let (_, out) = w.run("mw_test_rev6", &sock(3, 1, be, 8443));
    assert_eq!(verdict6(&out), (0, vip, 443));
    let (_, out) = w.run("mw_test_fwd6", &sock(4, 1, vip, 444));
    assert_eq!(verdict6(&out).0, -1);
    assert_eq!(w.drops(DropReason::NoBackend), 1);
}

// ---- tc NodePort on packets ----

fn csum(data: &[u8], init: u32) -> u16 {
    let mut sum = init;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += u32::from(w);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The L4 checksum with the IPv4 pseudo-header, over the packet as it is (0 if it is right).
fn l4_check(pkt: &[u8]) -> u16 {
    let ip = &pkt[14..34];
    let l4 = &pkt[34..];
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&ip[12..20]);
    pseudo.extend_from_slice(&[0, ip[9]]);
    pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    let mut all = pseudo;
    all.extend_from_slice(l4);
    csum(&all, 0)
}

/// Ethernet + IPv4 + TCP (or UDP) with a payload, checksums right.
fn packet(proto: u8, src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> Vec<u8> {
    let payload = b"hello, backend";
    let l4_len = if proto == 6 { 20 } else { 8 } + payload.len();
    let mut p = vec![0u8; 14 + 20 + l4_len];
    p[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
    p[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
    p[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut p[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + l4_len) as u16).to_be_bytes());
    ip[8] = 64;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&src.0.octets());
    ip[16..20].copy_from_slice(&dst.0.octets());
    let c = csum(&p[14..34], 0);
    p[24..26].copy_from_slice(&c.to_be_bytes());
    p[34..36].copy_from_slice(&src.1.to_be_bytes());
    p[36..38].copy_from_slice(&dst.1.to_be_bytes());
    let off = if proto == 6 {
        p[46] = 0x50; // data offset 5 words
        p[47] = 0x02; // SYN
        50
    } else {
        p[38..40].copy_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        40
    };
    let start = 14 + 20 + if proto == 6 { 20 } else { 8 };
    p[start..].copy_from_slice(payload);
    let c = l4_check(&p);
    p[off..off + 2].copy_from_slice(&c.to_be_bytes());
    p
}

/// (source, destination) of a packet, and whether its IP and L4 checksums hold.
fn addrs(p: &[u8]) -> ((Ipv4Addr, u16), (Ipv4Addr, u16)) {
    assert_eq!(csum(&p[14..34], 0), 0, "IP checksum");
    assert_eq!(l4_check(p), 0, "L4 checksum");
    let a = |o: usize| Ipv4Addr::from(<[u8; 4]>::try_from(&p[o..o + 4]).unwrap());
    let port = |o: usize| u16::from_be_bytes([p[o], p[o + 1]]);
    ((a(26), port(34)), (a(30), port(36)))
}

const NODE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const CLIENT: (Ipv4Addr, u16) = (Ipv4Addr::new(198, 51, 100, 7), 40000);

fn nodeport(backends: &[(u8, bool)]) -> Service {
    Service {
        frontend: Frontend::tcp(NODE, 30080),
        backends: backends
            .iter()
            .map(|(b, remote)| {
                Backend::new(Ipv4Addr::new(10, 244, 1, *b), 8080).with_remote(*remote)
            })
            .collect(),
        algorithm: Algorithm::Random,
        affinity: None,
    }
}

#[test]
fn nodeport_dnats_keeps_flows_and_reverses_replies() {
    let mut w = World::new("ebpf_progrun_np", &[meshwork_ebpf::TC_NODEPORT_OBJ]);
    w.prog.upsert(&nodeport(&[(5, false)])).unwrap();
    let backend = (Ipv4Addr::new(10, 244, 1, 5), 8080);

    let syn = packet(6, CLIENT, (NODE, 30080));
    let (rc, out) = w.run("mw_nodeport_in", &syn);
    assert_eq!(rc, TC_ACT_OK);
    assert_eq!(
        addrs(&out),
        (CLIENT, backend),
        "DNAT keeps the client's address"
    );
    let st = w.prog.stats(&Frontend::tcp(NODE, 30080)).unwrap().unwrap();
    assert_eq!((st.connects, st.packets), (1, 1));
    assert_eq!(st.bytes, syn.len() as u64);

    // The backend's reply leaves from the frontend.
    let reply = packet(6, backend, CLIENT);
    let (rc, out) = w.run("mw_nodeport_out", &reply);
    assert_eq!(rc, TC_ACT_OK);
    assert_eq!(addrs(&out), ((NODE, 30080), CLIENT));

    // UDP too, and a zero UDP checksum ("none") stays zero.
    w.prog
        .upsert(&Service {
            frontend: Frontend::udp(NODE, 30053),
            backends: vec![Backend::new(Ipv4Addr::new(10, 244, 1, 6), 53)],
            algorithm: Algorithm::Random,
            affinity: None,
        })
        .unwrap();
    let mut dgram = packet(17, CLIENT, (NODE, 30053));
    dgram[40..42].copy_from_slice(&[0, 0]);
    let (rc, out) = w.run("mw_nodeport_in", &dgram);
    assert_eq!(rc, TC_ACT_OK);
    assert_eq!(&out[30..34], &[10, 244, 1, 6]);
    assert_eq!(&out[40..42], &[0, 0], "UDP checksum 0 stays 0");

    // A flow stays on its backend while the service gains backends.
    w.prog
        .upsert(&nodeport(&[(5, false), (6, false), (7, false), (8, false)]))
        .unwrap();
    for _ in 0..20 {
        let (_, out) = w.run("mw_nodeport_in", &syn);
        assert_eq!(addrs(&out).1, backend);
    }
    // New flows spread.
    let spread: HashSet<Ipv4Addr> = (0..40)
        .map(|i| {
            let (_, out) = w.run(
                "mw_nodeport_in",
                &packet(6, (CLIENT.0, 41000 + i), (NODE, 30080)),
            );
            addrs(&out).1 .0
        })
        .collect();
    assert!(spread.len() >= 3, "{spread:?}");
}

#[test]
fn nodeport_leaves_what_is_not_its_own() {
    let mut w = World::new("ebpf_progrun_np_skip", &[meshwork_ebpf::TC_NODEPORT_OBJ]);
    w.prog.upsert(&nodeport(&[(5, false)])).unwrap();
    let syn = packet(6, CLIENT, (NODE, 30080));
    // Not a frontend port; ARP; IP options; a fragment; no backend (counted, passed on).
    let other = packet(6, CLIENT, (NODE, 22));
    let mut arp = syn.clone();
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    let mut options = syn.clone();
    options[14] = 0x46;
    let mut frag = syn.clone();
    frag[20] = 0x20; // more fragments
    for (what, p) in [
        ("other port", &other),
        ("ARP", &arp),
        ("IP options", &options),
        ("fragment", &frag),
    ] {
        let (rc, out) = w.run("mw_nodeport_in", p);
        assert_eq!(rc, TC_ACT_OK, "{what}");
        assert_eq!(&out, p, "{what} untouched");
    }
    w.prog.upsert(&nodeport(&[])).unwrap();
    let (rc, out) = w.run("mw_nodeport_in", &syn);
    assert_eq!((rc, &out), (TC_ACT_OK, &syn));
    let st = w.prog.stats(&Frontend::tcp(NODE, 30080)).unwrap().unwrap();
    assert_eq!(st.no_backend, 1);
}

#[test]
fn nodeport_snats_to_remote_backends_and_drops_when_ports_run_out() {
    let mut w = World::new("ebpf_progrun_snat", &[meshwork_ebpf::TC_NODEPORT_OBJ]);
    // One SNAT port: the second concurrent flow to the same backend has none left.
    w.np_cfg(NODE, (40100, 40100));
    w.prog.upsert(&nodeport(&[(9, true)])).unwrap();
    let backend = (Ipv4Addr::new(10, 244, 1, 9), 8080);

    let (rc, out) = w.run("mw_nodeport_in", &packet(6, CLIENT, (NODE, 30080)));
    assert_eq!(rc, TC_ACT_OK);
    assert_eq!(addrs(&out), ((NODE, 40100), backend), "SNAT to the node");

    // The backend's reply to the node port goes back to the client, from the frontend.
    let (rc, out) = w.run("mw_nodeport_in", &packet(6, backend, (NODE, 40100)));
    assert_eq!(rc, TC_ACT_OK);
    assert_eq!(addrs(&out), ((NODE, 30080), CLIENT));

    assert_eq!(w.drops(DropReason::SnatExhausted), 0);
    let second = packet(6, (Ipv4Addr::new(198, 51, 100, 8), 40000), (NODE, 30080));
    let (rc, _) = w.run("mw_nodeport_in", &second);
    assert_eq!(rc, TC_ACT_SHOT);
    assert_eq!(w.drops(DropReason::SnatExhausted), 1);
    assert_eq!(w.drops(DropReason::RewriteFailed), 0);
    let st = w.prog.stats(&Frontend::tcp(NODE, 30080)).unwrap().unwrap();
    assert_eq!((st.connects, st.no_backend), (1, 1));
}
