//! `mesh-ctl up` and `down` driven as a user drives them: the binary, kubectl with the merged
//! kubeconfig context, curl from the host through the host link. Its own lab name, host link,
//! state dir and kubeconfig, so it never touches a user's `mesh-ctl up` cluster (if one is up,
//! the pre-flight fails on the shared host routes and says so).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic with its location is the failure report"
)]

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use meshwork_lab::{cgroup::lab_binary, kubectl::KUBECTL, require_root};
use serde_json::Value;

const LAB: &str = "mesh_ctl_e2e";
const PREFIX: &str = "mwl-mesh_ctl_e2e-";
const LINK: &str = "mwl-e2e-host";

struct Cluster {
    state: PathBuf,
    kubeconfig: PathBuf,
}

impl Cluster {
    fn mesh_ctl(&self, args: &[&str]) -> Output {
        let mut c = Command::new(lab_binary("mesh-ctl"));
        c.args(args);
        if matches!(args[0], "up" | "down" | "check") {
            c.args(["--lab-name", LAB, "--host-link", LINK, "--kubeconfig"])
                .arg(&self.kubeconfig);
        }
        if args[0] == "up" {
            c.arg("--cni-plugin").arg(meshwork_lab::cni_plugin_binary());
        }
        c.arg("--state-dir").arg(&self.state);
        c.output().unwrap()
    }

    fn kubectl_out(&self, args: &[&str]) -> Output {
        // The context `up` merged: what a user's plain `kubectl` would use.
        Command::new(KUBECTL)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .unwrap()
    }

    fn kubectl(&self, args: &[&str]) -> String {
        let out = self.kubectl_out(args);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stderr),
            self.dump()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.kubectl(&a)).unwrap()
    }

    fn components(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(self.state.join("components.json")).unwrap_or_default();
        serde_json::from_str(&text).unwrap_or_default()
    }

    fn dump(&self) -> String {
        let mut s = String::new();
        for e in std::fs::read_dir(self.state.join("logs"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            s += &format!("\n--- {} (tail)\n", e.path().display());
            for l in tail.iter().rev() {
                s += l;
                s.push('\n');
            }
        }
        s
    }

    fn down(&self) -> Output {
        self.mesh_ctl(&["down"])
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.down();
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The pid of `node`'s agent (the DaemonSet pod's process) of the cluster kept in `state`.
fn agent_pid(state: &Path, node: &str) -> Option<i32> {
    let kc = format!("{}/nodes/{node}/kubeconfig", state.display());
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
        let args: Vec<String> = cmd
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        (args.first()?.ends_with("/meshwork-control")
            && args.iter().any(|a| a == &format!("--kubeconfig={kc}")))
        .then_some(pid)
    })
}

/// curl from the host (the root namespace, through the host link); the body or None.
fn curl(url: &str) -> Option<String> {
    let out = Command::new("curl")
        .args(["-s", "-f", "-m", "2", url])
        .output()
        .expect("curl (scripts/setup.sh installs it)");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Asks `url` until every name in `want` answered (at most `tries` requests).
fn answers(url: &str, want: &BTreeSet<String>, tries: usize) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for _ in 0..tries {
        if let Some(b) = curl(url) {
            seen.insert(b);
        }
        if want.is_subset(&seen) {
            break;
        }
    }
    seen
}

/// Polls `f` until it yields an empty list or `timeout` passes; the last list either way
/// (`initial` if `f` never answered).
fn until_or_last<T>(
    timeout: Duration,
    initial: Vec<T>,
    mut f: impl FnMut() -> Option<Vec<T>>,
) -> Vec<T> {
    let deadline = Instant::now() + timeout;
    let mut last = initial;
    loop {
        if let Some(v) = f() {
            if v.is_empty() {
                return v;
            }
            last = v;
        }
        if Instant::now() > deadline {
            return last;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

const WEB: &str = r#"{"apiVersion": "apps/v1", "kind": "Deployment",
  "metadata": {"name": "web"},
  "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
    "template": {"metadata": {"labels": {"app": "web"}},
      "spec": {"containers": [{"name": "httpd", "image": "busybox",
        "command": ["sh", "-c", "echo $HOSTNAME > /tmp/index.html; exec httpd -f -p 8080 -h /tmp"],
        "ports": [{"containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/index.html", "port": 8080}, "periodSeconds": 1}}]}}}}"#;

/// Two plain Deployments and a Service for the mesh part: nothing in them mentions the mesh.
const SHOP: &str = r#"apiVersion: v1
kind: ServiceAccount
metadata: {name: loadgen}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: api}
spec:
  selector: {matchLabels: {app: api}}
  template:
    metadata:
      labels: {app: api}
      annotations: {config.meshwork.io/routes: "GET /index.html"}
    spec:
      containers:
      - name: httpd
        image: busybox
        command: ["sh", "-c", "echo api > /tmp/index.html; exec httpd -f -p 8080 -h /tmp"]
        ports: [{containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata:
  name: api
  annotations: {config.meshwork.io/routes: "GET /index.html"}
spec:
  selector: {app: api}
  ports: [{port: 80, targetPort: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: loadgen}
spec:
  selector: {matchLabels: {app: loadgen}}
  template:
    metadata: {labels: {app: loadgen}}
    spec:
      serviceAccountName: loadgen
      containers:
      - name: loop
        image: busybox
        command: ["sh", "-c", "while true; do timeout 3 wget -qO- http://api/index.html; sleep 0.2; done"]
"#;

fn web_pods(c: &Cluster) -> BTreeSet<String> {
    c.json(&["get", "pods", "-l", "app=web"])["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

fn leftovers(state: &Path) -> Vec<String> {
    let mut left = Vec::new();
    for e in std::fs::read_dir(meshwork_lab::NETNS_DIR)
        .into_iter()
        .flatten()
        .flatten()
    {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with(PREFIX) {
            left.push(format!("netns {n}"));
        }
    }
    if Path::new("/sys/class/net").join(LINK).exists() {
        left.push(format!("link {LINK}"));
    }
    let cg = meshwork_lab::cgroup::cgroup2_root();
    for dir in [cg.as_path(), Path::new(meshwork_lab::cgroup::BPF_PIN_ROOT)] {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(PREFIX) {
                left.push(format!("{}", e.path().display()));
            }
        }
    }
    let state = state.to_string_lossy().into_owned();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(&state) || cmd.contains(PREFIX) {
            left.push(format!(
                "process {}: {cmd}",
                e.file_name().to_string_lossy()
            ));
        }
    }
    left
}

#[test]
fn mesh_ctl_up_leaves_a_cluster_kubectl_and_the_host_reach() {
    require_root();
    let state = std::env::temp_dir().join(format!("{PREFIX}state"));
    let c = Cluster {
        kubeconfig: state.join("user-kubeconfig"),
        state: state.clone(),
    };
    // A crashed earlier run of this test: `down` sweeps it by its prefix.
    let _ = c.down();

    let out = c.mesh_ctl(&["up", "--nodes", "2", "--monitoring"]);
    assert!(
        out.status.success(),
        "mesh-ctl up failed:\n{}{}",
        text(&out),
        c.dump()
    );
    assert!(text(&out).contains("cluster ready"), "{}", text(&out));
    let again = c.mesh_ctl(&["up", "--nodes", "2"]);
    assert!(
        again.status.success() && text(&again).contains("already running"),
        "a second up should report the running cluster:\n{}",
        text(&again)
    );

    // Nodes Ready, through the merged context.
    assert_eq!(c.kubectl(&["config", "current-context"]), "meshwork");
    let ready = c.kubectl(&[
        "get",
        "nodes",
        "-o",
        r#"jsonpath={range .items[*]}{.metadata.name}={.status.conditions[?(@.type=="Ready")].status} {end}"#,
    ]);
    assert_eq!(ready, "n1=True n2=True", "{}", c.dump());

    // The add-ons run as workloads from deploy/addons: the agent DaemonSet on both nodes in
    // their host network, DNS as a Deployment whose pod (not a host) backs kube-dns.
    let ds = c.json(&["get", "ds", "-n", "kube-system", "meshwork-control"]);
    assert_eq!(ds["status"]["numberReady"], 2, "{ds}");
    let agents = c.json(&[
        "get",
        "pods",
        "-n",
        "kube-system",
        "-l",
        "k8s-app=meshwork-control",
    ]);
    let mut placed: Vec<(String, String)> = agents["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            assert_eq!(p["spec"]["hostNetwork"], true);
            assert_eq!(
                p["status"]["podIP"], p["status"]["hostIP"],
                "host network: {p}"
            );
            (
                p["spec"]["nodeName"].as_str().unwrap().to_string(),
                p["status"]["phase"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    placed.sort();
    assert_eq!(
        placed,
        [
            ("n1".into(), "Running".into()),
            ("n2".into(), "Running".into())
        ]
    );
    let dns = c.json(&["get", "pods", "-n", "kube-system", "-l", "k8s-app=kube-dns"]);
    let dns_ip = dns["items"][0]["status"]["podIP"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        dns_ip.starts_with("10.244."),
        "DNS runs on the pod network: {dns}"
    );
    let slices = c.kubectl(&[
        "get",
        "endpointslices",
        "-n",
        "kube-system",
        "-l",
        "kubernetes.io/service-name=kube-dns",
        "-o",
        "jsonpath={.items[*].endpoints[*].addresses[*]}",
    ]);
    assert_eq!(slices.trim(), dns_ip, "kube-dns endpoints");

    // The mesh identity service runs as its ServiceAccount and certifies a pod's token, asked
    // from the host through its ClusterIP, as a sidecar will ask from inside the pod.
    let avail = c.kubectl(&[
        "get",
        "deploy",
        "-n",
        "meshwork-system",
        "meshwork-identity",
        "-o",
        "jsonpath={.status.availableReplicas}",
    ]);
    assert_eq!(avail, "1", "{}", c.dump());
    c.kubectl(&["create", "serviceaccount", "mesh-web"]);
    c.kubectl(&[
        "run",
        "mesh-web",
        "--image=busybox",
        "--overrides={\"spec\":{\"serviceAccountName\":\"mesh-web\"}}",
        "--",
        "sleep",
        "3600",
    ]);
    c.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "pod/mesh-web",
        "--timeout=60s",
    ]);
    let token = c.kubectl(&[
        "create",
        "token",
        "mesh-web",
        "--audience=identity.meshwork.io",
        "--bound-object-kind=Pod",
        "--bound-object-name=mesh-web",
    ]);
    let token_path = state.join("mesh-web.token");
    std::fs::write(&token_path, &token).unwrap();
    let id_vip = c.kubectl(&[
        "get",
        "svc",
        "-n",
        "meshwork-system",
        "meshwork-identity",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    let anchors = c.kubectl(&[
        "get",
        "configmap",
        "-n",
        "meshwork-system",
        "meshwork-identity-trust-roots",
        "-o",
        "jsonpath={.data.ca-bundle\\.crt}",
    ]);
    let td = meshwork_identity::DEFAULT_TRUST_DOMAIN;
    let identity = meshwork_identity::client::Identity::new(meshwork_identity::client::Config {
        addr: format!("{id_vip}:8080"),
        service_identity: meshwork_identity::SpiffeId::service_account(
            td,
            "meshwork-system",
            "meshwork-identity",
        )
        .unwrap(),
        identity: meshwork_identity::SpiffeId::service_account(td, "default", "mesh-web").unwrap(),
        token_path,
        trust_anchors_pem: anchors.clone(),
        trust_anchors_path: None,
    })
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cert = rt
        .block_on(identity.certify())
        .unwrap_or_else(|e| panic!("Certify through {id_vip}: {e}\n{}", c.dump()));
    std::fs::remove_file(state.join("mesh-web.token")).unwrap();
    let leaf = &cert.key.cert[0];
    assert_eq!(
        meshwork_identity::verify::peer_identity(leaf)
            .unwrap()
            .to_string(),
        "spiffe://cluster.local/ns/default/sa/mesh-web"
    );

    // The mesh as a newcomer meets it: annotate a namespace, apply plain Deployments. The
    // injector webhook `up` registered puts the proxy in, the identity service has published
    // the trust anchors into the new namespace, and the client's requests to the Service
    // arrive at the server's proxy over mTLS carrying the client's identity.
    c.kubectl(&["create", "namespace", "shop"]);
    c.kubectl(&[
        "annotate",
        "namespace",
        "shop",
        "meshwork.io/inject=enabled",
    ]);
    let shop = state.join("shop.yaml");
    std::fs::write(&shop, SHOP).unwrap();
    c.kubectl(&["apply", "-n", "shop", "-f", shop.to_str().unwrap()]);
    for d in ["deployment/api", "deployment/loadgen"] {
        let out = c.kubectl_out(&["rollout", "status", "-n", "shop", d, "--timeout=90s"]);
        assert!(out.status.success(), "{d}: {}{}", text(&out), c.dump());
    }
    let meshed = c.json(&["get", "pods", "-n", "shop"]);
    let meshed = meshed["items"].as_array().unwrap();
    assert_eq!(meshed.len(), 2, "{meshed:?}");
    for p in meshed {
        assert_eq!(
            p["spec"]["initContainers"][0]["name"], "meshwork-proxy",
            "the injector put the proxy first: {p}"
        );
        assert_eq!(p["spec"]["initContainers"][0]["restartPolicy"], "Always");
        assert!(
            p["metadata"]["annotations"]["meshwork.io/injected"].is_string(),
            "{p}"
        );
    }
    let published = c.kubectl(&[
        "get",
        "configmap",
        "-n",
        "shop",
        "meshwork-identity-trust-roots",
        "-o",
        "jsonpath={.data.ca-bundle\\.crt}",
    ]);
    assert_eq!(published, anchors, "the anchors published into shop");
    let api_ip = c.kubectl(&[
        "get",
        "pods",
        "-n",
        "shop",
        "-l",
        "app=api",
        "-o",
        "jsonpath={.items[0].status.podIP}",
    ]);
    let peer = r#"peer="spiffe://cluster.local/ns/shop/sa/loadgen""#;
    let metrics = meshwork_lab::wait::eventually(
        "the api's proxy to count mTLS requests from loadgen's identity",
        Duration::from_secs(20),
        || {
            let m = curl(&format!("http://{api_ip}:4191/metrics"))?;
            m.lines()
                .any(|l| {
                    l.starts_with("meshwork_proxy_requests_total")
                        && l.contains(r#"direction="inbound""#)
                        && l.contains(peer)
                        && l.contains(r#"status_class="2xx""#)
                })
                .then_some(m)
        },
    );
    assert!(metrics.contains("meshwork_proxy_"), "{metrics}");

    // Prometheus scrapes every component: each node's agent and runtime, DNS, the identity
    // service and the proxy of each meshed pod (the last two found by the supervisor's pod
    // watch, labelled with the pod).
    let mut proxies: Vec<(String, String)> = meshed
        .iter()
        .map(|p| {
            (
                format!("{}:4191", p["status"]["podIP"].as_str().unwrap()),
                p["metadata"]["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    proxies.sort();
    let targets = meshwork_lab::wait::eventually(
        "Prometheus to scrape every target",
        Duration::from_secs(30),
        || {
            let v: Value =
                serde_json::from_str(&curl("http://127.0.0.1:9090/api/v1/targets")?).ok()?;
            let t: Vec<(String, String, String, String)> = v["data"]["activeTargets"]
                .as_array()?
                .iter()
                .map(|t| {
                    let l = |k: &str| t["labels"][k].as_str().unwrap_or_default().to_string();
                    let health = t["health"].as_str().unwrap_or_default().to_string();
                    (l("job"), health, l("instance"), l("pod"))
                })
                .collect();
            let mut scraped: Vec<(String, String)> = t
                .iter()
                .filter(|(j, ..)| j == "meshwork-proxy")
                .map(|(_, _, i, p)| (i.clone(), p.clone()))
                .collect();
            scraped.sort();
            let identity = t.iter().filter(|(j, ..)| j == "meshwork-identity").count();
            (t.len() == 6 + proxies.len()
                && identity == 1
                && scraped == proxies
                && t.iter().all(|(_, h, ..)| h == "up"))
            .then_some(t)
        },
    );
    for job in [
        "meshwork-control",
        "meshwork-node",
        "meshwork-dns",
        "meshwork-identity",
    ] {
        assert!(
            targets.iter().any(|(j, ..)| j == job),
            "{job} not scraped: {targets:?}"
        );
    }

    // kubectl run nginx; curl its pod IP from the host.
    c.kubectl(&["run", "nginx", "--image=nginx"]);
    c.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "pod/nginx",
        "--timeout=60s",
    ]);
    let ip = c.kubectl(&["get", "pod", "nginx", "-o", "jsonpath={.status.podIP}"]);
    let page = meshwork_lab::wait::eventually(
        "nginx answers on its pod IP from the host",
        Duration::from_secs(10),
        || curl(&format!("http://{ip}/")),
    );
    assert!(page.contains("Welcome to nginx"), "{page}");

    // A Deployment of 3 and `kubectl expose` (NodePort).
    let manifest = state.join("web.json");
    std::fs::write(&manifest, WEB).unwrap();
    c.kubectl(&["apply", "-f", manifest.to_str().unwrap()]);
    c.kubectl(&[
        "expose",
        "deployment",
        "web",
        "--port=80",
        "--target-port=8080",
        "--type=NodePort",
    ]);
    c.kubectl(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    let pods = web_pods(&c);
    assert_eq!(pods.len(), 3, "{pods:?}");
    let svc = c.json(&["get", "service", "web"]);
    let vip = svc["spec"]["clusterIP"].as_str().unwrap().to_string();
    let node_port = svc["spec"]["ports"][0]["nodePort"].as_i64().unwrap();

    // A pod resolves the name and reaches all 3 through the eBPF socket LB.
    c.kubectl(&[
        "run",
        "client",
        "--image=busybox",
        "--restart=Never",
        "--",
        "sh",
        "-c",
        "for i in $(seq 60); do timeout 3 wget -qO- http://web/index.html; done",
    ]);
    let seen =
        meshwork_lab::wait::eventually("the client pod to finish", Duration::from_secs(60), || {
            let phase = c.kubectl(&["get", "pod", "client", "-o", "jsonpath={.status.phase}"]);
            (phase == "Succeeded" || phase == "Failed").then(|| c.kubectl(&["logs", "client"]))
        });
    let names: BTreeSet<String> = seen.lines().map(str::to_string).collect();
    assert_eq!(
        names, pods,
        "backends the pod reached by name (all 3 expected)"
    );

    // The ClusterIP and each node's NodePort from the host reach every backend, also those on
    // the other node (the tc program SNATs to the node for remote backends).
    let mut urls = vec![format!("http://{vip}/index.html")];
    for n in ["198.18.0.1", "198.18.0.2"] {
        urls.push(format!("http://{n}:{node_port}/index.html"));
    }
    for url in &urls {
        let got = answers(url, &pods, 60);
        assert_eq!(&got, &pods, "backends answering {url} from the host");
    }

    // Scale down: only the remaining pod answers, within 2 s of the scale.
    c.kubectl(&["scale", "deployment/web", "--replicas=1"]);
    let scaled = Instant::now();
    let left = meshwork_lab::wait::eventually(
        "the scale-down to show in the API",
        Duration::from_secs(10),
        || {
            let p = web_pods(&c);
            (p.len() == 1).then_some(p)
        },
    );
    let settled = meshwork_lab::wait::eventually(
        "only the remaining pod answering",
        Duration::from_secs(10),
        || {
            let all: Vec<Option<String>> = (0..10).map(|_| curl(&urls[0])).collect();
            all.iter()
                .all(|b| b.as_ref().is_some_and(|b| left.contains(b)))
                .then(|| scaled.elapsed())
        },
    );
    assert!(
        settled < Duration::from_secs(2),
        "scale-down took {settled:?} to be reflected (goal: 2 s)"
    );
    for url in &urls[1..] {
        let got = answers(url, &left, 10);
        assert_eq!(&got, &left, "NodePort {url} after the scale-down");
    }

    // Every metric the Grafana dashboard charts is one Prometheus has scraped (the cluster has
    // served DNS, started pods and programmed Services by now).
    let dashboard = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/meshwork-dashboard.json"),
    )
    .unwrap();
    let wanted: BTreeSet<String> = dashboard
        .split(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_'))
        .filter(|w| w.starts_with("meshwork_"))
        .map(str::to_string)
        .collect();
    assert!(wanted.len() > 10, "{wanted:?}");
    let missing = until_or_last(
        Duration::from_secs(20),
        wanted.iter().cloned().collect(),
        || {
            let v: Value =
                serde_json::from_str(&curl("http://127.0.0.1:9090/api/v1/label/__name__/values")?)
                    .ok()?;
            let have: BTreeSet<String> = v["data"]
                .as_array()?
                .iter()
                .filter_map(|n| n.as_str().map(str::to_string))
                .collect();
            // A histogram's name stands for its _bucket/_sum/_count series.
            Some(
                wanted
                    .iter()
                    .filter(|w| !have.contains(*w) && !have.contains(&format!("{w}_bucket")))
                    .cloned()
                    .collect::<Vec<_>>(),
            )
        },
    );
    assert!(
        missing.is_empty(),
        "dashboard metrics Prometheus never saw: {missing:?}"
    );

    // kill -9 of a supervised component (node-n2's runtime): the supervisor starts it again.
    let victim = c
        .components()
        .into_iter()
        .find(|v| v["name"] == "node-n2")
        .expect("node-n2 in components.json");
    let pid = victim["pid"].as_u64().unwrap() as i32;
    // SAFETY: killing the node runtime the cluster runs (found in its status file).
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let new_pid = meshwork_lab::wait::eventually(
        "node-n2 restarted by the supervisor",
        Duration::from_secs(15),
        || {
            c.components()
                .into_iter()
                .find(|v| v["name"] == "node-n2" && v["restarts"].as_u64() >= Some(1))
                .and_then(|v| v["pid"].as_u64())
        },
    );
    assert_ne!(new_pid as i32, pid);
    let status = text(&c.mesh_ctl(&["status"]));
    assert!(
        status.contains("node-n2") && status.contains("SIGKILL"),
        "{status}"
    );
    // Each agent's discovery certificate, and the mesh CA's.
    assert_eq!(
        status.matches("; expires in ").count(),
        2,
        "both agents hold a discovery certificate: {status}"
    );
    assert!(status.contains("mesh trust anchor"), "{status}");

    // kill -9 of an add-on (n2's agent, a DaemonSet pod): its node runtime restarts the
    // container, as the kubelet would, and the agent serves again.
    let agent = agent_pid(&state, "n2").expect("n2's agent process");
    // SAFETY: killing the agent this test's cluster runs (matched by its state dir and node).
    unsafe { libc::kill(agent, libc::SIGKILL) };
    meshwork_lab::wait::eventually(
        "n2's agent pod restarted by its node runtime",
        Duration::from_secs(30),
        || {
            let n = c.kubectl(&[
                "get",
                "pods",
                "-n",
                "kube-system",
                "-l",
                "k8s-app=meshwork-control",
                "--field-selector",
                "spec.nodeName=n2",
                "-o",
                "jsonpath={.items[0].status.containerStatuses[0].restartCount}",
            ]);
            (n.parse::<u32>().ok()? >= 1).then_some(())
        },
    );
    meshwork_lab::wait::eventually(
        "the restarted agent serving healthz",
        Duration::from_secs(15),
        || curl("http://198.18.0.2:10256/healthz"),
    );
    assert_ne!(agent_pid(&state, "n2"), Some(agent));

    // down --keep-state, then up: the cluster's objects come back, and the node runtimes give
    // the pods new sandboxes (theirs went with the namespaces) instead of adopting nothing.
    let out = c.mesh_ctl(&["down", "--keep-state"]);
    assert!(
        out.status.success(),
        "mesh-ctl down --keep-state:\n{}",
        text(&out)
    );
    let out = c.mesh_ctl(&["up", "--nodes", "2"]);
    assert!(
        out.status.success(),
        "up on kept state:\n{}{}",
        text(&out),
        c.dump()
    );
    c.kubectl(&["rollout", "status", "deployment/web", "--timeout=60s"]);
    let back = web_pods(&c);
    assert_eq!(back, left, "the kept Deployment's pod");
    let got = meshwork_lab::wait::eventually(
        "the kept Service answering from the host",
        Duration::from_secs(15),
        || curl(&urls[0]),
    );
    assert!(
        back.contains(&got),
        "{got} answered, expected one of {back:?}"
    );

    // down removes everything.
    let out = c.down();
    assert!(out.status.success(), "mesh-ctl down:\n{}", text(&out));
    let left = leftovers(&state);
    assert!(left.is_empty(), "left behind after down: {left:#?}");
    let contexts = c.kubectl(&["config", "get-contexts", "-o", "name"]);
    assert!(!contexts.contains("meshwork"), "context left: {contexts}");
    // Only the test's own files stay in the state dir (its kubeconfig and manifest live there).
    let kept: Vec<String> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !matches!(n.as_str(), "user-kubeconfig" | "web.json" | "shop.yaml"))
        .collect();
    assert!(
        kept.is_empty(),
        "state left in {}: {kept:?}",
        state.display()
    );
}

/// What a user gets wrong gets a clear message, and nothing is created or lost.
#[test]
fn mesh_ctl_refuses_bad_input_clearly() {
    require_root();
    let dir = tempfile::Builder::new()
        .prefix("mwl-mesh_ctl_bad-")
        .tempdir()
        .unwrap();
    let state = dir.path().join("state");
    let run = |args: &[&str]| {
        let mut c = Command::new(lab_binary("mesh-ctl"));
        c.args(args).arg("--state-dir").arg(&state);
        if matches!(args[0], "up" | "down") {
            c.args(["--lab-name", "mesh_ctl_bad", "--host-link", "mwl-bad-host"]);
            c.arg("--kubeconfig").arg(dir.path().join("kubeconfig"));
        }
        c.output().unwrap()
    };
    let out = run(&["up", "--cni-plugin", "/nonexistent/meshwork"]);
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(
        t.contains("FAIL  CNI plugin /nonexistent/meshwork") && t.contains("fix: scripts/up.sh"),
        "{t}"
    );
    assert!(
        !std::fs::read_dir(meshwork_lab::NETNS_DIR)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e
                .file_name()
                .to_string_lossy()
                .starts_with("mwl-mesh_ctl_bad-")),
        "a refused up created namespaces"
    );
    let out = run(&["up", "--nodes", "0"]);
    assert!(
        !out.status.success() && text(&out).contains("--nodes"),
        "{}",
        text(&out)
    );

    let out = run(&["status"]);
    assert!(
        out.status.success() && text(&out).contains("no cluster is running"),
        "{}",
        text(&out)
    );
    let out = run(&["logs", "nosuch"]);
    assert!(
        !out.status.success() && text(&out).contains("no log for \"nosuch\""),
        "{}",
        text(&out)
    );
    let out = run(&["down"]);
    assert!(
        out.status.success() && text(&out).contains("no cluster left"),
        "{}",
        text(&out)
    );
}
