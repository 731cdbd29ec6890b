//! Per-node cgroup v2 directories (the socket load balancer attaches there) and per-node bpffs
//! pin directories, both removed with the lab; and processes started inside a node.

use std::{
    ffi::CString,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use crate::{Lab, Node};

/// The cgroup2 mount (the unified hierarchy on hybrid machines).
pub fn cgroup2_root() -> PathBuf {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.len() > 2 && f[2] == "cgroup2")
        .map(|f| PathBuf::from(f[1]))
        .unwrap_or_else(|| panic!("no cgroup2 mount: the socket load balancer needs cgroup v2"))
}

pub const BPF_PIN_ROOT: &str = "/sys/fs/bpf/meshwork";

impl Lab {
    /// The node's cgroup (created on first use): processes started with [`Lab::run_in_node`]
    /// live there.
    pub fn cgroup(&self, node: &Node) -> PathBuf {
        let p = cgroup2_root().join(format!("{}{}", self.prefix, node.name));
        if !p.exists() {
            std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("creating {}: {e}", p.display()));
        }
        p
    }

    /// The node's bpffs pin directory (its own maps and links); removed with the lab.
    pub fn bpf_pin_dir(&self, node: &Node) -> PathBuf {
        Path::new(BPF_PIN_ROOT).join(format!("{}{}", self.prefix, node.name))
    }

    /// Runs a lab binary (e.g. `mwlab-client`) in namespace `netns` inside `node`'s cgroup, and
    /// waits for it.
    pub fn run_in_node(&self, node: &Node, netns: &str, bin: &str, args: &[&str]) -> Output {
        self.command_in_node(node, netns, bin, args)
            .output()
            .unwrap_or_else(|e| panic!("running {bin}: {e}"))
    }

    /// Like [`Lab::run_in_node`] but returns the command to spawn.
    pub fn command_in_node(&self, node: &Node, netns: &str, bin: &str, args: &[&str]) -> Command {
        let procs = CString::new(
            self.cgroup(node)
                .join("cgroup.procs")
                .as_os_str()
                .as_encoded_bytes(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let ns = std::fs::File::open(Path::new(crate::NETNS_DIR).join(netns))
            .unwrap_or_else(|e| panic!("opening netns {netns}: {e}"));
        let mut cmd = Command::new(lab_binary(bin));
        cmd.args(args);
        // SAFETY: only open/write/close/setns between fork and exec (async-signal-safe); the
        // path was built before the fork and `ns` lives in the closure.
        unsafe {
            cmd.pre_exec(move || {
                use std::os::fd::AsRawFd;
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // "0": move the writing process itself.
                let ok = libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
                libc::close(fd);
                if !ok {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }

    pub(crate) fn remove_node_state(&self) {
        remove_node_state(&self.prefix);
    }
}

/// Kills and removes the cgroups and bpffs pin dirs of the lab `prefix` (also those of a lab
/// whose owner died: `mesh-ctl down` after a crashed supervisor).
pub fn remove_node_state(prefix: &str) {
    let root = cgroup2_root();
    for e in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().starts_with(prefix) {
            kill_cgroup(&e.path());
            remove_tree(&e.path());
        }
    }
    for e in std::fs::read_dir(BPF_PIN_ROOT)
        .into_iter()
        .flatten()
        .flatten()
    {
        if e.file_name().to_string_lossy().starts_with(prefix) {
            // Unlinking bpffs pins drops them; links with no other holder detach.
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    let _ = std::fs::remove_dir(BPF_PIN_ROOT);
}

/// Removes a cgroup and the cgroups under it (a node runtime's pod cgroups), deepest first:
/// rmdir of a cgroup with children fails.
fn remove_tree(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&e.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// Kills everything in a lab cgroup and waits (bounded) until it is empty, so the rmdir that
/// follows does not fail with EBUSY and leave the cgroup behind.
fn kill_cgroup(dir: &Path) {
    // cgroup.kill (5.14+) kills the whole subtree atomically; fall back to per-pid kills.
    if std::fs::write(dir.join("cgroup.kill"), "1").is_err() {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            // SAFETY: kill(2) by pid read from our own cgroup.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    for _ in 0..200 {
        let events = std::fs::read_to_string(dir.join("cgroup.events")).unwrap_or_default();
        if !events.contains("populated 1") {
            return;
        }
        // Killed processes need a moment to be reaped; there is no signal to wait on here.
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// A binary built from this workspace, next to the test executable's target dir.
pub fn lab_binary(name: &str) -> PathBuf {
    // A system tool by its absolute path (unshare, getent, ...).
    if Path::new(name).is_absolute() {
        return PathBuf::from(name);
    }
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    let candidates: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(3)
        .map(|d| d.join(name))
        .collect();
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "{name} not found (looked at {candidates:?}); build it with `cargo build --bins`"
            )
        })
}
