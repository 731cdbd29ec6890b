//! A component binary run by a test or benchmark, killed on drop, and the first lines it
//! prints (where our binaries say what they listen on).
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic with its location is the failure report; each user takes a part"
)]

use std::{
    io::BufRead,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use meshwork_lab::cgroup::lab_binary;

pub use meshwork_lab::proc::Proc;

/// Starts `bin args` (this build's binary) with stderr to `log` (None: discarded) and
/// returns it with the first `want` lines of its stdout, waiting at most 30 s for them.
pub fn start(
    bin: &str,
    args: &[&str],
    env: &[(&str, &str)],
    log: Option<&Path>,
    want: usize,
) -> (Proc, Vec<String>) {
    let stderr = match log {
        Some(p) => Stdio::from(std::fs::File::create(p).unwrap()),
        None => Stdio::null(),
    };
    let mut child = Command::new(lab_binary(bin))
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| panic!("{bin} (cargo build --bins, --release for benches): {e}"));
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let mut lines = Vec::new();
    for _ in 0..want {
        let l = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| {
                let said = log.map(|p| std::fs::read_to_string(p).unwrap_or_default());
                panic!("{bin} did not start: {}", said.unwrap_or_default())
            });
        lines.push(l);
    }
    (
        Proc::with_log(child, log.map(Path::to_path_buf).unwrap_or_default()),
        lines,
    )
}
