//! Command line of `meshwork-control` (flags with env fallbacks; defaults here only).

use std::{net::SocketAddr, path::PathBuf};

use clap::{Parser, Subcommand, ValueEnum};

pub const DEFAULT_ADMIN: &str = "0.0.0.0:10256";
pub const DEFAULT_CGROUP: &str = "/sys/fs/cgroup";
/// meshwork_destination_api::DEFAULT_PORT on every address.
pub const DEFAULT_DESTINATION: &str = "0.0.0.0:8086";

#[derive(Parser, Debug, Clone)]
#[command(
    name = "meshwork-control",
    version,
    about = "Meshwork node agent (kube-proxy role)"
)]
pub struct Config {
    #[command(subcommand)]
    pub cmd: Option<Cmd>,
    /// kubeconfig of the API server (default: in-cluster, $KUBECONFIG, ~/.kube/config).
    #[arg(long, env = "MESHWORK_KUBECONFIG", global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// This node's name (Local traffic policies keep endpoints with this nodeName).
    #[arg(long, env = "NODE_NAME", global = true)]
    pub node_name: Option<String>,
    /// Addresses NodePorts are served on (repeatable; a DaemonSet passes status.hostIP).
    #[arg(long = "node-ip", env = "NODE_IP", value_delimiter = ',')]
    pub node_ips: Vec<std::net::IpAddr>,
    /// cgroup v2 directory whose sockets are load balanced; `auto`: the directory the node
    /// runtime puts pods under, found from this agent's own pod cgroup.
    #[arg(long, default_value = DEFAULT_CGROUP)]
    pub cgroup: PathBuf,
    /// bpffs pin directory (default /sys/fs/bpf/meshwork/<node>).
    #[arg(long, global = true)]
    pub pin_dir: Option<PathBuf>,
    /// Uplink device for NodePort/ExternalIP traffic from outside (tc); none: socket LB only;
    /// `auto`: the link holding the first --node-ip.
    #[arg(long)]
    pub uplink: Option<String>,
    /// /healthz (kube-proxy compatible) and /metrics.
    #[arg(long, env = "MESHWORK_CONTROL_ADMIN", default_value = DEFAULT_ADMIN)]
    pub admin_listen: SocketAddr,
    /// The proxies' discovery API (destination-api/), gRPC over mutual TLS for this node's
    /// pods (the agent's certificate from the identity service, below); `off`: not served.
    #[arg(long, env = "MESHWORK_DESTINATION_LISTEN", default_value = DEFAULT_DESTINATION)]
    pub destination_listen: String,
    /// The identity service the agent gets its discovery certificate from: `ip:port`, or a
    /// Service `name.namespace.svc[.<cluster domain>]:port`, read from the agent's own Service
    /// store (no DNS: the agent is what makes Services reachable).
    #[arg(
        long,
        env = "MESHWORK_IDENTITY_ADDR",
        default_value = "meshwork-identity.meshwork-system.svc:8080"
    )]
    pub identity_addr: String,
    /// The SPIFFE ID the identity service must prove (default: its ServiceAccount
    /// meshwork-system/meshwork-identity in --trust-domain).
    #[arg(long, env = "MESHWORK_IDENTITY_SERVICE_ID")]
    pub identity_service_id: Option<String>,
    /// The agent's projected ServiceAccount token for the identity audience (re-read at each
    /// renewal).
    #[arg(
        long,
        env = "MESHWORK_IDENTITY_TOKEN",
        default_value = "/var/run/secrets/meshwork.io/identity/token"
    )]
    pub identity_token: PathBuf,
    /// PEM trust anchors to verify the identity service with (then kept from its answers).
    #[arg(
        long,
        env = "MESHWORK_TRUST_ANCHORS",
        default_value = "/var/lib/meshwork/identity/ca.crt"
    )]
    pub trust_anchors: PathBuf,
    /// The agent's namespace and ServiceAccount: its identity is
    /// `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`, the one proxies expect.
    #[arg(long, env = "POD_NAMESPACE", default_value = "kube-system")]
    pub namespace: String,
    #[arg(long, env = "SERVICE_ACCOUNT", default_value = "meshwork-control")]
    pub service_account: String,
    /// The mesh's trust domain: endpoints' identities are `spiffe://<it>/ns/<ns>/sa/<sa>`.
    #[arg(long, env = "MESHWORK_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    /// The cluster's DNS domain (authorities `name.ns.svc.<it>:port`).
    #[arg(long, env = "MESHWORK_CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Our `service.kubernetes.io/service-proxy-name` (unset: unlabelled services only).
    #[arg(long)]
    pub proxy_name: Option<String>,
    #[arg(long, value_enum, default_value = "random")]
    pub lb_algorithm: LbAlgorithm,
    /// Program the VXLAN overlay to every other node from Node objects, over this underlay
    /// device (`auto`: the link holding --overlay-ip); unset: the overlay is someone else's.
    #[arg(long)]
    pub overlay_uplink: Option<String>,
    /// This node's underlay IPv4 (the VTEP address; default: the first IPv4 --node-ip).
    #[arg(long)]
    pub overlay_ip: Option<std::net::Ipv4Addr>,
    /// This node's pod CIDRs (one per family; default: the Node's spec.podCIDRs).
    #[arg(long = "pod-cidr", value_delimiter = ',')]
    pub pod_cidrs: Vec<ipnet::IpNet>,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Cmd {
    /// Remove every program and map this agent installed (the datapath outlives the agent
    /// otherwise, by design).
    Uninstall,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum LbAlgorithm {
    Random,
    Maglev,
}

impl Config {
    pub fn node(&self) -> Result<String, String> {
        self.node_name
            .clone()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| "--node-name (or NODE_NAME) is required".to_string())
    }

    pub fn pin_dir(&self) -> Result<PathBuf, String> {
        Ok(match &self.pin_dir {
            Some(p) => p.clone(),
            None => PathBuf::from(meshwork_ebpf::Config::BPFFS)
                .join("meshwork")
                .join(self.node()?),
        })
    }
}
