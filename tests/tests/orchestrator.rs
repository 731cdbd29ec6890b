//! The bundled orchestrator end to end in the lab: `meshwork-orchestrator apiserver` (with its
//! controllers and scheduler) on node 1's underlay address, and `meshwork-orchestrator node` —
//! the node runtime, with node credentials — on two lab nodes, wiring pods with the CNI plugin
//! from a config dir. Everything is driven through kubectl (and read back with kube-rs): a
//! Deployment of busybox httpd behind a Service spreads over both nodes, its EndpointSlice
//! follows readiness, scaling, rolling updates and deletes; a killed container restarts; a
//! restarted node runtime adopts its pods; a silent node turns NotReady and its endpoints not
//! ready; nginx from Debian runs offline; `kubectl logs` reaches the node. With a control agent
//! per node, a client pod reaches the Deployment's pods on both nodes through the ClusterIP.
#![cfg(target_os = "linux")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic with its location is the failure report"
)]

#[path = "support/orch.rs"]
mod orch;

use std::{collections::BTreeSet, time::Duration};

use orch::{pids_in, web, Orch};
use serde_json::{json, Value};

#[test]
fn deployment_service_and_endpoints_through_kubectl() {
    let o = Orch::start("orch_deploy");
    o.apply(&web(3, &[]));

    // 3 Running, Ready pods over both nodes; the slice lists 3 ready endpoints on 8080.
    let pods = o.wait("3 ready web pods", || {
        let p = o.web_pods();
        (p.len() == 3 && p.iter().all(|p| p.2 == "Running" && p.3)).then_some(p)
    });
    let nodes: BTreeSet<&str> = pods.iter().map(|p| p.1.as_str()).collect();
    assert_eq!(
        nodes.len(),
        2,
        "replicas should spread over both nodes: {pods:?}"
    );
    let eps = o.wait("3 ready endpoints", || {
        let e = o.endpoints();
        (e.len() == 3 && e.iter().all(|e| e.1 && e.2 == 8080)).then_some(e)
    });
    let ips = o.json(&["get", "pods", "-l", "app=web"]);
    let pod_ips: BTreeSet<String> = ips["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["status"]["podIP"].as_str().unwrap().to_string())
        .collect();
    let ep_ips: BTreeSet<String> = eps.iter().map(|e| e.0.clone()).collect();
    assert_eq!(pod_ips, ep_ips);
    // The Service got a ClusterIP from the service CIDR.
    let cip = o.kubectl(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    let ip: std::net::Ipv4Addr = cip.parse().unwrap();
    assert!(
        (u32::from(ip) >> 20) == (u32::from(std::net::Ipv4Addr::new(10, 96, 0, 0)) >> 20),
        "clusterIP {cip} outside 10.96.0.0/12"
    );

    // The node runtime called the CNI plugin as containerd's CRI plugin does.
    let first_pods = pods.clone();
    let calls = o.cni_calls();
    for (name, _, _, _, _, uid) in &first_pods {
        let want = format!("ADD|meshwork-{uid}|eth0|/run/netns/{}", o.lab.prefix());
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={name};K8S_POD_INFRA_CONTAINER_ID=meshwork-{uid};K8S_POD_UID={uid}"
        );
        assert!(
            calls
                .iter()
                .any(|c| c.starts_with(&want) && c.ends_with(&args)),
            "no ADD with containerd's CNI_ARGS for {name}: {calls:#?}"
        );
    }

    // kubectl logs reaches the node: the pod saw its own name and the cluster DNS resolv.conf.
    let first = &pods[0].0;
    let logs = o.kubectl(&["logs", first]);
    assert!(logs.contains(&format!("serving {first}")), "{logs}");
    assert!(logs.contains("nameserver 10.96.0.10"), "{logs}");
    assert!(
        logs.contains("search default.svc.cluster.local svc.cluster.local cluster.local"),
        "{logs}"
    );

    // A pod failing its readiness probe drops out of the ready endpoints, and comes back.
    let (victim, vnode, _, _, _, vuid) = pods[1].clone();
    let health = o
        .rootfs(o.node_index(&vnode), &vuid, "web")
        .join("www/healthz");
    std::fs::remove_file(&health).unwrap();
    let vip = ips["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["metadata"]["name"] == victim.as_str())
        .unwrap()["status"]["podIP"]
        .as_str()
        .unwrap()
        .to_string();
    o.wait("the unready pod's endpoint to turn not ready", || {
        let e = o.endpoints();
        (e.iter().filter(|e| e.1).count() == 2 && e.iter().any(|e| e.0 == vip && !e.1))
            .then_some(())
    });
    std::fs::write(&health, "ok").unwrap();
    o.wait("it to be ready again", || {
        (o.endpoints().iter().filter(|e| e.1).count() == 3).then_some(())
    });

    // Killing the container's process restarts it (restartPolicy Always).
    let kill_node = o.node_index(&pods[0].1);
    let cg = o
        .lab
        .cgroup(&o.nodes[kill_node])
        .join("pods")
        .join(format!("pod{}", pods[0].5));
    let pids = pids_in(&cg, "httpd");
    assert_eq!(pids.len(), 1, "httpd in {}: {pids:?}", cg.display());
    // SAFETY: a pid read from the pod's own cgroup.
    unsafe { libc::kill(pids[0], libc::SIGKILL) };
    o.wait("the killed container to restart", || {
        o.web_pods()
            .iter()
            .find(|p| p.0 == pods[0].0)
            .filter(|p| p.4 >= 1 && p.3)
            .map(|_| ())
    });
    let prev = o.kubectl(&["logs", &pods[0].0, "--previous"]);
    assert!(prev.contains("serving"), "{prev}");

    // Scale 3 -> 1.
    o.kubectl(&["scale", "deployment/web", "--replicas=1"]);
    o.wait("one pod and one endpoint", || {
        (o.web_pods().len() == 1 && o.endpoints().len() == 1).then_some(())
    });

    // Rolling update (env change) converges: rollout status, new pods carry the env.
    o.kubectl(&["scale", "deployment/web", "--replicas=2"]);
    o.kubectl(&["set", "env", "deployment/web", "COLOUR=blue"]);
    o.kubectl(&["rollout", "status", "deployment/web", "--timeout=90s"]);
    let d = o.json(&["get", "deployment", "web"]);
    assert_eq!(d["status"]["updatedReplicas"], 2, "{d}");
    assert_eq!(d["status"]["availableReplicas"], 2, "{d}");
    let rs = o.json(&["get", "rs", "-l", "app=web"]);
    let sizes: Vec<i64> = rs["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["spec"]["replicas"].as_i64().unwrap())
        .collect();
    assert_eq!(
        sizes.iter().sum::<i64>(),
        2,
        "old ReplicaSets scaled to 0: {sizes:?}"
    );
    assert_eq!(rs["items"].as_array().unwrap().len(), 2);
    let pods = o.json(&["get", "pods", "-l", "app=web"]);
    for p in pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
    {
        let env = &p["spec"]["containers"][0]["env"];
        assert!(env.to_string().contains("COLOUR"), "{p}");
    }
    o.wait("two ready endpoints after the rollout", || {
        let e = o.endpoints();
        (e.len() == 2 && e.iter().all(|e| e.1)).then_some(())
    });

    // nginx from Debian runs offline with a private writable /var/log/nginx.
    o.apply(&json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "nginx", "namespace": "default"},
        "spec": {"containers": [{
            "name": "nginx", "image": "nginx:1.25",
            "readinessProbe": {"httpGet": {"path": "/", "port": 80}, "periodSeconds": 1},
        }]}
    }));
    o.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "pod/nginx",
        "--timeout=60s",
    ]);
    o.kubectl(&["delete", "pod", "nginx", "--wait=true", "--timeout=60s"]);

    // Orphan delete of the ReplicaSet: its pods live on; the Deployment's new ReplicaSet (same
    // template, same name) adopts them instead of starting new ones.
    let before: BTreeSet<String> = o.web_pods().into_iter().map(|p| p.0).collect();
    let rs_name = o.kubectl(&[
        "get",
        "rs",
        "-l",
        "app=web",
        "-o",
        "jsonpath={.items[?(@.spec.replicas==2)].metadata.name}",
    ]);
    let old_uid = o.kubectl(&["get", "rs", &rs_name, "-o", "jsonpath={.metadata.uid}"]);
    o.kubectl(&["delete", "rs", &rs_name, "--cascade=orphan"]);
    o.wait("the pods to be adopted by the recreated ReplicaSet", || {
        let new_uid = o.kubectl_out(&["get", "rs", &rs_name, "-o", "jsonpath={.metadata.uid}"]);
        let new_uid = String::from_utf8_lossy(&new_uid.stdout).trim().to_string();
        if new_uid.is_empty() || new_uid == old_uid {
            return None;
        }
        let owners = o.kubectl(&[
            "get",
            "pods",
            "-l",
            "app=web",
            "-o",
            "jsonpath={.items[*].metadata.ownerReferences[0].uid}",
        ]);
        (owners.split_whitespace().count() == 2 && owners.split_whitespace().all(|u| u == new_uid))
            .then_some(())
    });
    let after: BTreeSet<String> = o.web_pods().into_iter().map(|p| p.0).collect();
    assert_eq!(
        before,
        after,
        "orphaned pods were replaced instead of adopted\n{}",
        o.dump()
    );

    // Namespace deletion stops the pods in it and the namespace goes when they are gone.
    o.apply(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "tmp"}}));
    o.apply(&json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "sleeper", "namespace": "tmp"},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [{"name": "c", "image": "busybox", "command": ["sleep", "3600"]}]}
    }));
    o.kubectl(&[
        "wait",
        "-n",
        "tmp",
        "--for=condition=Ready",
        "pod/sleeper",
        "--timeout=60s",
    ]);
    o.kubectl(&["delete", "namespace", "tmp", "--wait=true", "--timeout=60s"]);
    assert!(!o.kubectl_out(&["get", "namespace", "tmp"]).status.success());

    // Delete cascades: ReplicaSets, pods and slices go; the pods' namespaces and cgroups too.
    o.kubectl(&["delete", "deployment", "web", "--wait=true"]);
    o.wait("the ReplicaSets and pods to go", || {
        let rs = o.kubectl(&["get", "rs", "-o", "name"]);
        let pods = o.kubectl(&["get", "pods", "-o", "name"]);
        (rs.is_empty() && pods.is_empty()).then_some(())
    });
    o.kubectl(&["delete", "service", "web"]);
    o.wait("the slices to go", || {
        o.endpoints().is_empty().then_some(())
    });
    // Every sandbox torn down went through CNI DEL with the same identity.
    let calls = o.cni_calls();
    for (name, _, _, _, _, uid) in &first_pods {
        assert!(
            calls
                .iter()
                .any(|c| c.starts_with(&format!("DEL|meshwork-{uid}|eth0|"))
                    && c.contains(&format!("K8S_POD_NAME={name};"))),
            "no DEL for {name}: {calls:#?}"
        );
    }
    let netns = std::fs::read_dir("/run/netns")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name().to_string_lossy().contains("-p-")
                && e.file_name().to_string_lossy().starts_with(o.lab.prefix())
        })
        .count();
    assert_eq!(netns, 0, "pod network namespaces left behind");
}

#[test]
fn node_runtime_restart_adopts_and_silence_turns_not_ready() {
    let mut o = Orch::start("orch_node");
    o.apply(&web(2, &[]));
    let pods = o.wait("2 ready pods", || {
        let p = o.web_pods();
        (p.len() == 2 && p.iter().all(|p| p.3)).then_some(p)
    });
    let before = o.json(&["get", "pods", "-l", "app=web"]);
    let ids = |v: &Value| -> BTreeSet<String> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                p["status"]["containerStatuses"][0]["containerID"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            })
            .collect()
    };

    // kill -9 of every node runtime, then a restart: the same containers run on, adopted.
    for i in 0..o.runtimes.len() {
        o.runtimes[i].kill(libc::SIGKILL);
    }
    for p in &pods {
        let i = o.node_index(&p.1);
        let cg = o
            .lab
            .cgroup(&o.nodes[i])
            .join("pods")
            .join(format!("pod{}", p.5));
        assert_eq!(
            pids_in(&cg, "httpd").len(),
            1,
            "pod {} died with its runtime",
            p.0
        );
    }
    for i in 0..o.nodes.len() {
        let rt = o.start_runtime(i);
        o.runtimes[i] = rt;
    }
    // The new runtimes say when they have taken over their containers and made a pass over
    // their pods (statuses reported).
    for i in 0..o.nodes.len() {
        let want = pods.iter().filter(|p| o.node_index(&p.1) == i).count() as f64;
        o.wait("the restarted runtime to adopt and sync", || {
            (node_metric(&o, i, "meshwork_node_containers_adopted_total") >= want
                && node_metric(&o, i, "meshwork_node_pod_syncs_total") >= 1.0)
                .then_some(())
        });
    }
    let after = o.json(&["get", "pods", "-l", "app=web"]);
    assert_eq!(
        ids(&before),
        ids(&after),
        "containers were restarted, not adopted"
    );
    for p in o.web_pods() {
        assert!(
            p.3 && p.4 == 0,
            "adopted pod {p:?} should be ready with no restarts"
        );
    }
    // The adopted pods are still managed: a scale-down stops one.
    o.kubectl(&["scale", "deployment/web", "--replicas=1"]);
    o.wait("scale-down by the adopting runtime", || {
        (o.web_pods().len() == 1).then_some(())
    });
    o.kubectl(&["scale", "deployment/web", "--replicas=2"]);
    let pods = o.wait("2 ready pods again", || {
        let p = o.web_pods();
        (p.len() == 2 && p.iter().all(|p| p.3)).then_some(p)
    });

    // exec readiness and tcpSocket liveness probes: not ready until the file exists.
    o.apply(&json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probed", "namespace": "default"},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
            "name": "c", "image": "busybox",
            "command": ["sh", "-c", "sleep 4; touch /tmp/ready; exec httpd -f -p 9090 -h /tmp"],
            "ports": [{"name": "p", "containerPort": 9090}],
            "readinessProbe": {"exec": {"command": ["test", "-f", "/tmp/ready"]}, "periodSeconds": 1},
            "livenessProbe": {"tcpSocket": {"port": "p"}, "initialDelaySeconds": 6, "periodSeconds": 1, "failureThreshold": 2},
        }]}
    }));
    o.wait("the probed pod to run", || {
        let phase = o.kubectl(&["get", "pod", "probed", "-o", "jsonpath={.status.phase}"]);
        (phase == "Running").then_some(())
    });
    let ready = o.kubectl(&[
        "get",
        "pod",
        "probed",
        "-o",
        "jsonpath={.status.containerStatuses[0].ready}",
    ]);
    assert_eq!(ready, "false", "ready before its exec probe could pass");
    o.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "pod/probed",
        "--timeout=30s",
    ]);
    // Three passing liveness runs (the only liveness probe on its node), then no restart.
    let probed_node =
        o.node_index(&o.kubectl(&["get", "pod", "probed", "-o", "jsonpath={.spec.nodeName}"]));
    let live_ok = "meshwork_node_probes_total{probe=\"liveness\",result=\"success\"}";
    let base = node_metric(&o, probed_node, live_ok);
    o.wait_long(
        "three passing liveness probes",
        Duration::from_secs(30),
        || (node_metric(&o, probed_node, live_ok) >= base + 3.0).then_some(()),
    );
    let restarts = o.kubectl(&[
        "get",
        "pod",
        "probed",
        "-o",
        "jsonpath={.status.containerStatuses[0].restartCount}",
    ]);
    assert_eq!(
        restarts, "0",
        "the tcp liveness probe failed a listening container"
    );
    o.kubectl(&["delete", "pod", "probed", "--wait=true"]);

    // A failing liveness probe restarts the container (the file it checks goes away after 2 s).
    o.apply(&json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "dying", "namespace": "default"},
        "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
            "name": "c", "image": "busybox",
            "command": ["sh", "-c", "touch /tmp/alive; sleep 2; rm /tmp/alive; exec sleep 600"],
            "livenessProbe": {"exec": {"command": ["test", "-f", "/tmp/alive"]}, "periodSeconds": 1, "failureThreshold": 2},
        }]}
    }));
    o.wait_long(
        "the liveness failure to restart the container",
        Duration::from_secs(60),
        || {
            let n = o.kubectl(&[
                "get",
                "pod",
                "dying",
                "-o",
                "jsonpath={.status.containerStatuses[0].restartCount}",
            ]);
            (n.parse::<u32>().unwrap_or(0) >= 1).then_some(())
        },
    );
    let last = o.kubectl(&[
        "get",
        "pod",
        "dying",
        "-o",
        "jsonpath={.status.containerStatuses[0].lastState.terminated.reason}",
    ]);
    assert!(
        !last.is_empty(),
        "the restarted container's last state is its termination"
    );
    o.kubectl(&["delete", "pod", "dying", "--wait=true"]);

    // Heartbeats are Lease renewals: the lease moves, the Node object does not (it is written
    // only when its status changes).
    let node0 = o.nodes[0].name.clone();
    let renew = |o: &Orch| {
        o.kubectl(&[
            "get",
            "lease",
            "-n",
            "kube-node-lease",
            &node0,
            "-o",
            "jsonpath={.spec.renewTime}",
        ])
    };
    let node_rv = |o: &Orch| {
        o.kubectl(&[
            "get",
            "node",
            &node0,
            "-o",
            "jsonpath={.metadata.resourceVersion}",
        ])
    };
    let rv0 = node_rv(&o);
    let mut seen = BTreeSet::from([renew(&o)]);
    o.wait("three lease renewals", || {
        seen.insert(renew(&o));
        (seen.len() >= 4).then_some(())
    });
    assert_eq!(
        node_rv(&o),
        rv0,
        "the Node object was rewritten by heartbeats"
    );

    // A node whose runtime goes silent turns NotReady (Unknown) and its endpoints not ready.
    let silent = pods[0].1.clone();
    let i = o.node_index(&silent);
    o.runtimes[i].kill(libc::SIGKILL);
    o.wait("the silent node to turn Unknown", || {
        let s = o.kubectl(&[
            "get",
            "node",
            &silent,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ]);
        (s == "Unknown").then_some(())
    });
    let silent_ips: BTreeSet<String> = o.json(&["get", "pods", "-l", "app=web"])["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["spec"]["nodeName"] == silent.as_str())
        .map(|p| p["status"]["podIP"].as_str().unwrap().to_string())
        .collect();
    assert!(!silent_ips.is_empty());
    o.wait("the silent node's endpoints to turn not ready", || {
        let e = o.endpoints();
        e.iter()
            .filter(|e| silent_ips.contains(&e.0))
            .all(|e| !e.1)
            .then_some(())
    });
}

/// A sample of node `i`'s runtime metrics (`name` with its labels as printed), 0 if absent.
fn node_metric(o: &Orch, i: usize, name: &str) -> f64 {
    let m = o.node_get(i, 10250, "/metrics");
    m.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Runs a client pod on node 1 that fetches `http://<vip>/id` `n` times; its log.
fn client(o: &Orch, vip: &str, n: u32) -> String {
    o.apply(&json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "client", "namespace": "default"},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": "n1"},
            "restartPolicy": "Never",
            "containers": [{"name": "c", "image": "busybox", "command": ["sh", "-c",
                &format!("sleep 1; for i in $(seq {n}); do timeout 3 wget -q -O - http://{vip}/id || echo FAIL; done")]}]
        }
    }));
    o.wait("the client to finish", || {
        let phase = o.kubectl(&["get", "pod", "client", "-o", "jsonpath={.status.phase}"]);
        (phase == "Succeeded" || phase == "Failed").then_some(())
    });
    o.kubectl(&["logs", "client"])
}

#[test]
fn control_agents_serve_a_kubectl_deployment_through_its_cluster_ip() {
    let mut o = Orch::start_with("orch_svc", &["10.244.0.0/16"]);
    for i in 0..o.nodes.len() {
        let a = o.start_agent(i);
        o.procs.push(a);
    }
    let mut m = web(4, &[]);
    // Each backend answers with its pod name.
    m["items"][0]["spec"]["template"]["spec"]["containers"][0]["command"] = json!(
        ["sh", "-c", "mkdir -p /www && echo ok > /www/healthz && echo $(POD_NAME) > /www/id && exec httpd -f -p 8080 -h /www"]
    );
    o.apply(&m);
    let pods = o.wait("4 ready pods", || {
        let p = o.web_pods();
        (p.len() == 4 && p.iter().all(|p| p.3)).then_some(p)
    });
    let on: BTreeSet<&str> = pods.iter().map(|p| p.1.as_str()).collect();
    assert_eq!(on.len(), 2, "{pods:?}");
    let vip = o.kubectl(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    // A client pod on node 1 fetches through the ClusterIP (port 80 → targetPort http/8080).
    let out = client(&o, &vip, 40);
    let names: BTreeSet<&str> = pods.iter().map(|p| p.0.as_str()).collect();
    let answered: BTreeSet<&str> = out.lines().filter(|l| names.contains(l.trim())).collect();
    assert!(
        !out.contains("FAIL"),
        "connections through {vip} failed:\n{out}\n{}",
        o.dump()
    );
    assert_eq!(
        answered, names,
        "every backend answers through {vip}:\n{out}"
    );
    let remote: Vec<&&str> = answered
        .iter()
        .filter(|n| pods.iter().any(|p| p.0 == **n && p.1 == "n2"))
        .collect();
    assert!(
        !remote.is_empty(),
        "no answer from node 2's pods over the overlay: {answered:?}"
    );

    // Scaling to 2 is reflected: only the remaining pods answer.
    o.kubectl(&["scale", "deployment/web", "--replicas=2"]);
    let left = o.wait("2 pods and 2 endpoints", || {
        let p = o.web_pods();
        (p.len() == 2 && o.endpoints().len() == 2).then_some(p)
    });
    o.kubectl(&["delete", "pod", "client", "--wait=true"]);
    let out = client(&o, &vip, 30);
    let names: BTreeSet<&str> = left.iter().map(|p| p.0.as_str()).collect();
    let answered: BTreeSet<&str> = out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(
        answered, names,
        "after scaling to 2, only they answer:\n{out}"
    );
}
