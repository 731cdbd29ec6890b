//! What every Meshwork binary does as a process (see README.md).

pub mod admin;
pub mod quota;

/// `s` cut to at most `max` bytes, on a character boundary: what a client sent, bounded
/// before a component keeps or logs it (the proxy's tap lines and spans, the identity
/// service's audit lines).
pub fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

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

/// Logs to stderr at `MESHWORK_LOG` (`info` when unset): one logging set-up for every Meshwork
/// binary. The filter is `level` and `target=level` directives, comma-separated
/// (`info,meshwork_proxy=debug`), as tracing-subscriber's `Targets` reads them — not an
/// EnvFilter, whose span and field matching links the regex engine into every binary: 0.5 MB
/// more resident in each sidecar proxy (BENCHMARKS.md, "The proxy pair"). A filter that does
/// not parse is reported once and `info` used.
pub fn init_logging() {
    init_logging_from("MESHWORK_LOG", tracing::Level::INFO);
}

/// [`init_logging`] for a binary with its own variable and default level.
pub fn init_logging_from(var: &str, default: tracing::Level) {
    use tracing_subscriber::{layer::SubscriberExt, util::SubscriberInitExt};
    let spec = std::env::var(var).ok();
    let (filter, bad) = log_filter(spec.as_deref(), default);
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                // Log files, collectors and a runtime's pipe get no colour codes.
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .with(filter)
        .init();
    if let (Some(spec), Some(e)) = (spec, bad) {
        tracing::warn!(%var, %spec, error = %e, %default, "log filter not understood; logging at the default level");
    }
}

/// The filter `spec` names, or `default` everywhere and why `spec` was refused. Blank is
/// unset; spaces around directives and empty ones (`info, h2=warn,`) are ignored. EnvFilter's
/// span and field forms (`target[span{field=x}]=level`) are refused rather than taken, as
/// `Targets` would, for a target name that matches nothing.
pub fn log_filter(
    spec: Option<&str>,
    default: tracing::Level,
) -> (tracing_subscriber::filter::Targets, Option<String>) {
    let fallback = || tracing_subscriber::filter::Targets::new().with_default(default);
    let directives: Vec<&str> = spec
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .collect();
    if directives.is_empty() {
        return (fallback(), None);
    }
    if let Some(d) = directives
        .iter()
        .find(|d| d.contains(|c: char| "[]{}".contains(c) || c.is_whitespace()))
    {
        return (
            fallback(),
            Some(format!(
                "{d:?}: span and field filters are not supported, only `level` and `target=level`"
            )),
        );
    }
    match directives.join(",").parse() {
        Ok(t) => (t, None),
        Err(e) => (fallback(), Some(e.to_string())),
    }
}

#[cfg(test)]
mod log_tests {
    use super::log_filter;
    use tracing::Level;

    #[test]
    fn directives_per_target_and_a_default() {
        let (f, bad) = log_filter(Some("warn,meshwork_proxy=debug"), Level::INFO);
        assert!(bad.is_none());
        assert!(f.would_enable("meshwork_proxy::outbound", &Level::DEBUG));
        assert!(!f.would_enable("meshwork_proxy::outbound", &Level::TRACE));
        assert!(f.would_enable("h2::codec", &Level::WARN));
        assert!(!f.would_enable("h2::codec", &Level::INFO));
    }

    #[test]
    fn unset_is_the_default_level() {
        let (f, bad) = log_filter(None, Level::WARN);
        assert!(bad.is_none());
        assert!(f.would_enable("meshwork_cni", &Level::WARN));
        assert!(!f.would_enable("meshwork_cni", &Level::INFO));
    }

    #[test]
    fn blank_and_spaced_filters_mean_what_they_say() {
        for blank in ["", "  ", ","] {
            let (f, bad) = log_filter(Some(blank), Level::INFO);
            assert!(bad.is_none(), "{blank:?}");
            assert!(f.would_enable("meshwork_proxy", &Level::INFO), "{blank:?}");
        }
        let (f, bad) = log_filter(Some(" warn , meshwork_proxy=debug ,"), Level::INFO);
        assert!(bad.is_none());
        assert!(f.would_enable("meshwork_proxy", &Level::DEBUG));
        assert!(f.would_enable("h2", &Level::WARN));
        assert!(!f.would_enable("h2", &Level::INFO));
    }

    #[test]
    fn a_filter_that_does_not_parse_is_refused_and_the_default_kept() {
        // EnvFilter's span/field forms: refused with a reason, not taken for a target name
        // that matches nothing (which would leave that target silent).
        for spec in [
            "meshwork_proxy[conn{peer=x}]=debug",
            "meshwork_proxy[conn]=debug",
            "[{peer=x}]=debug",
        ] {
            let (f, bad) = log_filter(Some(spec), Level::INFO);
            let why = bad.unwrap_or_else(|| panic!("{spec:?} was accepted"));
            assert!(why.contains("span and field"), "{spec:?}: {why}");
            assert!(f.would_enable("meshwork_proxy", &Level::INFO));
            assert!(!f.would_enable("meshwork_proxy", &Level::DEBUG));
        }
        let (_, bad) = log_filter(Some("meshwork_proxy=loud"), Level::INFO);
        assert!(bad.is_some());
    }
}

/// Writes `bytes` to `path` readable by its owner only (0600: keys, tokens, kubeconfigs),
/// whole or not at all: into a temporary file beside it, synced, then renamed over it, and
/// the directory synced — a crash mid-write leaves the old file or none, never half a key
/// that the next start would take for a good one.
pub fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let with_path =
        |e: std::io::Error| std::io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no file name"))
        .map_err(with_path)?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    // A new file, never one left behind (a crash's, or a link planted there): O_EXCL follows
    // no link, and 0600 holds from the start.
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(with_path(e)),
        _ => {}
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(with_path)?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(with_path)?;
    std::fs::rename(&tmp, path).map_err(with_path)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(with_path)
}

/// SIGINT and SIGTERM, listened for from creation on: for a process that waits for them in
/// turn (the proxy, before and after its certificate), a signal that comes between two waits
/// is kept for the next one. (Each [`shutdown_signal`] call listens anew, and misses what
/// came before it.)
pub struct ShutdownSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    /// An error means no signal handler could be installed.
    pub fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(ShutdownSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves when one came (since creation, or since the last call resolved).
    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
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
    fn private_files_are_replaced_whole_and_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("meshwork-daemon-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("tls.key");
        super::write_private(&p, b"old").unwrap();
        // A link left where the temporary file goes is not followed.
        let victim = dir.join("victim");
        std::fs::write(&victim, b"untouched").unwrap();
        std::os::unix::fs::symlink(&victim, dir.join(".tls.key.tmp")).unwrap();
        super::write_private(&p, b"new key").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new key");
        assert_eq!(std::fs::read(&victim).unwrap(), b"untouched");
        std::fs::remove_file(&victim).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // Nothing left beside it.
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["tls.key"]);
        let err = super::write_private(&dir.join("missing/x"), b"x").unwrap_err();
        assert!(err.to_string().contains("missing/x"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

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
