//! Shared watch plumbing for node components (see README.md).

use std::{fmt::Debug, hash::Hash, path::Path, sync::Arc};

use futures::StreamExt;
use kube::{
    api::Api,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{
        reflector::{self, Store},
        watcher, WatchStreamExt,
    },
    Client, Resource,
};
use serde::de::DeserializeOwned;
use tokio::{sync::watch, task::JoinHandle};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        path: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("in-cluster config (the pod's ServiceAccount token and CA): {0}")]
    InCluster(#[source] kube::config::InClusterError),
    #[error("inferring the cluster config (in-cluster, $KUBECONFIG, ~/.kube/config): {0}")]
    Infer(#[source] kube::config::InferConfigError),
    #[error("building the client: {0}")]
    Client(#[source] kube::Error),
}

/// A client for the API server: from `kubeconfig` if given, else inferred the way kubectl and
/// in-cluster workloads do.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, Error> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).map_err(|source| Error::Kubeconfig {
                path: path.display().to_string(),
                source,
            })?;
            kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|source| Error::Kubeconfig {
                    path: path.display().to_string(),
                    source,
                })?
        }
        // In a pod, its own ServiceAccount before any kubeconfig in $HOME: a host-root image
        // sees the host's ~/.kube/config, which is not the pod's identity. $KUBECONFIG still
        // wins (controller-runtime's GetConfig order: flag, $KUBECONFIG, in-cluster, home).
        None if std::env::var_os("KUBECONFIG").is_none()
            && std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() =>
        {
            kube::Config::incluster().map_err(Error::InCluster)?
        }
        None => kube::Config::infer().await.map_err(Error::Infer)?,
    };
    Client::try_from(config).map_err(Error::Client)
}

/// A change counter every reflector bumps; consumers wait on `changed()` and rebuild.
#[derive(Clone)]
pub struct Changes(Arc<watch::Sender<u64>>);

impl Default for Changes {
    fn default() -> Self {
        Self::new()
    }
}

impl Changes {
    pub fn new() -> Self {
        Changes(Arc::new(watch::Sender::new(0)))
    }
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.subscribe()
    }
    pub fn bump(&self) {
        self.0.send_modify(|n| *n += 1);
    }
}

/// What a reflector saw of one object, after its store took it in.
#[derive(Debug)]
pub enum Seen<'a, K> {
    Applied(&'a K),
    Deleted(&'a K),
    /// A (re)list completed: the store was replaced wholesale, and objects deleted meanwhile
    /// are gone without a `Deleted` (after a 410 or a reconnect). Consumers rebuild fully.
    Relisted,
}

/// Starts a reflector for `api` (filtered by `cfg`); its store fills from the initial list and
/// follows the watch, with kube-rs's default backoff on errors (410s relist). `on` sees each
/// applied or deleted object and the end of each (re)list, in order, after the store has it
/// (the way kube-runtime's `reflector` stream yields): consumers that replan per object key
/// their work by what they are told, instead of rediscovering what changed.
pub fn reflect_each<K, F>(
    api: Api<K>,
    cfg: watcher::Config,
    mut on: F,
) -> (Store<K>, JoinHandle<()>)
where
    K: Resource + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
    F: FnMut(Seen<'_, K>) + Send + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, cfg).default_backoff());
    let task = tokio::spawn(async move {
        futures::pin_mut!(stream);
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                Ok(watcher::Event::InitDone) => on(Seen::Relisted),
                Ok(watcher::Event::Apply(o)) => on(Seen::Applied(&o)),
                Ok(watcher::Event::Delete(o)) => on(Seen::Deleted(&o)),
                Err(e) => tracing::warn!(error = %e, kind = %K::kind(&Default::default()), "watch"),
            }
        }
    });
    (reader, task)
}

/// [`reflect_each`] for consumers that rebuild from the store on any change: every applied or
/// deleted object, and the end of each (re)list, bumps `changes`.
pub fn reflect<K>(api: Api<K>, cfg: watcher::Config, changes: Changes) -> (Store<K>, JoinHandle<()>)
where
    K: Resource + Clone + Debug + DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync,
{
    reflect_each(api, cfg, move |_| changes.bump())
}

/// What both DNS and the control agent watch: every Service and every EndpointSlice that
/// belongs to one, in stores that bump `changes`.
pub struct ServiceWatch {
    pub services: Store<k8s_openapi::api::core::v1::Service>,
    pub slices: Store<k8s_openapi::api::discovery::v1::EndpointSlice>,
    pub tasks: Vec<JoinHandle<()>>,
}

impl ServiceWatch {
    /// Both watches, bumping `changes` on any change.
    pub fn start(client: &Client, changes: &Changes) -> Self {
        let (c1, c2) = (changes.clone(), changes.clone());
        Self::start_each(client, move |_| c1.bump(), move |_| c2.bump())
    }

    /// Both watches, each object seen by its callback (see [`reflect_each`]).
    pub fn start_each(
        client: &Client,
        on_service: impl FnMut(Seen<'_, k8s_openapi::api::core::v1::Service>) + Send + 'static,
        on_slice: impl FnMut(Seen<'_, k8s_openapi::api::discovery::v1::EndpointSlice>) + Send + 'static,
    ) -> Self {
        let (services, t1) = reflect_each(
            Api::all(client.clone()),
            watcher::Config::default(),
            on_service,
        );
        let (slices, t2) = reflect_each(
            Api::all(client.clone()),
            watcher::Config::default().labels(meshwork_service_model::SERVICE_NAME_LABEL),
            on_slice,
        );
        ServiceWatch {
            services,
            slices,
            tasks: vec![t1, t2],
        }
    }

    /// Until both initial lists are in.
    pub async fn synced(&self) {
        let _ = self.services.wait_until_ready().await;
        let _ = self.slices.wait_until_ready().await;
    }
}
