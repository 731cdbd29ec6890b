//! The rest of the stack in a lab cluster: the bundled API server on a node's underlay
//! address, cluster DNS and a control agent per node, started directly (the e2e tests'
//! helpers; `mesh-ctl up` runs the agent and DNS as workloads instead, from deploy/addons).

use std::{net::SocketAddr, path::Path, path::PathBuf};

use anyhow::{anyhow, Context, Result};
use meshwork_lab::cgroup::lab_binary;
use meshwork_orchestrator::server::{self, ServerConfig};
use meshwork_orchestrator_store::{AnyStore, SqliteStore, SqliteSync};

use crate::cluster::LabCluster;

/// Boxed futures for closures that run kube-rs calls inside a node.
pub type BoxFut<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T>>>;

/// The bundled API server serving on a lab node's underlay address (so agents on every node
/// reach it over the lab network, as they would a control-plane node).
pub struct LabApi {
    pub kubeconfig: PathBuf,
    pub url: String,
    netns: String,
    _running: server::Running,
}

impl LabApi {
    /// Starts it (on the current runtime) with its listener bound inside node `node`'s
    /// namespace.
    pub async fn start(c: &LabCluster, node: usize) -> Result<LabApi> {
        let n = &c
            .nodes
            .get(node)
            .ok_or_else(|| anyhow!("no node #{node}"))?
            .node;
        let addr = SocketAddr::new(n.underlay_ip.into(), 6443);
        let listener = c
            .lab
            .open(&n.netns)
            .run(|| std::net::TcpListener::bind(addr))
            .with_context(|| format!("entering {}", n.netns))?
            .with_context(|| format!("binding {addr} in {}", n.netns))?;
        let data = c.lab.dir().join("apiserver");
        std::fs::create_dir_all(&data).with_context(|| data.display().to_string())?;
        let store = SqliteStore::open(&data.join("state.db"), SqliteSync::Normal)?;
        let mut cfg = ServerConfig::new(data);
        cfg.listen = addr;
        let running = server::start_with_listener(cfg, AnyStore::Sqlite(store), Some(listener))
            .await
            .context("API server")?;
        Ok(LabApi {
            kubeconfig: running.admin_kubeconfig.clone(),
            url: running.url.clone(),
            netns: n.netns.clone(),
            _running: running,
        })
    }

    /// Runs `f` with an admin kube client from inside the API server's node (the calling
    /// process is not on the lab network). Blocks the calling thread.
    pub fn kube<T: Send>(
        &self,
        c: &LabCluster,
        f: impl FnOnce(kube::Client) -> BoxFut<T> + Send,
    ) -> Result<T> {
        let kc = self.kubeconfig.clone();
        c.lab
            .open(&self.netns)
            .run(move || -> Result<T> {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    let client = meshwork_kube_watch::client(Some(&kc)).await?;
                    Ok(f(client).await)
                })
            })
            .with_context(|| format!("entering {}", self.netns))?
    }
}

/// A lab process killed on drop (also on panic): the lab's one process guard.
pub type LabProc = meshwork_lab::proc::Proc;

/// `meshwork-control` for lab node `node`. It runs in the node's network namespace and cgroup
/// via setns (not `ip netns exec`, which remounts /sys and would hide bpffs and the cgroup
/// tree), with the node's own pin directory.
pub fn start_agent(c: &LabCluster, node: usize, kubeconfig: &Path) -> Result<LabProc> {
    start_agent_with(c, node, kubeconfig, false)
}

/// `start_agent`; with `overlay`, the agent also owns the node's VXLAN overlay and programs
/// it from Node objects (its uplink, underlay address and pod CIDRs from the lab).
pub fn start_agent_with(
    c: &LabCluster,
    node: usize,
    kubeconfig: &Path,
    overlay: bool,
) -> Result<LabProc> {
    let cn = c
        .nodes
        .get(node)
        .ok_or_else(|| anyhow!("no node #{node}"))?;
    let n = &cn.node;
    let args = meshwork_lab::components::Agent {
        node: n,
        kubeconfig,
        admin_listen: "127.0.0.1:10256".into(),
        overlay_pod_cidr: overlay.then(|| {
            cn.pod_cidrs
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(",")
        }),
    }
    .args(&c.lab);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let child = c
        .lab
        .command_in_node(n, &n.netns, "meshwork-control", &args)
        .env("MESHWORK_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .context("meshwork-control (build it: cargo build --bins)")?;
    Ok(LabProc::from(child))
}

/// `meshwork-dns` on lab node `node`'s underlay address (host network, as a hostNetwork
/// CoreDNS would run), answering `dns_vip` as `ns.dns.<zone>`.
pub fn start_dns(c: &LabCluster, node: usize, kubeconfig: &Path, dns_vip: &str) -> Result<LabProc> {
    let n = &c
        .nodes
        .get(node)
        .ok_or_else(|| anyhow!("no node #{node}"))?
        .node;
    let listen = format!("{}:53", n.underlay_ip);
    let child = std::process::Command::new("ip")
        .args(["netns", "exec", &n.netns])
        .arg(lab_binary("meshwork-dns"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args([
            "--listen",
            &listen,
            "--admin-listen",
            "127.0.0.1:9153",
            "--upstream",
            "127.0.0.1:9",
            "--dns-ip",
            dns_vip,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("meshwork-dns (build it: cargo build --bins)")?;
    Ok(LabProc::from(child))
}
