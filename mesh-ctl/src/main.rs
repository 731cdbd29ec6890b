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
    /// VXLAN overlay, show them talk, then tear it all down.
    Up(up::Args),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
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
