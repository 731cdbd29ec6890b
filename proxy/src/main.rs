//! `meshwork-proxy`: the sidecar (see README.md; flags in ARCHITECTURE.md, "The proxy").

use clap::Parser;
use meshwork_proxy::{app, config::Config};

fn main() -> std::process::ExitCode {
    meshwork_daemon::init_logging();
    let cfg = Config::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.workers.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("meshwork-proxy: tokio runtime: {e}");
            return std::process::ExitCode::from(70);
        }
    };
    match rt.block_on(app::run(cfg)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshwork-proxy: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
