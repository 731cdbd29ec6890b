//! Inbound steering of a meshed pod in the kernel alone (`ebpf/bpf/mesh_redirect.c`,
//! `mw_mesh_inbound`, through `meshwork_ebpf::mesh::Interceptor` as the node runtime drives
//! it), on a dual-stack pod: IPv4 connections to an app port are handed to the proxy's
//! listener, and native IPv6 ones (which the IPv4 listener cannot take) are refused rather
//! than let through to an app listening on `[::]`, to the pod's registered IPv6 address and
//! any other (link-local) alike; without the program they reach it. The proxy's own
//! connections to the app, from 127.0.0.6, pass to the app. The lab clusters' pods
//! are IPv4-only (the node runtime records one address), so `injection.rs` cannot show the
//! IPv6 half.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic with its location is the failure report"
)]

use std::{
    io::ErrorKind,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsFd,
    time::Duration,
};

use meshwork_ebpf::mesh::{Interceptor, MeshInbound};
use meshwork_lab::{require_root, Lab};

const V4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 1);

/// Whether `l` has a connection waiting (non-blocking accept).
fn took(l: &TcpListener) -> bool {
    match l.accept() {
        Ok(_) => true,
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Err(e) => panic!("accept: {e}"),
    }
}

#[test]
fn ipv4_goes_to_the_proxy_and_native_ipv6_is_dropped_not_let_past() {
    require_root();
    let lab = Lab::new("mesh_in6");
    let pod = lab.node("p");
    lab.exec(&pod.netns, &["ip", "link", "set", "lo", "up"]);
    lab.exec(
        &pod.netns,
        &["ip", "addr", "add", "10.77.0.1/32", "dev", "lo"],
    );
    lab.exec(
        &pod.netns,
        &[
            "ip",
            "-6",
            "addr",
            "add",
            "fd00:77::1/128",
            "dev",
            "lo",
            "nodad",
        ],
    );
    let ns = lab.open(&pod.netns);
    // The app on [::] (dual-stack: what most servers do), the proxy's IPv4 inbound listener.
    let (app, proxy) = ns
        .run(|| {
            (
                TcpListener::bind("[::]:8080").unwrap(),
                TcpListener::bind("0.0.0.0:4143").unwrap(),
            )
        })
        .unwrap();
    app.set_nonblocking(true).unwrap();
    proxy.set_nonblocking(true).unwrap();
    let connect = |to: SocketAddr| {
        ns.run(move || TcpStream::connect_timeout(&to, Duration::from_secs(1)))
            .unwrap()
    };

    let pin = format!("{}-mesh", lab.bpf_pin_dir(&pod).display());
    let mut i = Interceptor::open(std::path::Path::new(&pin)).unwrap();
    let mut inbound = MeshInbound {
        addr: V4,
        addr6: None,
        inbound_port: 4143,
        admin_port: 4191,
        skip_inbound_ports: vec![],
    };
    i.attach_inbound("t", &pod.path(), &inbound).unwrap();
    i.listener(V4, proxy.as_fd()).unwrap();

    // IPv4 to the app port: the proxy's.
    let _c = connect((V4, 8080).into()).expect("IPv4 to the app port");
    assert!(took(&proxy) && !took(&app), "IPv4 goes to the proxy");
    // The proxy's own connection to the app on the pod's address, from 127.0.0.6
    // (proxy/src/inbound/mod.rs, APP_SOURCE): the app's, not handed back to the proxy.
    let _c = ns
        .run(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()?;
            rt.block_on(async {
                let s = tokio::net::TcpSocket::new_v4()?;
                s.bind((Ipv4Addr::new(127, 0, 0, 6), 0).into())?;
                s.connect((V4, 8080).into()).await?.into_std()
            })
        })
        .unwrap()
        .expect("from 127.0.0.6 to the app port");
    assert!(took(&app) && !took(&proxy), "from 127.0.0.6 to the app");
    // An IPv6 address of the pod without an entry (a link-local one, say) is refused too:
    // the program runs only in meshed namespaces.
    let e = connect((V6, 8080).into()).expect_err("IPv6 with no entry");
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
    assert!(!took(&app) && !took(&proxy));

    inbound.addr6 = Some(V6);
    i.attach_inbound("t", &pod.path(), &inbound).unwrap();
    // SK_DROP fails the socket lookup: the SYN is answered with a reset.
    let e = connect((V6, 8080).into()).expect_err("native IPv6 to an app port is dropped");
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
    assert!(!took(&app) && !took(&proxy));
    // The proxy's own hop to the app on loopback is never steered.
    let _c = connect((Ipv6Addr::LOCALHOST, 8080).into()).expect("[::1] to the app");
    assert!(took(&app));
    // IPv4 still goes to the proxy.
    let _c = connect((V4, 8080).into()).expect("IPv4 to the app port");
    assert!(took(&proxy) && !took(&app));

    // Removal takes the IPv6 entry with the rest, and the program: once it is gone, the
    // namespace is no longer meshed and IPv6 reaches the app. The program goes with its link,
    // which the kernel lets go of after the pin is unlinked, behind an RCU grace period and a
    // workqueue (`bpf_link_put`): once, in a loaded full run, this connect was refused, most
    // likely by the program still running (not reproduced alone, nor under CPU load), so it
    // is retried until it is let through, for at most 5 s.
    i.remove("t", None, Some(V4)).unwrap();
    let until = std::time::Instant::now() + Duration::from_secs(5);
    let _c = loop {
        match connect((V6, 8080).into()) {
            Ok(c) => break c,
            Err(e)
                if e.kind() == ErrorKind::ConnectionRefused
                    && std::time::Instant::now() < until =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("IPv6 after removal: {e}"),
        }
    };
    assert!(took(&app));
}
