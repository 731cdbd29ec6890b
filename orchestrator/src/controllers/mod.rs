//! The controllers of the bundled orchestrator (kube-controller-manager's role), run against
//! the API through kube-rs like any client: ReplicaSet, Deployment, DaemonSet, Job, EndpointSlice,
//! garbage collection by ownerReferences, node pod-CIDR allocation and node lifecycle, and the
//! `default` ServiceAccount of each namespace. ClusterIP and NodePort allocation live in the API
//! server (`api::alloc`), as in kube-apiserver, and so does the `kubernetes` Service.
//!
//! Each controller is level-triggered per object (`runner.rs`, kube-runtime's `Controller`):
//! watch events name the objects they concern, each named object converges from the shared
//! watch caches, failures retry that object with back-off, and everything is resynced on a
//! timer. Writes are idempotent or guarded by expectations (what a controller created or
//! deleted but its cache has not shown yet), so a stale cache never doubles a create.

mod daemonset;
mod deployment;
mod endpointslice;
mod gc;
mod job;
mod nodes;
mod replicaset;
mod rollout;
mod rootca;
pub mod runner;
mod serviceaccount;
mod util;

use std::{sync::Arc, time::Duration};

use ipnet::Ipv4Net;
use k8s_openapi::api::{
    apps::v1::{DaemonSet, Deployment, ReplicaSet},
    batch::v1::Job,
    core::v1::{ConfigMap, Namespace, Node, Pod, Service, ServiceAccount},
    discovery::v1::EndpointSlice,
};
use kube::{
    api::Api,
    runtime::{reflector::Store, watcher},
    Client,
};
use meshwork_kube_watch::{reflect_each, Seen};
use runner::{Event, Obj};
use tokio::{sync::broadcast, task::JoinHandle};

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
    /// The first delay before a Job replaces a failed pod, doubling per failure to 6 min
    /// (kube's job controller: 10 s, not a flag there; the lab shortens it).
    pub job_backoff: Duration,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            cluster_cidr: "10.244.0.0/16".parse().unwrap_or_else(|_| unreachable!()),
            node_cidr_prefix: 24,
            node_monitor_grace: Duration::from_secs(40),
            resync: Duration::from_secs(30),
            root_ca: None,
            job_backoff: Duration::from_secs(10),
        }
    }
}

/// The watch caches every controller reads.
#[derive(Clone)]
pub struct Caches {
    pub pods: Store<Pod>,
    pub replicasets: Store<ReplicaSet>,
    pub jobs: Store<Job>,
    pub deployments: Store<Deployment>,
    pub daemonsets: Store<DaemonSet>,
    pub services: Store<Service>,
    pub slices: Store<EndpointSlice>,
    pub nodes: Store<Node>,
    pub namespaces: Store<Namespace>,
    pub serviceaccounts: Store<ServiceAccount>,
    /// Only the `kube-root-ca.crt` ConfigMaps (a field selector keeps the rest out).
    pub root_ca_maps: Store<ConfigMap>,
    /// Node heartbeat Leases. Their renewals wake no controller (they would, every few seconds
    /// per node): the node lifecycle controller requeues each node for when its grace ends.
    pub leases: Store<k8s_openapi::api::coordination::v1::Lease>,
}

/// How many events may wait for a slow controller before it is told it lagged (and then
/// requeues everything).
const EVENT_BACKLOG: usize = 4096;

impl Caches {
    /// The caches, each reporting what it takes in on `events`.
    pub fn start(
        client: &Client,
        events: &broadcast::Sender<Event>,
    ) -> (Self, Vec<JoinHandle<()>>) {
        fn watch<K>(
            api: Api<K>,
            cfg: watcher::Config,
            events: &broadcast::Sender<Event>,
            wrap: fn(Arc<K>) -> Obj,
        ) -> (Store<K>, JoinHandle<()>)
        where
            K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
            K: Send + Sync + 'static,
            K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
        {
            let tx = events.clone();
            reflect_each(api, cfg, move |seen| {
                let ev = match seen {
                    Seen::Applied(o) => Event::Applied(wrap(Arc::new(o.clone()))),
                    Seen::Deleted(o) => Event::Deleted(wrap(Arc::new(o.clone()))),
                    Seen::Relisted => Event::Relisted,
                };
                // No receiver yet (before the controllers start) is fine: they begin with
                // every key.
                let _ = tx.send(ev);
            })
        }
        let cfg = watcher::Config::default;
        let (pods, t1) = watch(Api::all(client.clone()), cfg(), events, Obj::Pod);
        let (replicasets, t2) = watch(Api::all(client.clone()), cfg(), events, Obj::ReplicaSet);
        let (deployments, t3) = watch(Api::all(client.clone()), cfg(), events, Obj::Deployment);
        let (services, t4) = watch(Api::all(client.clone()), cfg(), events, Obj::Service);
        let (slices, t5) = watch(Api::all(client.clone()), cfg(), events, Obj::Slice);
        let (nodes, t6) = watch(Api::all(client.clone()), cfg(), events, Obj::Node);
        let (daemonsets, t7) = watch(Api::all(client.clone()), cfg(), events, Obj::DaemonSet);
        let (namespaces, t8) = watch(Api::all(client.clone()), cfg(), events, Obj::Namespace);
        let (serviceaccounts, t9) =
            watch(Api::all(client.clone()), cfg(), events, Obj::ServiceAccount);
        let (root_ca_maps, t10) = watch(
            Api::all(client.clone()),
            cfg().fields(&format!("metadata.name={}", rootca_name())),
            events,
            Obj::RootCa,
        );
        let (jobs, t12) = watch(Api::all(client.clone()), cfg(), events, Obj::Job);
        // Node heartbeat Leases report nothing: their renewals would wake the node controller
        // every few seconds per node; it requeues each node for when its grace runs out.
        let (leases, t11) = reflect_each(
            Api::namespaced(
                client.clone(),
                crate::api::noderestriction::NODE_LEASE_NAMESPACE,
            ),
            cfg(),
            |_| {},
        );
        (
            Caches {
                leases,
                pods,
                replicasets,
                jobs,
                deployments,
                daemonsets,
                services,
                slices,
                nodes,
                namespaces,
                serviceaccounts,
                root_ca_maps,
            },
            vec![t1, t2, t3, t4, t5, t6, t7, t8, t9, t10, t11, t12],
        )
    }

    pub async fn synced(&self) {
        let _ = self.pods.wait_until_ready().await;
        let _ = self.replicasets.wait_until_ready().await;
        let _ = self.jobs.wait_until_ready().await;
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
    let (events, _) = broadcast::channel(EVENT_BACKLOG);
    let (caches, mut tasks) = Caches::start(&client, &events);
    caches.synced().await;
    tracing::info!("controller caches synced");
    let (c, k) = (&client, &caches);
    tasks.push(runner::spawn(
        replicaset::Controller::new(c.clone(), k.clone()),
        &events,
        cfg.resync,
    ));
    tasks.push(runner::spawn(
        deployment::Controller::new(c.clone(), k.clone()),
        &events,
        cfg.resync,
    ));
    tasks.push(runner::spawn(
        job::Controller::new(c.clone(), k.clone(), cfg.job_backoff),
        &events,
        cfg.resync,
    ));
    tasks.push(runner::spawn(
        daemonset::Controller::new(c.clone(), k.clone()),
        &events,
        cfg.resync,
    ));
    tasks.push(runner::spawn(
        endpointslice::Controller::new(c.clone(), k.clone()),
        &events,
        cfg.resync,
    ));
    tasks.push(runner::spawn(
        gc::Controller::new(c.clone(), k.clone()),
        &events,
        cfg.resync,
    ));
    tasks.push(runner::spawn(
        nodes::Controller::new(c.clone(), k.clone(), cfg.clone()),
        &events,
        cfg.resync,
    ));
    tasks.push(runner::spawn(
        serviceaccount::Controller::new(c.clone(), k.clone()),
        &events,
        cfg.resync,
    ));
    match cfg.root_ca.clone() {
        Some(ca) => tasks.push(runner::spawn(
            rootca::Controller::new(c.clone(), k.clone(), ca),
            &events,
            cfg.resync,
        )),
        None => tracing::warn!(
            "no root CA known (--root-ca-file, or a CA in the client's kubeconfig): \
             kube-root-ca.crt is not published, and pods with an automounted token wait for it"
        ),
    }
    tasks.push(runner::spawn(
        crate::scheduler::Scheduler::new(c.clone(), k.clone()),
        &events,
        cfg.resync,
    ));
    tasks
}

fn rootca_name() -> &'static str {
    crate::api::admission::ROOT_CA_CONFIGMAP
}
