//! Command line of `meshwork-orchestrator` (flags with env fallbacks; defaults here only).

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
