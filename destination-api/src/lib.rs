//! The discovery API between the node's control agent and its proxies
//! (proto/meshwork/destination/v1/destination.proto), and what both sides agree on: the pod
//! annotations that say a pod is meshed, which ports are opaque, and the routes its metrics
//! name (`routes.rs`).

/// The generated gRPC code.
pub mod pb {
    #![allow(
        clippy::all,
        clippy::allow_attributes_without_reason,
        missing_docs,
        reason = "generated code"
    )]
    tonic::include_proto!("meshwork.destination.v1");
}

pub mod routes;

/// On a pod: its proxy's inbound port. Its presence is what makes the pod meshed (the
/// injector sets it; Linkerd's destination looks at the injected proxy the same way).
pub const PROXY_INBOUND_PORT: &str = "meshwork.io/proxy-inbound-port";

/// Whether a pod with these annotations is meshed (carries [`PROXY_INBOUND_PORT`]).
pub fn is_meshed(annotations: Option<&std::collections::BTreeMap<String, String>>) -> bool {
    annotations.is_some_and(|a| a.contains_key(PROXY_INBOUND_PORT))
}

/// On a pod or Service: ports whose traffic is never detected, only tunnelled (Linkerd's
/// `config.linkerd.io/opaque-ports`): a comma list of ports and ranges.
pub const OPAQUE_PORTS: &str = "config.meshwork.io/opaque-ports";

/// The `appProtocol` values that make a Service port opaque: ours, and Linkerd's.
pub const OPAQUE_APP_PROTOCOLS: &[&str] = &["meshwork.io/opaque", "linkerd.io/opaque"];

/// Linkerd's default opaque ports: protocols where the server speaks first, which detection
/// would only delay (SMTP, MySQL, Galera, PostgreSQL, Redis, Elasticsearch, memcached).
pub const DEFAULT_OPAQUE_PORTS: &[u16] = &[25, 587, 3306, 4444, 5432, 6379, 9300, 11211];

/// The port the control agent serves this API on, on the node's addresses.
pub const DEFAULT_PORT: u16 = 8086;

/// A `host:port` as a flag or annotation names a collector (a port that is a number); the
/// error says what it is not.
pub fn check_host_port(s: &str) -> Result<(), String> {
    match s.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(format!("{s:?} is not host:port")),
    }
}

/// A port list as the annotation writes it (`25,587,8000-8010`); the error names what is wrong.
pub fn parse_ports(s: &str) -> Result<Vec<std::ops::RangeInclusive<u16>>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let p = |x: &str| {
            x.trim()
                .parse::<u16>()
                .map_err(|_| format!("{part:?} is not a port or a range of ports"))
        };
        let (lo, hi) = (p(lo)?, p(hi)?);
        if lo > hi {
            return Err(format!("{part:?}: the range runs backwards"));
        }
        out.push(lo..=hi);
    }
    Ok(out)
}

/// The app's HTTP probe targets, as the injector hands them to its proxy
/// (`MESHWORK_PROXY_INBOUND_PROBE_PATHS`): `PORT:/path` entries separated by spaces (a
/// request target has none). Under `strict` inbound policy the proxy still lets plaintext
/// GETs of exactly these through, as Linkerd's default policy authorizes probes.
pub fn parse_probe_paths(s: &str) -> Result<Vec<(u16, String)>, String> {
    s.split_whitespace()
        .map(|e| {
            let (port, path) = e
                .split_once(':')
                .ok_or_else(|| format!("{e:?} is not PORT:/path"))?;
            let port = port
                .parse::<u16>()
                .map_err(|_| format!("{e:?}: {port:?} is not a port"))?;
            if !path.starts_with('/') {
                return Err(format!("{e:?}: the path must start with /"));
            }
            Ok((port, path.to_string()))
        })
        .collect()
}

/// `entries` written as `parse_probe_paths` reads them; an entry that could not be read back
/// (a path with whitespace, or not starting with /) is left out.
pub fn write_probe_paths<'a>(entries: impl IntoIterator<Item = (u16, &'a str)>) -> String {
    let mut out = String::new();
    for (port, path) in entries {
        if path.starts_with('/') && !path.contains(char::is_whitespace) {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(&format!("{port}:{path}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]
    use super::*;

    #[test]
    fn probe_paths_parse_and_bad_ones_say_why() {
        assert_eq!(
            parse_probe_paths(" 8080:/healthz 9000:/ready?full=1 ").unwrap(),
            vec![(8080, "/healthz".into()), (9000, "/ready?full=1".into())]
        );
        assert!(parse_probe_paths("").unwrap().is_empty());
        let written = write_probe_paths([(8080, "/a"), (8080, "/b c"), (9000, "/")]);
        assert_eq!(
            parse_probe_paths(&written).unwrap(),
            vec![(8080, "/a".into()), (9000, "/".into())]
        );
        for bad in ["8080", "http:/x", "8080:healthz", "70000:/x"] {
            let e = parse_probe_paths(bad).unwrap_err();
            assert!(e.contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn port_lists_parse_and_bad_ones_say_why() {
        assert_eq!(
            parse_ports("25, 8000-8010,").unwrap(),
            vec![25..=25, 8000..=8010]
        );
        assert!(parse_ports("80-70").unwrap_err().contains("backwards"));
        assert!(parse_ports("http").unwrap_err().contains("not a port"));
        assert!(parse_ports("70000").is_err());
    }
}
