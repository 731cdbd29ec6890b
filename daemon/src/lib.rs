//! What every Meshwork binary does as a process (see README.md).

pub mod admin;

/// A duration as kube's flags take them (`48h`, `90m`, `500ms`, `1h30m`) or plain seconds:
/// the one parser every Meshwork binary's flags use.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(std::time::Duration::from_secs(secs));
    }
    let d: jiff::SignedDuration = s
        .parse()
        .map_err(|e| format!("invalid duration {s:?}: {e}"))?;
    std::time::Duration::try_from(d).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// Logs to stderr at `MESHWORK_LOG` (an env-filter; `info` when unset): one logging set-up for
/// every Meshwork binary.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MESHWORK_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// Resolves on SIGINT or SIGTERM: how node components know to stop (an error means no signal
/// handler could be installed).
pub async fn shutdown_signal() -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    #[test]
    fn durations_read_like_kube_flags() {
        for (s, ms) in [
            ("48h", 172_800_000),
            ("10m", 600_000),
            ("1h30m", 5_400_000),
            ("500ms", 500),
            ("0", 0),
            ("90", 90_000),
        ] {
            assert_eq!(
                super::parse_duration(s).unwrap(),
                std::time::Duration::from_millis(ms),
                "{s}"
            );
        }
        assert!(super::parse_duration("-1h").is_err());
        assert!(super::parse_duration("soon").is_err());
    }
}
