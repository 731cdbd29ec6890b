//! `mesh-ctl`: the Meshwork CLI.

mod addons;
mod bringup;
mod check;
mod identity;
mod inject;
mod injector;
mod kubeconfig;
mod monitoring;
mod procs;
mod routes;
mod state;
mod status;
mod up;
mod viz;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "mesh-ctl", version, about = "Meshwork command line")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a local cluster (lab nodes in network namespaces, the API server, a node runtime
    /// and a control agent per node, cluster DNS) and leave it running until `mesh-ctl down`.
    Up(bringup::UpArgs),
    /// Stop the cluster and remove everything `up` made.
    Down(up::DownArgs),
    /// Components, nodes, Services programmed per node, certificate expiry.
    Status(status::StatusArgs),
    /// The pre-flight `up` runs: kernel features, packages, permissions, addresses.
    Check(bringup::UpArgs),
    /// A supervised component's log (apiserver, node-<node>, supervisor, prometheus); the
    /// add-ons are pods: `kubectl -n kube-system logs ds/meshwork-control`.
    Logs(status::LogsArgs),
    /// Add the Meshwork proxy to the workloads in manifests (files or stdin), printed to
    /// stdout: `mesh-ctl inject -f app.yaml | kubectl apply -f -`.
    Inject(inject::InjectArgs),
    /// Remove what `inject` added.
    Uninject(inject::UninjectArgs),
    /// Per Service: request rate, success rate and latency percentiles from the meshed pods'
    /// proxies, refreshed every interval (`linkerd viz top/stat`).
    Top(viz::TopArgs),
    /// The live request stream of a pod, Deployment or Service (`linkerd viz tap`).
    Tap(viz::TapArgs),
    /// Per route (`config.meshwork.io/routes` on the pods), the requests a pod, Deployment or
    /// Service's pods received over an interval and their success rate (`linkerd viz routes`).
    Routes(routes::RoutesArgs),
    /// Internal: the supervisor `up` starts in the background.
    #[command(hide = true)]
    Supervise(bringup::UpArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.cmd, Cmd::Supervise(_)) {
        // `mesh-ctl status | head` ends quietly, as a shell user expects. (The supervisor keeps
        // SIGPIPE ignored: `up` going away mid start-up must not kill it before it cleans up.)
        // SAFETY: setting a signal disposition before any thread is started.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    if matches!(cli.cmd, Cmd::Supervise(_)) {
        meshwork_daemon::init_logging();
    }
    // Two workers: kube-rs calls and the supervised children's waits share them.
    // Offline manifest rewriting needs no runtime.
    let cmd = match cli.cmd {
        Cmd::Inject(a) => return finish(inject::inject(a)),
        Cmd::Uninject(a) => return finish(inject::uninject(a)),
        cmd => cmd,
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mesh-ctl: {e}");
            return std::process::ExitCode::from(70);
        }
    };
    let res = rt.block_on(async {
        match cmd {
            Cmd::Up(a) => up::up(a).await,
            Cmd::Down(a) => up::down(a).await,
            Cmd::Status(a) => status::status(a).await,
            Cmd::Check(a) => {
                let checks = check::run(&a);
                if check::report(&checks, true) {
                    println!("all {} checks passed", checks.len());
                    Ok(())
                } else {
                    Err(anyhow::anyhow!(
                        "some checks failed; each says how to fix it"
                    ))
                }
            }
            Cmd::Logs(a) => status::logs(a).await,
            Cmd::Supervise(a) => bringup::supervise(a).await,
            Cmd::Top(a) => viz::top(a).await,
            Cmd::Tap(a) => viz::tap(a).await,
            Cmd::Routes(a) => routes::routes(a).await,
            Cmd::Inject(_) | Cmd::Uninject(_) => Ok(()),
        }
    });
    finish(res)
}

fn finish(res: anyhow::Result<()>) -> std::process::ExitCode {
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mesh-ctl: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
