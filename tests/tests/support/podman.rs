//! A private podman (its own storage, config, CNI dirs and runc root under one directory) that
//! calls a given CNI plugin: shared by the runtime test and the orchestrator benchmark's peer.
#![allow(
    dead_code,
    clippy::unwrap_used,
    reason = "test code: a panic with its location is the failure report"
)]

use std::path::{Path, PathBuf};

/// Writes podman's config under `dir` for network `net` (`conflist`), with `plugin` as the
/// `meshwork` CNI binary.
pub fn setup(dir: &Path, plugin: &Path, conflist: &serde_json::Value, net: &str) {
    for d in ["cni/bin", "cni/net.d", "root", "run", "tmp", "runc"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::os::unix::fs::symlink(plugin, dir.join("cni/bin/meshwork")).unwrap();
    std::fs::write(
        dir.join(format!("cni/net.d/10-{net}.conflist")),
        conflist.to_string(),
    )
    .unwrap();
    let wrap = dir.join("runc-wrap");
    std::fs::write(
        &wrap,
        format!(
            "#!/bin/sh\nexec /usr/sbin/runc --root {}/runc \"$@\"\n",
            dir.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrap, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        dir.join("containers.conf"),
        format!(
            r#"[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
log_driver = "k8s-file"
cgroupns = "private"

[network]
network_backend = "cni"
cni_plugin_dirs = ["{d}/cni/bin"]
network_config_dir = "{d}/cni/net.d"
default_network = "{net}"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{d}/events.log"
tmp_dir = "{d}/tmp"
lock_type = "file"
num_locks = 64

[engine.runtimes]
runc = ["{d}/runc-wrap"]
"#,
            d = dir.display()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("storage.conf"),
        format!(
            "[storage]\ndriver = \"vfs\"\ngraphroot = \"{0}/root\"\nrunroot = \"{0}/run\"\n",
            dir.display()
        ),
    )
    .unwrap();
}

/// The environment and leading arguments every podman call needs for the setup in `dir`.
pub fn env(dir: &Path) -> Vec<(&'static str, PathBuf)> {
    vec![
        ("CONTAINERS_CONF", dir.join("containers.conf")),
        ("CONTAINERS_STORAGE_CONF", dir.join("storage.conf")),
    ]
}

pub fn global_args(dir: &Path) -> Vec<String> {
    vec![
        "--root".into(),
        dir.join("root").display().to_string(),
        "--runroot".into(),
        dir.join("run").display().to_string(),
        "--storage-driver".into(),
        "vfs".into(),
    ]
}

/// Builds (or reuses) the offline busybox OCI archive (scripts/busybox-image.sh); serialised by
/// a lock because the script must not run twice at once on one output dir.
pub fn busybox_archive() -> PathBuf {
    let ws = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let out = ws.join("target/test-images");
    std::fs::create_dir_all(&out).unwrap();
    let lock = std::fs::File::create(out.join(".lock")).unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: flock on an fd we own; released when `lock` drops.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    let o = std::process::Command::new(ws.join("scripts/busybox-image.sh"))
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "busybox-image.sh: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&o.stdout).trim())
}
