//! Cluster DNS as a real cluster runs it: `deploy/addons/meshwork-dns.yaml` (the manifest
//! `mesh-ctl up` applies) is kubectl-applied to a lab cluster with the API server, its
//! controllers and a node runtime per node (`support/orch.rs`). meshwork-dns runs as a pod
//! with its ServiceAccount's in-cluster credentials, the EndpointSlice controller writes the
//! `kube-dns` endpoints from its readiness, the control agents program the VIP (10.96.0.10),
//! and a client pod, with the resolv.conf its node runtime wrote for `dnsPolicy: ClusterFirst`,
//! resolves `web`, `web.default`, `web.default.svc` through glibc's search path, over UDP and
//! TCP (`kubectl exec`). Upstream is a closed port on the pod's loopback: nothing leaves the
//! lab.
#![cfg(target_os = "linux")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic with its location is the failure report"
)]

#[path = "support/orch.rs"]
mod orch;

use std::time::Duration;

use meshwork_lab::cgroup::lab_binary;
use orch::Orch;
use serde_json::json;

const DNS_VIP: &str = "10.96.0.10";

#[test]
fn pods_resolve_services_through_the_dns_vip_and_search_path() {
    meshwork_lab::require_root();
    let dns_bin = lab_binary("meshwork-dns");
    let dns_bin = dns_bin.to_str().unwrap();
    let mut o = Orch::start_full("cluster_dns", &orch::IN_CLUSTER_ROUTES, false, &[], |dir| {
        // meshwork-dns as mesh-ctl's catalog has it (this build's binary on the host root),
        // and the host's tools (glibc's getent, dig) to run with the pod's own resolv.conf.
        Some(orch::host_catalog(
            dir,
            &[("meshwork-dns", &[dns_bin]), ("tools", &[])],
        ))
    });
    for i in 0..o.nodes.len() {
        let a = o.start_agent(i);
        o.procs.push(a);
    }
    let addon = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/addons/meshwork-dns.yaml"
    ))
    .unwrap()
    .replace("%{CLUSTER_DNS}%", DNS_VIP)
    .replace("%{DNS_UPSTREAM}%", "127.0.0.1:9");
    let manifest = o.lab.dir().join("meshwork-dns.yaml");
    std::fs::write(&manifest, addon).unwrap();
    o.kubectl(&["apply", "-f", manifest.to_str().unwrap()]);
    o.apply(&json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "default"},
         "spec": {"clusterIP": "10.96.5.5", "ports": [{"name": "http", "port": 80}]}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "client", "namespace": "default"},
         "spec": {"nodeName": "n1", "terminationGracePeriodSeconds": 1,
                  "containers": [{"name": "c", "image": "tools", "command": ["sleep", "100000"]}]}},
    ]}));
    o.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "pod/client",
        "-n",
        "default",
        "--timeout=60s",
    ]);
    // The EndpointSlice controller lists the DNS pod once its readiness probe passes.
    o.wait_long("a ready kube-dns endpoint", Duration::from_secs(60), || {
        let v = o.json(&[
            "get",
            "endpointslices",
            "-n",
            "kube-system",
            "-l",
            "kubernetes.io/service-name=kube-dns",
        ]);
        v["items"]
            .as_array()?
            .iter()
            .flat_map(|s| s["endpoints"].as_array().into_iter().flatten())
            .any(|e| e["conditions"]["ready"] == true)
            .then_some(())
    });
    let resolv = o.kubectl(&["exec", "client", "--", "cat", "/etc/resolv.conf"]);
    assert!(
        resolv.contains(&format!("nameserver {DNS_VIP}"))
            && resolv.contains("search default.svc.cluster.local svc.cluster.local cluster.local"),
        "the node runtime's ClusterFirst resolv.conf: {resolv}"
    );
    let resolve = |name: &str| {
        let out = o.kubectl_out(&["exec", "client", "--", "getent", "ahostsv4", name]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Until the agent has programmed the VIP and DNS has synced.
    o.wait("web resolves through the DNS VIP", || {
        resolve("web").contains("10.96.5.5").then_some(())
    });
    for name in [
        "web.default",
        "web.default.svc",
        "web.default.svc.cluster.local",
    ] {
        let got = resolve(name);
        assert!(got.contains("10.96.5.5"), "{name}: {got}");
    }
    // Over TCP through the VIP too.
    let out = o.kubectl(&[
        "exec",
        "client",
        "--",
        "dig",
        &format!("@{DNS_VIP}"),
        "+tcp",
        "+short",
        "web.default.svc.cluster.local",
    ]);
    assert_eq!(out.trim(), "10.96.5.5");
}
