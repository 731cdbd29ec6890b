//! The overlay on real VXLAN devices between lab nodes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic with its location is the failure report"
)]
#![cfg(target_os = "linux")]

use meshwork_lab::{Lab, Node};
use meshwork_netlink::Netlink;
use meshwork_overlay::{Overlay, OverlayConfig, RemoteNode};

fn cidr(n: u8) -> Vec<ipnet::IpNet> {
    vec![
        format!("10.244.{n}.0/24").parse().unwrap(),
        format!("fd00:244:{n}::/64").parse().unwrap(),
    ]
}

fn remote(node: &Node, n: u8) -> RemoteNode {
    RemoteNode {
        name: node.name.clone(),
        underlay_ip: node.underlay_ip,
        pod_cidrs: cidr(n),
    }
}

async fn overlay_on(lab: &Lab, node: &Node, n: u8) -> Overlay {
    let nl = Netlink::connect_in(&lab.open(&node.netns)).unwrap();
    Overlay::ensure(nl, &OverlayConfig::new("eth0", node.underlay_ip, cidr(n)))
        .await
        .unwrap()
}

fn ping(lab: &Lab, node: &Node, dst: &str) -> bool {
    lab.exec_out(&node.netns, &["ping", "-c1", "-W2", dst])
        .status
        .success()
}

#[tokio::test]
async fn nodes_reach_each_other_over_vxlan_and_converge_idempotently() {
    let lab = Lab::new("overlay_converge");
    let (n1, n2, n3) = (lab.node("n1"), lab.node("n2"), lab.node("n3"));
    let o1 = overlay_on(&lab, &n1, 1).await;
    let o2 = overlay_on(&lab, &n2, 2).await;
    assert_eq!(o1.mtu, 1450, "underlay 1500 minus VXLAN overhead");

    // Before any sync the remote pod CIDR is unreachable.
    assert!(!ping(&lab, &n1, "10.244.2.0"));

    let ops = o1.sync(&[remote(&n2, 2)]).await.unwrap();
    assert_eq!(ops.len(), 5, "fdb + 2 neigh + 2 routes: {ops:?}");
    o2.sync(&[remote(&n1, 1)]).await.unwrap();

    let routes = lab.exec(&n1.netns, &["ip", "route", "show", "dev", "mw.vxlan"]);
    assert!(routes.contains("10.244.2.0/24 via 10.244.2.0"), "{routes}");
    assert!(routes.contains("onlink"), "{routes}");
    let fdb = lab.exec(&n1.netns, &["bridge", "fdb", "show", "dev", "mw.vxlan"]);
    assert!(fdb.contains("0e:6d:c6:12:00:02 dst 198.18.0.2"), "{fdb}");
    let neigh = lab.exec(&n1.netns, &["ip", "neigh", "show", "dev", "mw.vxlan"]);
    assert!(
        neigh.contains("10.244.2.0 lladdr 0e:6d:c6:12:00:02 PERMANENT"),
        "{neigh}"
    );

    assert!(ping(&lab, &n1, "10.244.2.0"), "IPv4 across the overlay");
    assert!(
        lab.exec_out(&n1.netns, &["ping", "-6", "-c1", "-W2", "fd00:244:2::"])
            .status
            .success(),
        "IPv6 across the overlay"
    );

    // Converged: nothing to do.
    let again = o1.sync(&[remote(&n2, 2)]).await.unwrap();
    assert!(again.is_empty(), "{again:?}");

    // A restarted agent adopts the device and what is programmed, without flushing.
    drop(o1);
    let o1 = overlay_on(&lab, &n1, 1).await;
    assert!(o1.sync(&[remote(&n2, 2)]).await.unwrap().is_empty());
    assert!(ping(&lab, &n1, "10.244.2.0"));

    // A node joining adds only its entries; leaving removes only its entries.
    let o3 = overlay_on(&lab, &n3, 3).await;
    o3.sync(&[remote(&n1, 1), remote(&n2, 2)]).await.unwrap();
    let ops = o1.sync(&[remote(&n2, 2), remote(&n3, 3)]).await.unwrap();
    assert_eq!(ops.len(), 5, "{ops:?}");
    assert!(ping(&lab, &n1, "10.244.3.0"));
    let ops = o1.sync(&[remote(&n2, 2)]).await.unwrap();
    assert_eq!(ops.len(), 5, "{ops:?}");
    assert!(!ping(&lab, &n1, "10.244.3.0"));
    let routes = lab.exec(&n1.netns, &["ip", "route", "show", "dev", "mw.vxlan"]);
    assert!(!routes.contains("10.244.3.0"), "{routes}");
    assert!(ping(&lab, &n1, "10.244.2.0"), "n2 unaffected by n3 leaving");

    o3.uninstall().await.unwrap();
    assert!(!lab.links(&n3.netns).iter().any(|l| l == "mw.vxlan"));
}

#[tokio::test]
async fn refuses_to_adopt_a_non_vxlan_device_of_the_same_name() {
    let lab = Lab::new("overlay_not_vxlan");
    let n1 = lab.node("n1");
    lab.exec(
        &n1.netns,
        &["ip", "link", "add", "mw.vxlan", "type", "bridge"],
    );
    let nl = Netlink::connect_in(&lab.open(&n1.netns)).unwrap();
    let err = Overlay::ensure(nl, &OverlayConfig::new("eth0", n1.underlay_ip, cidr(1)))
        .await
        .err()
        .expect("must refuse");
    assert!(err.to_string().contains("not VXLAN"), "{err}");
}
