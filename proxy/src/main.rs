//! `meshwork-proxy`: the sidecar (see README.md; flags in ARCHITECTURE.md, "The proxy").

use clap::Parser;
use meshwork_proxy::{app, config::Config};

// The proxy's only uses of the C maths library are `exp` (the balancer's EWMA decay) and
// `pow` (tokio's scheduler statistics, prometheus-client's bucket bounds). Defined here, from
// rust-lang's pure-Rust port of musl's libm, the linker (`--as-needed`) then leaves libm.so out:
// 0.3 MB less resident in every sidecar, since the loader maps a library's folios whole
// (BENCHMARKS.md, "The proxy pair": idle RSS). `ldd` on the binary shows no libm.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[unsafe(no_mangle)]
pub extern "C" fn exp(x: f64) -> f64 {
    libm::exp(x)
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[unsafe(no_mangle)]
pub extern "C" fn pow(x: f64, y: f64) -> f64 {
    libm::pow(x, y)
}

fn main() -> std::process::ExitCode {
    meshwork_daemon::init_logging();
    let cfg = Config::parse();
    // One worker: a current-thread runtime, as linkerd2-proxy runs on one core (no work
    // stealing, no cross-thread wake-ups for the tasks each request passes through).
    let rt = if cfg.workers <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cfg.workers)
            .enable_all()
            .build()
    };
    let rt = match rt {
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
