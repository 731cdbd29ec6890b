//! `mesh-ctl status` and `mesh-ctl logs`: what runs, on which node, how often it restarted;
//! the nodes as the API server sees them; how many Services each node's agent has programmed;
//! when the cluster's certificates expire.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use k8s_openapi::api::core::v1::Node as KNode;
use kube::Api;

use crate::state::{now_secs, StateDir};

#[derive(clap::Args)]
pub struct StatusArgs {
    #[arg(long, env = "MESHWORK_STATE_DIR", default_value = crate::state::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
}

#[derive(clap::Args)]
pub struct LogsArgs {
    /// A component: apiserver, node-<node>, prometheus or supervisor.
    pub component: String,
    /// Keep printing what is appended.
    #[arg(short, long)]
    pub follow: bool,
    #[arg(long, env = "MESHWORK_STATE_DIR", default_value = crate::state::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
}

fn ago(secs: u64) -> String {
    let d = now_secs().saturating_sub(secs);
    match d {
        0..=119 => format!("{d}s"),
        120..=7199 => format!("{}m", d / 60),
        _ => format!("{}h", d / 3600),
    }
}

pub async fn status(a: StatusArgs) -> Result<()> {
    let st = StateDir(a.state_dir);
    let Some(pid) = st.running() else {
        println!(
            "no cluster is running (state dir {}); start one with `mesh-ctl up`",
            st.0.display()
        );
        return Ok(());
    };
    let info = st.cluster()?;
    println!(
        "cluster: up {} (supervisor pid {pid}), {} nodes, API {} (kubectl context `{}`)",
        ago(info.started),
        info.nodes.len(),
        info.api_url,
        crate::kubeconfig::CONTEXT
    );
    println!("\ncomponents:");
    println!(
        "  {:<14} {:<6} {:<8} {:<9} {:<7} LAST EXIT",
        "NAME", "ON", "PID", "RESTARTS", "UP"
    );
    for c in st.components() {
        println!(
            "  {:<14} {:<6} {:<8} {:<9} {:<7} {}",
            c.name,
            c.on,
            c.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            c.restarts,
            if c.pid.is_some() {
                ago(c.since)
            } else {
                "down".into()
            },
            c.last_exit.unwrap_or_default()
        );
    }
    println!("\nnodes:");
    println!(
        "  {:<6} {:<9} {:<14} {:<16} SERVICES PROGRAMMED (frontends / backends); DISCOVERY CERTIFICATE",
        "NAME", "STATUS", "INTERNAL-IP", "POD-CIDR"
    );
    let client = meshwork_kube_watch::client(Some(&st.admin_kubeconfig())).await;
    let knodes = match &client {
        Ok(c) => Api::<KNode>::all(c.clone())
            .list(&Default::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    for n in &info.nodes {
        let k = knodes
            .iter()
            .find(|k| k.metadata.name.as_deref() == Some(&n.name));
        let ready = match k {
            Some(k) if crate::bringup::node_ready(k) => "Ready",
            Some(_) => "NotReady",
            None => "unknown",
        };
        let cidr = k
            .and_then(|k| k.spec.as_ref()?.pod_cidr.clone())
            .unwrap_or_else(|| "-".into());
        let programmed = http_get(SocketAddr::new(n.ip.into(), 10256), "/metrics")
            .map(|(_, body)| {
                format!(
                    "{} / {}; {}",
                    metric(&body, "meshwork_control_frontends_programmed"),
                    metric(&body, "meshwork_control_backends_programmed"),
                    discovery_certificate(&metric(
                        &body,
                        "meshwork_control_destination_certificate_expiry_timestamp_seconds"
                    ))
                )
            })
            .unwrap_or_else(|| "agent not answering".into());
        println!(
            "  {:<6} {:<9} {:<14} {:<16} {programmed}",
            n.name, ready, n.ip, cidr
        );
    }
    println!("\ncertificates:");
    for (what, path) in [
        ("cluster CA", st.apiserver().join("pki/ca.crt")),
        (
            "API server serving",
            st.apiserver().join("pki/apiserver.crt"),
        ),
        ("mesh trust anchor", st.identity().join("ca.crt")),
        ("mesh issuer", st.identity().join("tls.crt")),
    ] {
        match cert_expiry(&path) {
            Ok(secs) => println!(
                "  {what:<20} expires in {} days ({})",
                secs / 86400,
                path.display()
            ),
            Err(e) => println!("  {what:<20} {e:#}"),
        }
    }
    if info.monitoring {
        println!(
            "\nmonitoring: Prometheus on http://{}",
            crate::bringup::PROMETHEUS
        );
    }
    Ok(())
}

/// An agent's discovery certificate as its metric gives it (Unix seconds of expiry; 0: none).
fn discovery_certificate(expiry: &str) -> String {
    match expiry.parse::<f64>() {
        Ok(t) if t > 0.0 => {
            let left = t as i64 - now_secs() as i64;
            format!(
                "expires in {}h{:02}m",
                left / 3600,
                (left % 3600).max(0) / 60
            )
        }
        Ok(_) => "none yet (its proxies keep their last endpoints)".into(),
        Err(_) => "not served".into(),
    }
}

/// Seconds until the first certificate in the PEM file expires.
fn cert_expiry(path: &std::path::Path) -> Result<i64> {
    let pem = std::fs::read(path).with_context(|| path.display().to_string())?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem)
        .map_err(|e| anyhow::anyhow!("{}: not PEM: {e}", path.display()))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| anyhow::anyhow!("{}: not a certificate: {e}", path.display()))?;
    Ok(cert.validity().not_after.timestamp() - now_secs() as i64)
}

/// The value of an unlabelled gauge in a Prometheus text exposition, or `?`.
fn metric(body: &str, name: &str) -> String {
    body.lines()
        .find_map(|l| {
            let rest = l.strip_prefix(name)?;
            rest.starts_with(' ').then(|| rest.trim().to_string())
        })
        .unwrap_or_else(|| "?".into())
}

/// A plain HTTP/1.0 GET with a 1 s budget: (status code, body).
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let t = Duration::from_secs(1);
    let mut s = TcpStream::connect_timeout(&addr, t).ok()?;
    s.set_read_timeout(Some(t)).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let code = resp.split_whitespace().nth(1)?.parse().ok()?;
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((code, body))
}

pub async fn logs(a: LogsArgs) -> Result<()> {
    let st = StateDir(a.state_dir);
    let path = st.log(&a.component);
    if !path.exists() {
        let known: Vec<String> = std::fs::read_dir(st.logs())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_string_lossy()
                    .strip_suffix(".log")
                    .map(str::to_string)
            })
            .collect();
        bail!(
            "no log for {:?} in {}; components: {}",
            a.component,
            st.logs().display(),
            if known.is_empty() {
                "none (is a cluster up?)".to_string()
            } else {
                known.join(", ")
            }
        );
    }
    let mut f = std::fs::File::open(&path)?;
    let mut out = std::io::stdout();
    std::io::copy(&mut f, &mut out)?;
    if !a.follow {
        return Ok(());
    }
    loop {
        let mut buf = Vec::new();
        f.read_to_end(&mut buf)?;
        if buf.is_empty() {
            tokio::time::sleep(Duration::from_millis(250)).await;
        } else {
            out.write_all(&buf)?;
            out.flush()?;
        }
    }
}
