//! The lab harness of the orchestrator scenarios (test and benchmark): the API server with its
//! controllers on node 1, a node runtime per node, kubectl and kube-rs from inside the lab.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic with its location is the failure report; each user takes a part"
)]

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::{api::ListParams, Api};
use meshwork_lab::{cgroup::lab_binary, conflist, Lab, Node};
use serde_json::{json, Value};

pub use meshwork_lab::kubectl::KUBECTL;
pub const GRACE_SECS: u64 = 5;

pub use meshwork_lab::proc::Proc;

/// A pod as the API shows it.
#[derive(Clone, Debug)]
pub struct PodInfo {
    pub name: String,
    pub uid: String,
    pub node: String,
    pub ip: String,
    pub running: bool,
    pub ready: bool,
}

pub struct Orch {
    pub procs: Vec<Proc>,
    pub runtimes: Vec<Proc>,
    pub nodes: Vec<Node>,
    pub kubeconfig: PathBuf,
    pub data: PathBuf,
    /// The node runtimes' image catalog (None: their built-in one).
    pub image_catalog: Option<PathBuf>,
    /// The agents' discovery certificate, `(identity service, token file, anchors file)`
    /// (`support/mesh.rs` sets it); None: they serve no discovery.
    pub agent_identity: Option<(String, PathBuf, PathBuf)>,
    /// Dropped last: kills what is left in the pod cgroups and deletes the namespaces.
    pub lab: Lab,
}

impl Drop for Orch {
    fn drop(&mut self) {
        self.runtimes.clear();
        self.procs.clear();
    }
}

/// The lab's API server starter (`meshwork_lab::stack`), failing the test if it does not start.
pub fn start_apiserver(lab: &Lab, node: &Node, extra: &[&str]) -> (Proc, PathBuf) {
    meshwork_lab::stack::start_apiserver(lab, node, extra).unwrap()
}

/// `meshwork-control` for `node` with `kubeconfig` (meshwork_lab::components::Agent), admin on
/// the node's address:10256; with `overlay_pod_cidr`, it owns the node's overlay too; with
/// `discovery`, it serves the proxies' discovery.
pub fn start_agent(
    lab: &Lab,
    n: &Node,
    kubeconfig: &Path,
    overlay_pod_cidr: Option<String>,
    discovery: Option<meshwork_lab::components::Discovery>,
) -> Proc {
    let log = lab.dir().join(format!("{}-control.log", n.name));
    let args = meshwork_lab::components::Agent {
        node: n,
        kubeconfig,
        admin_listen: format!("{}:10256", n.underlay_ip),
        overlay_pod_cidr,
        discovery,
    }
    .args(lab);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let child = lab
        .command_in_node(n, &n.netns, "meshwork-control", &argv)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("meshwork-control (cargo build --bins)");
    Proc {
        child: Some(child),
        log,
    }
}

/// The lab's one polling helper, with the harness's state dump on timeout.
pub fn until<T>(
    what: &str,
    timeout: Duration,
    f: impl FnMut() -> Option<T>,
    dump: impl FnOnce() -> String,
) -> T {
    meshwork_lab::wait::eventually_or(what, timeout, f, dump)
}

impl Orch {
    pub fn start(name: &str) -> Orch {
        Self::start_opts(name, &[], true)
    }

    pub fn start_with(name: &str, routes: &[&str]) -> Orch {
        Self::start_opts(name, routes, true)
    }

    /// `routes`: extra pod routes in the CNI config (e.g. the cluster CIDR over an overlay).
    /// `record`: chain a plugin after ours that logs what the runtime passed (CNI_* and
    /// CNI_ARGS) to `cni-calls.log` in the lab dir (off for benchmarks: it costs a fork).
    pub fn start_opts(name: &str, routes: &[&str], record: bool) -> Orch {
        Self::start_full(name, routes, record, &[], |_| None)
    }

    /// `start_opts`, with more API server flags and an image catalog the node runtimes use
    /// (`catalog` gets the lab dir and may write one there).
    pub fn start_full(
        name: &str,
        routes: &[&str],
        record: bool,
        api_args: &[&str],
        catalog: impl FnOnce(&Path) -> Option<PathBuf>,
    ) -> Orch {
        let lab = Lab::new(name);
        let nodes = vec![lab.node("n1"), lab.node("n2")];
        let grace = GRACE_SECS.to_string();
        // A resync far past any test's patience: a watch event a controller fails to map to
        // its object shows up as a timeout here instead of hiding behind the safety net.
        let mut args = vec![
            "--node-monitor-grace-period",
            &grace,
            "--resync-period",
            "600",
            // A failed Job pod is replaced after 1 s, 2 s, ... instead of kube's 10 s, 20 s.
            "--job-backoff",
            "1s",
        ];
        args.extend_from_slice(api_args);
        let (api, data) = start_apiserver(&lab, &nodes[0], &args);
        let image_catalog = catalog(lab.dir());
        let mut o = Orch {
            procs: vec![api],
            runtimes: Vec::new(),
            nodes,
            kubeconfig: data.join("admin.kubeconfig"),
            data,
            image_catalog,
            agent_identity: None,
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
            let mut conf = conflist(&o.lab, &format!("mesh-{node}"), &cidr, routes);
            conf["plugins"][0]["dataDir"] = json!(o.lab.dir().join(format!("{node}-cni-state")));
            if record {
                o.install_recorder();
                conf["plugins"]
                    .as_array_mut()
                    .unwrap()
                    .push(json!({"type": "mwrecord"}));
            }
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

    /// `meshwork-control` for node `i` with node credentials, its own pin dir and cgroup (the
    /// pods' cgroups are below it), programming the VXLAN overlay from Node objects.
    pub fn start_agent(&self, i: usize) -> Proc {
        let n = &self.nodes[i];
        let kc = self.data.join(format!("{}.kubeconfig", n.name));
        let cidr = self.kubectl(&["get", "node", &n.name, "-o", "jsonpath={.spec.podCIDR}"]);
        let discovery = self.agent_identity.as_ref().map(|(addr, token, anchors)| {
            meshwork_lab::components::Discovery {
                identity_addr: addr,
                token,
                anchors,
            }
        });
        start_agent(&self.lab, n, &kc, Some(cidr), discovery)
    }

    /// The CNI calls the recorder saw: `COMMAND|CONTAINERID|IFNAME|NETNS|CNI_ARGS` per line.
    pub fn cni_calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.lab.dir().join("cni-calls.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn install_recorder(&self) {
        let path = self.lab.cni_bin_dir().join("mwrecord");
        if path.exists() {
            return;
        }
        let log = self.lab.dir().join("cni-calls.log");
        let script = format!(
            "#!/bin/sh\n\
             echo \"$CNI_COMMAND|$CNI_CONTAINERID|$CNI_IFNAME|$CNI_NETNS|$CNI_ARGS\" >> {}\n\
             case \"$CNI_COMMAND\" in\n\
             ADD) jq -c '.prevResult' ;;\n\
             VERSION) echo '{{\"cniVersion\":\"1.1.0\",\"supportedVersions\":[\"1.0.0\",\"1.1.0\"]}}' ;;\n\
             *) cat >/dev/null ;;\n\
             esac\n",
            log.display()
        );
        std::fs::write(&path, script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    pub fn cni_dir(&self, i: usize) -> PathBuf {
        self.lab.dir().join(format!("{}-cni", self.nodes[i].name))
    }

    /// The network namespace node `i`'s runtime made for the pod with `uid` (named after the
    /// uid's first 12 hex digits, under the runtime's `--netns-prefix`).
    pub fn pod_netns(&self, i: usize, uid: &str) -> String {
        let short: String = uid.chars().filter(|c| *c != '-').take(12).collect();
        format!("{}{}-p-{short}", self.lab.prefix(), self.nodes[i].name)
    }

    /// Pods matching `selector` in `ns`, not being deleted.
    pub fn pods(&self, ns: &str, selector: &str) -> Vec<PodInfo> {
        let v = self.json(&["get", "pods", "-n", ns, "-l", selector]);
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .map(|p| PodInfo {
                name: p["metadata"]["name"].as_str().unwrap_or("").to_string(),
                uid: p["metadata"]["uid"].as_str().unwrap_or("").to_string(),
                node: p["spec"]["nodeName"].as_str().unwrap_or("").to_string(),
                ip: p["status"]["podIP"].as_str().unwrap_or("").to_string(),
                running: p["status"]["phase"] == "Running",
                ready: p["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True"),
            })
            .collect()
    }

    pub fn root_dir(&self, i: usize) -> PathBuf {
        self.lab.dir().join(format!("{}-root", self.nodes[i].name))
    }

    pub fn start_runtime(&self, i: usize) -> Proc {
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
        let log = self.lab.dir().join(format!("{}-runtime.log", n.name));
        let args = meshwork_lab::components::NodeRuntime {
            node: n,
            kubeconfig: &kc,
            root_dir: &self.root_dir(i),
            cni_conf_dir: &self.cni_dir(i),
            heartbeat_seconds: 1,
            restart_backoff_seconds: 1,
            image_catalog: self.image_catalog.as_deref(),
        }
        .args(&self.lab);
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

    pub fn kubectl_out(&self, args: &[&str]) -> std::process::Output {
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

    pub fn kubectl(&self, args: &[&str]) -> String {
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
    pub fn apply(&self, manifest: &Value) {
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

    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.kubectl(&a)).unwrap()
    }

    /// Pods of the `web` app: (name, node, phase, ready, restarts, uid).
    pub fn web_pods(&self) -> Vec<(String, String, String, bool, i64, String)> {
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
    pub fn endpoints(&self) -> Vec<(String, bool, i32)> {
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

    pub fn dump(&self) -> String {
        let mut s = String::new();
        let out = self.kubectl_out(&[
            "get",
            "nodes,pods,rs,deploy,jobs,endpointslices",
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

    pub fn wait<T>(&self, what: &str, f: impl FnMut() -> Option<T>) -> T {
        until(what, Duration::from_secs(60), f, || self.dump())
    }

    pub fn wait_long<T>(&self, what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
        until(what, timeout, f, || self.dump())
    }

    /// `kubectl apply -f` of `manifest` (a Deployment), then waits until `replicas` of it are
    /// ready; returns how long that took.
    pub fn apply_ready(&self, manifest: &Value, replicas: usize, timeout: Duration) -> Duration {
        let name = manifest["metadata"]["name"].as_str().unwrap().to_string();
        let path = self.lab.dir().join(format!("{name}.json"));
        std::fs::write(&path, manifest.to_string()).unwrap();
        let t0 = Instant::now();
        self.kubectl(&["apply", "-f", path.to_str().unwrap()]);
        self.wait_long(&format!("{replicas} ready {name}"), timeout, || {
            let r = self.kubectl(&[
                "get",
                "deploy",
                &name,
                "-o",
                "jsonpath={.status.readyReplicas}",
            ]);
            (r == replicas.to_string()).then_some(())
        });
        t0.elapsed()
    }

    /// GET `path` on node `i`'s address:`port`, from inside its namespace: the whole response
    /// (status line, headers, body); empty when nothing answers.
    pub fn node_get(&self, i: usize, port: u16, path: &str) -> String {
        use std::io::{Read, Write};
        let addr = std::net::SocketAddr::new(self.nodes[i].underlay_ip.into(), port);
        let path = path.to_string();
        self.lab
            .open(&self.nodes[i].netns)
            .run(move || {
                let Ok(mut s) = std::net::TcpStream::connect(addr) else {
                    return String::new();
                };
                write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
                let mut out = String::new();
                let _ = s.read_to_string(&mut out);
                out
            })
            .unwrap()
    }

    /// Node `i`'s runtime's own timing of each pod start (`/debug/pod-starts`).
    pub fn pod_starts(&self, i: usize) -> Vec<Value> {
        let r = self.node_get(i, 10250, "/debug/pod-starts");
        let body = r.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
        serde_json::from_str(body).unwrap_or_else(|e| panic!("pod starts {e}: {r}"))
    }

    /// A pod's container root (the busybox root the runtime built for it).
    pub fn rootfs(&self, node_index: usize, uid: &str, container: &str) -> PathBuf {
        self.root_dir(node_index)
            .join("pods")
            .join(uid)
            .join("containers")
            .join(container)
            .join("rootfs")
    }

    pub fn node_index(&self, name: &str) -> usize {
        self.nodes.iter().position(|n| n.name == name).unwrap()
    }
}

/// pids in a cgroup (and below) whose command line contains `needle`.
pub fn pids_in(cgroup: &Path, needle: &str) -> Vec<i32> {
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

/// The pod start timings by field: (total, sandbox, CNI ADD, process) in ms, one entry per
/// start.
pub fn start_columns(timings: &[Value]) -> [Vec<f64>; 4] {
    ["total_ms", "sandbox_ms", "cni_ms", "process_ms"]
        .map(|key| timings.iter().filter_map(|t| t[key].as_f64()).collect())
}

pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(walk(&e.path()));
        }
    }
    out
}

/// Pods route to the cluster and to the nodes' underlay, where the API server listens (the
/// `kubernetes` Service's endpoint), as `mesh-ctl up` sets them up.
pub const IN_CLUSTER_ROUTES: [&str; 2] = ["10.244.0.0/16", meshwork_lab::UNDERLAY_SUBNET];

/// An image catalog in `dir` for the node runtimes: busybox, and each of `host` (name,
/// entrypoint) on the host's root (how `mesh-ctl up` runs this build's binaries as images).
pub fn host_catalog(dir: &Path, host: &[(&str, &[&str])]) -> PathBuf {
    let path_env = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    let mut images = json!({
        "busybox": {"root": {"busybox": {"binary": "/bin/busybox"}}, "cmd": ["sh"],
                    "env": {"PATH": path_env}},
    });
    for (name, entrypoint) in host {
        images[*name] =
            json!({"root": "host", "entrypoint": entrypoint, "env": {"PATH": path_env}});
    }
    let path = dir.join("catalog.json");
    std::fs::write(&path, json!({ "images": images }).to_string()).unwrap();
    path
}

pub fn web(replicas: i32, extra_env: &[(&str, &str)]) -> Value {
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
                            // Three misses, 2 s each: a probe slowed by a loaded 2-core machine must not flap
                            // readiness (the RS would then pick the flapping pod to scale down).
                            "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 1, "timeoutSeconds": 2, "failureThreshold": 3},
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
