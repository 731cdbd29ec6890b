//! Publishing the trust anchors to every namespace: a ConfigMap (by default
//! `meshwork-identity-trust-roots`, key `ca-bundle.crt`) in each namespace, so an injected
//! pod can mount the anchors from its own namespace (a ConfigMap volume cannot reach across
//! namespaces). This is the role of istiod's root-certificate publisher
//! (`istio-ca-root-cert`); Linkerd inlines the anchors into every injected pod instead, which
//! means re-injecting every workload after an anchor change.
//!
//! Driven by three things: a namespace appearing, the ConfigMap being deleted or edited in
//! some namespace (it is put back), and the anchors changing in the issuer Secret (every
//! namespace is updated). Terminating namespaces are left alone.

use std::collections::BTreeMap;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::{
    api::{Api, ObjectMeta, PostParams},
    runtime::{watcher, WatchStreamExt},
    Client, ResourceExt,
};
use tokio::sync::watch;

/// The key in the ConfigMap, as the proxy reads it (`proxy/src/config.rs`).
pub const KEY: &str = "ca-bundle.crt";

/// The ConfigMap `name` with `anchors` in namespace `ns`: created when missing, replaced
/// when it says something else.
async fn ensure(client: &Client, ns: &str, name: &str, anchors: &str) -> kube::Result<bool> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let want = BTreeMap::from([(KEY.to_string(), anchors.to_string())]);
    let cm = |rv: Option<String>| ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            resource_version: rv,
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_string(),
                "meshwork-identity".to_string(),
            )])),
            ..Default::default()
        },
        data: Some(want.clone()),
        ..Default::default()
    };
    match api.get_opt(name).await? {
        None => {
            api.create(&PostParams::default(), &cm(None)).await?;
            Ok(true)
        }
        Some(cur) if cur.data.as_ref() == Some(&want) => Ok(false),
        Some(cur) => {
            api.replace(name, &PostParams::default(), &cm(cur.resource_version()))
                .await?;
            Ok(true)
        }
    }
}

fn live(ns: &Namespace) -> bool {
    ns.metadata.deletion_timestamp.is_none()
        && ns.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Terminating")
}

/// Keeps ConfigMap `name` holding the current anchors in every namespace until the process
/// ends. Errors are logged and retried on the next event (and every 30 s).
pub async fn run(client: Client, name: String, mut anchors: watch::Receiver<String>) {
    let nss: Api<Namespace> = Api::all(client.clone());
    let maps: Api<ConfigMap> = Api::all(client.clone());
    // Backed off: without RBAC on namespaces or configmaps the watches fail until an admin
    // grants it, and must not spin meanwhile.
    let mut ns_events = watcher::watcher(nss.clone(), watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut cm_events = watcher::watcher(
        maps,
        watcher::Config::default().fields(&format!("metadata.name={name}")),
    )
    .default_backoff()
    .boxed();
    let mut every = tokio::time::interval(std::time::Duration::from_secs(30));
    // A sweep longer than the period must not be followed by the missed ticks at once.
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let one = |ns: String, pem: String| {
        let (client, name) = (client.clone(), name.clone());
        async move {
            match ensure(&client, &ns, &name, &pem).await {
                Ok(true) => {
                    tracing::info!(namespace = %ns, configmap = %name, "trust anchors published")
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(namespace = %ns, error = %e, "publishing the trust anchors")
                }
            }
        }
    };
    enum Todo {
        Nothing,
        One(String),
        /// A ConfigMap went or changed: put back unless its namespace is going away.
        Restore(String),
        All,
    }
    loop {
        let todo = tokio::select! {
            ev = ns_events.next() => match ev {
                Some(Ok(watcher::Event::Apply(ns) | watcher::Event::InitApply(ns))) if live(&ns) => {
                    Todo::One(ns.name_any())
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "watching namespaces");
                    Todo::Nothing
                }
                Some(Ok(_)) => Todo::Nothing,
                None => return,
            },
            ev = cm_events.next() => match ev {
                Some(Ok(watcher::Event::Apply(cm) | watcher::Event::Delete(cm))) => {
                    cm.namespace().map_or(Todo::Nothing, Todo::Restore)
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "watching the trust anchors ConfigMaps");
                    Todo::Nothing
                }
                Some(Ok(_)) => Todo::Nothing,
                None => return,
            },
            r = anchors.changed() => match r {
                Ok(()) => Todo::All,
                Err(_) => return,
            },
            _ = every.tick() => Todo::All,
        };
        let pem = anchors.borrow().clone();
        match todo {
            Todo::Nothing => {}
            Todo::One(ns) => one(ns, pem).await,
            Todo::Restore(ns) => {
                if nss
                    .get_opt(&ns)
                    .await
                    .ok()
                    .flatten()
                    .is_some_and(|n| live(&n))
                {
                    one(ns, pem).await;
                }
            }
            Todo::All => match nss.list(&Default::default()).await {
                Ok(list) => {
                    for ns in list.items.iter().filter(|n| live(n)) {
                        one(ns.name_any(), pem.clone()).await;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "listing namespaces"),
            },
        }
    }
}
