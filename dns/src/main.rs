//! `meshwork-dns`: cluster DNS for Services and EndpointSlices.

use clap::Parser;
use meshwork_dns::{app, config::Config};

fn main() -> std::process::ExitCode {
    meshwork_daemon::init_logging();
    let cfg = Config::parse();
    // The UDP path runs on its own threads; tokio serves TCP, forwarding and the watch.
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("meshwork-dns: tokio runtime: {e}");
            return std::process::ExitCode::from(70);
        }
    };
    let res = rt.block_on(async {
        let running = app::start(cfg).await?;
        for a in &running.udp {
            println!("DNS listening on {a} (udp+tcp)");
        }
        println!("admin on http://{}", running.admin);
        meshwork_daemon::shutdown_signal()
            .await
            .map_err(|e| app::Error::Config(format!("signal handler: {e}")))?;
        drop(running);
        Ok::<(), app::Error>(())
    });
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshwork-dns: {e}");
            std::process::ExitCode::from(1)
        }
    }
}
