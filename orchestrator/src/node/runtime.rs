//! The pod runtime behind the node agent, shaped like CRI (RunPodSandbox, StartContainer,
//! StopContainer, ExecSync, StopPodSandbox, list for adoption) so a containerd backend can take
//! the trait's place. `ProcessRuntime` is the bundled one: a sandbox is a named network
//! namespace wired by the CNI plugin (called as containerd calls it) plus a cgroup; a
//! container is a process run through the shim (`shim.rs`) in the sandbox's namespaces, with
//! a root from the image catalog. Everything it makes is recorded under the root dir, so a
//! restarted runtime adopts running pods instead of killing them.

use std::{
    future::Future,
    net::IpAddr,
    os::fd::{FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    sync::Mutex as StdMutex,
    time::{Duration, Instant},
};

use meshwork_cni_spec::{
    invoke::{read_conflist, Invoker, RuntimeConf},
    types::{CniResult, NetConfList},
};
use meshwork_netlink::{Netlink, Netns};
use serde::{Deserialize, Serialize};

use super::catalog::{build_busybox_root, Catalog, Root};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// No CNI config yet: the node's network is not ready (kubelet's NetworkPluginNotReady).
    #[error("network plugin not ready: no CNI configuration in {0}")]
    NetworkNotReady(String),
    #[error("CNI ADD for pod {pod}: {msg}")]
    Cni { pod: String, msg: String },
    #[error("image {0:?} is not in this node's image catalog")]
    ImageNotFound(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let what = what.into();
    move |source| RuntimeError::Io { what, source }
}

/// What a sandbox needs from the pod.
#[derive(Clone, Debug)]
pub struct SandboxConfig {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub hostname: String,
    /// Contents of the pod's /etc/resolv.conf.
    pub resolv_conf: String,
    /// `hostNetwork: true`: the node's own network namespace, no CNI, the node's address.
    pub host_network: bool,
    pub host_ip: IpAddr,
    /// Outbound interception for a meshed pod (`mesh.rs`).
    pub mesh: Option<super::mesh::MeshSpec>,
}

/// A running sandbox (recorded as `sandbox.json`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Sandbox {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub hostname: String,
    pub netns: String,
    pub netns_path: PathBuf,
    /// In the node's network namespace (the runtime's own): no netns or CNI to tear down.
    #[serde(default)]
    pub host_network: bool,
    pub cgroup: PathBuf,
    pub dir: PathBuf,
    pub ip: Option<IpAddr>,
    /// Intercepted: the programs are attached to its cgroup (`mesh.rs`).
    #[serde(default)]
    pub mesh: Option<super::mesh::MeshSpec>,
    /// Where the time went, for the start-latency figures.
    pub netns_ms: f64,
    pub cni_ms: f64,
}

/// What a container run needs.
#[derive(Clone, Debug)]
pub struct ContainerConfig {
    pub name: String,
    pub image: String,
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub workdir: Option<String>,
    pub attempt: u32,
    /// Volume bind mounts, `SRC:DST[:ro]` (node/volumes.rs).
    pub mounts: Vec<String>,
}

/// One run of a container (recorded as `containers/<name>/state.json`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Container {
    pub pod_uid: String,
    pub name: String,
    pub image: String,
    pub attempt: u32,
    /// The shim's pid and its start time in clock ticks (pid reuse check on adoption).
    pub pid: i32,
    pub start_ticks: u64,
    pub started_at: i64,
    pub log: PathBuf,
    pub exit_file: PathBuf,
    pub cgroup: PathBuf,
}

impl Container {
    pub fn id(&self) -> String {
        format!("{}-{}-{}", self.pod_uid, self.name, self.attempt)
    }
}

/// How a container run ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Exit {
    pub code: i32,
    pub reason: String,
}

pub trait PodRuntime: Send + Sync + 'static {
    fn run_sandbox(
        &self,
        cfg: &SandboxConfig,
    ) -> impl Future<Output = Result<Sandbox, RuntimeError>> + Send;
    fn stop_sandbox(&self, sb: &Sandbox) -> impl Future<Output = Result<(), RuntimeError>> + Send;
    fn start_container(
        &self,
        sb: &Sandbox,
        c: &ContainerConfig,
    ) -> impl Future<Output = Result<Container, RuntimeError>> + Send;
    /// Resolves when the run ends.
    fn wait(&self, c: &Container) -> impl Future<Output = Exit> + Send;
    /// SIGTERM, then SIGKILL to everything of the container after `grace`.
    fn stop_container(&self, c: &Container, grace: Duration) -> impl Future<Output = ()> + Send;
    /// Runs `cmd` inside a running container: (exit code, output).
    fn exec(
        &self,
        c: &Container,
        cmd: &[String],
        timeout: Duration,
    ) -> impl Future<Output = Result<(i32, Vec<u8>), RuntimeError>> + Send;
    /// Sandboxes and their last container runs found on disk (for adoption).
    fn list(&self) -> Vec<(Sandbox, Vec<Container>)>;
    /// Whether the run is still alive (the same process, not a reused pid).
    fn alive(&self, c: &Container) -> bool;
    /// Hands the meshed pod's proxy (run `proxy`) its inbound connections: false while it
    /// does not listen yet.
    fn register_inbound(
        &self,
        sb: &Sandbox,
        proxy: &Container,
    ) -> impl Future<Output = Result<bool, RuntimeError>> + Send;
}

/// Settings of the bundled runtime.
#[derive(Clone, Debug)]
pub struct ProcessRuntimeConfig {
    pub root_dir: PathBuf,
    pub cni_conf_dir: PathBuf,
    pub cni_bin_dirs: Vec<PathBuf>,
    pub cgroup_root: PathBuf,
    pub netns_prefix: String,
    pub catalog: Catalog,
    /// This binary, run as `shim`.
    pub shim: PathBuf,
    /// bpffs directory of the meshed pods' interception (maps and per-pod links).
    pub mesh_pin_dir: PathBuf,
}

pub struct ProcessRuntime {
    cfg: ProcessRuntimeConfig,
    /// Loaded at the first meshed pod: nodes that never run one need no eBPF.
    mesh: StdMutex<Option<meshwork_ebpf::mesh::Interceptor>>,
}

const NETNS_DIR: &str = "/run/netns";

/// The first conflist (or conf) of a CNI config dir, in name order — as libcni picks it.
pub fn find_cni_config(dir: &Path) -> Option<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("conflist" | "conf" | "json")
            )
        })
        .collect();
    files.sort();
    files.into_iter().next()
}

fn load_netconf(path: &Path) -> Result<NetConfList, RuntimeError> {
    if path.extension().and_then(|e| e.to_str()) == Some("conflist") {
        return read_conflist(path).map_err(io(format!("reading {}", path.display())));
    }
    // A single-plugin .conf: wrap it as a list, as libcni's ConfListFromConf does.
    let text = std::fs::read_to_string(path).map_err(io(format!("reading {}", path.display())))?;
    let conf: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| RuntimeError::Other(format!("{}: {e}", path.display())))?;
    let list = serde_json::json!({
        "cniVersion": conf.get("cniVersion").cloned().unwrap_or("1.0.0".into()),
        "name": conf.get("name").cloned().unwrap_or("".into()),
        "plugins": [conf],
    });
    NetConfList::from_json(&list.to_string())
        .map_err(|e| RuntimeError::Other(format!("{}: {e}", path.display())))
}

/// Start time of a process in clock ticks (field 22 of /proc/PID/stat).
pub fn start_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    after.split_whitespace().nth(19)?.parse().ok()
}

fn now_secs() -> i64 {
    crate::api::kind::now_seconds().as_second()
}

fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<(), RuntimeError> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(v).unwrap_or_default())
        .map_err(io(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(io(format!("writing {}", path.display())))
}

/// Kills everything in a cgroup (cgroup.kill) and waits until it is empty (bounded).
async fn kill_cgroup(dir: &Path) {
    if !dir.exists() {
        return;
    }
    let _ = std::fs::write(dir.join("cgroup.kill"), "1");
    for _ in 0..300 {
        let events = std::fs::read_to_string(dir.join("cgroup.events")).unwrap_or_default();
        if !events.contains("populated 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Removes a cgroup directory and its children, deepest first.
fn remove_cgroup_tree(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup_tree(&e.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}

async fn pidfd_wait(pid: i32) {
    // SAFETY: pidfd_open returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return; // already gone
    }
    // SAFETY: a fresh fd we own.
    let owned = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: `owned` is a valid, open pidfd the AsyncFd takes ownership of.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE)
    };
    match registered {
        Ok(afd) => {
            let _ = afd.readable().await;
        }
        Err(_) => {
            while std::path::Path::new(&format!("/proc/{pid}")).exists() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

impl ProcessRuntime {
    pub fn new(cfg: ProcessRuntimeConfig) -> Result<Self, RuntimeError> {
        std::fs::create_dir_all(cfg.root_dir.join("pods")).map_err(io("creating root dir"))?;
        std::fs::create_dir_all(&cfg.cgroup_root)
            .map_err(io(format!("creating cgroup {}", cfg.cgroup_root.display())))?;
        Ok(ProcessRuntime {
            cfg,
            mesh: StdMutex::new(None),
        })
    }

    /// Runs `f` with the node's interception programs, loading them first if need be.
    fn with_mesh<T>(
        &self,
        f: impl FnOnce(&mut meshwork_ebpf::mesh::Interceptor) -> Result<T, meshwork_ebpf::Error>,
    ) -> Result<T, RuntimeError> {
        let mut g = self.mesh.lock().unwrap_or_else(|p| p.into_inner());
        if g.is_none() {
            let i =
                meshwork_ebpf::mesh::Interceptor::open(&self.cfg.mesh_pin_dir).map_err(|e| {
                    RuntimeError::Other(format!("loading the mesh interception programs: {e}"))
                })?;
            *g = Some(i);
        }
        let Some(i) = g.as_mut() else {
            return Err(RuntimeError::Other("mesh interception not loaded".into()));
        };
        f(i).map_err(|e| RuntimeError::Other(format!("mesh interception: {e}")))
    }

    /// Attaches the interception to a new sandbox's cgroup (before any container runs in
    /// it); the spec it records carries the namespace's cookie.
    fn intercept(
        &self,
        uid: &str,
        cgroup: &Path,
        netns: &Path,
        spec: &super::mesh::MeshSpec,
    ) -> Result<super::mesh::MeshSpec, RuntimeError> {
        let cookie = meshwork_ebpf::sys::netns_cookie(netns)
            .map_err(|e| RuntimeError::Other(format!("mesh interception: {e}")))?;
        self.with_mesh(|i| i.attach(&format!("pod{uid}"), cgroup))?;
        Ok(super::mesh::MeshSpec {
            netns_cookie: cookie,
            ..spec.clone()
        })
    }

    pub fn config(&self) -> &ProcessRuntimeConfig {
        &self.cfg
    }

    fn invoker(&self) -> Invoker {
        Invoker::new(self.cfg.cni_bin_dirs.clone())
    }

    fn cni_rt(&self, sb_uid: &str, ns: &str, name: &str, netns: &Path) -> RuntimeConf {
        RuntimeConf {
            container_id: format!("meshwork-{sb_uid}"),
            netns: netns.display().to_string(),
            ifname: "eth0".into(),
            // What containerd's CRI plugin passes.
            args: vec![
                ("IgnoreUnknown".into(), "1".into()),
                ("K8S_POD_NAMESPACE".into(), ns.into()),
                ("K8S_POD_NAME".into(), name.into()),
                (
                    "K8S_POD_INFRA_CONTAINER_ID".into(),
                    format!("meshwork-{sb_uid}"),
                ),
                ("K8S_POD_UID".into(), sb_uid.into()),
            ],
            capability_args: Default::default(),
        }
    }
}

/// Sets the new namespace's loopback up (the kernel creates it down), over netlink.
async fn loopback_up(ns: &Netns) -> Result<(), RuntimeError> {
    let nl = Netlink::connect_in(ns).map_err(|e| RuntimeError::Other(e.to_string()))?;
    let lo = nl
        .link_by_name("lo")
        .await
        .map_err(|e| RuntimeError::Other(e.to_string()))?
        .ok_or_else(|| RuntimeError::Other(format!("no lo in {}", ns.path().display())))?;
    nl.set_up(lo.index)
        .await
        .map_err(|e| RuntimeError::Other(e.to_string()))
}

/// /etc/resolv.conf, hosts and hostname of a pod (bound into its containers).
fn write_etc(dir: &Path, cfg: &SandboxConfig, ip: Option<IpAddr>) -> Result<(), RuntimeError> {
    let etc = dir.join("etc");
    std::fs::write(etc.join("resolv.conf"), &cfg.resolv_conf).map_err(io("writing resolv.conf"))?;
    let hosts = format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{}\t{}\n",
        ip.map(|i| i.to_string())
            .unwrap_or_else(|| "127.0.1.1".into()),
        cfg.hostname
    );
    std::fs::write(etc.join("hosts"), hosts).map_err(io("writing hosts"))?;
    std::fs::write(etc.join("hostname"), format!("{}\n", cfg.hostname))
        .map_err(io("writing hostname"))
}

/// The network namespace of whoever opens it: a host-network pod's shim (a child of the
/// runtime, which runs in the node's namespace) joins the namespace it is already in, and
/// port-forward connects from the runtime's own.
const OWN_NETNS: &str = "/proc/self/ns/net";

impl ProcessRuntime {
    /// A host-network sandbox: only the cgroup and the pod's files. It needs no CNI config,
    /// so it starts on a node whose network is not ready yet (the agent DaemonSet that
    /// readies it, as a CNI DaemonSet does on a kubelet node).
    fn run_host_sandbox(&self, cfg: &SandboxConfig) -> Result<Sandbox, RuntimeError> {
        let dir = self.cfg.root_dir.join("pods").join(&cfg.uid);
        std::fs::create_dir_all(dir.join("etc")).map_err(io("creating pod dir"))?;
        let cgroup = self.cfg.cgroup_root.join(format!("pod{}", cfg.uid));
        std::fs::create_dir_all(&cgroup).map_err(io(format!("creating {}", cgroup.display())))?;
        write_etc(&dir, cfg, Some(cfg.host_ip))?;
        let sb = Sandbox {
            uid: cfg.uid.clone(),
            namespace: cfg.namespace.clone(),
            name: cfg.name.clone(),
            hostname: cfg.hostname.clone(),
            netns: String::new(),
            netns_path: OWN_NETNS.into(),
            host_network: true,
            cgroup,
            dir: dir.clone(),
            ip: Some(cfg.host_ip),
            // The node's own traffic is never intercepted (the injector skips such pods).
            mesh: None,
            netns_ms: 0.0,
            cni_ms: 0.0,
        };
        write_json(&dir.join("sandbox.json"), &sb)?;
        Ok(sb)
    }
}

impl PodRuntime for ProcessRuntime {
    async fn register_inbound(
        &self,
        sb: &Sandbox,
        proxy: &Container,
    ) -> Result<bool, RuntimeError> {
        let Some((m, addr)) = sb.mesh.as_ref().and_then(|m| Some((m, m.addr?))) else {
            return Ok(false);
        };
        let sock =
            meshwork_ebpf::sys::listener_in_cgroup(&proxy.cgroup, m.inbound_port, m.netns_cookie)
                .map_err(|e| RuntimeError::Other(format!("mesh interception: {e}")))?;
        let Some(sock) = sock else {
            return Ok(false);
        };
        self.with_mesh(|i| i.listener(addr, std::os::fd::AsFd::as_fd(&sock)))?;
        Ok(true)
    }

    async fn run_sandbox(&self, cfg: &SandboxConfig) -> Result<Sandbox, RuntimeError> {
        if cfg.host_network {
            return self.run_host_sandbox(cfg);
        }
        let conf_path = find_cni_config(&self.cfg.cni_conf_dir).ok_or_else(|| {
            RuntimeError::NetworkNotReady(self.cfg.cni_conf_dir.display().to_string())
        })?;
        let netconf = load_netconf(&conf_path)?;
        let dir = self.cfg.root_dir.join("pods").join(&cfg.uid);
        std::fs::create_dir_all(dir.join("etc")).map_err(io("creating pod dir"))?;
        let short: String = cfg.uid.chars().filter(|c| *c != '-').take(12).collect();
        let netns = format!("{}{short}", self.cfg.netns_prefix);
        let netns_path = Path::new(NETNS_DIR).join(&netns);
        let t0 = Instant::now();
        let ns = if netns_path.exists() {
            Netns::open(&netns_path)
        } else {
            Netns::create(&netns_path)
        }
        .map_err(|e| RuntimeError::Other(e.to_string()))?;
        loopback_up(&ns).await?;
        let cgroup = self.cfg.cgroup_root.join(format!("pod{}", cfg.uid));
        std::fs::create_dir_all(&cgroup).map_err(io(format!("creating {}", cgroup.display())))?;
        let mesh = match &cfg.mesh {
            Some(spec) => Some(self.intercept(&cfg.uid, &cgroup, &netns_path, spec)?),
            None => None,
        };
        // What fails from here leaves no interception behind (the pod is retried afresh).
        let cookie = mesh.as_ref().map(|m| m.netns_cookie);
        let res: Result<Sandbox, RuntimeError> = async {
            let netns_ms = t0.elapsed().as_secs_f64() * 1e3;
            let t1 = Instant::now();
            let rt = self.cni_rt(&cfg.uid, &cfg.namespace, &cfg.name, &netns_path);
            let invoker = self.invoker();
            let list = netconf.clone();
            let res = tokio::task::spawn_blocking(move || invoker.add(&list, &rt))
                .await
                .map_err(|e| RuntimeError::Other(e.to_string()))?
                .map_err(|e| RuntimeError::Cni {
                    pod: format!("{}/{}", cfg.namespace, cfg.name),
                    msg: e.to_string(),
                })?;
            let cni_ms = t1.elapsed().as_secs_f64() * 1e3;
            // DEL must see the config ADD saw, and the result.
            write_json(&dir.join("cni-config.json"), &netconf)?;
            std::fs::write(
                dir.join("cni-result.json"),
                res.to_json(&netconf.cni_version).to_string(),
            )
            .map_err(io("writing CNI result"))?;
            let ip = res
                .ips
                .iter()
                .map(|i| i.address.addr())
                .find(|a| a.is_ipv4())
                .or_else(|| res.ips.first().map(|i| i.address.addr()));
            write_etc(&dir, cfg, ip)?;
            // Inbound steering keys on the pod's address: known only now.
            let mesh = match mesh {
                Some(mut m) => {
                    let Some(std::net::IpAddr::V4(addr)) = ip else {
                        return Err(RuntimeError::Other(
                            "mesh interception: the pod has no IPv4 address".into(),
                        ));
                    };
                    m.addr = Some(addr);
                    let addr6 = res.ips.iter().find_map(|i| match i.address.addr() {
                        std::net::IpAddr::V6(a) => Some(a),
                        std::net::IpAddr::V4(_) => None,
                    });
                    let inbound = meshwork_ebpf::mesh::MeshInbound {
                        addr,
                        addr6,
                        inbound_port: m.inbound_port,
                        admin_port: m.admin_port,
                        skip_inbound_ports: m.skip_inbound_ports.clone(),
                    };
                    let pod = format!("pod{}", cfg.uid);
                    self.with_mesh(|i| i.attach_inbound(&pod, &netns_path, &inbound))?;
                    Some(m)
                }
                None => None,
            };
            let sb = Sandbox {
                uid: cfg.uid.clone(),
                namespace: cfg.namespace.clone(),
                name: cfg.name.clone(),
                hostname: cfg.hostname.clone(),
                netns,
                netns_path,
                host_network: false,
                cgroup,
                dir: dir.clone(),
                ip,
                mesh,
                netns_ms,
                cni_ms,
            };
            write_json(&dir.join("sandbox.json"), &sb)?;
            Ok(sb)
        }
        .await;
        if let (Err(_), Some(cookie)) = (&res, cookie) {
            let pod = format!("pod{}", cfg.uid);
            if let Err(e) = self.with_mesh(|i| i.remove(&pod, Some(cookie), None)) {
                tracing::warn!(pod = %cfg.name, error = %e, "removing the mesh interception");
            }
        }
        res
    }

    async fn stop_sandbox(&self, sb: &Sandbox) -> Result<(), RuntimeError> {
        kill_cgroup(&sb.cgroup).await;
        if let Some(m) = &sb.mesh {
            // Best effort: the pod's address, namespace and cgroup must go whatever happens
            // here (the next pod with this address gets its entries rewritten).
            let pod = format!("pod{}", sb.uid);
            if let Err(e) = self.with_mesh(|i| i.remove(&pod, Some(m.netns_cookie), m.addr)) {
                tracing::warn!(pod = %sb.name, error = %e, "removing the mesh interception");
            }
        }
        remove_cgroup_tree(&sb.cgroup);
        if sb.host_network {
            return std::fs::remove_dir_all(&sb.dir)
                .map_err(io(format!("removing {}", sb.dir.display())));
        }
        let conf: Option<NetConfList> = std::fs::read_to_string(sb.dir.join("cni-config.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok());
        let prev: Option<CniResult> = std::fs::read_to_string(sb.dir.join("cni-result.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| CniResult::from_value(v).ok());
        if let Some(conf) = conf {
            let rt = self.cni_rt(&sb.uid, &sb.namespace, &sb.name, &sb.netns_path);
            let invoker = self.invoker();
            let r = tokio::task::spawn_blocking(move || invoker.del(&conf, &rt, prev.as_ref()))
                .await
                .map_err(|e| RuntimeError::Other(e.to_string()))?;
            if let Err(e) = r {
                tracing::warn!(pod = %sb.name, error = %e, "CNI DEL failed");
            }
        }
        if sb.netns_path.exists() {
            Netns::delete(&sb.netns_path).map_err(|e| RuntimeError::Other(e.to_string()))?;
        }
        std::fs::remove_dir_all(&sb.dir).map_err(io(format!("removing {}", sb.dir.display())))?;
        Ok(())
    }

    async fn start_container(
        &self,
        sb: &Sandbox,
        c: &ContainerConfig,
    ) -> Result<Container, RuntimeError> {
        let image = self
            .cfg
            .catalog
            .find(&c.image)
            .ok_or_else(|| RuntimeError::ImageNotFound(c.image.clone()))?
            .clone();
        let cdir = sb.dir.join("containers").join(&c.name);
        std::fs::create_dir_all(&cdir).map_err(io("creating container dir"))?;
        let etc = sb.dir.join("etc");
        let mut binds: Vec<String> = Vec::new();
        let rootfs = match &image.root {
            Root::Host => PathBuf::from("/"),
            Root::Dir { path } => path.clone(),
            Root::Busybox { binary } => {
                let r = cdir.join("rootfs");
                if !r.join("bin/busybox").exists() {
                    let (b, r2) = (binary.clone(), r.clone());
                    tokio::task::spawn_blocking(move || build_busybox_root(&b, &r2))
                        .await
                        .map_err(|e| RuntimeError::Other(e.to_string()))?
                        .map_err(io("building busybox root"))?;
                }
                r
            }
        };
        for f in ["resolv.conf", "hosts", "hostname"] {
            binds.push(format!("{}:/etc/{f}", etc.join(f).display()));
        }
        binds.extend(c.mounts.iter().cloned());
        for (i, w) in image.writable.iter().enumerate() {
            let src = cdir.join("writable").join(i.to_string());
            std::fs::create_dir_all(&src).map_err(io("creating writable dir"))?;
            binds.push(format!("{}:{}", src.display(), w.display()));
        }
        let (cmd, args) = if c.command.is_empty() {
            let args = if c.args.is_empty() {
                image.cmd.clone()
            } else {
                c.args.clone()
            };
            (image.entrypoint.clone(), args)
        } else {
            (c.command.clone(), c.args.clone())
        };
        let argv: Vec<String> = cmd.into_iter().chain(args).collect();
        if argv.is_empty() {
            return Err(RuntimeError::Other(format!(
                "container {}: no command given and image {} has none",
                c.name, c.image
            )));
        }
        let mut env: Vec<(String, String)> = image.env.clone().into_iter().collect();
        env.push(("HOSTNAME".into(), sb.hostname.clone()));
        for (k, v) in &c.env {
            env.retain(|(ek, _)| ek != k);
            env.push((k.clone(), v.clone()));
        }
        let cgroup = sb.cgroup.join(&c.name);
        std::fs::create_dir_all(&cgroup).map_err(io(format!("creating {}", cgroup.display())))?;
        // The proxy's own connections go where they are sent: interception starts, with its
        // container exempt, before it runs (and so before anything else of the pod does).
        if let Some(m) = sb.mesh.as_ref().filter(|m| m.proxy_container == c.name) {
            let proxy_cgroup = meshwork_ebpf::sys::cgroup_id(&cgroup)
                .map_err(|e| RuntimeError::Other(format!("mesh interception: {e}")))?;
            let pod = meshwork_ebpf::mesh::MeshPod {
                proxy_cgroup,
                outbound_port: m.outbound_port,
                skip_outbound_ports: m.skip_outbound_ports.clone(),
                skip_outbound_nets: m.skip_subnets.clone(),
            };
            self.with_mesh(|i| i.enable(m.netns_cookie, &pod))?;
        }
        let log = cdir.join(format!("{}.log", c.attempt));
        let exit_file = cdir.join(format!("{}.exit", c.attempt));
        let _ = std::fs::remove_file(&exit_file);
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(io(format!("opening {}", log.display())))?;
        let errf = logf.try_clone().map_err(io("log file"))?;
        let mut cmd = std::process::Command::new(&self.cfg.shim);
        cmd.arg("shim")
            .arg("--netns")
            .arg(&sb.netns_path)
            .arg("--cgroup")
            .arg(&cgroup)
            .arg("--rootfs")
            .arg(&rootfs)
            .arg("--hostname")
            .arg(&sb.hostname)
            .arg("--exit-file")
            .arg(&exit_file);
        if let Some(w) = c
            .workdir
            .clone()
            .or(image.workdir.as_ref().map(|w| w.display().to_string()))
        {
            cmd.arg("--workdir").arg(w);
        }
        for b in &binds {
            cmd.arg("--bind").arg(b);
        }
        for (k, v) in &env {
            cmd.arg("--env").arg(format!("{k}={v}"));
        }
        cmd.arg("--").args(&argv);
        cmd.stdin(std::process::Stdio::null())
            .stdout(logf)
            .stderr(errf)
            .env("MESHWORK_LOG", "warn");
        let child = cmd
            .spawn()
            .map_err(io(format!("starting shim {}", self.cfg.shim.display())))?;
        let pid = child.id() as i32;
        // The shim is reaped by a thread of its own: it must outlive us, not block us.
        std::thread::spawn(move || {
            let mut child = child;
            let _ = child.wait();
        });
        let run = Container {
            pod_uid: sb.uid.clone(),
            name: c.name.clone(),
            image: c.image.clone(),
            attempt: c.attempt,
            pid,
            start_ticks: start_ticks(pid).unwrap_or(0),
            started_at: now_secs(),
            log,
            exit_file,
            cgroup,
        };
        write_json(&cdir.join("state.json"), &run)?;
        Ok(run)
    }

    async fn wait(&self, c: &Container) -> Exit {
        if self.alive(c) {
            pidfd_wait(c.pid).await;
        }
        // The shim writes the exit file before it exits.
        let text = std::fs::read_to_string(&c.exit_file).unwrap_or_default();
        let mut it = text.split_whitespace();
        match (it.next().and_then(|n| n.parse().ok()), it.next()) {
            (Some(code), Some(reason)) => Exit {
                code,
                reason: reason.to_string(),
            },
            _ => Exit {
                code: 137,
                reason: "Error".into(),
            },
        }
    }

    async fn stop_container(&self, c: &Container, grace: Duration) {
        if self.alive(c) {
            // SAFETY: signalling a pid we verified is still our shim.
            unsafe { libc::kill(c.pid, libc::SIGTERM) };
            let _ = tokio::time::timeout(grace, pidfd_wait(c.pid)).await;
        }
        kill_cgroup(&c.cgroup).await;
    }

    async fn exec(
        &self,
        c: &Container,
        cmd: &[String],
        timeout: Duration,
    ) -> Result<(i32, Vec<u8>), RuntimeError> {
        let mut command = tokio::process::Command::new(&self.cfg.shim);
        command
            .arg("shim")
            .arg("--enter")
            .arg(c.pid.to_string())
            .arg("--")
            .args(cmd)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .env("MESHWORK_LOG", "warn");
        let out = tokio::time::timeout(timeout, command.output())
            .await
            .map_err(|_| RuntimeError::Other(format!("exec {cmd:?}: timed out after {timeout:?}")))?
            .map_err(io("exec"))?;
        let mut text = out.stdout;
        text.extend(out.stderr);
        Ok((out.status.code().unwrap_or(128), text))
    }

    fn list(&self) -> Vec<(Sandbox, Vec<Container>)> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(self.cfg.root_dir.join("pods"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let Ok(text) = std::fs::read_to_string(e.path().join("sandbox.json")) else {
                continue;
            };
            let Ok(sb) = serde_json::from_str::<Sandbox>(&text) else {
                continue;
            };
            let mut runs = Vec::new();
            for c in std::fs::read_dir(e.path().join("containers"))
                .into_iter()
                .flatten()
                .flatten()
            {
                if let Some(run) = std::fs::read_to_string(c.path().join("state.json"))
                    .ok()
                    .and_then(|t| serde_json::from_str::<Container>(&t).ok())
                {
                    runs.push(run);
                }
            }
            out.push((sb, runs));
        }
        out
    }

    fn alive(&self, c: &Container) -> bool {
        start_ticks(c.pid).is_some_and(|t| t == c.start_ticks)
            && std::fs::read_to_string(format!("/proc/{}/stat", c.pid))
                .map(|s| !s.contains(") Z "))
                .unwrap_or(false)
    }
}
