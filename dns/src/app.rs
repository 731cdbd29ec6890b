//! Wiring: watch Services and EndpointSlices, rebuild the zone on change, serve UDP/TCP/admin.

use std::{
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use arc_swap::ArcSwap;
use hickory_proto::rr::LowerName;
use meshwork_kube_watch::{Changes, ServiceWatch};
use tokio::net::TcpListener;

use crate::{
    config::Config,
    forward::{ForwardConfig, Forwarder},
    metrics::Metrics,
    server::{self, Shared, Snapshot},
    zone::{self, Zone, ZoneConfig},
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Watch(#[from] meshwork_kube_watch::Error),
    #[error("listen on {0}: {1}")]
    Listen(std::net::SocketAddr, #[source] std::io::Error),
}

/// Bursts of API events are folded into one rebuild after this quiet time.
const DEBOUNCE: Duration = Duration::from_millis(20);

/// A running DNS server (threads stop when it is dropped).
pub struct Running {
    pub udp: Vec<std::net::SocketAddr>,
    pub tcp: Vec<std::net::SocketAddr>,
    pub admin: std::net::SocketAddr,
    pub shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// How long start-up waits for the first full list before serving anyway (forwarding works
/// without the API; /ready stays 503 until the watch has synced), as CoreDNS does.
const SYNC_WAIT: Duration = Duration::from_secs(5);

fn forward_config(cfg: &Config) -> Result<ForwardConfig, Error> {
    let mut upstreams = cfg.upstreams.clone();
    if upstreams.is_empty() {
        let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        upstreams = crate::config::resolv_conf_upstreams(&text);
    }
    let mut stubs = Vec::new();
    for (z, ups) in &cfg.stubs {
        let name = hickory_proto::rr::Name::from_ascii(z)
            .map_err(|e| Error::Config(format!("stub zone {z:?}: {e}")))?;
        stubs.push((LowerName::from(&name), ups.clone()));
    }
    Ok(ForwardConfig {
        upstreams,
        stubs,
        timeout: cfg.forward_timeout,
        ..ForwardConfig::default()
    })
}

/// Starts watching and serving; returns once the zone is built from a synced watch.
pub async fn start(cfg: Config) -> Result<Running, Error> {
    let mut zcfg = ZoneConfig::new(&cfg.zone, cfg.ttl).map_err(Error::Config)?;
    zcfg.dns_ip = cfg.dns_ip;
    let client = meshwork_kube_watch::client(cfg.kubeconfig.as_deref()).await?;
    let changes = Changes::new();
    let mut rx = changes.subscribe();
    let watch = ServiceWatch::start(&client, &changes);
    let (services, slices) = (watch.services.clone(), watch.slices.clone());
    let mut tasks = watch.tasks;
    let synced_now = tokio::time::timeout(SYNC_WAIT, async {
        let _ = services.wait_until_ready().await;
        let _ = slices.wait_until_ready().await;
    })
    .await
    .is_ok();
    // Views first (convert before swapping); an unchanged view set keeps the snapshot and
    // its generation, so the UDP caches survive events that do not touch DNS (e.g.
    // readiness churn behind a ClusterIP).
    let views = move || {
        let svcs = services.state();
        let eps = slices.state();
        let mut v = zone::views(
            &svcs.iter().map(|s| s.as_ref()).collect::<Vec<_>>(),
            &eps.iter().map(|s| s.as_ref()).collect::<Vec<_>>(),
        );
        v.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        v
    };
    let build = move |v: &[zone::ServiceView], generation: u64| {
        let serial = u32::try_from(generation % u64::from(u32::MAX)).unwrap_or(1);
        Snapshot {
            zone: Zone::build(zcfg.clone(), v, serial),
            generation,
        }
    };
    let first = views();
    let metrics = Metrics::new();
    let shared = Arc::new(Shared {
        zone: ArcSwap::from_pointee(build(&first, 1)),
        forwarder: Forwarder::new(forward_config(&cfg)?),
        metrics: metrics.clone(),
        stop: Default::default(),
        forwards: Arc::new(tokio::sync::Semaphore::new(server::MAX_FORWARDS)),
        tcp_conns: Arc::new(tokio::sync::Semaphore::new(server::MAX_TCP)),
    });
    metrics.zone_rebuilds.inc();
    metrics.ready.store(synced_now, Ordering::Relaxed);
    let updater = shared.clone();
    let (views, build) = (Arc::new(views), Arc::new(build));
    tasks.push(tokio::spawn(async move {
        let (mut generation, mut last) = (1, first);
        while rx.changed().await.is_ok() {
            tokio::time::sleep(DEBOUNCE).await;
            rx.borrow_and_update();
            let (views, build, prev) = (views.clone(), build.clone(), last.clone());
            let next_gen = generation + 1;
            // Rebuilding 10k services is CPU work: off the runtime's worker.
            let built = tokio::task::spawn_blocking(move || {
                let v = views();
                let snap = (v != prev).then(|| build(&v, next_gen));
                (v, snap)
            })
            .await;
            let Ok((v, snap)) = built else { continue };
            // Every change event comes after a sync: from here on the zone reflects the API.
            updater.metrics.ready.store(true, Ordering::Relaxed);
            if let Some(snap) = snap {
                generation = next_gen;
                last = v;
                updater.zone.store(Arc::new(snap));
                updater.metrics.zone_rebuilds.inc();
            }
        }
    }));

    let workers = cfg
        .udp_workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let (mut udp, mut tcp) = (Vec::new(), Vec::new());
    let rt = tokio::runtime::Handle::current();
    for addr in &cfg.listen {
        let socks = server::bind_udp(*addr, workers).map_err(|e| Error::Listen(*addr, e))?;
        let bound = socks[0].local_addr().map_err(|e| Error::Listen(*addr, e))?;
        udp.push(bound);
        for s in socks {
            let (shared, rt) = (shared.clone(), rt.clone());
            std::thread::Builder::new()
                .name("dns-udp".into())
                .spawn(move || server::udp_worker(s, shared, rt))
                .map_err(|e| Error::Listen(*addr, e))?;
        }
        // TCP on the port UDP got (the same port when it was 0).
        let l = TcpListener::bind(bound)
            .await
            .map_err(|e| Error::Listen(bound, e))?;
        tcp.push(l.local_addr().map_err(|e| Error::Listen(bound, e))?);
        tasks.push(tokio::spawn(server::serve_tcp(l, shared.clone())));
    }
    let admin = TcpListener::bind(cfg.admin_listen)
        .await
        .map_err(|e| Error::Listen(cfg.admin_listen, e))?;
    let admin_addr = admin
        .local_addr()
        .map_err(|e| Error::Listen(cfg.admin_listen, e))?;
    tasks.push(tokio::spawn(meshwork_daemon::admin::serve(
        admin,
        crate::metrics::admin(metrics),
    )));
    Ok(Running {
        udp,
        tcp,
        admin: admin_addr,
        shared,
        tasks,
    })
}
