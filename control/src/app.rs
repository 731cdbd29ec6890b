//! Wiring: reflectors → desired state → plan → the eBPF datapath, plus the admin endpoint.
//!
//! On start the datapath is opened on its pins and read back (`Datapath::list`); the first plan
//! is against what is programmed, so a restart converges without flushing and traffic keeps
//! flowing while the agent is down. Shutdown leaves the datapath in place.

use std::{
    sync::{atomic::Ordering, Arc, Mutex},
    time::{Duration, Instant},
};

use meshwork_ebpf::{Algorithm, BpfDatapath, Datapath};
use meshwork_kube_watch::{Changes, ServiceWatch};
use tokio::net::TcpListener;

use crate::{
    apply::apply,
    config::{Config, LbAlgorithm},
    desired::{Desired, NodeInfo, Options},
    metrics::{now_ms, Metrics},
    plan::plan,
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Watch(#[from] meshwork_kube_watch::Error),
    #[error("datapath: {0}")]
    Datapath(#[from] meshwork_ebpf::Error),
    #[error("listen on {0}: {1}")]
    Listen(std::net::SocketAddr, #[source] std::io::Error),
    #[error("overlay: {0}")]
    Overlay(#[from] meshwork_overlay::Error),
    #[error("netlink: {0}")]
    Netlink(#[from] meshwork_netlink::Error),
}

/// The VXLAN device this agent programs from Node objects, if it owns the overlay.
async fn overlay(cfg: &Config) -> Result<Option<meshwork_overlay::Overlay>, Error> {
    let Some(uplink) = &cfg.overlay_uplink else {
        return Ok(None);
    };
    let ip = cfg
        .overlay_ip
        .ok_or_else(|| Error::Config("--overlay-uplink needs --overlay-ip".into()))?;
    if cfg.pod_cidrs.is_empty() {
        return Err(Error::Config("--overlay-uplink needs --pod-cidr".into()));
    }
    let oc = meshwork_overlay::OverlayConfig::new(uplink, ip, cfg.pod_cidrs.clone());
    let nl = meshwork_netlink::Netlink::connect()?;
    Ok(Some(meshwork_overlay::Overlay::ensure(nl, &oc).await?))
}

/// Changes arriving within this of each other are applied together.
const DEBOUNCE: Duration = Duration::from_millis(2);
/// A failed apply is retried after this.
const RETRY: Duration = Duration::from_millis(500);

pub struct Running {
    pub admin: std::net::SocketAddr,
    pub metrics: Arc<Metrics>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Running {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn datapath_config(cfg: &Config) -> Result<meshwork_ebpf::Config, Error> {
    let node = cfg.node().map_err(Error::Config)?;
    let mut d = meshwork_ebpf::Config::new(&node, cfg.cgroup.clone());
    d.pin_dir = cfg.pin_dir().map_err(Error::Config)?;
    d.uplink = cfg
        .uplink
        .clone()
        .map(|name| meshwork_ebpf::Uplink { netns: None, name });
    // Flows from outside to backends on other nodes are SNATed to this node's (first IPv4)
    // address: their replies come back to it, through the uplink.
    if d.uplink.is_some() {
        d.snat = cfg.node_ips.iter().find_map(|ip| match ip {
            std::net::IpAddr::V4(a) => Some(*a),
            std::net::IpAddr::V6(_) => None,
        });
    }
    Ok(d)
}

/// `meshwork-control uninstall`: removes programs, links and maps from the pin directory.
pub fn uninstall(cfg: &Config) -> Result<(), Error> {
    let dir = cfg.pin_dir().map_err(Error::Config)?;
    meshwork_ebpf::uninstall_dir(&dir)?;
    Ok(())
}

pub async fn start(cfg: Config) -> Result<Running, Error> {
    let client = meshwork_kube_watch::client(cfg.kubeconfig.as_deref()).await?;
    let cfg = crate::discover::resolve(cfg, &client).await?;
    let node = NodeInfo {
        name: cfg.node().map_err(Error::Config)?,
        addresses: cfg.node_ips.clone(),
    };
    let opts = Options {
        proxy_name: cfg.proxy_name.clone(),
        algorithm: match cfg.lb_algorithm {
            LbAlgorithm::Random => Algorithm::Random,
            LbAlgorithm::Maglev => Algorithm::Maglev,
        },
    };
    let dp = BpfDatapath::open(datapath_config(&cfg)?)?;
    let pin_dir = dp.pin_dir().to_path_buf();
    let have: Desired = dp.list()?.into_iter().map(|s| (s.frontend, s)).collect();
    tracing::info!(frontends = have.len(), "datapath read back");
    let dp = Arc::new(Mutex::new((dp, have)));

    let changes = Changes::new();
    let mut rx = changes.subscribe();
    let overlay = overlay(&cfg).await?;
    let (nodes, nodes_task) = meshwork_kube_watch::reflect(
        kube::Api::<k8s_openapi::api::core::v1::Node>::all(client.clone()),
        kube::runtime::watcher::Config::default(),
        changes.clone(),
    );
    let mut watch = ServiceWatch::start(&client, &changes);
    let (services, slices) = (watch.services.clone(), watch.slices.clone());
    let mut tasks = std::mem::take(&mut watch.tasks);
    tasks.push(nodes_task);
    let me = node.name.clone();
    let metrics = Metrics::new();
    metrics.follow_datapath(pin_dir);
    let m = metrics.clone();
    let reconcile = tokio::spawn(async move {
        // Nothing is planned before both lists are in: a partial view would remove live
        // frontends of a restarted agent.
        watch.synced().await;
        let _ = nodes.wait_until_ready().await;
        let mut pending = true;
        // A full pass first and after any failed apply; otherwise only what changed.
        let mut full = true;
        let mut tracker = Some(crate::incremental::Tracker::default());
        loop {
            if !pending {
                if rx.changed().await.is_err() {
                    return;
                }
                m.pending_since_ms
                    .compare_exchange(0, now_ms(), Ordering::Relaxed, Ordering::Relaxed)
                    .ok();
                tokio::time::sleep(DEBOUNCE).await;
            }
            rx.borrow_and_update();
            let seen = Instant::now();
            // Convert before locking the datapath: the lock is held for the writes only.
            let svcs = services.state();
            let eps = slices.state();
            let (node, opts, dp, m2) = (node.clone(), opts.clone(), dp.clone(), m.clone());
            let mut t = tracker.take().unwrap_or_default();
            let was_full = full;
            let res = tokio::task::spawn_blocking(move || {
                let (want, scope) = if was_full {
                    (t.full(&node, &opts, &svcs, &eps), None)
                } else {
                    let (w, s) = t.changes(&node, &opts, &svcs, &eps);
                    (w, Some(s))
                };
                let Ok(mut g) = dp.lock() else {
                    return (t, usize::MAX);
                };
                let (dp, have) = &mut *g;
                let ops = match &scope {
                    None => plan(&want, have),
                    Some(scope) => plan(&want, &crate::incremental::within(have, scope)),
                };
                let failed = apply(dp, have, ops);
                m2.services
                    .set(i64::try_from(have.len()).unwrap_or(i64::MAX));
                m2.endpoints.set(
                    i64::try_from(have.values().map(|s| s.backends.len()).sum::<usize>())
                        .unwrap_or(i64::MAX),
                );
                (t, failed)
            })
            .await;
            let done = match res {
                Ok((t, failed)) => {
                    tracker = Some(t);
                    failed
                }
                Err(_) => usize::MAX,
            };
            full = done != 0;
            // The overlay to every other node, from Node objects (idempotent; a node that
            // joins or leaves changes routes, FDB and neighbours here).
            let mut done = done;
            if let Some(ov) = &overlay {
                let n = nodes.state();
                let remotes =
                    crate::nodes::remotes(&me, &n.iter().map(|x| x.as_ref()).collect::<Vec<_>>());
                if let Err(e) = ov.sync(&remotes).await {
                    tracing::warn!(error = %e, "overlay sync");
                    done = done.saturating_add(1);
                }
            }
            m.sync_duration.observe(seen.elapsed().as_secs_f64());
            if done == 0 {
                m.pending_since_ms.store(0, Ordering::Relaxed);
                m.last_sync.set(now_ms() / 1000);
                m.synced.store(true, Ordering::Relaxed);
                pending = false;
            } else {
                m.sync_errors.inc();
                tokio::time::sleep(RETRY).await;
                pending = true;
            }
        }
    });
    let admin = TcpListener::bind(cfg.admin_listen)
        .await
        .map_err(|e| Error::Listen(cfg.admin_listen, e))?;
    let admin_addr = admin
        .local_addr()
        .map_err(|e| Error::Listen(cfg.admin_listen, e))?;
    let serve = tokio::spawn(meshwork_kube_watch::admin::serve(
        admin,
        Metrics::admin(metrics.clone()),
    ));
    Ok(Running {
        admin: admin_addr,
        metrics,
        tasks: {
            tasks.extend([reconcile, serve]);
            tasks
        },
    })
}
