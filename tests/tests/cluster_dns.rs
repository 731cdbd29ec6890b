//! Cluster DNS in the lab: the API server and meshwork-dns run on node 2 (host network), the
//! cluster DNS Service VIP 10.96.0.10:53 is programmed into node 1's eBPF socket LB, and a pod
//! on node 1 with the resolv.conf a kubelet writes for `dnsPolicy: ClusterFirst` resolves
//! `web`, `web.default`, `web.default.svc` through glibc's search path.
//!
//! The VIP is programmed by the test: the control agent that will do it from the kube-dns
//! Service is not built yet.
#![cfg(target_os = "linux")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic with its location is the failure report"
)]

use std::{
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Service as KubeService;
use kube::{api::PostParams, Api};
use mesh_ctl::cluster::LabCluster;
use meshwork_ebpf::{Algorithm, Backend, Config, Datapath, Frontend, Service};
use meshwork_lab::{cgroup::lab_binary, Lab};
use meshwork_orchestrator::server::{self, ServerConfig};
use meshwork_orchestrator_store::{AnyStore, SqliteStore, SqliteSync};

const DNS_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

fn service(frontend: Frontend, backend: Backend) -> Service {
    Service {
        frontend,
        backends: vec![backend],
        algorithm: Algorithm::Random,
        affinity: None,
    }
}

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
    let (n1, n2) = (&c.nodes[0].node, &c.nodes[1].node);

    // The API server, listening on node 2's loopback.
    let listener = c
        .lab
        .open(&n2.netns)
        .run(|| std::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap()
        .unwrap();
    let data = c.lab.dir().join("apiserver");
    std::fs::create_dir_all(&data).unwrap();
    let store = SqliteStore::open(&data.join("state.db"), SqliteSync::Normal).unwrap();
    let mut cfg = ServerConfig::new(data.clone());
    cfg.listen = listener.local_addr().unwrap();
    let api = rt
        .block_on(server::start_with_listener(
            cfg,
            AnyStore::Sqlite(store),
            Some(listener),
        ))
        .unwrap();
    let kubeconfig = api.admin_kubeconfig.clone();

    // Objects, created with kube-rs from inside node 2 (where the API server is reachable).
    c.lab
        .open(&n2.netns)
        .run(|| {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let client = meshwork_kube_watch::client(Some(&kubeconfig)).await.unwrap();
                let svc = |v| serde_json::from_value::<KubeService>(v).unwrap();
                Api::<KubeService>::namespaced(client.clone(), "default")
                    .create(&PostParams::default(), &svc(serde_json::json!({"metadata": {"name": "web"},
                        "spec": {"clusterIP": "10.96.5.5", "ports": [{"name": "http", "port": 80}]}})))
                    .await
                    .unwrap();
                Api::<KubeService>::namespaced(client, "kube-system")
                    .create(&PostParams::default(), &svc(serde_json::json!({"metadata": {"name": "kube-dns"},
                        "spec": {"clusterIP": DNS_VIP.to_string(), "ports": [
                            {"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53}]}})))
                    .await
                    .unwrap();
            })
        })
        .unwrap();

    // meshwork-dns on node 2's underlay address (host network, as CoreDNS could run).
    let dns_ip = IpAddr::V4(n2.underlay_ip);
    let dns_bin = lab_binary("meshwork-dns");
    let listen = format!("{dns_ip}:53");
    c.lab.spawn(
        &n2.netns,
        &[
            dns_bin.to_str().unwrap(),
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--listen",
            &listen,
            "--admin-listen",
            "127.0.0.1:0",
            "--upstream",
            "127.0.0.1:9",
            "--dns-ip",
            &DNS_VIP.to_string(),
        ],
    );
    let t = Instant::now();
    loop {
        let out = c.lab.exec_out(
            &n2.netns,
            &[
                "dig",
                &format!("@{dns_ip}"),
                "+short",
                "+time=1",
                "+tries=1",
                "web.default.svc.cluster.local",
            ],
        );
        if String::from_utf8_lossy(&out.stdout).trim() == "10.96.5.5" {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "meshwork-dns did not answer on node 2"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // The cluster DNS Service on node 1: UDP and TCP 10.96.0.10:53 → node 2's DNS.
    let mut dcfg = Config::new(&n1.name, c.lab.cgroup(n1));
    dcfg.pin_dir = c.lab.bpf_pin_dir(n1);
    let mut dp = Datapath::open(dcfg).unwrap();
    for f in [Frontend::udp(DNS_VIP, 53), Frontend::tcp(DNS_VIP, 53)] {
        dp.upsert(&service(f, Backend::new(dns_ip, 53))).unwrap();
    }

    // The resolv.conf a kubelet writes for a ClusterFirst pod in `default`.
    let resolv = c.lab.dir().join("resolv.conf");
    std::fs::write(
        &resolv,
        format!("search default.svc.cluster.local svc.cluster.local cluster.local\nnameserver {DNS_VIP}\noptions ndots:5\n"),
    )
    .unwrap();
    for name in [
        "web",
        "web.default",
        "web.default.svc",
        "web.default.svc.cluster.local",
    ] {
        // glibc's resolver (search list, ndots) in the pod, inside node 1's cgroup; the
        // bind mount lives in a private mount namespace and goes with the process.
        let script = format!(
            "mount --bind {} /etc/resolv.conf && getent ahostsv4 {name}",
            resolv.display()
        );
        let out = c.lab.run_in_node(
            n1,
            &client.ns.netns,
            "/usr/bin/unshare",
            &["-m", "--propagation", "private", "sh", "-c", &script],
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("10.96.5.5"),
            "{name}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Over TCP through the VIP too.
    let out = c.lab.run_in_node(
        n1,
        &client.ns.netns,
        "/usr/bin/dig",
        &[
            "@10.96.0.10",
            "+tcp",
            "+short",
            "web.default.svc.cluster.local",
        ],
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "10.96.5.5");
    dp.uninstall().unwrap();
    drop(api);
}
