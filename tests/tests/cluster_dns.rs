//! Cluster DNS with the stack around it: the API server and meshwork-dns run on node 2
//! (meshwork-dns on the host network, like a hostNetwork CoreDNS), the `kube-dns` Service
//! (10.96.0.10) and its EndpointSlice live in the API, `meshwork-control` on node 1 programs
//! that VIP into node 1's eBPF socket LB from them, and a pod on node 1 with the resolv.conf a
//! kubelet writes for `dnsPolicy: ClusterFirst` resolves `web`, `web.default`,
//! `web.default.svc` through glibc's search path, over UDP and TCP.
//!
//! The resolv.conf and the kube-dns EndpointSlice are written by the test: the node runtime
//! and the EndpointSlice controller come with the orchestrator's next part.
#![cfg(target_os = "linux")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic with its location is the failure report"
)]

use std::time::{Duration, Instant};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::{api::PostParams, Api};
use mesh_ctl::cluster::LabCluster;
use mesh_ctl::stack::{start_agent, start_dns, LabApi};
use meshwork_lab::Lab;
use serde_json::json;

const DNS_VIP: &str = "10.96.0.10";

#[test]
fn pods_resolve_services_through_the_dns_vip_and_search_path() {
    meshwork_lab::require_root();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let c = rt
        .block_on(LabCluster::new(Lab::new("cluster_dns"), 2))
        .unwrap();
    let client = c.add_pod(0, "client").unwrap();
    let (n1, n2) = (c.nodes[0].node.clone(), c.nodes[1].node.clone());
    let api = rt.block_on(LabApi::start(&c, 1)).unwrap();
    let dns_ip = n2.underlay_ip.to_string();

    let ip = dns_ip.clone();
    api.kube(&c, move |k| {
        Box::pin(async move {
            let svc = |v| serde_json::from_value::<Service>(v).unwrap();
            Api::<Service>::namespaced(k.clone(), "default")
                .create(&PostParams::default(), &svc(json!({"metadata": {"name": "web"},
                    "spec": {"clusterIP": "10.96.5.5", "ports": [{"name": "http", "port": 80}]}})))
                .await
                .unwrap();
            Api::<Service>::namespaced(k.clone(), "kube-system")
                .create(&PostParams::default(), &svc(json!({"metadata": {"name": "kube-dns"},
                    "spec": {"clusterIP": DNS_VIP, "ports": [
                        {"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53}]}})))
                .await
                .unwrap();
            let slice: EndpointSlice = serde_json::from_value(json!({
                "metadata": {"name": "kube-dns-1", "labels": {"kubernetes.io/service-name": "kube-dns"}},
                "addressType": "IPv4",
                "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "protocol": "TCP"}],
                "endpoints": [{"addresses": [ip], "nodeName": "n2", "conditions": {"ready": true}}]}))
            .unwrap();
            Api::<EndpointSlice>::namespaced(k, "kube-system").create(&PostParams::default(), &slice).await.unwrap();
        })
    })
    .unwrap();

    // meshwork-dns on node 2's underlay address (host network).
    let _dns = start_dns(&c, 1, &api.kubeconfig, DNS_VIP).unwrap();
    // The control agent for node 1 programs the kube-dns VIP from the API.
    let _agent = start_agent(&c, 0, &api.kubeconfig).unwrap();

    // The resolv.conf a kubelet writes for a ClusterFirst pod in `default`.
    let resolv = c.lab.dir().join("resolv.conf");
    std::fs::write(
        &resolv,
        format!("search default.svc.cluster.local svc.cluster.local cluster.local\nnameserver {DNS_VIP}\noptions ndots:5\n"),
    )
    .unwrap();
    let resolve = |name: &str| {
        // glibc's resolver (search list, ndots) in the pod, inside node 1's cgroup; the bind
        // mount lives in a private mount namespace and goes with the process.
        let script = format!(
            "mount --bind {} /etc/resolv.conf && getent ahostsv4 {name}",
            resolv.display()
        );
        let out = c.lab.run_in_node(
            &n1,
            &client.ns.netns,
            "/usr/bin/unshare",
            &["-m", "--propagation", "private", "sh", "-c", &script],
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Until the agent has programmed the VIP and DNS has synced.
    let t = Instant::now();
    while !resolve("web").contains("10.96.5.5") {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "web did not resolve through {DNS_VIP}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for name in [
        "web.default",
        "web.default.svc",
        "web.default.svc.cluster.local",
    ] {
        let got = resolve(name);
        assert!(got.contains("10.96.5.5"), "{name}: {got}");
    }
    // Over TCP through the VIP too.
    let out = c.lab.run_in_node(
        &n1,
        &client.ns.netns,
        "/usr/bin/dig",
        &[
            &format!("@{DNS_VIP}"),
            "+tcp",
            "+short",
            "web.default.svc.cluster.local",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "10.96.5.5");
}
