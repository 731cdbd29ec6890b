//! `mesh-ctl`: the Meshwork CLI.

mod up;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "mesh-ctl", version, about = "Meshwork command line")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Bring up a two-node lab cluster, wire a pod on each node with the CNI plugin over the
    /// VXLAN overlay, show them talk, start the API server, control agents and cluster DNS,
    /// reach a Service by name from a pod, then tear it all down.
    Up(up::Args),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // Two workers: the API server keeps serving while `up` blocks one on kube-rs calls.
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
    let res = match cli.cmd {
        Cmd::Up(args) => rt.block_on(up::run(args)),
    };
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mesh-ctl: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
