//! Wiring: the reflectors, the Service datapath loop (`sync.rs`), the overlay loop
//! (`overlay.rs`) and the admin endpoint. Each reflector reports its objects to the loop that
//! needs them: Services and EndpointSlices to the Service loop (per object), Nodes to the
//! overlay loop (a change signal), so a Node heartbeat never wakes a Service pass.
//!
//! On start the datapath is opened on its pins and read back (`Datapath::list`); the first plan
//! is against what is programmed, so a restart converges without flushing and traffic keeps
//! flowing while the agent is down. Shutdown leaves the datapath in place.

use std::sync::{Arc, Mutex};

use meshwork_ebpf::{Algorithm, BpfDatapath, Datapath};
use meshwork_kube_watch::{Changes, Seen, ServiceWatch};
use meshwork_service_model::{service_key, slice_service};
use tokio::{
    net::TcpListener,
    sync::{broadcast, mpsc},
};

use crate::{
    config::{Config, LbAlgorithm},
    desired::{Desired, NodeInfo, Options},
    destination::{Changed, SharedIndex},
    incremental::Change,
    metrics::Metrics,
    sync::{ServiceSync, Stores},
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

/// Reflector callbacks → the Service loop's changes, and the discovery streams' (`changed`:
/// each stream answers again only for a change its answer was read from).
fn service_changes(
    client: &kube::Client,
    tx: mpsc::UnboundedSender<Change>,
    changed: broadcast::Sender<Changed>,
    index: Option<SharedIndex>,
) -> ServiceWatch {
    let tx2 = tx.clone();
    let changed2 = changed.clone();
    let index2 = index.clone();
    ServiceWatch::start_each(
        client,
        move |seen| {
            // The index first: a stream told of the change must find it there.
            if let Some(index) = &index {
                let mut idx = index.write().unwrap_or_else(|p| p.into_inner());
                match &seen {
                    Seen::Applied(s) => idx.service(s, false),
                    Seen::Deleted(s) => idx.service(s, true),
                    Seen::Relisted => idx.relisted_services(),
                }
            }
            // No stream open is no error.
            let _ = changed.send(match &seen {
                Seen::Applied(s) | Seen::Deleted(s) => match service_key(s) {
                    Some(k) => Changed::Service(k),
                    None => Changed::All,
                },
                Seen::Relisted => Changed::All,
            });
            let c = match seen {
                Seen::Applied(s) | Seen::Deleted(s) => service_key(s).map(Change::Service),
                Seen::Relisted => Some(Change::Relisted),
            };
            c.map(|c| tx.send(c));
        },
        move |seen| {
            let left = index2.as_ref().and_then(|index| {
                let mut idx = index.write().unwrap_or_else(|p| p.into_inner());
                match &seen {
                    Seen::Applied(s) => idx.slice(s, false),
                    Seen::Deleted(s) => idx.slice(s, true),
                    Seen::Relisted => {
                        idx.relisted_slices();
                        None
                    }
                }
            });
            // A slice relabelled to another Service: the one it left answers again too.
            if let Some(old) = left {
                let _ = changed2.send(Changed::Slice(Some(old)));
            }
            let _ = changed2.send(match &seen {
                Seen::Applied(s) | Seen::Deleted(s) => Changed::Slice(slice_service(s)),
                Seen::Relisted => Changed::All,
            });
            let c = match seen {
                Seen::Applied(s) | Seen::Deleted(s) => {
                    let deleted = matches!(seen, Seen::Deleted(_));
                    s.metadata
                        .namespace
                        .clone()
                        .zip(s.metadata.name.clone())
                        .map(|slice| Change::Slice {
                            slice,
                            service: slice_service(s),
                            deleted,
                        })
                }
                Seen::Relisted => Some(Change::Relisted),
            };
            c.map(|c| tx2.send(c));
        },
    )
}

/// The proxies' discovery API (`destination/`), on the Service reflectors and a Pod one.
async fn start_destination(
    cfg: &Config,
    client: &kube::Client,
    watch: &ServiceWatch,
    changed: broadcast::Sender<Changed>,
    index: SharedIndex,
    metrics: &Arc<Metrics>,
) -> Result<tokio::task::JoinHandle<()>, Error> {
    let addr: std::net::SocketAddr = cfg.destination_listen.parse().map_err(|_| {
        Error::Config(format!(
            "--destination-listen {:?} is not ip:port or off",
            cfg.destination_listen
        ))
    })?;
    let id = crate::destination::identity::Settings::from(cfg).map_err(Error::Config)?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Listen(addr, e))?;
    let pods_changed = changed.clone();
    let pods_index = index.clone();
    let (pods, pods_task) = meshwork_kube_watch::reflect_each(
        kube::Api::<k8s_openapi::api::core::v1::Pod>::all(client.clone()),
        kube::runtime::watcher::Config::default(),
        move |seen| {
            {
                let mut idx = pods_index.write().unwrap_or_else(|p| p.into_inner());
                match &seen {
                    Seen::Applied(p) => idx.pod(p, false),
                    Seen::Deleted(p) => idx.pod(p, true),
                    Seen::Relisted => idx.relisted_pods(),
                }
            }
            let c = match seen {
                Seen::Applied(p) | Seen::Deleted(p) => Changed::pod(p).unwrap_or(Changed::All),
                Seen::Relisted => Changed::All,
            };
            let _ = pods_changed.send(c);
        },
    );
    let server = crate::destination::Server {
        services: watch.services.clone(),
        slices: watch.slices.clone(),
        pods,
        index,
        changes: changed,
        naming: crate::destination::Naming {
            cluster_domain: cfg.cluster_domain.clone(),
            trust_domain: cfg.trust_domain.clone(),
            node: cfg.node().map_err(Error::Config)?,
        },
        streams: metrics.destination_streams.clone(),
        computed: metrics.destination_answers.clone(),
        callers: crate::destination::Streams::new(
            crate::destination::MAX_STREAMS,
            crate::destination::MAX_STREAMS_PER_CALLER,
        ),
    };
    let (services, slices) = (watch.services.clone(), watch.slices.clone());
    let changes = server.changes.subscribe();
    let failed = metrics.destination_tls_failures.clone();
    let td = cfg.trust_domain.clone();
    let metrics = metrics.clone();
    Ok(tokio::spawn(async move {
        let _pods = AbortOnDrop(pods_task);
        // Until the identity can be made (trust anchors missing), connections are closed at
        // once, as a handshake without a certificate would be: proxies retry with back-off.
        let refuse = async {
            loop {
                if let Ok((tcp, _)) = listener.accept().await {
                    failed.inc();
                    drop(tcp);
                }
            }
        };
        let identity = tokio::select! {
            id = id.identity(services) => id,
            never = refuse => never,
        };
        let _ = metrics.destination_identity.set(identity.clone());
        let _certified = AbortOnDrop(tokio::spawn(crate::destination::identity::keep_certified(
            identity.clone(),
            id.addr.clone(),
            slices,
            changes,
        )));
        // Any workload of the mesh (a proxy) may ask; until the agent's certificate is
        // there, handshakes fail (no certificate to present) and proxies retry.
        let tls = identity.server_config(meshwork_identity::verify::Expect::TrustDomain(td));
        let incoming = meshwork_identity::transport::incoming(listener, tls, move |_| {
            failed.inc();
        });
        crate::destination::serve(server, incoming).await
    }))
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
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
    let metrics = Metrics::new();
    metrics.follow_datapath(pin_dir);

    let (tx, rx) = mpsc::unbounded_channel();
    // Bounded: a stream that falls this far behind answers again from the stores.
    let (changed, _) = broadcast::channel(1024);
    // Kept only for the discovery API: an agent serving none keeps no index.
    let index = (cfg.destination_listen != "off").then(SharedIndex::default);
    let mut watch = service_changes(&client, tx, changed.clone(), index.clone());
    let mut tasks = std::mem::take(&mut watch.tasks);
    if let Some(index) = index {
        tasks.push(start_destination(&cfg, &client, &watch, changed, index, &metrics).await?);
    }
    let sync = ServiceSync {
        node: node.clone(),
        opts,
        stores: Stores {
            services: watch.services.clone(),
            slices: watch.slices.clone(),
        },
        dp: Arc::new(Mutex::new((dp, have))),
        metrics: metrics.clone(),
    };
    tasks.push(tokio::spawn(sync.run(rx)));

    if let Some(ov) = crate::overlay::open(&cfg).await? {
        let changes = Changes::new();
        let rx = changes.subscribe();
        let (nodes, nodes_task) = meshwork_kube_watch::reflect(
            kube::Api::<k8s_openapi::api::core::v1::Node>::all(client.clone()),
            kube::runtime::watcher::Config::default(),
            changes,
        );
        tasks.push(nodes_task);
        tasks.push(tokio::spawn(crate::overlay::follow(
            ov,
            node.name.clone(),
            nodes,
            rx,
            metrics.clone(),
        )));
    }

    let admin = TcpListener::bind(cfg.admin_listen)
        .await
        .map_err(|e| Error::Listen(cfg.admin_listen, e))?;
    let admin_addr = admin
        .local_addr()
        .map_err(|e| Error::Listen(cfg.admin_listen, e))?;
    tasks.push(tokio::spawn(meshwork_daemon::admin::serve(
        admin,
        Metrics::admin(metrics.clone()),
    )));
    Ok(Running {
        admin: admin_addr,
        metrics,
        tasks,
    })
}
