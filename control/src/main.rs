//! `meshwork-control`: programs this node's eBPF Service datapath from the API.

use clap::Parser;
use meshwork_control::{app, config};

fn main() -> std::process::ExitCode {
    meshwork_daemon::init_logging();
    let cfg = config::Config::parse();
    if let Some(config::Cmd::Uninstall) = cfg.cmd {
        return match app::uninstall(&cfg) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("meshwork-control: {e}");
                std::process::ExitCode::from(1)
            }
        };
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("meshwork-control: tokio runtime: {e}");
            return std::process::ExitCode::from(70);
        }
    };
    let res = rt.block_on(async {
        let running = app::start(cfg).await?;
        println!("admin on http://{}", running.admin);
        meshwork_daemon::shutdown_signal()
            .await
            .map_err(|e| app::Error::Config(format!("signal handler: {e}")))?;
        // The datapath stays programmed: traffic keeps flowing until the next agent.
        drop(running);
        Ok::<(), app::Error>(())
    });
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(app::Error::Config(m)) => {
            eprintln!("meshwork-control: {m}");
            std::process::ExitCode::from(64)
        }
        Err(e) => {
            eprintln!("meshwork-control: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
