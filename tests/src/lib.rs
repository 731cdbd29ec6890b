//! End-to-end tests live in `tests/`; see README.md. This library holds what several of them
//! share: the API server placed inside a lab node.

use std::{net::SocketAddr, path::PathBuf};

use mesh_ctl::cluster::LabCluster;
use meshwork_orchestrator::server::{self, ServerConfig};
use meshwork_orchestrator_store::{AnyStore, SqliteStore, SqliteSync};

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
    /// Starts it on `rt` with its listener bound inside node `node`'s namespace.
    pub fn start(c: &LabCluster, node: usize, rt: &tokio::runtime::Runtime) -> LabApi {
        let n = &c.nodes[node].node;
        let addr = SocketAddr::new(n.underlay_ip.into(), 6443);
        let listener = c
            .lab
            .open(&n.netns)
            .run(|| std::net::TcpListener::bind(addr))
            .unwrap_or_else(|e| panic!("entering {}: {e}", n.netns))
            .unwrap_or_else(|e| panic!("binding {addr} in {}: {e}", n.netns));
        let data = c.lab.dir().join("apiserver");
        std::fs::create_dir_all(&data).unwrap_or_else(|e| panic!("{}: {e}", data.display()));
        let store = SqliteStore::open(&data.join("state.db"), SqliteSync::Normal)
            .unwrap_or_else(|e| panic!("store: {e}"));
        let mut cfg = ServerConfig::new(data);
        cfg.listen = addr;
        let running = rt
            .block_on(server::start_with_listener(
                cfg,
                AnyStore::Sqlite(store),
                Some(listener),
            ))
            .unwrap_or_else(|e| panic!("API server: {e}"));
        LabApi {
            kubeconfig: running.admin_kubeconfig.clone(),
            url: running.url.clone(),
            netns: n.netns.clone(),
            _running: running,
        }
    }

    /// Runs `f` with an admin kube client from inside the API server's node (the test process
    /// itself is not on the lab network).
    pub fn kube<T: Send>(
        &self,
        c: &LabCluster,
        f: impl FnOnce(kube::Client) -> BoxFut<T> + Send,
    ) -> T {
        let kc = self.kubeconfig.clone();
        c.lab
            .open(&self.netns)
            .run(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap_or_else(|e| panic!("runtime: {e}"));
                rt.block_on(async move {
                    let client = meshwork_kube_watch::client(Some(&kc))
                        .await
                        .unwrap_or_else(|e| panic!("kube client: {e}"));
                    f(client).await
                })
            })
            .unwrap_or_else(|e| panic!("entering {}: {e}", self.netns))
    }
}

/// `meshwork-control` for one lab node, killed on drop (also on panic). It runs in the node's
/// network namespace and cgroup via setns (not `ip netns exec`, which remounts /sys and would
/// hide bpffs and the cgroup tree), with the node's own pin directory.
pub struct LabAgent(pub std::process::Child);

impl LabAgent {
    pub fn start(c: &LabCluster, node: usize, kubeconfig: &std::path::Path) -> LabAgent {
        let n = &c.nodes[node].node;
        let (cg, pins) = (c.lab.cgroup(n), c.lab.bpf_pin_dir(n));
        let arg = |p: &std::path::Path| p.to_string_lossy().into_owned();
        let child = c
            .lab
            .command_in_node(
                n,
                &n.netns,
                "meshwork-control",
                &[
                    "--kubeconfig",
                    &arg(kubeconfig),
                    "--node-name",
                    &n.name,
                    "--cgroup",
                    &arg(&cg),
                    "--pin-dir",
                    &arg(&pins),
                    "--admin-listen",
                    "127.0.0.1:10256",
                ],
            )
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("meshwork-control (cargo build --bins): {e}"));
        LabAgent(child)
    }
}

impl Drop for LabAgent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
