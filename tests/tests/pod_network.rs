//! Pods on different lab nodes over the VXLAN overlay, wired by the CNI plugin.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic with its location is the failure report"
)]
#![cfg(target_os = "linux")]

use std::net::SocketAddr;

use meshwork_lab::cluster::LabCluster;
use meshwork_lab::Lab;

#[tokio::test]
async fn pods_on_two_nodes_transfer_10mb_intact_over_ipv4_and_ipv6() {
    let c = LabCluster::new(Lab::new("e2e_two_nodes"), 2).await.unwrap();
    let a = c.add_pod(0, "a").unwrap();
    let b = c.add_pod(1, "b").unwrap();
    let b2 = c.add_pod(1, "b2").unwrap();

    // The pod MTU is the overlay's: 1500 underlay - 50 VXLAN.
    assert_eq!(c.nodes[0].overlay.mtu, 1450);
    assert_eq!(c.lab.link_mtu(&a.ns.netns, "eth0"), 1450);

    const TEN_MB: usize = 10 * 1024 * 1024;
    for (from, to, dst) in [
        (&a, &b, b.ip()),
        (&b, &a, a.ip()),
        (&a, &b, b.ip6().unwrap()),
        (&b2, &b, b.ip()),
    ] {
        let t = c.lab.transfer(
            &from.ns.netns,
            &to.ns.netns,
            SocketAddr::new(dst, 9000),
            TEN_MB,
        );
        assert!(t.intact, "{} → {dst}: {t:?}", from.ns.name);
        assert_eq!(t.bytes, TEN_MB);
        // No NAT anywhere on the pod network: the server sees the client's pod IP.
        assert!(
            from.result
                .ips
                .iter()
                .any(|i| i.address.addr() == t.peer.ip()),
            "{t:?}"
        );
    }

    // Full-size frames with DF cross the overlay (no black hole); one byte more is refused
    // locally by the pod's MTU instead of vanishing in the tunnel.
    let fits = c.lab.exec_out(
        &a.ns.netns,
        &[
            "ping",
            "-c1",
            "-W2",
            "-M",
            "do",
            "-s",
            "1422",
            &b.ip().to_string(),
        ],
    );
    assert!(
        fits.status.success(),
        "{}",
        String::from_utf8_lossy(&fits.stdout)
    );
    let too_big = c.lab.exec_out(
        &a.ns.netns,
        &[
            "ping",
            "-c1",
            "-W2",
            "-M",
            "do",
            "-s",
            "1423",
            &b.ip().to_string(),
        ],
    );
    assert!(!too_big.status.success());
    let said = String::from_utf8_lossy(&too_big.stderr).to_string()
        + &String::from_utf8_lossy(&too_big.stdout);
    assert!(
        said.contains("mtu=1450"),
        "refused locally for the MTU, not lost: {said}"
    );
}

#[tokio::test]
async fn deleted_pods_and_departed_nodes_become_unreachable() {
    let c = LabCluster::new(Lab::new("e2e_leave"), 3).await.unwrap();
    let a = c.add_pod(0, "a").unwrap();
    let b = c.add_pod(1, "b").unwrap();
    let d = c.add_pod(2, "d").unwrap();
    let reach = |dst: std::net::IpAddr| {
        c.lab
            .exec_out(&a.ns.netns, &["ping", "-c1", "-W1", &dst.to_string()])
            .status
            .success()
    };
    assert!(reach(b.ip()) && reach(d.ip()));

    c.del_pod(&b).unwrap();
    assert!(!reach(b.ip()), "a deleted pod's address answers no more");
    assert!(!c.lab.links(&b.ns.netns).contains(&"eth0".to_string()));

    // Node 3 leaves the cluster: every other node drops its routes; node 2 is unaffected.
    let b = c.add_pod(1, "b-again").unwrap();
    c.sync_overlay(&[0, 1]).await.unwrap();
    assert!(!reach(d.ip()));
    assert!(reach(b.ip()));
    let routes = c.lab.exec(&c.nodes[0].node.netns, &["ip", "route"]);
    assert!(!routes.contains("10.244.3.0/24"), "{routes}");
    // ...and rejoins.
    c.sync_overlay(&[0, 1, 2]).await.unwrap();
    assert!(reach(d.ip()));
}

#[tokio::test]
async fn no_lab_namespace_routes_to_the_real_network() {
    let c = LabCluster::new(Lab::new("e2e_no_route_out"), 2)
        .await
        .unwrap();
    let a = c.add_pod(0, "a").unwrap();
    // `ip route get` is a lookup, not a packet: nothing leaves the machine here.
    for ns in [&a.ns.netns, &c.nodes[0].node.netns, &c.nodes[1].node.netns] {
        for dst in ["1.1.1.1", "192.168.1.1", "172.16.0.1", "10.0.0.1"] {
            let out = c.lab.exec_out(ns, &["ip", "route", "get", dst]);
            assert!(
                !out.status.success(),
                "{ns} has a route to {dst}: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        let v6 = c
            .lab
            .exec_out(ns, &["ip", "-6", "route", "get", "2001:db8::1"]);
        assert!(!v6.status.success(), "{ns} routes IPv6 out");
    }
}
