//! Command line of `meshwork-dns` (flags with env fallbacks; defaults here only).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;

pub const DEFAULT_ZONE: &str = "cluster.local";
pub const DEFAULT_TTL: u32 = 5;
pub const DEFAULT_LISTEN: &str = "0.0.0.0:53";
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9153";

#[derive(Parser, Debug, Clone)]
#[command(
    name = "meshwork-dns",
    version,
    about = "Cluster DNS (Kubernetes DNS spec 1.1.0)"
)]
pub struct Config {
    /// kubeconfig of the API server (default: in-cluster, $KUBECONFIG, ~/.kube/config).
    #[arg(long, env = "MESHWORK_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// UDP and TCP listen addresses (repeatable).
    #[arg(long = "listen", env = "MESHWORK_DNS_LISTEN", value_delimiter = ',', default_value = DEFAULT_LISTEN)]
    pub listen: Vec<SocketAddr>,
    /// The cluster zone.
    #[arg(long, env = "MESHWORK_DNS_ZONE", default_value = DEFAULT_ZONE)]
    pub zone: String,
    /// TTL of cluster records and of the negative SOA.
    #[arg(long, default_value_t = DEFAULT_TTL)]
    pub ttl: u32,
    /// Upstream resolvers for other names, tried in order (default: /etc/resolv.conf's).
    #[arg(
        long = "upstream",
        env = "MESHWORK_DNS_UPSTREAMS",
        value_delimiter = ','
    )]
    pub upstreams: Vec<SocketAddr>,
    /// Stub domains: `zone=ip:port[;ip:port]` (repeatable).
    #[arg(long = "stub", value_parser = parse_stub)]
    pub stubs: Vec<(String, Vec<SocketAddr>)>,
    /// Time for one forwarded query across its upstreams before SERVFAIL.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    pub forward_timeout: Duration,
    /// /metrics, /health and /ready.
    #[arg(long, env = "MESHWORK_DNS_ADMIN", default_value = DEFAULT_ADMIN)]
    pub admin_listen: SocketAddr,
    /// UDP worker threads per listen address (default: the CPUs this process may run on).
    #[arg(long)]
    pub udp_workers: Option<usize>,
    /// The cluster DNS Service address, served as `ns.dns.<zone>`.
    #[arg(long)]
    pub dns_ip: Option<std::net::IpAddr>,
}

fn parse_stub(s: &str) -> Result<(String, Vec<SocketAddr>), String> {
    let (zone, ups) = s
        .split_once('=')
        .ok_or_else(|| format!("stub {s:?}: expected zone=ip:port[;ip:port]"))?;
    let ups = ups
        .split(';')
        .map(|u| {
            u.parse()
                .map_err(|e| format!("stub {s:?}: upstream {u:?}: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((zone.to_string(), ups))
}

use meshwork_daemon::parse_duration;

/// Nameservers of a resolv.conf (port 53).
pub fn resolv_conf_upstreams(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsers() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert!(parse_duration("2x").is_err());
        let (z, u) = parse_stub("corp.example=127.0.0.1:5353;127.0.0.2:53").unwrap();
        assert_eq!((z.as_str(), u.len()), ("corp.example", 2));
        assert!(parse_stub("nozone").is_err());
        assert_eq!(
            resolv_conf_upstreams("search x\nnameserver 10.0.0.1\nnameserver fe80::1%eth0\n"),
            vec!["10.0.0.1:53".parse().unwrap()]
        );
    }
}
