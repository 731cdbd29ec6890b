//! `meshwork-proxy`'s wiring: the admin port first (live at once, ready once serving), the
//! workload's identity from the identity service (kept fresh by the client library's
//! rotation), discovery, the two stacks, and the drain on SIGTERM or `POST /shutdown`.

use std::sync::{atomic::Ordering, Arc};

use anyhow::Context;
use meshwork_identity::{client, spiffe::SpiffeId, verify::Expect};
use tokio::net::TcpListener;

use crate::{
    admin,
    config::{Config, InboundPolicy},
    drain, inbound,
    metrics::Metrics,
    outbound::{self, discover::Static, resolve::Resolver},
    tls::Credentials,
};

async fn bind(what: &str, addr: std::net::SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("{what} listener on {addr}"))
}

pub async fn run(cfg: Config) -> anyhow::Result<()> {
    // Listened for from here on: a SIGTERM while the listeners are being bound is kept for
    // the wait after them.
    let mut signals = meshwork_daemon::ShutdownSignals::new().context("signal handlers")?;
    let metrics = Metrics::new();
    let state = Arc::new(admin::State::default());
    let admin_l = bind("admin", cfg.admin_listen).await?;
    let admin_task = tokio::spawn(admin::serve(admin_l, metrics.clone(), state.clone()));
    let _admin = AbortOnDrop(admin_task);

    let mut statics = Static::default();
    for e in &cfg.endpoints {
        statics.parse_entry(e).context("--endpoint")?;
    }
    let id = cfg.spiffe_id().map_err(anyhow::Error::msg)?;
    let identity = client::Identity::new(client::Config {
        addr: cfg.identity_addr.clone(),
        service_identity: SpiffeId::parse(&cfg.identity_service_id())
            .map_err(|e| anyhow::anyhow!("--identity-service-id: {e}"))?,
        identity: SpiffeId::parse(&id).map_err(|e| anyhow::anyhow!("identity {id}: {e}"))?,
        token_path: cfg.token_path.clone(),
        trust_anchors_pem: std::fs::read_to_string(&cfg.trust_anchors)
            .with_context(|| format!("trust anchors {}", cfg.trust_anchors.display()))?,
        trust_anchors_path: Some(cfg.trust_anchors.clone()),
    })?;
    let _rotation = AbortOnDrop(identity.spawn_rotation());
    tracing::info!(%id, "waiting for a certificate");
    tokio::select! {
        _ = identity.ready() => {}
        _ = signals.recv() => return Ok(()),
        // Nothing to drain yet: a `POST /shutdown` (an app done, a Job's sidecar) while the
        // identity service is away ends the proxy now, not once a certificate comes.
        _ = state.shutdown.notified() => return Ok(()),
    }
    // Discovery's TLS: this proxy's certificate, the agent proving its identity.
    let discovery_tls = match cfg.destination_identity() {
        None => {
            tracing::warn!("discovery over plaintext (--destination-identity off)");
            None
        }
        Some(id) => Some(identity.client_config(Expect::Identity(
            SpiffeId::parse(&id).map_err(|e| anyhow::anyhow!("--destination-identity: {e}"))?,
        ))),
    };
    let tracer = cfg.trace_collector.as_ref().map(|addr| {
        let mut resource = vec![
            ("service.name".to_string(), "meshwork-proxy".to_string()),
            ("meshwork.identity".to_string(), id.clone()),
        ];
        if let Some(ns) = cfg.namespace.as_ref().filter(|n| !n.is_empty()) {
            resource.push(("k8s.namespace.name".to_string(), ns.clone()));
        }
        tracing::info!(collector = %addr, "spans of sampled requests go to the collector");
        crate::otlp::Exporter::spawn(addr, resource, metrics.otlp.clone())
    });
    let creds: Arc<dyn Credentials> = Arc::new(identity);

    let resolver = match &cfg.destination_addr {
        Some(a) => Resolver::api(
            statics,
            a,
            discovery_tls,
            cfg.discovery_timeout,
            metrics.clone(),
        )
        .map_err(anyhow::Error::msg)?
        .idle_after(cfg.discovery_idle_timeout),
        None => Resolver::fixed(statics, metrics.clone()),
    };
    let out = outbound::Outbound::with(
        outbound::Config {
            detect_timeout: cfg.detect_timeout,
            connect_timeout: cfg.connect_timeout,
            request_timeout: cfg.request_timeout,
            header_read_timeout: cfg.header_read_timeout,
            failfast: cfg.discovery_timeout,
            namespace: cfg.namespace.clone().filter(|n| !n.is_empty()),
            cluster_domain: cfg.cluster_domain.clone(),
            tracer: tracer.clone(),
            ..Default::default()
        },
        creds.clone(),
        resolver,
        metrics.clone(),
    );
    let inb = inbound::Inbound::with(
        inbound::Config {
            detect_timeout: cfg.detect_timeout,
            policy: match cfg.inbound_policy {
                InboundPolicy::Permissive => inbound::Policy::Permissive,
                InboundPolicy::Strict => inbound::Policy::Strict,
            },
            app_ip: cfg.app_ip,
            connect_timeout: cfg.connect_timeout,
            proxy_ports: vec![cfg.outbound_listen.port(), cfg.admin_listen.port()],
            header_read_timeout: cfg.header_read_timeout,
            opaque_ports: cfg.inbound_opaque_ports.0.clone(),
            probe_paths: cfg.inbound_probe_paths.0.clone(),
            routes: cfg.inbound_routes.0.clone(),
            tracer,
        },
        creds,
        metrics,
    );
    let out_l = bind("outbound", cfg.outbound_listen).await?;
    let in_l = bind("inbound", cfg.inbound_listen).await?;
    let (signal, watch) = drain::channel();
    tokio::spawn(out.serve(out_l, watch.clone()));
    tokio::spawn(inb.serve(in_l, watch));
    state.ready.store(true, Ordering::Relaxed);
    tracing::info!(
        outbound = %cfg.outbound_listen,
        inbound = %cfg.inbound_listen,
        admin = %cfg.admin_listen,
        "serving"
    );
    tokio::select! {
        _ = signals.recv() => {}
        _ = state.shutdown.notified() => {}
    }
    state.ready.store(false, Ordering::Relaxed);
    tracing::info!(grace = ?cfg.shutdown_grace, "draining");
    if signal.drain(cfg.shutdown_grace).await {
        tracing::info!("drained");
    } else {
        tracing::warn!("the grace period ended with connections still open");
    }
    Ok(())
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
