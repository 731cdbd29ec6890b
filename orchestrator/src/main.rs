//! `meshwork-orchestrator`: the bundled orchestrator's binary.

use clap::Parser;
use meshwork_orchestrator::{app, config};

fn main() -> std::process::ExitCode {
    meshwork_daemon::init_logging();
    let cli = config::Cli::parse();
    // The shim enters namespaces, which needs a single-threaded process: no runtime for it.
    let cli = match cli.cmd {
        config::Cmd::Shim(a) => return meshwork_orchestrator::node::shim::main(a),
        cmd => config::Cli { cmd },
    };
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
    let res: anyhow::Result<()> = match cli.cmd {
        config::Cmd::Apiserver(a) => rt.block_on(app::run_apiserver(a)).map_err(Into::into),
        config::Cmd::Kubeconfig(a) => app::run_kubeconfig(a).map_err(Into::into),
        config::Cmd::Controllers(a) => rt.block_on(app::run_controllers(a)),
        config::Cmd::Node(a) => rt.block_on(meshwork_orchestrator::node::run(a)),
        config::Cmd::Shim(_) => unreachable!("handled above"),
    };
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshwork-orchestrator: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
