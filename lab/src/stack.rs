//! The rest of the stack in a lab cluster, started as the real binaries: the bundled API
//! server on a node's underlay address, cluster DNS and a control agent per node (the e2e
//! tests' helpers; `mesh-ctl up` runs the agent and DNS as workloads instead, from
//! deploy/addons). This is the one way tests start an API server outside the orchestrator
//! crate's own API tests (which run it in-process: `orchestrator/tests/common`).

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{anyhow, Context, Result};

use crate::{cgroup::lab_binary, cluster::LabCluster, proc::Proc, Lab, Node};

/// Boxed futures for closures that run kube-rs calls inside a node.
pub type BoxFut<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T>>>;

/// `meshwork-orchestrator apiserver` on `node`'s underlay address:6443, its data (store,
/// certificates, admin kubeconfig) under the lab dir and its log beside it, waited for until
/// its admin kubeconfig is written (after its listener is up). `extra`: more flags
/// (`--controllers=false`, ...). Returns the process and the data dir.
pub fn start_apiserver(lab: &Lab, node: &Node, extra: &[&str]) -> Result<(Proc, PathBuf)> {
    let data = lab.dir().join("apiserver");
    let ip = node.underlay_ip.to_string();
    let listen = format!("{ip}:6443");
    let log = lab.dir().join("apiserver.log");
    let data_s = data.to_str().context("lab dir is not UTF-8")?;
    let mut args = vec![
        "apiserver",
        "--data-dir",
        data_s,
        "--listen",
        &listen,
        "--advertise-address",
        &ip,
        "--sqlite-sync",
        "normal",
    ];
    args.extend_from_slice(extra);
    let child = lab
        .command_in_node(node, &node.netns, "meshwork-orchestrator", &args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).with_context(|| log.display().to_string())?)
        .spawn()
        .context("meshwork-orchestrator (build it: cargo build --bins)")?;
    let mut proc = Proc::with_log(child, log.clone());
    let kc = data.join("admin.kubeconfig");
    // Panics on timeout (with the log), as every lab wait does.
    let exited = crate::wait::eventually_or(
        "the API server writes its admin kubeconfig",
        Duration::from_secs(30),
        || match proc.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(status))) => Some(Some(status)),
            _ => kc.exists().then_some(None),
        },
        || std::fs::read_to_string(&log).unwrap_or_default(),
    );
    match exited {
        None => Ok((proc, data)),
        Some(status) => Err(anyhow!(
            "the API server exited ({status}): {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )),
    }
}

/// The bundled API server, with its controllers, serving on a lab node's underlay address (so
/// agents on every node reach it over the lab network, as they would a control-plane node).
pub struct LabApi {
    pub kubeconfig: PathBuf,
    pub url: String,
    netns: String,
    _proc: Proc,
}

impl LabApi {
    /// Starts it on node `node`.
    pub fn start(c: &LabCluster, node: usize) -> Result<LabApi> {
        let n = &c
            .nodes
            .get(node)
            .ok_or_else(|| anyhow!("no node #{node}"))?
            .node;
        let (proc, data) = start_apiserver(&c.lab, n, &[])?;
        Ok(LabApi {
            kubeconfig: data.join("admin.kubeconfig"),
            url: format!(
                "https://{}",
                std::net::SocketAddr::new(IpAddr::V4(n.underlay_ip), 6443)
            ),
            netns: n.netns.clone(),
            _proc: proc,
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

/// `meshwork-control` for lab node `node`. It runs in the node's network namespace and cgroup
/// via setns (not `ip netns exec`, which remounts /sys and would hide bpffs and the cgroup
/// tree), with the node's own pin directory.
pub fn start_agent(c: &LabCluster, node: usize, kubeconfig: &Path) -> Result<Proc> {
    start_agent_with(c, node, kubeconfig, false)
}

/// `start_agent`; with `overlay`, the agent also owns the node's VXLAN overlay and programs
/// it from Node objects (its uplink, underlay address and pod CIDRs from the lab).
pub fn start_agent_with(
    c: &LabCluster,
    node: usize,
    kubeconfig: &Path,
    overlay: bool,
) -> Result<Proc> {
    let cn = c
        .nodes
        .get(node)
        .ok_or_else(|| anyhow!("no node #{node}"))?;
    let n = &cn.node;
    let args = crate::components::Agent {
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
        discovery: None,
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
    Ok(Proc::from(child))
}

/// `meshwork-dns` on lab node `node`'s underlay address (host network, as a hostNetwork
/// CoreDNS would run), answering `dns_vip` as `ns.dns.<zone>`.
pub fn start_dns(c: &LabCluster, node: usize, kubeconfig: &Path, dns_vip: &str) -> Result<Proc> {
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
    Ok(Proc::from(child))
}
