//! Test support (feature `testing`): a real etcd (Debian etcd-server) on loopback ports with its
//! own data dir, killed on drop (also on panic); a crashed run's etcd is found by its data-dir
//! prefix and killed. Shared by the conformance tests and the benchmark.

use std::time::Duration;

use crate::{EtcdStore, Store};

const ETCD_PREFIX: &str = "mwetcd-";

pub struct Etcd {
    child: std::process::Child,
    _dir: tempfile::TempDir,
    url: String,
}

impl Etcd {
    /// The client URL (for servers that connect by themselves).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The etcd process (benchmarks read its RSS).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sweep() {
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.starts_with("etcd ") && cmd.contains(ETCD_PREFIX) {
            let dir = cmd
                .split("--data-dir ")
                .nth(1)
                .and_then(|r| r.split(' ').next())
                .unwrap_or("");
            let stale = !std::path::Path::new(dir).exists();
            if let (true, Ok(pid)) = (stale, e.file_name().to_string_lossy().parse::<i32>()) {
                // SAFETY: kill(2) of an etcd whose test dir is gone (a crashed run's).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

impl Etcd {
    /// Starts etcd and connects a store to it. A port picked free can be taken before etcd
    /// binds it: if etcd exits, it starts again on fresh ports.
    pub async fn start(history: i64) -> (EtcdStore, Etcd) {
        sweep();
        for _ in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix(ETCD_PREFIX)
                .tempdir()
                .unwrap_or_else(|e| panic!("temp dir: {e}"));
            let (client, peer) = (free_port(), free_port());
            let c = format!("http://127.0.0.1:{client}");
            let p = format!("http://127.0.0.1:{peer}");
            let child = std::process::Command::new("etcd")
                .arg("--data-dir")
                .arg(dir.path().join("data"))
                .args(["--listen-client-urls", &c, "--advertise-client-urls", &c])
                .args([
                    "--listen-peer-urls",
                    &p,
                    "--initial-advertise-peer-urls",
                    &p,
                ])
                .args([
                    "--initial-cluster",
                    &format!("default={p}"),
                    "--log-level",
                    "error",
                ])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("etcd (Debian etcd-server; scripts/setup.sh installs it): {e}")
                });
            let mut guard = Etcd {
                child,
                _dir: dir,
                url: c.clone(),
            };
            // Bounded wait for it to serve: there is no readiness signal but answering.
            for _ in 0..300 {
                if matches!(guard.child.try_wait(), Ok(Some(_))) {
                    break;
                }
                if let Ok(s) = EtcdStore::connect(std::slice::from_ref(&c), history).await {
                    if s.revision().await.is_ok() {
                        return (s, guard);
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        panic!("etcd did not come up (3 attempts, 30 s each)");
    }
}
