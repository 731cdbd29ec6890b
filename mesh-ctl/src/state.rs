//! The state dir of a running cluster (`/var/lib/meshwork` by default): what `up` started, so
//! that `status`, `logs` and `down` find it from another process.
//!
//! ```text
//! supervisor.pid     the supervisor's pid (alive = the cluster is up)
//! cluster.json       ClusterInfo: lab prefix, nodes, API URL, kubeconfig merged into
//! components.json    ComponentStatus per supervised process
//! logs/<name>.log    each component's stdout and stderr (and the supervisor's)
//! apiserver/         the API server's data dir (SQLite, CA, tokens, kubeconfigs)
//! nodes/<node>/      per node: CNI config dir, runtime root dir, CNI state
//! ```

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

pub const DEFAULT_STATE_DIR: &str = "/var/lib/meshwork";

#[derive(Clone, Debug)]
pub struct StateDir(pub PathBuf);

impl StateDir {
    pub fn pid_file(&self) -> PathBuf {
        self.0.join("supervisor.pid")
    }
    pub fn cluster_file(&self) -> PathBuf {
        self.0.join("cluster.json")
    }
    pub fn components_file(&self) -> PathBuf {
        self.0.join("components.json")
    }
    pub fn logs(&self) -> PathBuf {
        self.0.join("logs")
    }
    pub fn log(&self, component: &str) -> PathBuf {
        self.logs().join(format!("{component}.log"))
    }
    pub fn apiserver(&self) -> PathBuf {
        self.0.join("apiserver")
    }
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.apiserver().join("admin.kubeconfig")
    }
    /// The mesh CA: trust anchor and issuer (identity.rs).
    pub fn identity(&self) -> PathBuf {
        self.0.join("identity")
    }
    /// The proxy injector's webhook CA and serving certificate (injector.rs).
    pub fn injector(&self) -> PathBuf {
        self.0.join("injector")
    }
    pub fn node(&self, name: &str) -> PathBuf {
        self.0.join("nodes").join(name)
    }

    /// The supervisor's pid if it is alive.
    pub fn running(&self) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(self.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()?;
        // SAFETY: signal 0 only checks that the process exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        // A recycled pid must be a mesh-ctl too.
        let ours = std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|c| c.contains("mesh-ctl") && c.contains("supervise"));
        (alive && ours).then_some(pid)
    }

    pub fn cluster(&self) -> Result<ClusterInfo> {
        read_json(&self.cluster_file())
    }

    pub fn components(&self) -> Vec<ComponentStatus> {
        read_json(&self.components_file()).unwrap_or_default()
    }
}

pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Writes through a temporary file and a rename, so a reader never sees half a file.
pub fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(v)?)
        .with_context(|| tmp.display().to_string())?;
    std::fs::rename(&tmp, path).with_context(|| path.display().to_string())
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeInfo {
    pub name: String,
    pub netns: String,
    pub ip: Ipv4Addr,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterInfo {
    /// Name prefix of every namespace, cgroup and pin dir of the cluster.
    pub prefix: String,
    pub nodes: Vec<NodeInfo>,
    pub api_url: String,
    pub host_link: String,
    /// The kubeconfig file the `meshwork` context was merged into.
    pub user_kubeconfig: Option<PathBuf>,
    pub monitoring: bool,
    /// Unix seconds.
    pub started: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ComponentStatus {
    pub name: String,
    /// Where it runs: a node name, or `host`.
    pub on: String,
    pub pid: Option<u32>,
    pub restarts: u32,
    /// Unix seconds of the current run's start.
    pub since: u64,
    pub last_exit: Option<String>,
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// kubectl 1.33, as scripts/setup.sh provides it; `MESHWORK_KUBECTL` overrides, and a
/// `kubectl` on PATH is the last resort.
pub fn kubectl() -> PathBuf {
    if let Some(p) = std::env::var_os("MESHWORK_KUBECTL") {
        return PathBuf::from(p);
    }
    let installed = Path::new(meshwork_lab::kubectl::KUBECTL);
    if installed.exists() {
        return installed.to_path_buf();
    }
    PathBuf::from("kubectl")
}
