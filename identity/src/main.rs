//! `meshwork-identity`: `serve` runs the identity service; `init` makes a trust anchor and an
//! issuer; `issuer` makes a new issuer from an existing anchor (an issuer rotation).

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context;
use clap::{Parser, Subcommand};
use meshwork_identity::{
    ca, metrics::Metrics, parse_duration, review::Reviewer, server, service, SpiffeId,
    DEFAULT_AUDIENCE, DEFAULT_TRUST_DOMAIN,
};

#[derive(Parser)]
#[command(version, about = "The Meshwork mesh identity service")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    Serve(Serve),
    Init(Init),
    Issuer(NewIssuer),
}

/// Serve Certify over TLS.
#[derive(clap::Args)]
struct Serve {
    #[arg(long, env = "MESHWORK_TRUST_DOMAIN", default_value = DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// A directory with ca.crt (trust anchors), tls.crt and tls.key (the issuer).
    #[arg(long, conflicts_with = "issuer_secret")]
    issuer_dir: Option<PathBuf>,
    /// A Secret (namespace/name) with the same three keys.
    #[arg(long)]
    issuer_secret: Option<String>,
    #[arg(long, default_value = "0.0.0.0:8080")]
    listen: std::net::SocketAddr,
    /// /metrics, /healthz, /ready.
    #[arg(long, default_value = "0.0.0.0:9990")]
    admin_listen: std::net::SocketAddr,
    /// The token audience callers must present.
    #[arg(long, default_value = DEFAULT_AUDIENCE)]
    audience: String,
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    cert_lifetime: Duration,
    /// Certify calls in progress at once from one address (each pod has its own; a load
    /// test from one host needs more).
    #[arg(long, default_value_t = service::MAX_CALLS_PER_CALLER, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    max_calls_per_caller: usize,
    /// TokenReviews in flight at once; more wait (up to 3 s) for a place.
    #[arg(long, default_value_t = service::MAX_REVIEWS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    max_reviews: usize,
    /// The service's own namespace and ServiceAccount: its serving certificate names them.
    #[arg(long, env = "POD_NAMESPACE", default_value = "meshwork-system")]
    namespace: String,
    #[arg(long, env = "SERVICE_ACCOUNT", default_value = "meshwork-identity")]
    service_account: String,
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Keep a ConfigMap of this name with the trust anchors (`ca-bundle.crt`) in every
    /// namespace, for injected pods to mount (publish.rs); needs RBAC on namespaces and
    /// configmaps cluster-wide.
    #[arg(long)]
    publish_trust_roots: Option<String>,
}

/// Write a new trust anchor and issuer (ca.crt, ca.key, tls.crt, tls.key) into a directory.
#[derive(clap::Args)]
struct Init {
    #[arg(long, default_value = DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value = "87600h", value_parser = parse_duration)]
    anchor_lifetime: Duration,
    #[arg(long, default_value = "8760h", value_parser = parse_duration)]
    issuer_lifetime: Duration,
}

/// Write a new issuer (tls.crt, tls.key) signed by an existing anchor.
#[derive(clap::Args)]
struct NewIssuer {
    #[arg(long, default_value = DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    #[arg(long)]
    anchor_cert: PathBuf,
    #[arg(long)]
    anchor_key: PathBuf,
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value = "8760h", value_parser = parse_duration)]
    lifetime: Duration,
}

fn init(a: Init) -> anyhow::Result<()> {
    ca::write_new_ca(
        &a.out,
        &a.trust_domain,
        a.anchor_lifetime,
        a.issuer_lifetime,
    )?;
    println!(
        "trust anchor and issuer for {} in {}",
        a.trust_domain,
        a.out.display()
    );
    Ok(())
}

fn new_issuer(a: NewIssuer) -> anyhow::Result<()> {
    let cert = std::fs::read_to_string(&a.anchor_cert)
        .with_context(|| a.anchor_cert.display().to_string())?;
    let key = std::fs::read_to_string(&a.anchor_key)
        .with_context(|| a.anchor_key.display().to_string())?;
    ca::write_issuer(&a.out, &a.trust_domain, &cert, &key, a.lifetime)?;
    println!("issuer in {}", a.out.display());
    Ok(())
}

async fn serve(a: Serve) -> anyhow::Result<()> {
    let source = match (&a.issuer_dir, &a.issuer_secret) {
        (Some(d), None) => server::Source::Dir(d.clone()),
        (None, Some(s)) => {
            let (ns, name) = s
                .split_once('/')
                .context("--issuer-secret is namespace/name")?;
            server::Source::Secret {
                namespace: ns.into(),
                name: name.into(),
            }
        }
        _ => anyhow::bail!("give --issuer-dir or --issuer-secret"),
    };
    let own_id = SpiffeId::service_account(&a.trust_domain, &a.namespace, &a.service_account)
        .context("the service's own identity")?;
    let client = meshwork_kube_watch::client(a.kubeconfig.as_deref()).await?;
    let material = source.load(&client).await.context("loading the CA")?;
    let first = material.ca().context("the CA")?;
    let metrics = Metrics::new();
    let running = Arc::new(server::Running {
        ca: service::CaHandle::new(material.ca()?),
        own: Arc::new(server::OwnCert::default()),
        metrics: metrics.clone(),
        own_id,
        lifetime: a.cert_lifetime,
    });
    running.install(first);
    let (anchors_tx, anchors_rx) = tokio::sync::watch::channel(material.anchors.clone());
    {
        let (r, client) = (running.clone(), client.clone());
        tokio::spawn(source.follow(client, material, move |ca, m| {
            r.install(ca);
            anchors_tx.send_replace(m.anchors.clone());
        }));
    }
    if let Some(name) = a.publish_trust_roots.clone() {
        tokio::spawn(meshwork_identity::publish::run(
            client.clone(),
            name,
            anchors_rx,
        ));
    }
    {
        // The serving certificate is re-signed at half its life.
        let r = running.clone();
        let every = a.cert_lifetime / 2;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let ca = r.ca.get();
                if let Err(e) = r.own.renew(&ca, &r.own_id, r.lifetime) {
                    tracing::error!(error = %e, "renewing the service's own certificate");
                }
            }
        });
    }
    let svc = service::Service {
        ca: running.ca.clone(),
        reviewer: Reviewer::with_pod_cache(client, a.audience.clone()).await,
        trust_domain: a.trust_domain.clone(),
        lifetime: a.cert_lifetime,
        metrics: metrics.clone(),
        limits: service::Limits::new(a.max_calls_per_caller, a.max_reviews),
    };
    let admin = tokio::net::TcpListener::bind(a.admin_listen)
        .await
        .with_context(|| format!("admin listener {}", a.admin_listen))?;
    println!("admin on {}", admin.local_addr()?);
    let m = metrics.clone();
    tokio::spawn(meshwork_daemon::admin::serve(
        admin,
        Arc::new(move |path: &str| match path {
            "/metrics" => (200, m.encode()),
            "/healthz" | "/livez" | "/ready" => (200, "ok\n".into()),
            _ => (404, "not found\n".into()),
        }),
    ));
    let listener = tokio::net::TcpListener::bind(a.listen)
        .await
        .with_context(|| format!("listener {}", a.listen))?;
    tracing::info!(listen = %listener.local_addr()?, identity = %running.own_id, trust_domain = %a.trust_domain, "identity service listening");
    println!("identity service listening on {}", listener.local_addr()?);
    let tls = server::tls_config(running.own.clone())?;
    tokio::select! {
        r = server::serve_grpc(listener, tls, svc) => r,
        r = meshwork_daemon::shutdown_signal() => r.map_err(Into::into),
    }
}

fn main() -> anyhow::Result<()> {
    // Audit lines go to files and log collectors: init_logging writes no colour codes there.
    meshwork_daemon::init_logging();
    match Cli::parse().cmd {
        Cmd::Init(a) => init(a),
        Cmd::Issuer(a) => new_issuer(a),
        Cmd::Serve(a) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(serve(a)),
    }
}
