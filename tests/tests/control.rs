//! The control agent in a lab cluster built like a real one (`support/orch.rs`): the API server
//! with its controllers, a node runtime on each of two nodes and a `meshwork-control` per node
//! owning its overlay. The backends are the pods of a kubectl-applied Deployment; the
//! EndpointSlice controller writes their slices from their readiness, and the agent programs
//! node 1's eBPF socket LB and tc NodePort from them. A client pod on node 1 reaches every ready
//! backend through the ClusterIP; readiness, traffic policy and deletes are followed; kill -9 of
//! the agent under a connect loop fails no connect and the restarted agent converges without
//! flushing; `uninstall` removes it all. From a host on the underlay, a NodePort
//! (externalTrafficPolicy Cluster) and a ClusterIP reach a backend on node 2 through node 1
//! (tc DNAT + SNAT on node 1's uplink).
//!
//! Each backend pod's container sleeps; its app is the lab's identity server bound in the pod's
//! network namespace, so that every connection reports which pod it reached and echoes its
//! payload. Readiness is the pod's own exec probe on a file the test writes into the
//! container's root, so each case sets exactly which backends are ready.
#![cfg(target_os = "linux")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic with its location is the failure report"
)]

#[path = "support/orch.rs"]
mod orch;

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use k8s_openapi::api::core::v1::Node as NodeObj;
use kube::{
    api::{DeleteParams, PostParams},
    Api,
};
use meshwork_lab::{
    cgroup::lab_binary,
    cluster::{LabCluster, Pod},
    servers::IdentityServer,
    stack::{start_agent_with, LabApi},
    Lab,
};
use orch::{Orch, PodInfo, Proc};
use serde_json::{json, Value};

fn eventually(what: &str, ok: impl FnMut() -> bool) {
    meshwork_lab::wait::eventually_true(what, Duration::from_secs(20), ok)
}

/// A backend pod with the identity server in its namespace.
struct Backend {
    pod: PodInfo,
    node: usize,
    _server: IdentityServer,
}

struct World {
    /// The client pod's namespace on node 1.
    client_netns: String,
    backends: Vec<Backend>,
    /// Node 2's agent (node 1's is the test's to kill and restart).
    _n2_agent: Proc,
    o: Orch,
}

/// A Deployment of `replicas` sleeping pods labelled `app=<app>` with port `http` 8080, ready
/// while their container root holds `/ready`; `node`: all on that node.
fn backends(app: &str, replicas: i32, node: Option<&str>) -> Value {
    let mut spec = json!({
        "terminationGracePeriodSeconds": 1,
        "containers": [{
            "name": "app", "image": "busybox:1.36", "command": ["sleep", "100000"],
            "ports": [{"name": "http", "containerPort": 8080}],
            "readinessProbe": {"exec": {"command": ["test", "-f", "/ready"]},
                               "periodSeconds": 1, "failureThreshold": 1},
        }]
    });
    if let Some(n) = node {
        spec["nodeSelector"] = json!({"kubernetes.io/hostname": n});
    }
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": app, "namespace": "default"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": app}},
            "template": {"metadata": {"labels": {"app": app}}, "spec": spec},
        }
    })
}

/// `name` on node 1, sleeping: the namespace the test's clients run in.
fn client_pod() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "client", "namespace": "default"},
        "spec": {"nodeName": "n1", "terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "c", "image": "busybox:1.36", "command": ["sleep", "100000"]}]}
    })
}

/// A lab cluster (`name`: the lab's) with agents on both nodes, the pods of Deployment `app`
/// running (`replicas`, optionally all on `node`) with identity servers, not yet ready, and
/// the client pod.
fn world(name: &str, app: &str, replicas: i32, node: Option<&str>) -> (World, Proc) {
    meshwork_lab::require_root();
    // Pods route to the cluster and to the underlay (replies to NodePort clients and to node
    // 1's SNAT address go back through the node), still with no default route out of the lab.
    let o = Orch::start_with(name, &["10.244.0.0/16", meshwork_lab::UNDERLAY_SUBNET]);
    let n1_agent = o.start_agent(0);
    let n2_agent = o.start_agent(1);
    o.apply(&json!({"apiVersion": "v1", "kind": "List",
                    "items": [backends(app, replicas, node), client_pod()]}));
    let want = replicas as usize;
    let (pods, client) = o.wait("the backend and client pods running", || {
        let pods = o.pods("default", &format!("app={app}"));
        let client = o
            .pods("default", "!app")
            .into_iter()
            .find(|p| p.name == "client")?;
        let up = |p: &PodInfo| p.running && !p.ip.is_empty();
        (pods.len() == want && pods.iter().all(up) && up(&client)).then_some((pods, client))
    });
    let mut pods = pods;
    pods.sort_by(|a, b| (&a.node, &a.name).cmp(&(&b.node, &b.name)));
    let backends = pods
        .into_iter()
        .map(|pod| {
            let node = o.node_index(&pod.node);
            let addr = SocketAddr::new(pod.ip.parse::<IpAddr>().unwrap(), 8080);
            let server = o
                .lab
                .identity_server(&o.pod_netns(node, &pod.uid), addr, &pod.name);
            Backend {
                pod,
                node,
                _server: server,
            }
        })
        .collect();
    let w = World {
        client_netns: o.pod_netns(0, &client.uid),
        backends,
        _n2_agent: n2_agent,
        o,
    };
    (w, n1_agent)
}

impl World {
    /// Makes exactly the backends at `idx` ready (through their readiness probes) and waits
    /// until the API shows it.
    fn set_ready(&self, idx: &[usize]) {
        for (i, b) in self.backends.iter().enumerate() {
            let f = self.o.rootfs(b.node, &b.pod.uid, "app").join("ready");
            if idx.contains(&i) {
                std::fs::write(&f, b"").unwrap();
            } else {
                let _ = std::fs::remove_file(&f);
            }
        }
        let want = self.names(idx);
        let app = self.backends[0]
            .pod
            .name
            .split('-')
            .next()
            .unwrap()
            .to_string();
        self.o.wait("readiness as set", || {
            let ready: BTreeSet<String> = self
                .o
                .pods("default", &format!("app={app}"))
                .into_iter()
                .filter(|p| p.ready)
                .map(|p| p.name)
                .collect();
            (ready == want).then_some(())
        });
    }

    fn client(&self, args: &[&str]) -> Vec<String> {
        let out =
            self.o
                .lab
                .run_in_node(&self.o.nodes[0], &self.client_netns, "mwlab-client", args);
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
            .map(|i| self.backends[*i].pod.name.clone())
            .collect()
    }

    /// The indexes of the backends on node `node` among `idx`.
    fn on(&self, node: usize, idx: &[usize]) -> Vec<usize> {
        idx.iter()
            .copied()
            .filter(|i| self.backends[*i].node == node)
            .collect()
    }

    fn metrics(&self) -> String {
        self.admin_get("/metrics", false)
    }

    /// GET on node 1's agent admin port from inside node 1; with `headers`, wget's response
    /// headers (stderr) come first.
    fn admin_get(&self, path: &str, headers: bool) -> String {
        let n1 = &self.o.nodes[0];
        let url = format!("http://{}:10256{path}", n1.underlay_ip);
        let mut args = vec!["busybox", "wget", "-q", "-O", "-"];
        if headers {
            args.push("-S");
        }
        args.push(&url);
        let out = self.o.lab.exec_out(&n1.netns, &args);
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

#[test]
fn agent_programs_services_from_the_api_and_survives_kill_9() {
    let (w, agent) = world("control", "web", 3, None);
    let all: Vec<usize> = (0..w.backends.len()).collect();
    let (local, remote) = (w.on(0, &all), w.on(1, &all));
    assert!(
        !local.is_empty() && !remote.is_empty(),
        "the scheduler spreads 3 replicas over both nodes: {:?}\n{}",
        w.backends.iter().map(|b| &b.pod).collect::<Vec<_>>(),
        w.o.dump()
    );
    w.o.apply(&json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"clusterIP": "10.96.7.7", "selector": {"app": "web"},
                 "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}));
    w.set_ready(&all);
    eventually("all three backends through the ClusterIP", || {
        w.reached() == w.names(&all)
    });
    let h = w.healthz();
    assert!(h.contains("200 OK") && h.contains("lastUpdated"), "{h}");

    // Readiness: one remote backend turns not ready → it leaves the rotation.
    let gone = remote[remote.len() - 1];
    let mut ready: Vec<usize> = all.iter().copied().filter(|i| *i != gone).collect();
    w.set_ready(&ready);
    eventually("not-ready endpoint removed", || {
        w.reached() == w.names(&ready)
    });

    // internalTrafficPolicy Local: only node 1's endpoints.
    let patch = |p: &str| {
        w.o.kubectl(&["patch", "service", "web", "--type=merge", "-p", p]);
    };
    patch(r#"{"spec": {"internalTrafficPolicy": "Local"}}"#);
    eventually("Local policy keeps node 1's endpoints", || {
        w.reached() == w.names(&w.on(0, &ready))
    });
    patch(r#"{"spec": {"internalTrafficPolicy": "Cluster"}}"#);
    eventually("back to Cluster", || w.reached() == w.names(&ready));

    // sessionAffinity ClientIP: every connect from the client pod lands on one backend.
    patch(r#"{"spec": {"sessionAffinity": "ClientIP"}}"#);
    eventually("ClientIP affinity pins one backend", || {
        let r = w.reached();
        r.len() == 1 && r.is_subset(&w.names(&ready))
    });
    patch(r#"{"spec": {"sessionAffinity": "None"}}"#);
    eventually("affinity off again", || w.reached() == w.names(&ready));

    // NodePort from the underlay (node 2's namespace → node 1's address), externalTrafficPolicy
    // Local: only node 1's endpoints answer (tc DNAT on node 1's uplink).
    w.o.apply(&json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "np", "namespace": "default"},
        "spec": {"type": "NodePort", "clusterIP": "10.96.7.8", "externalTrafficPolicy": "Local",
                 "selector": {"app": "web"},
                 "ports": [{"name": "http", "port": 80, "targetPort": "http", "nodePort": 30080}]}}));
    let n1_addr = SocketAddr::new(w.o.nodes[0].underlay_ip.into(), 30080);
    let from_n2 = || -> Option<String> {
        use std::io::{Read, Write};
        let mut s = w.o.lab.tcp_connect(&w.o.nodes[1].netns, n1_addr).ok()?;
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
        w.names(&w.on(0, &ready)),
        "externalTrafficPolicy Local: node 1's endpoints only"
    );

    // kill -9 under a constant connect loop: the pinned datapath keeps serving; the restarted
    // agent reads it back and converges without a flush.
    let n1 = w.o.nodes[0].clone();
    let mut looping =
        w.o.lab
            .command_in_node(
                &n1,
                &w.client_netns,
                "mwlab-client",
                &["tcp-loop", "10.96.7.7:80", "5000", "--progress"],
            )
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
    // The loop reports its first connect on a line of its own before it goes on.
    let mut progress = std::io::BufReader::new(looping.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut progress, &mut first).unwrap();
    assert!(first.starts_with("first ok"), "connect loop: {first}");
    let mut agent = agent;
    agent.kill(libc::SIGKILL);
    let restarted = w.o.start_agent(0);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut progress, &mut rest).unwrap();
    looping.wait().unwrap();
    assert!(
        rest.contains(" fail=0") && !rest.contains("ok=0 "),
        "connect loop across kill -9: {rest}"
    );
    eventually("restarted agent healthy", || w.healthz().contains("200 OK"));
    assert_eq!(w.reached(), w.names(&ready));

    // No ready endpoint: connects are refused at once, and the kernel's count of refusals
    // reaches the agent's metrics.
    ready.clear();
    w.set_ready(&ready);
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
    w.set_ready(&all);
    eventually("ready again", || w.reached() == w.names(&all));
    w.o.kubectl(&["delete", "service", "web"]);
    eventually("deleted service no longer load balanced", || {
        w.reached() == BTreeSet::from(["ERR".to_string()])
    });

    // A clean stop leaves the datapath; the explicit uninstall removes the pins.
    let mut restarted = restarted;
    let status = restarted.stop(libc::SIGTERM).unwrap();
    assert!(status.success(), "SIGTERM is a clean stop: {status}");
    let pins = w.o.lab.bpf_pin_dir(&n1);
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

/// One connection from namespace `from` to `to`: the client must only ever see `to` as its
/// peer, get the backend's identity line, then its 256 KiB payload echoed back intact (many
/// full-size segments through the translation, both ways).
fn exchange(lab: &Lab, from: &str, to: SocketAddr, seed: u64) -> Result<String, String> {
    use std::io::{BufRead, Read, Write};
    let s = lab
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
    let (w, _agent) = world("control_snat", "far", 1, Some("n2"));
    assert_eq!(w.backends[0].node, 1, "nodeSelector puts it on n2");
    w.o.apply(&json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "np", "namespace": "default"},
        "spec": {"type": "NodePort", "clusterIP": "10.96.7.9", "externalTrafficPolicy": "Cluster",
                 "selector": {"app": "far"},
                 "ports": [{"name": "http", "port": 80, "targetPort": "http", "nodePort": 30081}]}}));
    w.set_ready(&[0]);
    // A host on the underlay that is not a node: it reaches the Service range via node 1.
    let ext = w.o.lab.node("ext");
    let n1_ip = w.o.nodes[0].underlay_ip.to_string();
    w.o.lab.exec(
        &ext.netns,
        &["ip", "route", "add", "10.96.0.0/12", "via", &n1_ip],
    );
    let far = w.backends[0].pod.name.clone();
    for (what, to) in [
        (
            "NodePort",
            SocketAddr::new(w.o.nodes[0].underlay_ip.into(), 30081),
        ),
        ("ClusterIP", "10.96.7.9:80".parse().unwrap()),
    ] {
        eventually(&format!("{what} from outside answers"), || {
            exchange(&w.o.lab, &ext.netns, to, 1).is_ok()
        });
        for i in 0..8 {
            assert_eq!(
                exchange(&w.o.lab, &ext.netns, to, i + 2).as_deref(),
                Ok(far.as_str()),
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
    let api = LabApi::start(&c, 2).unwrap();
    let node_obj = |i: usize| -> NodeObj {
        let n = &c.nodes[i];
        serde_json::from_value(json!({
            "metadata": {"name": n.node.name},
            // podCIDR too: the node controller leaves a node that has one alone.
            "spec": {"podCIDR": n.pod_cidrs[0].to_string(),
                     "podCIDRs": n.pod_cidrs.iter().map(|c| c.to_string()).collect::<Vec<_>>()},
            "status": {"addresses": [{"type": "InternalIP", "address": n.node.underlay_ip.to_string()}]},
        }))
        .unwrap()
    };
    let create = |objs: Vec<NodeObj>| {
        api.kube(&c, move |k| {
            Box::pin(async move {
                for o in objs {
                    Api::<NodeObj>::all(k.clone())
                        .create(&PostParams::default(), &o)
                        .await
                        .unwrap();
                }
            })
        })
        .unwrap()
    };
    create(vec![node_obj(0), node_obj(1)]);
    let _agents = [0, 1].map(|i| start_agent_with(&c, i, &api.kubeconfig, true).unwrap());
    eventually("n1 ↔ n2 over the overlay the agents programmed", || {
        ping(&b)
    });
    assert!(!ping(&d), "n3 has no Node object yet");

    create(vec![node_obj(2)]);
    let _n3 = start_agent_with(&c, 2, &api.kubeconfig, true).unwrap();
    eventually("n3 joined: its pods are reachable", || ping(&d));

    api.kube(&c, |k| {
        Box::pin(async move {
            Api::<NodeObj>::all(k)
                .delete("n3", &DeleteParams::default())
                .await
                .unwrap();
        })
    })
    .unwrap();
    eventually("n3 left: its routes are gone from n1", || !ping(&d));
    assert!(ping(&b), "n1 ↔ n2 untouched");
}
