//! The supervisor behind `mesh-ctl up`: builds the lab nodes and the host link, starts every
//! component under [`Supervisor`], waits until the cluster is usable (nodes Ready, cluster DNS
//! answering through the eBPF datapath from the host), then supervises until SIGTERM (`down`).
//!
//! Progress goes to stdout, a pipe that `up` reads and relays; after the last line the pipe is
//! closed and the supervisor carries on detached. Order matters: nodes register with the API
//! server and get a pod CIDR from its controllers; only then does the node's CNI config appear
//! (the part a CNI daemonset plays on a real cluster). The add-ons then run as workloads from
//! deploy/addons (`addons.rs`): the control agent as a host-network DaemonSet (it reads its pod
//! CIDR from its Node for the VXLAN overlay), DNS as a Deployment behind kube-dns, the mesh
//! identity service once `identity.rs` has put its CA in place, and the proxy injector with
//! its webhook once `injector.rs` has made its serving certificate.

use std::{
    io::Write,
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use k8s_openapi::api::{
    apps::v1::{DaemonSet, Deployment},
    core::v1::Node as KNode,
};
use kube::Api;
use meshwork_lab::{host::HostLink, Lab, Node};
use serde_json::json;

use crate::{
    procs::{Spec, Supervisor},
    state::{now_secs, write_json, ClusterInfo, NodeInfo, StateDir},
};

pub const POD_CIDR: &str = "10.244.0.0/16";
pub const SERVICE_CIDR: &str = "10.96.0.0/12";
pub const DNS_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// The host's address on the lab underlay (198.18.0.0/24; nodes count up from .1).
pub const HOST_ADDR: &str = "198.18.0.254/24";
pub const API_PORT: u16 = 6443;
pub const PROMETHEUS: &str = "127.0.0.1:9090";

#[derive(clap::Args, Clone, Debug)]
pub struct UpArgs {
    /// Number of lab nodes.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=20))]
    pub nodes: u8,
    /// Where the cluster's state and logs live.
    #[arg(long, env = "MESHWORK_STATE_DIR", default_value = crate::state::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// The CNI plugin binary that wires pods.
    #[arg(
        long,
        env = "MESHWORK_CNI_BIN",
        default_value = "/opt/cni/bin/meshwork"
    )]
    pub cni_plugin: PathBuf,
    /// Also run Prometheus (Debian's package) scraping every component, on 127.0.0.1:9090.
    #[arg(long)]
    pub monitoring: bool,
    /// kubeconfig to merge the `meshwork` context into (default: $KUBECONFIG's first file,
    /// else ~/.kube/config).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    #[command(flatten)]
    pub lab: LabFlags,
}

/// Names `up` gives what it creates on the host; tests set their own so they never meet a
/// user's cluster.
#[derive(clap::Args, Clone, Debug)]
pub struct LabFlags {
    /// Name of the lab (namespaces, cgroups and pins are `mwl-<name>-*`).
    #[arg(long, default_value = "mesh", hide = true)]
    pub lab_name: String,
    /// Name of the host's link into the lab underlay.
    #[arg(long, default_value = "mw-host", hide = true)]
    pub host_link: String,
}

/// Writes one progress line for `up` (and the supervisor log).
fn progress(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
    tracing::info!("{line}");
}

/// A step: runs `f`, reports its duration.
async fn step<T>(what: &str, f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    let t = Instant::now();
    let v = f.await.with_context(|| what.to_string())?;
    progress(&format!("step\t{:.2}\t{what}", t.elapsed().as_secs_f64()));
    Ok(v)
}

pub async fn supervise(a: UpArgs) -> Result<()> {
    let st = StateDir(a.state_dir.clone());
    std::fs::write(st.pid_file(), std::process::id().to_string())?;
    let mut sup = Supervisor::new(st.clone());
    let res = tokio::select! {
        r = bring_up(&a, &st, &mut sup) => r,
        _ = meshwork_daemon::shutdown_signal() => Err(anyhow!("stopped during start-up")),
    };
    let lab = match res {
        Ok(lab) => {
            progress("ready");
            // Detach from `up`: nothing reads this pipe any more.
            // SAFETY: replacing fd 1 with /dev/null; no Rust handle owns fd 1 exclusively.
            unsafe {
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
                if null >= 0 {
                    libc::dup2(null, 1);
                    libc::close(null);
                }
            }
            let _ = meshwork_daemon::shutdown_signal().await;
            tracing::info!("stopping the cluster");
            Some(lab)
        }
        Err(e) => {
            progress(&format!("failed\t{e:#}"));
            None
        }
    };
    sup.stop(Duration::from_secs(5)).await;
    // Dropping the lab kills what is left in its cgroups and deletes its namespaces (the host
    // link goes with the underlay namespace) and pins.
    drop(lab);
    let _ = std::fs::remove_file(st.pid_file());
    let _ = std::fs::remove_file(st.components_file());
    Ok(())
}

struct Cluster {
    lab: Arc<Lab>,
    nodes: Vec<Node>,
}

async fn bring_up(a: &UpArgs, st: &StateDir, sup: &mut Supervisor) -> Result<Arc<Lab>> {
    let started = now_secs() as i64;
    let c = step(
        &format!("{} lab nodes on an isolated underlay", a.nodes),
        async {
            let plugin = a.cni_plugin.clone();
            let lab = Lab::with_plugin(&a.lab.lab_name, &plugin);
            let nodes: Vec<Node> = (1..=a.nodes).map(|i| lab.node(&format!("n{i}"))).collect();
            Ok(Cluster {
                lab: Arc::new(lab),
                nodes,
            })
        },
    )
    .await?;
    let n1 = c.nodes[0].clone();
    let api_ip = IpAddr::V4(n1.underlay_ip);
    let api_url = format!("https://{api_ip}:{API_PORT}");
    let user_kc = crate::kubeconfig::user_path(a.kubeconfig.as_deref());
    write_json(
        &st.cluster_file(),
        &ClusterInfo {
            prefix: c.lab.prefix().to_string(),
            nodes: c
                .nodes
                .iter()
                .map(|n| NodeInfo {
                    name: n.name.clone(),
                    netns: n.netns.clone(),
                    ip: n.underlay_ip,
                })
                .collect(),
            api_url: api_url.clone(),
            host_link: a.lab.host_link.clone(),
            user_kubeconfig: user_kc.clone(),
            monitoring: a.monitoring,
            started: now_secs(),
        },
    )?;
    step(
        "host link into the lab: pod and Service ranges routed via n1",
        async {
            c.lab
                .add_host_link(&HostLink {
                    name: a.lab.host_link.clone(),
                    addr: HOST_ADDR.parse()?,
                    routes: vec![(POD_CIDR.parse()?, api_ip), (SERVICE_CIDR.parse()?, api_ip)],
                })
                .await
                .map_err(anyhow::Error::from)
        },
    )
    .await?;

    let data = st.apiserver();
    std::fs::create_dir_all(&data)?;
    let admin_kc = st.admin_kubeconfig();
    // A kept state dir holds the previous run's kubeconfig: wait for this run's.
    let _ = std::fs::remove_file(&admin_kc);
    let client = step("API server, controllers and scheduler on n1", async {
        let listen = format!("{api_ip}:{API_PORT}");
        let args: Vec<String> = vec![
            "apiserver".into(),
            "--data-dir".into(),
            data.display().to_string(),
            "--listen".into(),
            listen,
            "--advertise-address".into(),
            api_ip.to_string(),
            "--sqlite-sync".into(),
            "normal".into(),
            "--cluster-cidr".into(),
            POD_CIDR.into(),
            "--node-monitor-grace-period".into(),
            "20".into(),
        ];
        sup.start(in_node(&c, 0, "apiserver", "meshwork-orchestrator", args))?;
        wait_for("the admin kubeconfig", Duration::from_secs(30), || async {
            Ok(admin_kc.exists().then_some(()))
        })
        .await?;
        let client = meshwork_kube_watch::client(Some(&admin_kc)).await?;
        wait_for("the API server to answer", Duration::from_secs(30), || {
            let client = client.clone();
            async move {
                let req = http::Request::get("/readyz").body(Vec::new())?;
                Ok(client.request_text(req).await.ok().map(|_| ()))
            }
        })
        .await?;
        Ok(client)
    })
    .await?;

    let catalog = st.0.join("image-catalog.json");
    write_json(&catalog, &crate::addons::catalog()?)?;
    step("a node runtime per node", async {
        for (i, n) in c.nodes.iter().enumerate() {
            let dir = st.node(&n.name);
            std::fs::create_dir_all(dir.join("cni"))?;
            let kc = dir.join("kubeconfig");
            meshwork_orchestrator::server::issue_kubeconfig(
                &data,
                &api_url,
                &format!("system:node:{}", n.name),
                &["system:nodes".to_string()],
                &kc,
            )?;
            let args = meshwork_lab::components::NodeRuntime {
                node: n,
                kubeconfig: &kc,
                root_dir: &dir.join("root"),
                cni_conf_dir: &dir.join("cni"),
                heartbeat_seconds: 2,
                restart_backoff_seconds: 2,
                image_catalog: Some(&catalog),
            }
            .args(&c.lab);
            sup.start(in_node(
                &c,
                i,
                &format!("node-{}", n.name),
                "meshwork-orchestrator",
                args,
            ))?;
        }
        Ok(())
    })
    .await?;

    step("pod CIDRs assigned; CNI config written per node", async {
        let nodes: Api<KNode> = Api::all(client.clone());
        for n in &c.nodes {
            let cidr = wait_for(
                &format!("a pod CIDR for {}", n.name),
                Duration::from_secs(30),
                || {
                    let nodes = nodes.clone();
                    async move {
                        Ok(nodes
                            .get_opt(&n.name)
                            .await
                            .ok()
                            .flatten()
                            .and_then(|k| k.spec?.pod_cidr))
                    }
                },
            )
            .await?;
            let conf = node_conflist(&cidr, &c.lab.dir().join("cni-state").join(&n.name))?;
            let path = st.node(&n.name).join("cni").join("10-meshwork.conflist");
            std::fs::write(&path, serde_json::to_vec_pretty(&conf)?)?;
        }
        Ok(())
    })
    .await?;

    step(
        "add-ons from deploy/addons: the agent DaemonSet and cluster DNS",
        async {
            // The agents verify the identity service with these anchors (their discovery
            // certificate), before the identity step puts them into the cluster.
            crate::identity::ensure_ca(&st.identity())?;
            let state = st.0.display().to_string();
            let dns = DNS_VIP.to_string();
            // Where the lab's sweep finds a node's pins (meshwork_lab::Lab::bpf_pin_dir).
            let pins = Path::new(meshwork_lab::cgroup::BPF_PIN_ROOT)
                .join(c.lab.prefix())
                .display()
                .to_string();
            let vars = [
                ("STATE_DIR", state.as_str()),
                ("PIN_DIR_PREFIX", pins.as_str()),
                ("CLUSTER_DNS", dns.as_str()),
                // The lab has no route out: names outside the cluster get a quick SERVFAIL.
                ("DNS_UPSTREAM", "127.0.0.1:9"),
            ];
            for m in [crate::addons::CONTROL, crate::addons::DNS] {
                let yaml = crate::addons::render(m, &vars)?;
                crate::addons::apply(&admin_kc, &yaml)?;
            }
            let want = c.nodes.len() as i32;
            let ds: Api<DaemonSet> = Api::namespaced(client.clone(), "kube-system");
            wait_for(
                "an agent Ready on every node (DaemonSet meshwork-control)",
                Duration::from_secs(60),
                || {
                    let ds = ds.clone();
                    async move {
                        let st = ds.get("meshwork-control").await?.status.unwrap_or_default();
                        Ok((st.number_ready >= want).then_some(()))
                    }
                },
            )
            .await?;
            deployment_available(
                &client,
                "kube-system",
                "meshwork-dns",
                "cluster DNS available (Deployment meshwork-dns)",
            )
            .await
        },
    )
    .await?;

    step(
        "mesh identity: a CA, its issuer Secret, the identity service",
        async {
            let (anchors, cert, key) = crate::identity::ensure_ca(&st.identity())?;
            crate::identity::install(&client, &anchors, &cert, &key).await?;
            let yaml = crate::addons::render(
                crate::addons::IDENTITY,
                &[("TRUST_DOMAIN", crate::identity::TRUST_DOMAIN)],
            )?;
            crate::addons::apply(&admin_kc, &yaml)?;
            deployment_available(
                &client,
                crate::identity::NAMESPACE,
                "meshwork-identity",
                "the identity service available (Deployment meshwork-identity)",
            )
            .await
        },
    )
    .await?;

    step(
        "proxy injector: its certificate, the webhook, the Deployment",
        async {
            let pki = crate::injector::ensure_pki(&st.injector())?;
            crate::injector::install(&client, &pki).await?;
            let bundle = base64::engine::general_purpose::STANDARD.encode(&pki.ca);
            let yaml = crate::addons::render(
                crate::addons::INJECTOR,
                &[
                    ("INJECTOR_CA_BUNDLE", bundle.as_str()),
                    ("PROXY_IMAGE", crate::addons::PROXY_IMAGE),
                ],
            )?;
            crate::addons::apply(&admin_kc, &yaml)?;
            deployment_available(
                &client,
                crate::identity::NAMESPACE,
                "meshwork-injector",
                "the injector available (Deployment meshwork-injector)",
            )
            .await
        },
    )
    .await?;

    step("kubeconfig context `meshwork` made current", async {
        match &user_kc {
            Some(p) => crate::kubeconfig::merge(p, &admin_kc),
            None => Ok(()),
        }
    })
    .await?;

    step("nodes Ready, DNS answering from the host", async {
        let nodes: Api<KNode> = Api::all(client.clone());
        let want = c.nodes.len();
        wait_for("every node Ready", Duration::from_secs(30), || {
            let nodes = nodes.clone();
            async move {
                let list = nodes.list(&Default::default()).await?;
                let ready = list
                    .items
                    .iter()
                    .filter(|n| node_ready_since(n, started))
                    .count();
                Ok((ready == want).then_some(()))
            }
        })
        .await?;
        wait_for(
            "cluster DNS through 10.96.0.10",
            Duration::from_secs(30),
            || async {
                Ok(dns_answers(DNS_VIP, "kube-dns.kube-system.svc.cluster.local").then_some(()))
            },
        )
        .await
    })
    .await?;

    if a.monitoring {
        step("Prometheus on 127.0.0.1:9090", async {
            let sd = st.0.join(crate::monitoring::SD_DIR);
            crate::monitoring::init_pod_targets(&sd)?;
            tokio::spawn(crate::monitoring::keep_pod_targets(
                client.clone(),
                sd.clone(),
            ));
            let cfg = crate::monitoring::prometheus_config(&c.nodes, &sd);
            let path = st.0.join("prometheus.yml");
            std::fs::write(&path, cfg)?;
            let tsdb = st.0.join("prometheus");
            sup.start(Spec {
                name: "prometheus".into(),
                on: "host".into(),
                make: Box::new(move || {
                    let mut cmd = std::process::Command::new("prometheus");
                    cmd.arg(format!("--config.file={}", path.display()))
                        .arg(format!("--storage.tsdb.path={}", tsdb.display()))
                        .arg(format!("--web.listen-address={PROMETHEUS}"));
                    cmd
                }),
            })?;
            wait_for(
                "Prometheus to be ready",
                Duration::from_secs(30),
                || async {
                    Ok(crate::status::http_get(PROMETHEUS.parse()?, "/-/ready")
                        .is_some_and(|(code, _)| code == 200)
                        .then_some(()))
                },
            )
            .await
        })
        .await?;
    }
    let Cluster { lab, .. } = c;
    Ok(lab)
}

/// A supervised lab binary in node `i`'s namespace and cgroup.
fn in_node(c: &Cluster, i: usize, name: &str, bin: &'static str, args: Vec<String>) -> Spec {
    let (lab, node) = (c.lab.clone(), c.nodes[i].clone());
    Spec {
        name: name.to_string(),
        on: node.name.clone(),
        make: Box::new(move || {
            let argv: Vec<&str> = args.iter().map(String::as_str).collect();
            let mut cmd = lab.command_in_node(&node, &node.netns, bin, &argv);
            cmd.env("MESHWORK_LOG", "info");
            cmd
        }),
    }
}

/// Waits up to a minute for Deployment `name` in `ns` to have an available replica.
async fn deployment_available(
    client: &kube::Client,
    ns: &str,
    name: &str,
    what: &str,
) -> Result<()> {
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), ns);
    wait_for(what, Duration::from_secs(60), || {
        let deploys = deploys.clone();
        async move {
            let d = deploys.get(name).await?;
            let ready = d.status.and_then(|s| s.available_replicas).unwrap_or(0);
            Ok((ready >= 1).then_some(()))
        }
    })
    .await
}

/// Polls `f` every 100 ms until it yields a value or `timeout` passes.
async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last = None;
    loop {
        match f().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = Some(e),
        }
        if Instant::now() > deadline {
            let why = last
                .map(|e| format!(" (last error: {e:#})"))
                .unwrap_or_default();
            bail!("timed out after {timeout:?} waiting for {what}{why}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn node_ready(n: &KNode) -> bool {
    node_ready_since(n, 0)
}

/// Ready with a heartbeat at or after `since` (unix seconds): with a kept state dir, the Node
/// objects of the last run still say Ready until their node runtimes report again.
fn node_ready_since(n: &KNode, since: i64) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.type_ == "Ready"
                    && c.status == "True"
                    && c.last_heartbeat_time
                        .as_ref()
                        .is_some_and(|t| t.0.as_second() >= since)
            })
        })
}

/// The example conflist (cni-plugin/examples) for one node: its IPv4 pod CIDR (the
/// controllers assign no IPv6 one), routes to the cluster and to the underlay (DNS on n1, the
/// host, NodePort clients), no default route.
fn node_conflist(cidr: &str, state: &Path) -> Result<serde_json::Value> {
    let mut v: serde_json::Value = serde_json::from_str(meshwork_lab::cluster::EXAMPLE_CONFLIST)?;
    let p = &mut v["plugins"][0];
    p["dataDir"] = json!(state);
    let ipam = p["ipam"]
        .as_object_mut()
        .ok_or_else(|| anyhow!("example conflist has no ipam"))?;
    ipam.remove("subnet6");
    ipam.insert("subnet".into(), json!(cidr));
    ipam.insert(
        "routes".into(),
        json!([{"dst": POD_CIDR}, {"dst": meshwork_lab::UNDERLAY_SUBNET}]),
    );
    Ok(v)
}

/// kube-dns: a Service without a selector, and its EndpointSlice naming DNS on n1's address
/// (host network, as CoreDNS would run there); created once, kept across restarts.
/// One A query over UDP from the host; true when it gets a NOERROR answer with a record.
pub fn dns_answers(server: Ipv4Addr, name: &str) -> bool {
    let mut q = vec![0x4d, 0x77, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    let Ok(sock) = UdpSocket::bind("0.0.0.0:0") else {
        return false;
    };
    let _ = sock.set_read_timeout(Some(Duration::from_millis(500)));
    if sock
        .send_to(&q, SocketAddr::new(server.into(), 53))
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 1500];
    match sock.recv(&mut buf) {
        // Same id, a response, rcode 0, at least one answer.
        Ok(n) if n >= 12 => {
            buf[0..2] == q[0..2]
                && buf[2] & 0x80 != 0
                && buf[3] & 0x0f == 0
                && u16::from_be_bytes([buf[6], buf[7]]) > 0
        }
        _ => false,
    }
}
