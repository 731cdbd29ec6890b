//! Command line of `meshwork-orchestrator` (flags with env fallbacks; defaults here only).

use meshwork_daemon::parse_duration;
use std::{net::SocketAddr, path::PathBuf};

use clap::{Parser, Subcommand, ValueEnum};

pub const DEFAULT_DATA_DIR: &str = "/var/lib/meshwork/orchestrator";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:6443";
pub const DEFAULT_ETCD: &str = "http://127.0.0.1:2379";

#[derive(Parser, Debug)]
#[command(
    name = "meshwork-orchestrator",
    version,
    about = "Meshwork's bundled orchestrator"
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Serve the Kubernetes API (HTTPS) from a data dir; writes <data-dir>/admin.kubeconfig.
    Apiserver(ApiserverArgs),
    /// Issue a credential (e.g. for a node agent) and write its kubeconfig.
    Kubeconfig(KubeconfigArgs),
    /// Run the controllers and the scheduler against an API server (the apiserver runs them
    /// in-process unless `--controllers=false`).
    Controllers(ControllersArgs),
    /// The node runtime (the kubelet's role) for one node.
    Node(crate::node::NodeArgs),
    /// Internal: the per-container shim the node runtime starts (not for direct use).
    #[command(hide = true)]
    Shim(crate::node::shim::ShimArgs),
}

/// Settings of the controllers and the scheduler.
#[derive(clap::Args, Debug, Clone)]
pub struct ControllerFlags {
    /// Pod addresses of the cluster; each node gets a /node-cidr-mask-size of it.
    #[arg(long, env = "MESHWORK_CLUSTER_CIDR", default_value = "10.244.0.0/16")]
    pub cluster_cidr: ipnet::Ipv4Net,
    #[arg(long, default_value_t = 24)]
    pub node_cidr_mask_size: u8,
    /// Seconds without a node heartbeat before the node turns NotReady.
    #[arg(long, default_value_t = 40)]
    pub node_monitor_grace_period: u64,
    /// Seconds between full resyncs: every controller requeues every object it owns, a safety
    /// net for a missed watch event (kube-controller-manager's `--min-resync-period`). Each
    /// object is otherwise reconciled when an event concerns it, and time-driven transitions
    /// requeue themselves.
    #[arg(long, default_value_t = 30)]
    pub resync_period: u64,
    /// The cluster CA (PEM file) to publish as `kube-root-ca.crt` in every namespace
    /// (kube-controller-manager's flag). The API server's own controllers use its CA.
    #[arg(long)]
    pub root_ca_file: Option<PathBuf>,
    /// The first delay before a Job replaces a failed pod; it doubles per failure up to 6
    /// minutes (kube's job controller uses 10 s and has no flag for it).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub job_backoff: std::time::Duration,
}

impl ControllerFlags {
    pub fn config(&self) -> anyhow::Result<crate::controllers::ControllerConfig> {
        let root_ca = match &self.root_ca_file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .map_err(|e| anyhow::anyhow!("--root-ca-file {}: {e}", p.display()))?,
            ),
            None => None,
        };
        Ok(crate::controllers::ControllerConfig {
            cluster_cidr: self.cluster_cidr,
            node_cidr_prefix: self.node_cidr_mask_size,
            node_monitor_grace: std::time::Duration::from_secs(self.node_monitor_grace_period),
            resync: std::time::Duration::from_secs(self.resync_period.max(1)),
            root_ca,
            job_backoff: self.job_backoff,
        })
    }
}

#[derive(clap::Args, Debug)]
pub struct ControllersArgs {
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    #[command(flatten)]
    pub flags: ControllerFlags,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum StoreKind {
    Sqlite,
    Etcd,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum SyncMode {
    /// fsync at every commit (survives power loss).
    Full,
    /// survives process death, not power loss.
    Normal,
}

#[derive(clap::Args, Debug)]
pub struct ApiserverArgs {
    #[arg(long, env = "MESHWORK_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    #[arg(long, env = "MESHWORK_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    #[arg(long, env = "MESHWORK_STORE", value_enum, default_value = "sqlite")]
    pub store: StoreKind,
    #[arg(long, env = "MESHWORK_SQLITE_SYNC", value_enum, default_value = "full")]
    pub sqlite_sync: SyncMode,
    /// etcd client URLs (comma separated) for `--store etcd`.
    #[arg(long, env = "MESHWORK_ETCD_ENDPOINTS", value_delimiter = ',', default_value = DEFAULT_ETCD)]
    pub etcd_endpoints: Vec<String>,
    /// Extra IP addresses for the serving certificate.
    #[arg(
        long = "advertise-address",
        env = "MESHWORK_ADVERTISE",
        value_delimiter = ','
    )]
    pub advertise: Vec<std::net::IpAddr>,
    /// Changes kept for watchers resuming from an older resourceVersion.
    #[arg(long, default_value_t = meshwork_orchestrator_store::DEFAULT_HISTORY)]
    pub history: i64,
    /// Run the controllers and the scheduler in this process.
    #[arg(long, env = "MESHWORK_CONTROLLERS", default_value_t = true, action = clap::ArgAction::Set)]
    pub controllers: bool,
    /// ClusterIPs come from here: an IPv4 range and optionally an IPv6 one (comma separated,
    /// as kube-apiserver takes them).
    #[arg(
        long,
        env = "MESHWORK_SERVICE_CIDR",
        value_delimiter = ',',
        default_value = "10.96.0.0/12,fd00::/108"
    )]
    pub service_cluster_ip_range: Vec<ipnet::IpNet>,
    /// Reserved in the service CIDR for cluster DNS (given only to a Service asking for it).
    #[arg(long, env = "MESHWORK_CLUSTER_DNS", default_value = "10.96.0.10")]
    pub cluster_dns: std::net::Ipv4Addr,
    /// `iss` of the ServiceAccount tokens this server issues, and the audience it accepts
    /// them for (kube-apiserver's flag of the same name).
    #[arg(
        long,
        env = "MESHWORK_SERVICE_ACCOUNT_ISSUER",
        default_value = crate::server::satoken::DEFAULT_ISSUER
    )]
    pub service_account_issuer: String,
    /// Longest ServiceAccount token a TokenRequest gets (longer ones are shortened, with a
    /// warning); `0` for no limit.
    #[arg(long, default_value = "48h", value_parser = parse_duration)]
    pub service_account_max_token_expiration: std::time::Duration,
    /// The key set URL in `/.well-known/openid-configuration` (default: this server's URL +
    /// `/openid/v1/jwks`).
    #[arg(long)]
    pub service_account_jwks_uri: Option<String>,
    #[command(flatten)]
    pub ctl: ControllerFlags,
}

#[derive(clap::Args, Debug)]
pub struct KubeconfigArgs {
    #[arg(long, env = "MESHWORK_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// User name, e.g. `system:node:n1`.
    #[arg(long)]
    pub user: String,
    /// Groups, e.g. `system:nodes`.
    #[arg(long = "group")]
    pub groups: Vec<String>,
    /// API server URL written into the kubeconfig.
    #[arg(long, default_value = "https://127.0.0.1:6443")]
    pub server: String,
    #[arg(long)]
    pub out: PathBuf,
}
