//! The controllers of the bundled orchestrator (kube-controller-manager's role), run against
//! the API through kube-rs like any client: ReplicaSet, Deployment, DaemonSet, EndpointSlice,
//! garbage collection by ownerReferences, node pod-CIDR allocation and node lifecycle, and the
//! `default` ServiceAccount of each namespace. ClusterIP and NodePort allocation live in the API
//! server (`api::alloc`), as in kube-apiserver, and so does the `kubernetes` Service.
//!
//! Each controller is level-triggered: it reads shared watch caches and converges every object
//! on any change, and on a timer (for time-driven transitions). Writes are idempotent or
//! guarded by expectations (what a controller created or deleted but its cache has not shown
//! yet), so a stale cache never doubles a create.

mod daemonset;
mod deployment;
mod endpointslice;
mod gc;
mod nodes;
mod replicaset;
mod rollout;
mod rootca;
mod serviceaccount;
mod util;

use std::{future::Future, time::Duration};

use ipnet::Ipv4Net;
use k8s_openapi::api::{
    apps::v1::{DaemonSet, Deployment, ReplicaSet},
    core::v1::{ConfigMap, Namespace, Node, Pod, Service, ServiceAccount},
    discovery::v1::EndpointSlice,
};
use kube::{
    api::Api,
    runtime::{reflector::Store, watcher},
    Client,
};
use meshwork_kube_watch::{reflect, Changes};
use tokio::task::JoinHandle;

pub use endpointslice::MANAGED_BY_LABEL;
pub use util::{node_ready, node_unfit, pod_ready, template_hash};

/// Settings of the controllers (kube-controller-manager's flags of the same meaning).
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// Pod addresses of the whole cluster; each node gets a slice of it.
    pub cluster_cidr: Ipv4Net,
    pub node_cidr_prefix: u8,
    /// A node whose runtime has not reported for this long turns NotReady (Unknown).
    pub node_monitor_grace: Duration,
    /// Every controller re-converges at least this often.
    pub resync: Duration,
    /// The cluster CA (PEM) published as `kube-root-ca.crt` in every namespace; None: not
    /// published (kube-controller-manager's `--root-ca-file`).
    pub root_ca: Option<String>,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            cluster_cidr: "10.244.0.0/16".parse().unwrap_or_else(|_| unreachable!()),
            node_cidr_prefix: 24,
            node_monitor_grace: Duration::from_secs(40),
            resync: Duration::from_secs(5),
            root_ca: None,
        }
    }
}

/// The watch caches every controller reads.
#[derive(Clone)]
pub struct Caches {
    pub pods: Store<Pod>,
    pub replicasets: Store<ReplicaSet>,
    pub deployments: Store<Deployment>,
    pub daemonsets: Store<DaemonSet>,
    pub services: Store<Service>,
    pub slices: Store<EndpointSlice>,
    pub nodes: Store<Node>,
    pub namespaces: Store<Namespace>,
    pub serviceaccounts: Store<ServiceAccount>,
    /// Only the `kube-root-ca.crt` ConfigMaps (a field selector keeps the rest out).
    pub root_ca_maps: Store<ConfigMap>,
    /// Node heartbeat Leases. Their renewals do not wake the controllers (they would, every
    /// few seconds per node): the node lifecycle controller reads them on its own tick.
    pub leases: Store<k8s_openapi::api::coordination::v1::Lease>,
}

impl Caches {
    pub fn start(client: &Client, changes: &Changes) -> (Self, Vec<JoinHandle<()>>) {
        let cfg = watcher::Config::default;
        let (pods, t1) = reflect(Api::all(client.clone()), cfg(), changes.clone());
        let (replicasets, t2) = reflect(Api::all(client.clone()), cfg(), changes.clone());
        let (deployments, t3) = reflect(Api::all(client.clone()), cfg(), changes.clone());
        let (services, t4) = reflect(Api::all(client.clone()), cfg(), changes.clone());
        let (slices, t5) = reflect(Api::all(client.clone()), cfg(), changes.clone());
        let (nodes, t6) = reflect(Api::all(client.clone()), cfg(), changes.clone());
        let (daemonsets, t7) = reflect(Api::all(client.clone()), cfg(), changes.clone());
        let (namespaces, t8) = reflect(Api::all(client.clone()), cfg(), changes.clone());
        let (serviceaccounts, t9) = reflect(Api::all(client.clone()), cfg(), changes.clone());
        let (root_ca_maps, t10) = reflect(
            Api::all(client.clone()),
            cfg().fields(&format!("metadata.name={}", rootca_name())),
            changes.clone(),
        );
        let (leases, t11) = reflect(
            Api::namespaced(
                client.clone(),
                crate::api::noderestriction::NODE_LEASE_NAMESPACE,
            ),
            cfg(),
            Changes::new(),
        );
        (
            Caches {
                leases,
                pods,
                replicasets,
                deployments,
                daemonsets,
                services,
                slices,
                nodes,
                namespaces,
                serviceaccounts,
                root_ca_maps,
            },
            vec![t1, t2, t3, t4, t5, t6, t7, t8, t9, t10, t11],
        )
    }

    pub async fn synced(&self) {
        let _ = self.pods.wait_until_ready().await;
        let _ = self.replicasets.wait_until_ready().await;
        let _ = self.deployments.wait_until_ready().await;
        let _ = self.daemonsets.wait_until_ready().await;
        let _ = self.services.wait_until_ready().await;
        let _ = self.slices.wait_until_ready().await;
        let _ = self.nodes.wait_until_ready().await;
        let _ = self.namespaces.wait_until_ready().await;
        let _ = self.serviceaccounts.wait_until_ready().await;
        let _ = self.root_ca_maps.wait_until_ready().await;
        let _ = self.leases.wait_until_ready().await;
    }
}

/// Starts every controller and the scheduler; they run until the tasks are aborted.
pub async fn start(client: Client, cfg: ControllerConfig) -> Vec<JoinHandle<()>> {
    let changes = Changes::new();
    let (caches, mut tasks) = Caches::start(&client, &changes);
    caches.synced().await;
    tracing::info!("controller caches synced");
    let rs = replicaset::Controller::new(client.clone(), caches.clone());
    tasks.push(spawn_loop_waking(
        "replicaset",
        &changes,
        cfg.resync,
        rs,
        |c| Box::pin(c.reconcile_all()),
        |c| c.wake(),
    ));
    let dc = deployment::Controller::new(client.clone(), caches.clone());
    tasks.push(spawn_loop_waking(
        "deployment",
        &changes,
        cfg.resync,
        dc,
        |c| Box::pin(c.reconcile_all()),
        |c| c.wake(),
    ));
    let ds = daemonset::Controller::new(client.clone(), caches.clone());
    tasks.push(spawn_loop_waking(
        "daemonset",
        &changes,
        cfg.resync,
        ds,
        |c| Box::pin(c.reconcile_all()),
        |c| c.wake(),
    ));
    let ec = endpointslice::Controller::new(client.clone(), caches.clone());
    tasks.push(spawn_loop("endpointslice", &changes, cfg.resync, ec, |c| {
        Box::pin(c.reconcile_all())
    }));
    let gc = gc::Controller::new(client.clone(), caches.clone());
    tasks.push(spawn_loop(
        "garbage-collector",
        &changes,
        cfg.resync,
        gc,
        |c| Box::pin(c.reconcile_all()),
    ));
    let nc = nodes::Controller::new(client.clone(), caches.clone(), cfg.clone());
    let every = cfg.resync.min(cfg.node_monitor_grace / 4);
    tasks.push(spawn_loop("node", &changes, every, nc, |c| {
        Box::pin(c.reconcile_all())
    }));
    let sa = serviceaccount::Controller::new(client.clone(), caches.clone());
    tasks.push(spawn_loop(
        "serviceaccount",
        &changes,
        cfg.resync,
        sa,
        |c| Box::pin(c.reconcile_all()),
    ));
    match cfg.root_ca.clone() {
        Some(ca) => {
            let rc = rootca::Controller::new(client.clone(), caches.clone(), ca);
            tasks.push(spawn_loop(
                "root-ca-publisher",
                &changes,
                cfg.resync,
                rc,
                |c| Box::pin(c.reconcile_all()),
            ));
        }
        None => tracing::warn!(
            "no root CA known (--root-ca-file, or a CA in the client's kubeconfig): \
             kube-root-ca.crt is not published, and pods with an automounted token wait for it"
        ),
    }
    let sc = crate::scheduler::Scheduler::new(client.clone(), caches.clone());
    tasks.push(spawn_loop("scheduler", &changes, cfg.resync, sc, |c| {
        Box::pin(c.schedule_all())
    }));
    tasks
}

fn rootca_name() -> &'static str {
    crate::api::admission::ROOT_CA_CONFIGMAP
}

type BoxFut<'a> = std::pin::Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + 'a>>;

/// Runs `f` now, then after every batch of changes (coalesced for a few milliseconds) and at
/// least every `every`. A failed pass is logged and retried on the next trigger.
fn spawn_loop<C: Send + 'static>(
    name: &'static str,
    changes: &Changes,
    every: Duration,
    ctl: C,
    f: for<'a> fn(&'a mut C) -> BoxFut<'a>,
) -> JoinHandle<()> {
    spawn_loop_waking(name, changes, every, ctl, f, |_| None)
}

/// `spawn_loop`, and also as soon as `wake` asks after a pass (for time-driven transitions:
/// minReadySeconds, progress deadlines).
fn spawn_loop_waking<C: Send + 'static>(
    name: &'static str,
    changes: &Changes,
    every: Duration,
    mut ctl: C,
    f: for<'a> fn(&'a mut C) -> BoxFut<'a>,
    wake: fn(&C) -> Option<Duration>,
) -> JoinHandle<()> {
    let mut rx = changes.subscribe();
    tokio::spawn(async move {
        loop {
            rx.mark_unchanged();
            if let Err(e) = f(&mut ctl).await {
                tracing::warn!(controller = name, error = format!("{e:#}"), "pass failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let sleep = wake(&ctl).map_or(every, |w| w.min(every));
            tokio::select! {
                r = rx.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(sleep) => {}
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
}
