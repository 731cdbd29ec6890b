//! `mesh-ctl up` and `mesh-ctl down`: a local cluster that stays. `up` runs the pre-flight,
//! starts the supervisor (`mesh-ctl supervise`, detached, its log in the state dir), relays
//! its progress with timings and returns once the cluster is usable; `down` stops the
//! supervisor and sweeps whatever a crashed one may have left.

use std::{
    io::BufRead,
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    bringup::{UpArgs, DNS_VIP},
    check,
    state::{StateDir, DEFAULT_STATE_DIR},
};

pub async fn up(a: UpArgs) -> Result<()> {
    let t0 = Instant::now();
    let st = StateDir(a.state_dir.clone());
    if let Some(pid) = st.running() {
        println!(
            "a cluster is already running (supervisor pid {pid}); `mesh-ctl down` removes it.\n"
        );
        return crate::status::status(crate::status::StatusArgs {
            state_dir: a.state_dir,
        })
        .await;
    }
    let checks = check::run(&a);
    if !check::report(&checks, false) {
        bail!("pre-flight failed: fix the above and run `mesh-ctl up` again (`mesh-ctl check` lists every check)");
    }
    println!(
        "pre-flight: {} checks passed ({:.2}s)",
        checks.len(),
        t0.elapsed().as_secs_f64()
    );
    std::fs::create_dir_all(st.logs()).with_context(|| st.logs().display().to_string())?;
    let user_kc = crate::kubeconfig::user_path(a.kubeconfig.as_deref());
    // The lab links the plugin into its CNI bin dir: a relative path would dangle there.
    let cni_plugin =
        std::fs::canonicalize(&a.cni_plugin).with_context(|| a.cni_plugin.display().to_string())?;
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.arg("supervise")
        .arg("--nodes")
        .arg(a.nodes.to_string())
        .arg("--state-dir")
        .arg(&a.state_dir)
        .arg("--cni-plugin")
        .arg(&cni_plugin)
        .arg("--lab-name")
        .arg(&a.lab.lab_name)
        .arg("--host-link")
        .arg(&a.lab.host_link);
    if let Some(k) = &user_kc {
        cmd.arg("--kubeconfig").arg(k);
    }
    if a.monitoring {
        cmd.arg("--monitoring");
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(st.log("supervisor"))?;
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(log);
    // SAFETY: setsid between fork and exec only: the supervisor outlives this terminal.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting the supervisor")?;
    let stdout = child.stdout.take().context("supervisor stdout")?;
    let (st2, outcome) = (
        st.clone(),
        tokio::task::spawn_blocking(move || relay(stdout)),
    );
    let outcome = outcome.await?;
    if !matches!(outcome, Relay::Ready) {
        // It is tearing down what it built: let it finish, so a new `up` finds a clean host.
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait()?.is_none() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // On success the supervisor carries on (a session leader of its own).
    drop(child);
    match outcome {
        Relay::Ready => {}
        Relay::Failed(msg) => bail!(
            "{msg}\n(the supervisor cleaned up; its log: mesh-ctl logs supervisor, or {})",
            st2.log("supervisor").display()
        ),
        Relay::Gone => bail!(
            "the supervisor exited during start-up; see {}",
            st2.log("supervisor").display()
        ),
    }
    let info = st.cluster()?;
    println!(
        "\ncluster ready in {:.1}s: {} nodes, API {}, cluster DNS {DNS_VIP}",
        t0.elapsed().as_secs_f64(),
        info.nodes.len(),
        info.api_url
    );
    if let Some(k) = &info.user_kubeconfig {
        println!("kubectl context `meshwork` is current in {}", k.display());
    }
    println!(
        "\nnext:\n\
         \x20 kubectl get nodes\n\
         \x20 kubectl run nginx --image=nginx && kubectl wait --for=condition=Ready pod/nginx\n\
         \x20 curl http://$(kubectl get pod nginx -o jsonpath='{{.status.podIP}}')/\n\
         \x20 mesh-ctl status            components, nodes, Services programmed, certificates\n\
         \x20 mesh-ctl logs COMPONENT    e.g. apiserver, node-n1, supervisor\n\
         \x20 kubectl -n kube-system get ds,deploy,pods   the add-ons: agent DaemonSet, DNS\n\
         \x20 kubectl annotate namespace NS meshwork.io/inject=enabled   mesh its new pods\n\
         \x20 mesh-ctl top | mesh-ctl tap deploy/NAME   meshed traffic, live\n\
         \x20 mesh-ctl down              remove it all"
    );
    if info.monitoring {
        println!("  Prometheus: http://{}", crate::bringup::PROMETHEUS);
    }
    Ok(())
}

enum Relay {
    Ready,
    Failed(String),
    Gone,
}

/// Prints the supervisor's progress lines until it says it is ready or failed.
fn relay(stdout: std::process::ChildStdout) -> Relay {
    for line in std::io::BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        let mut f = line.splitn(3, '\t');
        match (f.next(), f.next(), f.next()) {
            (Some("step"), Some(secs), Some(what)) => println!("  {what:<64} {secs:>6}s"),
            (Some("ready"), ..) => return Relay::Ready,
            (Some("failed"), Some(msg), _) => return Relay::Failed(msg.to_string()),
            _ => println!("  {line}"),
        }
    }
    Relay::Gone
}

#[derive(clap::Args)]
pub struct DownArgs {
    /// Keep the state dir (API server data, logs) for the next `up`.
    #[arg(long)]
    pub keep_state: bool,
    #[arg(long, env = "MESHWORK_STATE_DIR", default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// The kubeconfig `up` merged into (default as for `up`).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    #[command(flatten)]
    pub lab: crate::bringup::LabFlags,
}

/// What `up` writes into the state dir (the dir itself may hold other things: it is
/// /var/lib/meshwork, where the standalone binaries keep their defaults too).
const STATE_ENTRIES: &[&str] = &[
    "supervisor.pid",
    "cluster.json",
    "components.json",
    "logs",
    "apiserver",
    "nodes",
    "prometheus",
    "prometheus.yml",
    crate::monitoring::SD_DIR,
    // Held the DNS add-on's credentials before it ran as its ServiceAccount.
    "addons",
    "image-catalog.json",
    "identity",
    "injector",
];

pub async fn down(a: DownArgs) -> Result<()> {
    let st = StateDir(a.state_dir.clone());
    let info = st.cluster().ok();
    if let Some(pid) = st.running() {
        // SAFETY: signalling the supervisor we found by pid file and cmdline.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while st.running().is_some() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if st.running().is_some() {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            println!("supervisor {pid} did not stop in 30 s: killed");
        } else {
            println!("stopped the supervisor (pid {pid}) and its components");
        }
    }
    // Host-side components of a supervisor that died (node-side ones die with their cgroups).
    for c in st.components() {
        if let (Some(pid), "host") = (c.pid, c.on.as_str()) {
            let cmdline =
                std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if cmdline.contains(&c.name) {
                // SAFETY: a pid we started, checked by its command line.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
    }
    let prefix = info
        .as_ref()
        .map(|i| i.prefix.clone())
        .unwrap_or_else(|| format!("mwl-{}-", a.lab.lab_name));
    let left: Vec<String> = std::fs::read_dir(meshwork_lab::NETNS_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect();
    meshwork_lab::cgroup::remove_node_state(&prefix);
    meshwork_lab::sweep(&prefix);
    if !left.is_empty() {
        println!("removed {} leftover namespaces ({prefix}*)", left.len());
    }
    let link = info
        .as_ref()
        .map(|i| i.host_link.clone())
        .unwrap_or(a.lab.host_link);
    if std::path::Path::new("/sys/class/net").join(&link).exists() {
        let nl = meshwork_netlink::Netlink::connect()?;
        if let Some(l) = nl.link_by_name(&link).await? {
            // The link is one end of a veth whose other end was in the underlay namespace the
            // sweep just deleted: the kernel may remove it between the lookup and the delete.
            match nl.delete_link(l.index).await {
                Ok(()) => println!("removed the host link {link}"),
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    let kc = info
        .as_ref()
        .and_then(|i| i.user_kubeconfig.clone())
        .or_else(|| crate::kubeconfig::user_path(a.kubeconfig.as_deref()));
    if let Some(kc) = kc {
        match crate::kubeconfig::remove(&kc) {
            Ok(true) => println!("removed context `meshwork` from {}", kc.display()),
            Ok(false) => {}
            Err(e) => println!("could not edit {}: {e:#}", kc.display()),
        }
    }
    if a.keep_state {
        let _ = std::fs::remove_file(st.pid_file());
        println!("kept the state in {}", st.0.display());
    } else {
        for e in STATE_ENTRIES {
            let p = st.0.join(e);
            let _ = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
        }
        let _ = std::fs::remove_dir(&st.0);
    }
    println!("down: no cluster left");
    Ok(())
}
