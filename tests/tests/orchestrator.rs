//! The bundled orchestrator end to end in the lab: `meshwork-orchestrator apiserver` (with its
//! controllers and scheduler) on node 1's underlay address, and `meshwork-orchestrator node` —
//! the node runtime, with node credentials — on two lab nodes, wiring pods with the CNI plugin
//! from a config dir. Everything is driven through kubectl (and read back with kube-rs): a
//! Deployment of busybox httpd behind a Service spreads over both nodes, its EndpointSlice
//! follows readiness, scaling, rolling updates and deletes; a killed container restarts; a
//! restarted node runtime adopts its pods; a silent node turns NotReady and its endpoints not
//! ready; nginx from Debian runs offline; `kubectl logs` reaches the node.
#![cfg(target_os = "linux")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic with its location is the failure report"
)]

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::{api::ListParams, Api};
use meshwork_lab::{cgroup::lab_binary, conflist, Lab, Node};
use serde_json::{json, Value};

const KUBECTL: &str = "/usr/lib/google-cloud-sdk/bin/kubectl.1.33";
const GRACE_SECS: u64 = 5;

struct Proc {
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    fn kill(&mut self, sig: i32) {
        if let Some(c) = self.child.as_mut() {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, sig) };
            let _ = c.wait();
        }
        self.child = None;
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill(libc::SIGKILL);
    }
}

struct Orch {
    procs: Vec<Proc>,
    runtimes: Vec<Proc>,
    nodes: Vec<Node>,
    kubeconfig: PathBuf,
    data: PathBuf,
    /// Dropped last: kills what is left in the pod cgroups and deletes the namespaces.
    lab: Lab,
}

impl Drop for Orch {
    fn drop(&mut self) {
        self.runtimes.clear();
        self.procs.clear();
    }
}

fn until<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
    dump: impl Fn() -> String,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}\n{}", dump());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

impl Orch {
    fn start(name: &str) -> Orch {
        let lab = Lab::new(name);
        let nodes = vec![lab.node("n1"), lab.node("n2")];
        let data = lab.dir().join("apiserver");
        let api_ip = nodes[0].underlay_ip.to_string();
        let listen = format!("{api_ip}:6443");
        let grace = GRACE_SECS.to_string();
        let log = lab.dir().join("apiserver.log");
        let child = lab
            .command_in_node(
                &nodes[0],
                &nodes[0].netns,
                "meshwork-orchestrator",
                &[
                    "apiserver",
                    "--data-dir",
                    data.to_str().unwrap(),
                    "--listen",
                    &listen,
                    "--advertise-address",
                    &api_ip,
                    "--sqlite-sync",
                    "normal",
                    "--node-monitor-grace-period",
                    &grace,
                ],
            )
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("meshwork-orchestrator (cargo build --bins)");
        let mut o = Orch {
            procs: vec![Proc {
                child: Some(child),
                log,
            }],
            runtimes: Vec::new(),
            nodes,
            kubeconfig: data.join("admin.kubeconfig"),
            data,
            lab,
        };
        until(
            "the API server",
            Duration::from_secs(30),
            || {
                (o.kubeconfig.exists()
                    && o.kubectl_out(&["get", "--raw", "/readyz"]).status.success())
                .then_some(())
            },
            || o.dump(),
        );
        for i in 0..o.nodes.len() {
            let rt = o.start_runtime(i);
            o.runtimes.push(rt);
        }
        // The CNI daemon's part: once the controllers gave the node a pod CIDR, the node's CNI
        // config appears and the node turns Ready.
        for i in 0..o.nodes.len() {
            let node = o.nodes[i].name.clone();
            let cidr = until(
                "a pod CIDR",
                Duration::from_secs(30),
                || {
                    let c = o.kubectl(&["get", "node", &node, "-o", "jsonpath={.spec.podCIDR}"]);
                    (!c.is_empty()).then_some(c)
                },
                || o.dump(),
            );
            let mut conf = conflist(&o.lab, &format!("mesh-{node}"), &cidr, &[] as &[&str]);
            conf["plugins"][0]["dataDir"] = json!(o.lab.dir().join(format!("{node}-cni-state")));
            let dir = o.cni_dir(i);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("10-meshwork.conflist"), conf.to_string()).unwrap();
        }
        for n in o.nodes.iter().map(|n| n.name.clone()).collect::<Vec<_>>() {
            o.kubectl(&[
                "wait",
                "--for=condition=Ready",
                &format!("node/{n}"),
                "--timeout=30s",
            ]);
        }
        o
    }

    fn cni_dir(&self, i: usize) -> PathBuf {
        self.lab.dir().join(format!("{}-cni", self.nodes[i].name))
    }

    fn root_dir(&self, i: usize) -> PathBuf {
        self.lab.dir().join(format!("{}-root", self.nodes[i].name))
    }

    fn start_runtime(&self, i: usize) -> Proc {
        let n = &self.nodes[i];
        let kc = self.data.join(format!("{}.kubeconfig", n.name));
        if !kc.exists() {
            let out = Command::new(lab_binary("meshwork-orchestrator"))
                .args(["kubeconfig", "--data-dir"])
                .arg(&self.data)
                .args([
                    "--user",
                    &format!("system:node:{}", n.name),
                    "--group",
                    "system:nodes",
                ])
                .args([
                    "--server",
                    &format!("https://{}:6443", self.nodes[0].underlay_ip),
                ])
                .arg("--out")
                .arg(&kc)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let cgroup = self.lab.cgroup(n).join("pods");
        let ip = n.underlay_ip.to_string();
        let log = self.lab.dir().join(format!("{}-runtime.log", n.name));
        let prefix = format!("{}{}-p-", self.lab.prefix(), n.name);
        let args: Vec<String> = vec![
            "node".into(),
            "--kubeconfig".into(),
            kc.display().to_string(),
            "--node-name".into(),
            n.name.clone(),
            "--node-ip".into(),
            ip,
            "--root-dir".into(),
            self.root_dir(i).display().to_string(),
            "--cni-conf-dir".into(),
            self.cni_dir(i).display().to_string(),
            "--cni-bin-dir".into(),
            self.lab.cni_bin_dir().display().to_string(),
            "--cgroup-root".into(),
            cgroup.display().to_string(),
            "--netns-prefix".into(),
            prefix,
            "--heartbeat-seconds".into(),
            "1".into(),
            "--restart-backoff-seconds".into(),
            "1".into(),
        ];
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let child = self
            .lab
            .command_in_node(n, &n.netns, "meshwork-orchestrator", &argv)
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log)
                    .unwrap(),
            )
            .spawn()
            .unwrap();
        Proc {
            child: Some(child),
            log,
        }
    }

    fn kubectl_out(&self, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.nodes[0].netns,
                KUBECTL,
                "--kubeconfig",
            ])
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .unwrap()
    }

    fn kubectl(&self, args: &[&str]) -> String {
        let out = self.kubectl_out(args);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.dump()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// `kubectl apply` of an object or of each item of a List.
    fn apply(&self, manifest: &Value) {
        let items = match manifest["items"].as_array() {
            Some(items) => items.clone(),
            None => vec![manifest.clone()],
        };
        for (i, item) in items.iter().enumerate() {
            let path = self.lab.dir().join(format!("manifest-{i}.json"));
            std::fs::write(&path, item.to_string()).unwrap();
            self.kubectl(&["apply", "-f", path.to_str().unwrap()]);
        }
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.kubectl(&a)).unwrap()
    }

    /// Pods of the `web` app: (name, node, phase, ready, restarts, uid).
    fn web_pods(&self) -> Vec<(String, String, String, bool, i64, String)> {
        let v = self.json(&["get", "pods", "-l", "app=web"]);
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .map(|p| {
                let ready = p["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True");
                (
                    p["metadata"]["name"].as_str().unwrap_or("").to_string(),
                    p["spec"]["nodeName"].as_str().unwrap_or("").to_string(),
                    p["status"]["phase"].as_str().unwrap_or("").to_string(),
                    ready,
                    p["status"]["containerStatuses"][0]["restartCount"]
                        .as_i64()
                        .unwrap_or(0),
                    p["metadata"]["uid"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    /// The `web` Service's endpoints through kube-rs: (address, ready, port).
    fn endpoints(&self) -> Vec<(String, bool, i32)> {
        let kc = self.kubeconfig.clone();
        self.lab
            .open(&self.nodes[0].netns)
            .run(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let client = meshwork_kube_watch::client(Some(&kc)).await.unwrap();
                    let slices: Api<EndpointSlice> = Api::namespaced(client, "default");
                    let list = slices
                        .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
                        .await
                        .unwrap();
                    let mut out = Vec::new();
                    for s in list.items {
                        let port = s
                            .ports
                            .as_ref()
                            .and_then(|p| p.first())
                            .and_then(|p| p.port)
                            .unwrap_or(0);
                        for e in s.endpoints {
                            let ready = e.conditions.and_then(|c| c.ready).unwrap_or(false);
                            out.push((e.addresses[0].clone(), ready, port));
                        }
                    }
                    out.sort();
                    out
                })
            })
            .unwrap()
    }

    fn dump(&self) -> String {
        let mut s = String::new();
        let out = self.kubectl_out(&[
            "get",
            "nodes,pods,rs,deploy,endpointslices",
            "-A",
            "-o",
            "wide",
        ]);
        s.push_str(&String::from_utf8_lossy(&out.stdout));
        s.push_str(&String::from_utf8_lossy(&out.stderr));
        for p in self.procs.iter().chain(self.runtimes.iter()) {
            let text = std::fs::read_to_string(&p.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(25).collect();
            s.push_str(&format!("\n--- {} (tail)\n", p.log.display()));
            for l in tail.into_iter().rev() {
                s.push_str(l);
                s.push('\n');
            }
        }
        s
    }

    fn wait<T>(&self, what: &str, f: impl FnMut() -> Option<T>) -> T {
        until(what, Duration::from_secs(60), f, || self.dump())
    }

    /// A pod's container root (the busybox root the runtime built for it).
    fn rootfs(&self, node_index: usize, uid: &str, container: &str) -> PathBuf {
        self.root_dir(node_index)
            .join("pods")
            .join(uid)
            .join("containers")
            .join(container)
            .join("rootfs")
    }

    fn node_index(&self, name: &str) -> usize {
        self.nodes.iter().position(|n| n.name == name).unwrap()
    }
}

/// pids in a cgroup (and below) whose command line contains `needle`.
fn pids_in(cgroup: &Path, needle: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in walk(cgroup) {
        let procs = std::fs::read_to_string(e.join("cgroup.procs")).unwrap_or_default();
        for pid in procs
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) && !cmd.contains(" shim ") {
                out.push(pid);
            }
        }
    }
    out
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(walk(&e.path()));
        }
    }
    out
}

fn web(replicas: i32, extra_env: &[(&str, &str)]) -> Value {
    let env: Vec<Value> =
        [json!({"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})]
            .into_iter()
            .chain(
                extra_env
                    .iter()
                    .map(|(k, v)| json!({"name": k, "value": v})),
            )
            .collect();
    json!({
        "apiVersion": "v1", "kind": "List", "items": [
        {
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {
                        "terminationGracePeriodSeconds": 2,
                        "containers": [{
                            "name": "web", "image": "busybox:1.36",
                            "command": ["sh", "-c", "mkdir -p /www && echo ok > /www/healthz && cat /etc/resolv.conf && echo serving $(POD_NAME) && exec httpd -f -p 8080 -h /www"],
                            "env": env,
                            "ports": [{"name": "http", "containerPort": 8080}],
                            "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 1, "failureThreshold": 1},
                        }]
                    }
                }
            }
        },
        {
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}
        }]
    })
}

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
    assert!(
        cip.starts_with("10.9") || cip.starts_with("10.10"),
        "clusterIP {cip}"
    );

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
    std::thread::sleep(Duration::from_secs(3));
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
