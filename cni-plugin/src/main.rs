//! `meshwork-cni`: the Meshwork CNI plugin, installed as `/opt/cni/bin/meshwork`.
//!
//! Short-lived by design: one exec per command, a current-thread runtime, no daemon.

use std::io::{Read, Write};

use meshwork_cni::{app, config};
use meshwork_cni_spec::{code, CniError};

fn main() {
    // The runtime keeps stderr: warn and worse unless MESHWORK_CNI_LOG says otherwise.
    meshwork_daemon::init_logging_from(config::ENV_LOG, tracing::Level::WARN);

    let out = run();
    let mut stdout = std::io::stdout().lock();
    let (json, exit) = match out {
        Ok(serde_json::Value::Null) => (None, 0),
        Ok(v) => (Some(v), 0),
        Err(e) => {
            tracing::warn!(code = e.code, msg = %e.msg, details = %e.details, "failed");
            (serde_json::to_value(&e).ok(), 1)
        }
    };
    if let Some(v) = json {
        let _ = writeln!(stdout, "{v}");
    }
    let _ = stdout.flush();
    std::process::exit(exit);
}

fn run() -> Result<serde_json::Value, CniError> {
    let env = config::Env::parse(|k| std::env::var(k).ok())?;
    let mut stdin = Vec::new();
    std::io::stdin()
        .read_to_end(&mut stdin)
        .map_err(|e| CniError::new(code::IO, format!("reading stdin: {e}")))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| CniError::new(code::INTERNAL, format!("runtime: {e}")))?;
    let crash_at = std::env::var(config::ENV_CRASH_AT).ok();
    rt.block_on(app::run(&env, &stdin, crash_at))
}
