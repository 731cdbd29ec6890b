//! Supervised processes: each component runs as a child of the supervisor with its output
//! appended to its own log; a component that exits while the cluster is up is started again
//! with back-off (0.5 s doubling to 8 s, reset after a run of 30 s), and every start, exit and
//! restart is recorded in `components.json` for `mesh-ctl status`.

use std::{
    collections::BTreeMap,
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use tokio::{sync::watch, task::JoinHandle};

use crate::state::{now_secs, write_json, ComponentStatus, StateDir};

/// How to start one component; called again for every restart.
pub type MakeCommand = Box<dyn Fn() -> std::process::Command + Send + Sync>;

pub struct Spec {
    pub name: String,
    /// A node name, or `host`.
    pub on: String,
    pub make: MakeCommand,
}

type Statuses = Arc<Mutex<BTreeMap<String, ComponentStatus>>>;
/// The current pid of a component's run (None between runs).
type Pid = Arc<Mutex<Option<u32>>>;

pub struct Supervisor {
    state: StateDir,
    statuses: Statuses,
    stop: watch::Sender<bool>,
    /// In start order; stopped in reverse.
    running: Vec<(String, JoinHandle<()>, Pid)>,
}

const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(8);
const HEALTHY_RUN: Duration = Duration::from_secs(30);

impl Supervisor {
    pub fn new(state: StateDir) -> Supervisor {
        Supervisor {
            state,
            statuses: Arc::default(),
            stop: watch::channel(false).0,
            running: Vec::new(),
        }
    }

    /// Starts `spec` now (an error if it cannot be spawned at all) and keeps it running.
    pub fn start(&mut self, spec: Spec) -> Result<()> {
        let log = self.state.log(&spec.name);
        let child = spawn(&spec, &log, 0)?;
        let pid = Arc::new(Mutex::new(child.id()));
        update(&self.state, &self.statuses, &spec, |s| {
            s.pid = child.id();
            s.since = now_secs();
        });
        let (state, statuses, mut stop, pid2) = (
            self.state.clone(),
            self.statuses.clone(),
            self.stop.subscribe(),
            pid.clone(),
        );
        let name = spec.name.clone();
        let task = tokio::spawn(async move {
            let mut child = child;
            let mut backoff = FIRST_BACKOFF;
            let mut restarts = 0u32;
            loop {
                let started = Instant::now();
                let status = tokio::select! {
                    s = child.wait() => s,
                    _ = stop.wait_for(|s| *s) => return,
                };
                if *stop.borrow() {
                    return;
                }
                let how = match status {
                    Ok(s) => s.to_string(),
                    Err(e) => format!("wait failed: {e}"),
                };
                tracing::warn!(component = %spec.name, exit = %how, "component exited; restarting");
                if started.elapsed() > HEALTHY_RUN {
                    backoff = FIRST_BACKOFF;
                }
                update(&state, &statuses, &spec, |s| {
                    s.pid = None;
                    s.last_exit = Some(how.clone());
                });
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                restarts += 1;
                match spawn(&spec, &state.log(&spec.name), restarts) {
                    Ok(c) => {
                        *pid2.lock().unwrap_or_else(|p| p.into_inner()) = c.id();
                        update(&state, &statuses, &spec, |s| {
                            s.pid = c.id();
                            s.restarts = restarts;
                            s.since = now_secs();
                        });
                        child = c;
                    }
                    Err(e) => {
                        // Try again after the next back-off; the failure is in the log.
                        tracing::error!(component = %spec.name, error = %format!("{e:#}"), "restart failed");
                        child = failed_child();
                    }
                }
            }
        });
        self.running.push((name, task, pid));
        Ok(())
    }

    /// Stops everything, last started first: SIGTERM, then SIGKILL after `grace`.
    pub async fn stop(mut self, grace: Duration) {
        let _ = self.stop.send(true);
        while let Some((name, task, pid)) = self.running.pop() {
            task.abort();
            let Some(pid) = *pid.lock().unwrap_or_else(|p| p.into_inner()) else {
                continue;
            };
            let pid = pid as i32;
            // SAFETY: signalling a child we started (kill_on_drop is off: we reap here).
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + grace;
            while alive(pid) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if alive(pid) {
                tracing::warn!(component = %name, "did not stop on SIGTERM; killing");
                // SAFETY: as above.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// Reaps `pid` if it is our exited child and tells whether it still runs.
fn alive(pid: i32) -> bool {
    let mut status = 0;
    // SAFETY: non-blocking wait for our own child.
    let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    r == 0
}

fn spawn(spec: &Spec, log: &std::path::Path, restarts: u32) -> Result<tokio::process::Child> {
    use std::io::Write;
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| log.display().to_string())?;
    let _ = writeln!(
        out,
        "--- mesh-ctl: starting {} (restart {restarts}) at unix {}",
        spec.name,
        now_secs()
    );
    let mut cmd = (spec.make)();
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(false);
    cmd.spawn()
        .with_context(|| format!("starting {} (see {})", spec.name, log.display()))
}

/// A stand-in for a child that failed to spawn: exits at once, so the loop backs off again.
fn failed_child() -> tokio::process::Child {
    #[allow(
        clippy::expect_used,
        reason = "`true` exists wherever the supervisor runs"
    )]
    tokio::process::Command::new("true")
        .spawn()
        .expect("spawning true")
}

fn update(
    state: &StateDir,
    statuses: &Statuses,
    spec: &Spec,
    f: impl FnOnce(&mut ComponentStatus),
) {
    let mut all = statuses.lock().unwrap_or_else(|p| p.into_inner());
    let s = all
        .entry(spec.name.clone())
        .or_insert_with(|| ComponentStatus {
            name: spec.name.clone(),
            on: spec.on.clone(),
            ..Default::default()
        });
    f(s);
    let list: Vec<_> = all.values().cloned().collect();
    if let Err(e) = write_json(&state.components_file(), &list) {
        tracing::warn!(error = %format!("{e:#}"), "writing components.json");
    }
}
