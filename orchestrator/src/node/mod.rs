//! The node runtime (the kubelet's role) for one node: registers the Node and renews its
//! heartbeat Lease (its status is written when it changes; `heartbeat.rs`), watches the pods bound to it, runs them through a [`runtime::PodRuntime`]
//! (sandbox: network namespace + cgroup, wired by the CNI plugin from the config dir with the
//! environment containerd uses; containers: processes from the image catalog), probes them,
//! restarts them with back-off, reports their status, serves their logs, and stops them
//! gracefully. A restarted node runtime adopts the pods it finds running.

pub mod catalog;
mod container;
mod envvars;
mod exec;
mod heartbeat;
mod kubelet;
mod mesh;
mod metrics;
mod plan;
mod portforward;
mod probe;
pub mod runtime;
mod server;
pub mod shim;
mod spdy;
mod status;
mod terminate;
mod volumes;

use std::{net::IpAddr, path::PathBuf, time::Duration};

use anyhow::Context;

pub use container::resolv_conf;
pub use kubelet::StartTiming;

#[derive(clap::Args, Debug, Clone)]
pub struct NodeArgs {
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// This node's name (the Node object).
    #[arg(long, env = "MESHWORK_NODE_NAME")]
    pub node_name: String,
    /// The node's address (InternalIP); logs are served there.
    #[arg(long, env = "MESHWORK_NODE_IP")]
    pub node_ip: IpAddr,
    #[arg(long, default_value = "/var/lib/meshwork/node")]
    pub root_dir: PathBuf,
    #[arg(long, default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "/opt/cni/bin,/usr/lib/cni"
    )]
    pub cni_bin_dir: Vec<PathBuf>,
    /// cgroup v2 directory the pods' cgroups go under (default: `meshwork-pods` in the
    /// cgroup2 mount).
    #[arg(long)]
    pub cgroup_root: Option<PathBuf>,
    /// Pod network namespaces are named with this prefix under /run/netns.
    #[arg(long, default_value = "mw-pod-")]
    pub netns_prefix: String,
    #[arg(long, default_value = "10.96.0.10")]
    pub cluster_dns: IpAddr,
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Image catalog (JSON); the built-in one maps busybox and nginx.
    #[arg(long)]
    pub image_catalog: Option<PathBuf>,
    /// Port of the log endpoint (`/containerLogs`), the kubelet's.
    #[arg(long, default_value_t = 10250)]
    pub port: u16,
    /// Seconds between Node status heartbeats.
    #[arg(long, default_value_t = 10)]
    pub heartbeat_seconds: u64,
    /// First restart back-off of a crashed container (doubles up to 5 minutes).
    #[arg(long, default_value_t = 10)]
    pub restart_backoff_seconds: u64,
    /// Extra node labels, KEY=VALUE.
    #[arg(long = "node-label")]
    pub labels: Vec<String>,
    /// Capacity reported for scheduling (default: this machine's).
    #[arg(long)]
    pub cpu: Option<String>,
    #[arg(long)]
    pub memory: Option<String>,
    #[arg(long, default_value_t = 110)]
    pub max_pods: u32,
    /// bpffs directory for the meshed pods' interception programs and maps (default
    /// `/sys/fs/bpf/meshwork/<node>-mesh`).
    #[arg(long)]
    pub mesh_pin_dir: Option<PathBuf>,
}

fn cgroup2_mount() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[2] == "cgroup2")
        .map(|f| PathBuf::from(f[1]))
}

/// Where exec, attach and port-forward may come from: the API server (the addresses of its
/// URL in the kubeconfig), and this node itself (its address, loopback) — not from pods.
async fn stream_peers(a: &NodeArgs) -> Vec<IpAddr> {
    let mut ips = vec![
        a.node_ip,
        IpAddr::from([127, 0, 0, 1]),
        IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
    ];
    let cfg = match &a.kubeconfig {
        Some(p) => match kube::config::Kubeconfig::read_from(p) {
            Ok(kc) => kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .ok(),
            Err(_) => None,
        },
        None => kube::Config::infer().await.ok(),
    };
    if let Some(url) = cfg.map(|c| c.cluster_url) {
        let host = url
            .host()
            .unwrap_or_default()
            .trim_matches(['[', ']'])
            .to_string();
        let port = url.port_u16().unwrap_or(443);
        match host.parse::<IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(_) => {
                if let Ok(addrs) = tokio::net::lookup_host((host.as_str(), port)).await {
                    ips.extend(addrs.map(|a| a.ip()));
                }
            }
        }
    }
    ips.sort();
    ips.dedup();
    ips
}

pub async fn run(a: NodeArgs) -> anyhow::Result<()> {
    let client = meshwork_kube_watch::client(a.kubeconfig.as_deref()).await?;
    let catalog = catalog::Catalog::load(a.image_catalog.as_deref())?;
    let cgroup_root = match &a.cgroup_root {
        Some(p) => p.clone(),
        None => cgroup2_mount()
            .context("no cgroup2 mount: the node runtime needs cgroup v2")?
            .join("meshwork-pods"),
    };
    let shim = std::env::current_exe().context("locating this binary for the shim")?;
    let rt = runtime::ProcessRuntime::new(runtime::ProcessRuntimeConfig {
        root_dir: a.root_dir.clone(),
        cni_conf_dir: a.cni_conf_dir.clone(),
        cni_bin_dirs: a.cni_bin_dir.clone(),
        cgroup_root,
        netns_prefix: a.netns_prefix.clone(),
        catalog,
        shim,
        mesh_pin_dir: a.mesh_pin_dir.clone().unwrap_or_else(|| {
            PathBuf::from(meshwork_ebpf::Config::BPFFS).join(format!("{}-mesh", a.node_name))
        }),
    })?;
    let k = kubelet::Kubelet::new(client, rt, kubelet::Settings::from_args(&a));
    let listener = tokio::net::TcpListener::bind((a.node_ip, a.port))
        .await
        .with_context(|| format!("binding {}:{}", a.node_ip, a.port))?;
    tracing::info!(node = %a.node_name, addr = %listener.local_addr()?, "node runtime starting");
    let streams_from = stream_peers(&a).await;
    tracing::info!(from = ?streams_from, "exec, attach and port-forward accepted from");
    let srv = tokio::spawn(server::serve(
        listener,
        k.logs(),
        k.metrics(),
        std::sync::Arc::new(streams_from),
    ));
    tokio::select! {
        r = k.clone().run() => r?,
        r = meshwork_daemon::shutdown_signal() => {
            r?;
            // Pods keep running: a kubelet that stops does not stop its pods.
            tracing::info!("node runtime stopping; pods keep running");
        }
    }
    srv.abort();
    let _ = Duration::ZERO;
    Ok(())
}
