//! `meshwork-proxy`'s configuration: every flag has an environment variable (the injector
//! sets the variables), and ARCHITECTURE.md ("The proxy") lists them in one table.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Parser, ValueEnum};
use meshwork_daemon::parse_duration;

#[derive(Parser, Debug, Clone)]
#[command(name = "meshwork-proxy", version, about = "Meshwork's sidecar proxy")]
pub struct Config {
    /// Where the app's outbound traffic arrives (explicitly addressed until interception).
    #[arg(
        long,
        env = "MESHWORK_PROXY_OUTBOUND_LISTEN",
        value_parser = listen,
        default_value = "127.0.0.1:4140"
    )]
    pub outbound_listen: SocketAddr,
    /// Where peers' mTLS connections (and, by policy, plaintext) arrive.
    #[arg(
        long,
        env = "MESHWORK_PROXY_INBOUND_LISTEN",
        value_parser = listen,
        default_value = "0.0.0.0:4143"
    )]
    pub inbound_listen: SocketAddr,
    /// /live, /ready, /metrics, POST /shutdown (from loopback only).
    #[arg(
        long,
        env = "MESHWORK_PROXY_ADMIN_LISTEN",
        value_parser = listen,
        default_value = "0.0.0.0:4191"
    )]
    pub admin_listen: SocketAddr,
    /// The identity service, host:port.
    #[arg(long, env = "MESHWORK_PROXY_IDENTITY_ADDR")]
    pub identity_addr: String,
    /// The SPIFFE ID the identity service must prove (default: meshwork-system/meshwork-identity
    /// in --trust-domain).
    #[arg(long, env = "MESHWORK_PROXY_IDENTITY_SERVICE_ID")]
    pub identity_service_id: Option<String>,
    /// This proxy's SPIFFE ID (default: from --namespace and --service-account).
    #[arg(long, env = "MESHWORK_PROXY_IDENTITY")]
    pub identity: Option<String>,
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: Option<String>,
    #[arg(long, env = "SERVICE_ACCOUNT")]
    pub service_account: Option<String>,
    #[arg(
        long,
        env = "MESHWORK_PROXY_TRUST_DOMAIN",
        default_value = "cluster.local"
    )]
    pub trust_domain: String,
    /// The cluster's DNS domain: a one-label host `web:80` is `web.<namespace>.svc.<it>:80`.
    #[arg(
        long,
        env = "MESHWORK_PROXY_CLUSTER_DOMAIN",
        default_value = "cluster.local"
    )]
    pub cluster_domain: String,
    /// The projected ServiceAccount token for the identity audience (re-read at each renewal).
    #[arg(
        long,
        env = "MESHWORK_PROXY_IDENTITY_TOKEN",
        default_value = "/var/run/secrets/meshwork.io/identity/token"
    )]
    pub token_path: PathBuf,
    /// PEM trust anchors (the meshwork-identity-trust-roots ConfigMap).
    #[arg(
        long,
        env = "MESHWORK_PROXY_TRUST_ANCHORS",
        default_value = "/var/run/meshwork.io/trust-roots/ca-bundle.crt"
    )]
    pub trust_anchors: PathBuf,
    /// The node's control agent (discovery), host:port; unset: --endpoint entries only.
    #[arg(long, env = "MESHWORK_PROXY_DESTINATION_ADDR")]
    pub destination_addr: Option<String>,
    /// An OpenTelemetry collector, `host:port` of its OTLP/HTTP receiver (4318): requests
    /// with a sampled `traceparent` get a span of this proxy's, sent there (`otlp.rs`).
    #[arg(long, env = "MESHWORK_PROXY_TRACE_COLLECTOR", value_parser = host_port)]
    pub trace_collector: Option<String>,
    /// The SPIFFE ID the control agent must prove: discovery is mutual TLS, this proxy
    /// presenting its own certificate (default: kube-system/meshwork-control in
    /// --trust-domain). `off`: plaintext (a test's own discovery server only).
    #[arg(long, env = "MESHWORK_PROXY_DESTINATION_IDENTITY")]
    pub destination_identity: Option<String>,
    /// A fixed authority: `AUTHORITY=ADDR[@PROXY_PORT@SPIFFE_ID][,...]` (repeatable).
    #[arg(
        long = "endpoint",
        env = "MESHWORK_PROXY_ENDPOINTS",
        value_delimiter = ';'
    )]
    pub endpoints: Vec<String>,
    /// Plaintext from outside the mesh (`meshwork.io/inbound-policy`).
    #[arg(
        long,
        env = "MESHWORK_PROXY_INBOUND_POLICY",
        value_enum,
        default_value = "permissive"
    )]
    pub inbound_policy: InboundPolicy,
    /// This pod's opaque ports (`config.meshwork.io/opaque-ports`: `25,587,8000-8010`); tunnels
    /// to them are relayed without detection. Default: Linkerd's server-speaks-first ports.
    #[arg(
        long,
        env = "MESHWORK_PROXY_INBOUND_OPAQUE_PORTS",
        default_value = "25,587,3306,4444,5432,6379,9300,11211",
        value_parser = ports
    )]
    pub inbound_opaque_ports: Ports,
    /// The app's HTTP probes (`PORT:/path`, space-separated; the injector sets them from the
    /// pod's httpGet probes): under `strict`, plaintext GETs of exactly these still reach the
    /// app, so kubelet probes pass (Linkerd's default policy authorizes probes too).
    #[arg(
        long,
        env = "MESHWORK_PROXY_INBOUND_PROBE_PATHS",
        default_value = "",
        value_parser = probe_paths
    )]
    pub inbound_probe_paths: ProbePaths,
    /// Routes that name this pod's inbound requests in the metrics' `route` label
    /// (`config.meshwork.io/routes`: `[METHOD ]PATH` entries, `;`-separated, `{name}` one
    /// segment, a last `*` any rest; destination-api/src/routes.rs).
    #[arg(
        long,
        env = "MESHWORK_PROXY_INBOUND_ROUTES",
        default_value = "",
        value_parser = routes
    )]
    pub inbound_routes: Routes,
    /// Where the app listens; unset: the address each connection came to (the pod's), so a
    /// port the app binds on 127.0.0.1 only is not reachable from outside the pod.
    #[arg(long, env = "MESHWORK_PROXY_APP_IP")]
    pub app_ip: Option<std::net::IpAddr>,
    #[arg(long, env = "MESHWORK_PROXY_DETECT_TIMEOUT", default_value = "10s", value_parser = positive)]
    pub detect_timeout: Duration,
    #[arg(long, env = "MESHWORK_PROXY_CONNECT_TIMEOUT", default_value = "1s", value_parser = positive)]
    pub connect_timeout: Duration,
    /// Per request, retries included (unset: none).
    #[arg(long, env = "MESHWORK_PROXY_REQUEST_TIMEOUT", value_parser = positive)]
    pub request_timeout: Option<Duration>,
    /// How long a request waits for its authority's first endpoints, or for an endpoint that
    /// can take it (all in back-off or ejected), before it is answered (fail fast).
    #[arg(long, env = "MESHWORK_PROXY_DISCOVERY_TIMEOUT", default_value = "3s", value_parser = positive)]
    pub discovery_timeout: Duration,
    /// How long an authority no request asked for is followed (its discovery stream, its
    /// balancer, its mesh sessions) before it is let go (Linkerd's discovery idle timeout).
    #[arg(long, env = "MESHWORK_PROXY_DISCOVERY_IDLE_TIMEOUT", default_value = "60s", value_parser = positive)]
    pub discovery_idle_timeout: Duration,
    /// How long a client may take to send a request's headers (also the idle limit of a
    /// kept-alive HTTP/1 connection).
    #[arg(long, env = "MESHWORK_PROXY_HEADER_READ_TIMEOUT", default_value = "30s", value_parser = positive)]
    pub header_read_timeout: Duration,
    /// How long a drain (SIGTERM, POST /shutdown) waits for requests in flight.
    #[arg(long, env = "MESHWORK_PROXY_SHUTDOWN_GRACE", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// Runtime worker threads (Linkerd's proxy defaults to a small fixed number too).
    #[arg(long, env = "MESHWORK_PROXY_WORKERS", default_value_t = 1, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=64))]
    pub workers: usize,
}

/// A timeout: more than zero (a zero one would fail every handshake, detection or connect
/// it bounds at once, while `/ready` said the proxy was fine).
fn positive(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err(format!("{s:?}: must be more than 0")),
        d => Ok(d),
    }
}

/// A listener's address, with a fixed port: the inbound proxy refuses to relay to the
/// proxy's own ports, which it knows by these flags (port 0 would leave the admin port,
/// `/shutdown` included, reachable from any peer through it).
fn listen(s: &str) -> Result<SocketAddr, String> {
    let a: SocketAddr = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    if a.port() == 0 {
        return Err(format!("{s:?}: a fixed port is needed, not 0"));
    }
    Ok(a)
}

/// A port list (`25,587,8000-8010`).
#[derive(Clone, Debug)]
pub struct Ports(pub Vec<std::ops::RangeInclusive<u16>>);

/// `host:port` (`meshwork_destination_api::check_host_port`).
fn host_port(s: &str) -> Result<String, String> {
    meshwork_destination_api::check_host_port(s).map(|()| s.into())
}

/// `PORT:/path` entries (`meshwork_destination_api::parse_probe_paths`).
#[derive(Clone, Debug)]
pub struct ProbePaths(pub Vec<(u16, String)>);

fn probe_paths(s: &str) -> Result<ProbePaths, String> {
    meshwork_destination_api::parse_probe_paths(s).map(ProbePaths)
}

/// Routes for the metrics (`meshwork_destination_api::routes`).
#[derive(Clone, Debug)]
pub struct Routes(pub meshwork_destination_api::routes::Routes);

fn routes(s: &str) -> Result<Routes, String> {
    meshwork_destination_api::routes::Routes::parse(s).map(Routes)
}

fn ports(s: &str) -> Result<Ports, String> {
    meshwork_destination_api::parse_ports(s).map(Ports)
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum InboundPolicy {
    Permissive,
    Strict,
}

impl Config {
    /// This proxy's SPIFFE ID.
    /// What the identity service must prove.
    pub fn identity_service_id(&self) -> String {
        self.identity_service_id.clone().unwrap_or_else(|| {
            format!(
                "spiffe://{}/ns/meshwork-system/sa/meshwork-identity",
                self.trust_domain
            )
        })
    }

    /// What the control agent must prove on discovery; None: plaintext (`off`).
    pub fn destination_identity(&self) -> Option<String> {
        match self.destination_identity.as_deref() {
            Some("off") => None,
            Some(id) => Some(id.to_string()),
            None => Some(format!(
                "spiffe://{}/ns/kube-system/sa/meshwork-control",
                self.trust_domain
            )),
        }
    }

    pub fn spiffe_id(&self) -> Result<String, String> {
        if let Some(id) = &self.identity {
            return Ok(id.clone());
        }
        match (&self.namespace, &self.service_account) {
            (Some(ns), Some(sa)) if !ns.is_empty() && !sa.is_empty() => {
                Ok(format!("spiffe://{}/ns/{ns}/sa/{sa}", self.trust_domain))
            }
            _ => Err(
                "no identity: set --identity, or --namespace and --service-account \
                 (POD_NAMESPACE, SERVICE_ACCOUNT)"
                    .into(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::Config;

    fn parse(args: &[&str]) -> Config {
        let mut argv = vec!["meshwork-proxy", "--identity-addr", "10.0.0.1:8080"];
        argv.extend(args);
        Config::try_parse_from(argv).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Values that would parse but leave a proxy that fails everything (or exposes its
    /// admin port) are refused at start, by name.
    #[test]
    fn zero_timeouts_port_zero_and_no_workers_are_refused() {
        let err = |args: &[&str]| {
            let mut argv = vec!["meshwork-proxy", "--identity-addr", "10.0.0.1:8080"];
            argv.extend(args);
            match Config::try_parse_from(argv) {
                Ok(_) => panic!("{args:?} was taken"),
                Err(e) => e.to_string(),
            }
        };
        for flag in [
            "--detect-timeout",
            "--connect-timeout",
            "--request-timeout",
            "--discovery-timeout",
            "--discovery-idle-timeout",
            "--header-read-timeout",
        ] {
            let e = err(&[flag, "0s"]);
            assert!(e.contains(flag) && e.contains("more than 0"), "{e}");
        }
        for flag in ["--admin-listen", "--inbound-listen", "--outbound-listen"] {
            let e = err(&[flag, "0.0.0.0:0"]);
            assert!(e.contains(flag) && e.contains("fixed port"), "{e}");
        }
        assert!(err(&["--workers", "0"]).contains("--workers"));
        // What stays allowed: a drain that does not wait.
        assert!(
            parse(&["--shutdown-grace", "0s", "--request-timeout", "5s"])
                .shutdown_grace
                .is_zero()
        );
    }

    #[test]
    fn control_plane_identities_follow_the_trust_domain() {
        let c = parse(&[]);
        assert_eq!(
            c.destination_identity().as_deref(),
            Some("spiffe://cluster.local/ns/kube-system/sa/meshwork-control")
        );
        let c = parse(&["--trust-domain", "prod.example"]);
        assert_eq!(
            c.destination_identity().as_deref(),
            Some("spiffe://prod.example/ns/kube-system/sa/meshwork-control")
        );
        assert_eq!(
            c.identity_service_id(),
            "spiffe://prod.example/ns/meshwork-system/sa/meshwork-identity"
        );
        assert_eq!(
            parse(&["--destination-identity", "off"]).destination_identity(),
            None
        );
    }
}
