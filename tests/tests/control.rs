//! The control agent in the lab against a real API server: node 2 serves the API on its
//! underlay address; `meshwork-control` for node 1 runs in node 1's namespace, watches
//! Services and EndpointSlices (created with kube-rs) and programs node 1's eBPF socket LB.
//! A client pod on node 1 reaches every backend through the ClusterIP; readiness, traffic
//! policy and deletes are followed; kill -9 of the agent under a connect loop fails no
//! connect and the restarted agent converges without flushing; `uninstall` removes it all.
//! From a host on the underlay, a NodePort (externalTrafficPolicy Cluster) and a ClusterIP
//! reach a backend on node 2 through node 1 (tc DNAT + SNAT on node 1's uplink).
//!
//! EndpointSlices are written by the test (no controllers run here), so each case controls
//! exactly what the agent sees.
#![cfg(target_os = "linux")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic with its location is the failure report"
)]

use std::{collections::BTreeSet, net::SocketAddr, time::Duration};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::{
    api::{DeleteParams, Patch, PatchParams, PostParams},
    Api,
};
use mesh_ctl::cluster::{LabCluster, Pod};
use mesh_ctl::stack::{start_agent, BoxFut, LabApi, LabProc};
use meshwork_lab::{cgroup::lab_binary, servers::IdentityServer, Lab};
use serde_json::json;

struct World {
    c: LabCluster,
    client: Pod,
    backends: Vec<Pod>,
    _servers: Vec<IdentityServer>,
    api: LabApi,
    /// Serves the API server; dropped last.
    _rt: tokio::runtime::Runtime,
}

impl World {
    fn kube<T: Send>(&self, f: impl FnOnce(kube::Client) -> BoxFut<T> + Send) -> T {
        self.api.kube(&self.c, f).unwrap()
    }

    /// A merge patch of Service `web`.
    fn patch_web(&self, patch: serde_json::Value) {
        self.kube(move |c| {
            Box::pin(async move {
                Api::<Service>::namespaced(c, "default")
                    .patch("web", &PatchParams::default(), &Patch::Merge(patch))
                    .await
                    .unwrap();
            })
        });
    }

    fn client(&self, args: &[&str]) -> Vec<String> {
        let out = self.c.lab.run_in_node(
            &self.c.nodes[0].node,
            &self.client.ns.netns,
            "mwlab-client",
            args,
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Distinct backends answering 30 connects to the ClusterIP.
    fn reached(&self) -> BTreeSet<String> {
        self.client(&["tcp", "10.96.7.7:80", "30"])
            .into_iter()
            .map(|l| {
                // "<identity> <address seen>" or "ERR <reason>".
                l.split_whitespace().next().unwrap_or_default().to_string()
            })
            .collect()
    }

    fn names(&self, idx: &[usize]) -> BTreeSet<String> {
        idx.iter()
            .map(|i| self.backends[*i].ns.name.clone())
            .collect()
    }

    fn agent(&self) -> LabProc {
        start_agent(&self.c, 0, &self.api.kubeconfig).unwrap()
    }

    fn metrics(&self) -> String {
        self.admin_get("/metrics", false)
    }

    /// GET on the agent's admin port from inside node 1; with `headers`, wget's response
    /// headers (stderr) come first.
    fn admin_get(&self, path: &str, headers: bool) -> String {
        let url = format!("http://127.0.0.1:10256{path}");
        let mut args = vec!["busybox", "wget", "-q", "-O", "-"];
        if headers {
            args.push("-S");
        }
        args.push(&url);
        let out = self.c.lab.exec_out(&self.c.nodes[0].node.netns, &args);
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        )
    }

    fn healthz(&self) -> String {
        self.admin_get("/healthz", true)
    }
}

fn eventually(what: &str, ok: impl FnMut() -> bool) {
    meshwork_lab::wait::eventually_true(what, Duration::from_secs(15), ok)
}

/// `name`: the lab's name (tests running in parallel need their own).
fn world(name: &str) -> World {
    meshwork_lab::require_root();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let c = rt.block_on(LabCluster::new(Lab::new(name), 2)).unwrap();
    let client = c.add_pod(0, "client").unwrap();
    let backends: Vec<Pod> = [(0, "b0"), (1, "b1"), (1, "b2")]
        .iter()
        .map(|(n, name)| c.add_pod(*n, name).unwrap())
        .collect();
    let servers = backends
        .iter()
        .map(|b| {
            c.lab
                .identity_server(&b.ns.netns, SocketAddr::new(b.ip(), 8080), &b.ns.name)
        })
        .collect();
    let api = rt.block_on(LabApi::start(&c, 1)).unwrap();
    World {
        c,
        client,
        backends,
        _servers: servers,
        api,
        _rt: rt,
    }
}

fn slice(w: &World, ready: [bool; 3]) -> EndpointSlice {
    let eps: Vec<_> = w
        .backends
        .iter()
        .zip(["n1", "n2", "n2"])
        .zip(ready)
        .map(|((b, node), r)| json!({"addresses": [b.ip().to_string()], "nodeName": node, "conditions": {"ready": r}}))
        .collect();
    serde_json::from_value(json!({
        "metadata": {"name": "web-1", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": eps,
    }))
    .unwrap()
}

#[test]
fn agent_programs_services_from_the_api_and_survives_kill_9() {
    let w = world("control");
    let s = slice(&w, [true, true, true]);
    w.kube(move |c| {
        Box::pin(async move {
            let svc: Service = serde_json::from_value(json!({"metadata": {"name": "web"}, "spec": {
                "clusterIP": "10.96.7.7", "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}))
            .unwrap();
            Api::<Service>::namespaced(c.clone(), "default").create(&PostParams::default(), &svc).await.unwrap();
            Api::<EndpointSlice>::namespaced(c, "default").create(&PostParams::default(), &s).await.unwrap();
        })
    });
    let agent = w.agent();
    eventually("all three backends through the ClusterIP", || {
        w.reached() == w.names(&[0, 1, 2])
    });
    let h = w.healthz();
    assert!(h.contains("200 OK") && h.contains("lastUpdated"), "{h}");

    // Readiness: b2 turns not ready → it leaves the rotation.
    set_ready(&w, [true, true, false]);
    eventually("not-ready endpoint removed", || {
        w.reached() == w.names(&[0, 1])
    });

    // internalTrafficPolicy Local: only node 1's endpoint.
    w.patch_web(json!({"spec": {"internalTrafficPolicy": "Local"}}));
    eventually("Local policy keeps node 1's endpoint", || {
        w.reached() == w.names(&[0])
    });
    w.patch_web(json!({"spec": {"internalTrafficPolicy": "Cluster"}}));
    eventually("back to Cluster", || w.reached() == w.names(&[0, 1]));

    // sessionAffinity ClientIP: every connect from the client pod lands on one backend.
    w.patch_web(json!({"spec": {"sessionAffinity": "ClientIP"}}));
    eventually("ClientIP affinity pins one backend", || {
        w.reached().len() == 1
    });
    w.patch_web(json!({"spec": {"sessionAffinity": "None"}}));
    eventually("affinity off again", || w.reached() == w.names(&[0, 1]));

    // NodePort from the underlay (node 2's namespace → node 1's address), externalTrafficPolicy
    // Local: only node 1's endpoint answers (tc DNAT on node 1's uplink).
    let (b0, b1) = (
        w.backends[0].ip().to_string(),
        w.backends[1].ip().to_string(),
    );
    w.kube(move |c| {
        Box::pin(async move {
            let svc: Service = serde_json::from_value(json!({"metadata": {"name": "np"}, "spec": {
                "type": "NodePort", "clusterIP": "10.96.7.8", "externalTrafficPolicy": "Local",
                "ports": [{"name": "http", "port": 80, "targetPort": "http", "nodePort": 30080}]}}))
            .unwrap();
            Api::<Service>::namespaced(c.clone(), "default").create(&PostParams::default(), &svc).await.unwrap();
            let s: EndpointSlice = serde_json::from_value(json!({
                "metadata": {"name": "np-1", "labels": {"kubernetes.io/service-name": "np"}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                "endpoints": [{"addresses": [b0], "nodeName": "n1"}, {"addresses": [b1], "nodeName": "n2"}]}))
            .unwrap();
            Api::<EndpointSlice>::namespaced(c, "default").create(&PostParams::default(), &s).await.unwrap();
        })
    });
    let n1_addr = SocketAddr::new(w.c.nodes[0].node.underlay_ip.into(), 30080);
    let from_n2 = || -> Option<String> {
        use std::io::{Read, Write};
        let mut s =
            w.c.lab
                .tcp_connect(&w.c.nodes[1].node.netns, n1_addr)
                .ok()?;
        s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
        s.write_all(b"hi\n").ok()?;
        s.shutdown(std::net::Shutdown::Write).ok()?;
        let mut reply = String::new();
        s.read_to_string(&mut reply).ok()?;
        Some(reply.trim().to_string())
    };
    eventually("NodePort answers from the underlay", || from_n2().is_some());
    let seen: BTreeSet<String> = (0..10).filter_map(|_| from_n2()).collect();
    assert_eq!(
        seen,
        w.names(&[0]),
        "externalTrafficPolicy Local: node 1's endpoint only"
    );

    // kill -9 under a constant connect loop: the pinned datapath keeps serving; the restarted
    // agent reads it back and converges without a flush.
    let n1 = w.c.nodes[0].node.clone();
    let looping =
        w.c.lab
            .command_in_node(
                &n1,
                &w.client.ns.netns,
                "mwlab-client",
                &["tcp-loop", "10.96.7.7:80", "3000"],
            )
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let mut agent = agent;
    agent.kill(libc::SIGKILL);
    std::thread::sleep(Duration::from_millis(500));
    let restarted = w.agent();
    let out = looping.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(" fail=0") && !text.contains("ok=0 "),
        "connect loop across kill -9: {text}"
    );
    eventually("restarted agent healthy", || w.healthz().contains("200 OK"));
    assert_eq!(w.reached(), w.names(&[0, 1]));

    // No ready endpoint: connects are refused at once, and the kernel's count of refusals
    // reaches the agent's metrics.
    set_ready(&w, [false, false, false]);
    eventually("no endpoint: refused", || {
        w.reached() == BTreeSet::from(["ERR".to_string()])
    });
    let m = w.metrics();
    let refused = m
        .lines()
        .find(|l| l.starts_with("meshwork_control_datapath_drops_total{reason=\"no_backend\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no drop counter in\n{m}"));
    assert!(refused > 0, "{m}");

    // Delete: the frontend goes (connects fail instead of reaching a backend).
    w.kube(|c| {
        Box::pin(async move {
            Api::<Service>::namespaced(c, "default")
                .delete("web", &DeleteParams::default())
                .await
                .unwrap();
        })
    });
    eventually("deleted service no longer load balanced", || {
        w.reached() == BTreeSet::from(["ERR".to_string()])
    });

    // A clean stop leaves the datapath; the explicit uninstall removes the pins.
    let mut restarted = restarted;
    let status = restarted.stop(libc::SIGTERM).unwrap();
    assert!(status.success(), "SIGTERM is a clean stop: {status}");
    let pins = w.c.lab.bpf_pin_dir(&n1);
    assert!(
        std::fs::read_dir(&pins).is_ok_and(|mut d| d.next().is_some()),
        "a clean stop keeps the datapath"
    );
    let out = std::process::Command::new(lab_binary("meshwork-control"))
        .args(["uninstall", "--node-name", "n1", "--pin-dir"])
        .arg(&pins)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !pins.exists() || std::fs::read_dir(&pins).unwrap().next().is_none(),
        "pins left in {}",
        pins.display()
    );
}

/// Replaces web's slice with the three backends in these readiness states.
fn set_ready(w: &World, ready: [bool; 3]) {
    let s = slice(w, ready);
    w.kube(move |c| {
        Box::pin(async move {
            Api::<EndpointSlice>::namespaced(c, "default")
                .replace("web-1", &PostParams::default(), &s)
                .await
                .unwrap();
        })
    });
}

/// One connection from namespace `from` to `to`: the client must only ever see `to` as its
/// peer, get the backend's identity line, then its 256 KiB payload echoed back intact (many
/// full-size segments through the translation, both ways).
fn exchange(w: &World, from: &str, to: SocketAddr, seed: u64) -> Result<String, String> {
    use std::io::{BufRead, Read, Write};
    let s =
        w.c.lab
            .tcp_connect(from, to)
            .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let peer = s.peer_addr().map_err(|e| e.to_string())?;
    if peer != to {
        return Err(format!("peer {peer}, not {to}"));
    }
    let mut r = std::io::BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
    let mut s = s;
    s.write_all(b"hi\n").map_err(|e| format!("write: {e}"))?;
    let mut identity = String::new();
    r.read_line(&mut identity)
        .map_err(|e| format!("identity: {e}"))?;
    let data = meshwork_lab::tcp::payload(256 * 1024, seed);
    // Written while the echo is read (the server echoes as it reads).
    let back = std::thread::scope(|sc| {
        let writer = sc.spawn(|| {
            s.write_all(&data)?;
            s.shutdown(std::net::Shutdown::Write)
        });
        let mut back = Vec::new();
        let read = r.read_to_end(&mut back);
        let written = writer.join().map_err(|_| "writer panicked".to_string())?;
        written.map_err(|e| format!("write: {e}"))?;
        read.map_err(|e| format!("echo: {e} after {} bytes", back.len()))?;
        Ok::<_, String>(back)
    })?;
    if back != data {
        return Err(format!(
            "echo corrupted: {} bytes back of {}",
            back.len(),
            data.len()
        ));
    }
    Ok(identity.trim().to_string())
}

/// externalTrafficPolicy Cluster from outside the cluster: a NodePort Service whose only
/// backend is a pod on node 2, reached at node 1's address:nodePort from a host on the underlay
/// (a namespace that is no node), and its ClusterIP reached from that host through a route
/// via node 1. Node 1's tc DNATs to the remote pod and SNATs to its own address, so the pod's
/// replies come back through node 1 and leave it from the frontend the client asked for.
#[test]
fn node_port_and_cluster_ip_from_outside_reach_a_backend_on_another_node() {
    let w = world("control_snat");
    let b1 = w.backends[1].ip().to_string();
    w.kube(move |c| {
        Box::pin(async move {
            let svc: Service = serde_json::from_value(json!({"metadata": {"name": "np"}, "spec": {
                "type": "NodePort", "clusterIP": "10.96.7.9", "externalTrafficPolicy": "Cluster",
                "ports": [{"name": "http", "port": 80, "targetPort": "http", "nodePort": 30081}]}}))
            .unwrap();
            Api::<Service>::namespaced(c.clone(), "default")
                .create(&PostParams::default(), &svc)
                .await
                .unwrap();
            let s: EndpointSlice = serde_json::from_value(json!({
                "metadata": {"name": "np-1", "labels": {"kubernetes.io/service-name": "np"}},
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                "endpoints": [{"addresses": [b1], "nodeName": "n2"}]}))
            .unwrap();
            Api::<EndpointSlice>::namespaced(c, "default")
                .create(&PostParams::default(), &s)
                .await
                .unwrap();
        })
    });
    let _agent = w.agent();
    // A host on the underlay that is not a node: it reaches the Service range via node 1.
    let ext = w.c.lab.node("ext");
    let n1_ip = w.c.nodes[0].node.underlay_ip.to_string();
    w.c.lab.exec(
        &ext.netns,
        &["ip", "route", "add", "10.96.0.0/12", "via", &n1_ip],
    );
    let b1_name = w.names(&[1]).into_iter().next().unwrap();
    for (what, to) in [
        (
            "NodePort",
            SocketAddr::new(w.c.nodes[0].node.underlay_ip.into(), 30081),
        ),
        ("ClusterIP", "10.96.7.9:80".parse().unwrap()),
    ] {
        eventually(&format!("{what} from outside answers"), || {
            exchange(&w, &ext.netns, to, 1).is_ok()
        });
        for i in 0..8 {
            assert_eq!(
                exchange(&w, &ext.netns, to, i + 2).as_deref(),
                Ok(b1_name.as_str()),
                "{what} {to}, connection {i}: node 2's pod, through node 1"
            );
        }
    }
}

/// The overlay from Node objects: three lab nodes start with no overlay routes; agents on n1
/// and n2 (owning the overlay) connect them once their Node objects exist; n3 joins when its
/// Node appears and leaves when it is deleted.
#[test]
fn agents_program_the_overlay_from_node_objects() {
    meshwork_lab::require_root();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let c = rt
        .block_on(LabCluster::new(Lab::new("control_overlay"), 3))
        .unwrap();
    // Nobody knows anybody: from here on the agents program the overlay.
    rt.block_on(c.sync_overlay(&[])).unwrap();
    let a = c.add_pod(0, "a").unwrap();
    let b = c.add_pod(1, "b").unwrap();
    let d = c.add_pod(2, "d").unwrap();
    let ping = |to: &Pod| {
        c.lab
            .exec_out(
                &a.ns.netns,
                &["ping", "-c", "1", "-W", "1", &to.ip().to_string()],
            )
            .status
            .success()
    };
    assert!(!ping(&b), "no overlay route before any Node object");
    let api = rt.block_on(LabApi::start(&c, 2)).unwrap();
    let node_obj = |i: usize| -> k8s_openapi::api::core::v1::Node {
        let n = &c.nodes[i];
        serde_json::from_value(json!({
            "metadata": {"name": n.node.name},
            "spec": {"podCIDRs": n.pod_cidrs.iter().map(|c| c.to_string()).collect::<Vec<_>>()},
            "status": {"addresses": [{"type": "InternalIP", "address": n.node.underlay_ip.to_string()}]},
        }))
        .unwrap()
    };
    let create = |objs: Vec<k8s_openapi::api::core::v1::Node>| {
        api.kube(&c, move |k| {
            Box::pin(async move {
                for o in objs {
                    Api::<k8s_openapi::api::core::v1::Node>::all(k.clone())
                        .create(&PostParams::default(), &o)
                        .await
                        .unwrap();
                }
            })
        })
        .unwrap()
    };
    create(vec![node_obj(0), node_obj(1)]);
    let _agents =
        [0, 1].map(|i| mesh_ctl::stack::start_agent_with(&c, i, &api.kubeconfig, true).unwrap());
    eventually("n1 ↔ n2 over the overlay the agents programmed", || {
        ping(&b)
    });
    assert!(!ping(&d), "n3 has no Node object yet");

    create(vec![node_obj(2)]);
    let _n3 = mesh_ctl::stack::start_agent_with(&c, 2, &api.kubeconfig, true).unwrap();
    eventually("n3 joined: its pods are reachable", || ping(&d));

    api.kube(&c, |k| {
        Box::pin(async move {
            Api::<k8s_openapi::api::core::v1::Node>::all(k)
                .delete("n3", &DeleteParams::default())
                .await
                .unwrap();
        })
    })
    .unwrap();
    eventually("n3 left: its routes are gone from n1", || !ping(&d));
    assert!(ping(&b), "n1 ↔ n2 untouched");
}
