//! Lab: nodes and pods from network namespaces (see README.md).

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::Mutex,
};

pub mod capture;
pub mod cgroup;
pub mod cluster;
pub mod components;
pub mod host;
pub mod kubectl;
pub mod proc;
pub mod servers;
pub mod stack;
pub mod stats;
pub mod tcp;
pub mod wait;

use meshwork_cni_spec::Invoker;
pub use meshwork_netlink::Netns;

pub const NETNS_DIR: &str = "/run/netns";
/// Reference plugins from Debian's containernetworking-plugins.
pub const REFERENCE_CNI_DIR: &str = "/usr/lib/cni";
pub const UNDERLAY_SUBNET: &str = "198.18.0.0/24";

/// Fails the test with a clear message unless we are root (CI runs as root).
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test builds network namespaces and needs root (CI runs as root); run the suite \
         via scripts/test.sh as root"
    );
}

/// Runs a command, panicking with its output if it fails.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command, returning its output whatever the exit status.
pub fn sh_out(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"))
}

/// A node: a namespace on the underlay.
#[derive(Clone, Debug)]
pub struct Node {
    pub name: String,
    pub netns: String,
    pub underlay_ip: Ipv4Addr,
    pub uplink: String,
}

impl Node {
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.netns)
    }
}

/// A namespace for a pod; the CNI plugin wires it.
#[derive(Clone, Debug)]
pub struct PodNs {
    pub name: String,
    pub netns: String,
}

impl PodNs {
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.netns)
    }
    pub fn path_str(&self) -> String {
        self.path().to_string_lossy().into_owned()
    }
}

pub struct Lab {
    prefix: String,
    underlay: String,
    namespaces: Mutex<Vec<String>>,
    children: Mutex<Vec<Child>>,
    next_host: Mutex<u8>,
    dir: tempfile::TempDir,
    bin_dir: PathBuf,
}

impl Lab {
    /// A new lab for the test `name` (use the test function's name: it makes the prefix).
    pub fn new(name: &str) -> Lab {
        Self::with_plugin(name, &cni_plugin_binary())
    }

    /// A lab whose `meshwork` plugin is the binary at `plugin` (e.g. the installed one).
    pub fn with_plugin(name: &str, plugin: &Path) -> Lab {
        require_root();
        let tag: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let prefix = format!("mwl-{tag}-");
        sweep(&prefix);
        let dir = tempfile::Builder::new()
            .prefix(&format!("mwl-{tag}-"))
            .tempdir()
            .unwrap_or_else(|e| panic!("creating lab temp dir: {e}"));
        let bin_dir = dir.path().join("bin");
        std::fs::create_dir_all(&bin_dir).unwrap_or_else(|e| panic!("{e}"));
        std::os::unix::fs::symlink(plugin, bin_dir.join("meshwork"))
            .unwrap_or_else(|e| panic!("linking plugin: {e}"));
        let underlay = format!("{prefix}underlay");
        let lab = Lab {
            prefix,
            underlay: underlay.clone(),
            namespaces: Mutex::new(Vec::new()),
            children: Mutex::new(Vec::new()),
            next_host: Mutex::new(1),
            dir,
            bin_dir,
        };
        // Leftovers of a crashed run: cgroups and bpffs pins under our prefix.
        lab.remove_node_state();
        lab.add_netns(&underlay);
        lab.exec(&underlay, &["ip", "link", "add", "br0", "type", "bridge"]);
        lab.exec(&underlay, &["ip", "link", "set", "br0", "up"]);
        lab.exec(&underlay, &["ip", "link", "set", "lo", "up"]);
        lab
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A scratch dir removed with the lab (CNI state dirs, configs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn add_netns(&self, name: &str) {
        sh(&["ip", "netns", "add", name]);
        self.namespaces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(name.to_string());
    }

    /// Runs `args` inside namespace `ns` (a lab netns name), panicking on failure.
    pub fn exec(&self, ns: &str, args: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", ns];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// Like [`Lab::exec`] but returns the output whatever the status.
    pub fn exec_out(&self, ns: &str, args: &[&str]) -> Output {
        let mut full = vec!["ip", "netns", "exec", ns];
        full.extend_from_slice(args);
        sh_out(&full)
    }

    /// Starts a long-running command in `ns`; it is killed when the lab drops.
    pub fn spawn(&self, ns: &str, args: &[&str]) -> u32 {
        let child = Command::new("ip")
            .args(["netns", "exec", ns])
            .args(args)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {args:?} in {ns}: {e}"));
        let pid = child.id();
        self.children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(child);
        pid
    }

    /// A node namespace on the underlay with `eth0` = 198.18.0.N/24 and forwarding on.
    pub fn node(&self, name: &str) -> Node {
        let host = {
            let mut n = self.next_host.lock().unwrap_or_else(|p| p.into_inner());
            let h = *n;
            *n += 1;
            h
        };
        let netns = format!("{}{name}", self.prefix);
        self.add_netns(&netns);
        let ip = Ipv4Addr::new(198, 18, 0, host);
        let peer = format!("n{host}");
        // Created inside the underlay namespace, so no link ever exists in the root namespace.
        self.exec(
            &self.underlay,
            &[
                "ip", "link", "add", &peer, "type", "veth", "peer", "name", "eth0", "netns", &netns,
            ],
        );
        self.exec(
            &self.underlay,
            &["ip", "link", "set", &peer, "master", "br0", "up"],
        );
        self.exec(&netns, &["ip", "link", "set", "lo", "up"]);
        self.exec(
            &netns,
            &["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"],
        );
        self.exec(&netns, &["ip", "link", "set", "eth0", "up"]);
        // Per-namespace sysctl: the host's ip_forward is untouched.
        self.exec(&netns, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        self.exec(&netns, &["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
        Node {
            name: name.to_string(),
            netns,
            underlay_ip: ip,
            uplink: "eth0".into(),
        }
    }

    /// An empty pod namespace (lo down, no links), to be wired by a CNI plugin.
    pub fn pod_netns(&self, node: &Node, name: &str) -> PodNs {
        let netns = format!("{}{}-{name}", self.prefix, node.name);
        self.add_netns(&netns);
        PodNs {
            name: name.to_string(),
            netns,
        }
    }

    /// Plugin dir holding `meshwork` (the built plugin).
    pub fn cni_bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// An invoker that runs plugins inside `node`, searching our plugin then the reference ones.
    pub fn invoker(&self, node: &Node) -> Invoker {
        Invoker::new([self.bin_dir.clone(), PathBuf::from(REFERENCE_CNI_DIR)]).in_netns(node.path())
    }

    /// Opens a lab namespace for in-process sockets (`Netns::run`).
    pub fn open(&self, netns: &str) -> Netns {
        Netns::open(Path::new(NETNS_DIR).join(netns)).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Lists the links of a namespace (names only).
    pub fn links(&self, netns: &str) -> Vec<String> {
        let out = self.exec(netns, &["ip", "-o", "link", "show"]);
        out.lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_string())
            .collect()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for mut c in self
            .children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            let _ = c.kill();
            let _ = c.wait();
        }
        let names: Vec<String> = self
            .namespaces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        for ns in names.iter().rev() {
            kill_pids_in(ns);
            let _ = sh_out(&["ip", "netns", "del", ns]);
        }
        // Anything created under our prefix by code under test (e.g. a runtime) goes too.
        sweep(&self.prefix);
        self.remove_node_state();
    }
}

/// Deletes namespaces whose name starts with `prefix` (leftovers of a crashed run).
pub fn sweep(prefix: &str) {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(prefix) {
            kill_pids_in(&name);
            let _ = sh_out(&["ip", "netns", "del", &name]);
        }
    }
}

/// Kills processes still living in a lab namespace so it can really go away.
fn kill_pids_in(ns: &str) {
    let out = sh_out(&["ip", "netns", "pids", ns]);
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        if let Ok(pid) = pid.parse::<i32>() {
            // SAFETY: kill(2) with a pid we just read; a stale pid at worst gets ESRCH.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// The built `meshwork-cni` binary: `$MESHWORK_CNI_BIN`, else next to the test executable's
/// target dir (`target/<profile>/meshwork-cni`; scripts/test.sh builds it first).
pub fn cni_plugin_binary() -> PathBuf {
    match std::env::var_os("MESHWORK_CNI_BIN") {
        Some(p) => PathBuf::from(p),
        None => cgroup::lab_binary("meshwork-cni"),
    }
}

/// The whitespace-terminated token right after `key` in `text` (`"mtu "`, `"ok="`, ...): how
/// tests read `ip -o` and client output.
pub fn field_after<'a>(text: &'a str, key: &str) -> &'a str {
    text.split(key)
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no {key:?} in {text:?}"))
}

impl Lab {
    /// The MTU of link `dev` in namespace `netns`.
    pub fn link_mtu(&self, netns: &str, dev: &str) -> u32 {
        let l = self.exec(netns, &["ip", "-o", "link", "show", "dev", dev]);
        field_after(&l, "mtu ")
            .parse()
            .unwrap_or_else(|e| panic!("mtu of {dev} in {l:?}: {e}"))
    }
}

/// A conflist for our plugin on `node` with pod subnet `subnet`, routes limited to `routes`
/// (never a default route in the lab), state under the lab dir.
pub fn conflist(lab: &Lab, name: &str, subnet: &str, routes: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "cniVersion": "1.1.0",
        "name": name,
        "plugins": [{
            "type": "meshwork",
            "bridge": "mw0",
            "dataDir": lab.dir().join("cni-state"),
            "ipam": {
                "subnet": subnet,
                "routes": routes.iter().map(|r| serde_json::json!({"dst": r})).collect::<Vec<_>>(),
            }
        }]
    })
}
