//! `meshwork-orchestrator`: the bundled orchestrator's binary.

use clap::Parser;
use meshwork_orchestrator::{app, config};

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MESHWORK_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = config::Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("meshwork-orchestrator: tokio runtime: {e}");
            return std::process::ExitCode::from(70);
        }
    };
    let res = match cli.cmd {
        config::Cmd::Apiserver(a) => rt.block_on(app::run_apiserver(a)),
        config::Cmd::Kubeconfig(a) => app::run_kubeconfig(a),
    };
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshwork-orchestrator: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
