//! Garbage collection by ownerReferences: a dependent whose owners are all gone is deleted
//! (Background); the owner of an Orphan delete has its dependents' references removed before
//! its `orphan` finalizer goes; the owner of a Foreground delete has its dependents deleted
//! before its `foregroundDeletion` finalizer goes.

use std::collections::HashMap;

use anyhow::Context;
use k8s_openapi::{
    api::{
        apps::v1::{DaemonSet, Deployment, ReplicaSet},
        batch::v1::Job,
        core::v1::{Pod, Service},
        discovery::v1::EndpointSlice,
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};
use kube::{
    api::{Api, DeleteParams, Patch, PatchParams, Preconditions},
    Client, Resource, ResourceExt,
};
use serde::de::DeserializeOwned;
use serde_json::json;

use super::{
    runner::{Event, Reconcile},
    Caches,
};
use crate::api::kind::{FOREGROUND_FINALIZER, ORPHAN_FINALIZER};

pub struct Controller {
    client: Client,
    caches: Caches,
}

/// An owner as the caches show it.
#[derive(Clone)]
struct Owner {
    kind: &'static str,
    ns: Option<String>,
    name: String,
    finalizers: Vec<String>,
    deleting: bool,
}

/// A dependent: where it lives and who owns it.
struct Dependent {
    kind: &'static str,
    ns: String,
    name: String,
    refs: Vec<OwnerReference>,
    /// As cached: writes based on the cache are pinned to it.
    rv: Option<String>,
}

fn owner_of(kind: &'static str, m: &ObjectMeta) -> Owner {
    Owner {
        kind,
        ns: m.namespace.clone(),
        name: m.name.clone().unwrap_or_default(),
        finalizers: m.finalizers.clone().unwrap_or_default(),
        deleting: m.deletion_timestamp.is_some(),
    }
}

fn dependent(kind: &'static str, m: &ObjectMeta) -> Option<Dependent> {
    let refs = m.owner_references.clone().filter(|r| !r.is_empty())?;
    Some(Dependent {
        kind,
        ns: m.namespace.clone().unwrap_or_default(),
        name: m.name.clone().unwrap_or_default(),
        refs,
        rv: m.resource_version.clone(),
    })
}

fn is_404(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

impl Controller {
    pub fn new(client: Client, caches: Caches) -> Self {
        Controller { client, caches }
    }
}

/// The whole ownership graph is one key: like kube's GraphBuilder, collection works on the
/// graph, and it is woken only by what can orphan a dependent or release an owner (a deletion,
/// or an object marked for deletion); a dependent created after its owner went is found at the
/// next resync.
impl Reconcile for Controller {
    type Key = Graph;
    const NAME: &'static str = "garbage-collector";

    fn all(&self) -> Vec<Graph> {
        vec![Graph]
    }

    fn triggers(&self, ev: &Event, out: &mut Vec<Graph>) {
        let wake = match ev {
            Event::Deleted(_) => true,
            Event::Applied(o) => o.meta().deletion_timestamp.is_some(),
            Event::Relisted => true,
        };
        if wake {
            out.push(Graph);
        }
    }

    /// Again in a moment while an owner waits on its dependents.
    async fn reconcile(&mut self, _: &Graph) -> anyhow::Result<Option<std::time::Duration>> {
        let waiting = self.collect().await?;
        Ok(waiting.then_some(std::time::Duration::from_millis(500)))
    }
}

/// The key of the one thing the garbage collector reconciles.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Graph;

impl std::fmt::Display for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ownership graph")
    }
}

impl Controller {
    /// One pass over the graph; whether an owner is still waiting on its dependents.
    async fn collect(&mut self) -> anyhow::Result<bool> {
        let c = &self.caches;
        let mut owners: HashMap<String, Owner> = HashMap::new();
        let mut deps: Vec<Dependent> = Vec::new();
        for d in c.deployments.state() {
            owners.insert(
                d.uid().unwrap_or_default(),
                owner_of("Deployment", &d.metadata),
            );
        }
        for d in c.daemonsets.state() {
            owners.insert(
                d.uid().unwrap_or_default(),
                owner_of("DaemonSet", &d.metadata),
            );
        }
        for r in c.replicasets.state() {
            owners.insert(
                r.uid().unwrap_or_default(),
                owner_of("ReplicaSet", &r.metadata),
            );
            deps.extend(dependent("ReplicaSet", &r.metadata));
        }
        for j in c.jobs.state() {
            owners.insert(j.uid().unwrap_or_default(), owner_of("Job", &j.metadata));
        }
        for s in c.services.state() {
            owners.insert(
                s.uid().unwrap_or_default(),
                owner_of("Service", &s.metadata),
            );
        }
        for p in c.pods.state() {
            owners.insert(p.uid().unwrap_or_default(), owner_of("Pod", &p.metadata));
            deps.extend(dependent("Pod", &p.metadata));
        }
        for s in c.slices.state() {
            deps.extend(dependent("EndpointSlice", &s.metadata));
        }
        let mut first_err = None;
        let mut blocking: HashMap<String, usize> = HashMap::new();
        for d in &deps {
            let mut live = Vec::new();
            for r in &d.refs {
                let known = owners.get(&r.uid);
                let present = match known {
                    Some(_) => true,
                    None => self.owner_exists(r, &d.ns).await.unwrap_or(true),
                };
                if present {
                    live.push((r, known.cloned()));
                }
            }
            let res = if live.is_empty() {
                self.delete(d).await
            } else {
                let orphaned: Vec<&OwnerReference> = live
                    .iter()
                    .filter(|(_, o)| {
                        o.as_ref().is_some_and(|o| {
                            o.deleting && o.finalizers.iter().any(|f| f == ORPHAN_FINALIZER)
                        })
                    })
                    .map(|(r, _)| *r)
                    .collect();
                let foreground = live.iter().any(|(_, o)| {
                    o.as_ref().is_some_and(|o| {
                        o.deleting && o.finalizers.iter().any(|f| f == FOREGROUND_FINALIZER)
                    })
                });
                let stripped = !orphaned.is_empty() && {
                    let r = self.drop_refs(d, &orphaned).await;
                    let ok = matches!(r, Ok(true));
                    if let Err(e) = r {
                        first_err
                            .get_or_insert(e.context(format!("{} {}/{}", d.kind, d.ns, d.name)));
                    }
                    ok
                };
                // A reference just stripped no longer holds its owner: it is finalized in
                // this pass, not when the cache shows the strip.
                for (r, _) in &live {
                    if !(stripped && orphaned.iter().any(|o| o.uid == r.uid)) {
                        *blocking.entry(r.uid.clone()).or_default() += 1;
                    }
                }
                if !orphaned.is_empty() {
                    Ok(())
                } else if foreground {
                    self.delete(d).await
                } else {
                    Ok(())
                }
            };
            if let Err(e) = res {
                first_err.get_or_insert(e.context(format!("{} {}/{}", d.kind, d.ns, d.name)));
            }
        }
        // Owners waiting on orphan/foreground finalizers: done when nothing points at them.
        let mut waiting = false;
        for (uid, o) in &owners {
            if !o.deleting {
                continue;
            }
            if blocking.get(uid).copied().unwrap_or(0) > 0 {
                // Its dependents' deletions wake this controller, but a conflict or a released
                // reference does not: look again soon rather than at the resync.
                waiting |= o
                    .finalizers
                    .iter()
                    .any(|f| f == ORPHAN_FINALIZER || f == FOREGROUND_FINALIZER);
                continue;
            }
            let keep: Vec<&String> = o
                .finalizers
                .iter()
                .filter(|f| *f != ORPHAN_FINALIZER && *f != FOREGROUND_FINALIZER)
                .collect();
            if keep.len() == o.finalizers.len() {
                continue;
            }
            let patch = json!({"metadata": {"finalizers": keep}});
            let res = match o.kind {
                "Deployment" => self.patch_owner::<Deployment>(o, &patch).await,
                "DaemonSet" => self.patch_owner::<DaemonSet>(o, &patch).await,
                "ReplicaSet" => self.patch_owner::<ReplicaSet>(o, &patch).await,
                "Job" => self.patch_owner::<Job>(o, &patch).await,
                "Service" => self.patch_owner::<Service>(o, &patch).await,
                "Pod" => self.patch_owner::<Pod>(o, &patch).await,
                _ => Ok(()),
            };
            if let Err(e) = res {
                first_err.get_or_insert(e.context(format!("finalizing {} {}", o.kind, o.name)));
            }
        }
        first_err.map_or(Ok(waiting), Err)
    }

    /// Whether the owner exists on the API (not the cache: it may simply be behind).
    async fn owner_exists(&self, r: &OwnerReference, ns: &str) -> anyhow::Result<bool> {
        async fn get<K>(api: Api<K>, r: &OwnerReference) -> anyhow::Result<bool>
        where
            K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
        {
            match api.get(&r.name).await {
                Ok(o) => Ok(o.meta().uid.as_deref() == Some(r.uid.as_str())),
                Err(e) if is_404(&e) => Ok(false),
                Err(e) => Err(e.into()),
            }
        }
        let c = self.client.clone();
        match r.kind.as_str() {
            "Deployment" => get(Api::<Deployment>::namespaced(c, ns), r).await,
            "DaemonSet" => get(Api::<DaemonSet>::namespaced(c, ns), r).await,
            "ReplicaSet" => get(Api::<ReplicaSet>::namespaced(c, ns), r).await,
            "Job" => get(Api::<Job>::namespaced(c, ns), r).await,
            "Service" => get(Api::<Service>::namespaced(c, ns), r).await,
            "Pod" => get(Api::<Pod>::namespaced(c, ns), r).await,
            // Kinds this collector does not know are never treated as gone.
            _ => Ok(true),
        }
    }

    /// Deletes `d` if the API still shows it with the owners the cache had: like kube's GC, the
    /// dependent is re-read first, because a cache lagging an orphaning (its references just
    /// removed) must not get the pod deleted. The delete is pinned to what was read.
    async fn delete(&self, d: &Dependent) -> anyhow::Result<()> {
        async fn pinned<K>(api: Api<K>, d: &Dependent) -> kube::Result<()>
        where
            K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
        {
            let live = match api.get(&d.name).await {
                Ok(o) => o,
                Err(e) if is_404(&e) => return Ok(()),
                Err(e) => return Err(e),
            };
            let uids = |refs: &[OwnerReference]| -> std::collections::BTreeSet<String> {
                refs.iter().map(|r| r.uid.clone()).collect()
            };
            let now = live.meta().owner_references.clone().unwrap_or_default();
            if now.is_empty() || uids(&now) != uids(&d.refs) {
                return Ok(());
            }
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: live.meta().uid.clone(),
                    resource_version: live.meta().resource_version.clone(),
                }),
                ..DeleteParams::background()
            };
            tracing::info!(kind = d.kind, name = %d.name, "deleting a dependent whose owners are gone");
            match api.delete(&d.name, &dp).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
                Err(e) => Err(e),
            }
        }
        let c = self.client.clone();
        let res = match d.kind {
            "Pod" => pinned(Api::<Pod>::namespaced(c, &d.ns), d).await,
            "ReplicaSet" => pinned(Api::<ReplicaSet>::namespaced(c, &d.ns), d).await,
            "EndpointSlice" => pinned(Api::<EndpointSlice>::namespaced(c, &d.ns), d).await,
            _ => Ok(()),
        };
        res.context("deleting")
    }

    /// Removes the references to `gone` from `d`; whether it did (not when `d` went or changed
    /// since the cache saw it: the next pass looks again).
    async fn drop_refs(&self, d: &Dependent, gone: &[&OwnerReference]) -> anyhow::Result<bool> {
        let keep: Vec<&OwnerReference> = d
            .refs
            .iter()
            .filter(|r| !gone.iter().any(|g| g.uid == r.uid))
            .collect();
        let patch =
            Patch::Merge(json!({"metadata": {"ownerReferences": keep, "resourceVersion": d.rv}}));
        let pp = PatchParams::default();
        let c = self.client.clone();
        let res = match d.kind {
            "Pod" => Api::<Pod>::namespaced(c, &d.ns)
                .patch(&d.name, &pp, &patch)
                .await
                .map(|_| ()),
            "ReplicaSet" => Api::<ReplicaSet>::namespaced(c, &d.ns)
                .patch(&d.name, &pp, &patch)
                .await
                .map(|_| ()),
            "EndpointSlice" => Api::<EndpointSlice>::namespaced(c, &d.ns)
                .patch(&d.name, &pp, &patch)
                .await
                .map(|_| ()),
            _ => Ok(()),
        };
        match res {
            Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(false),
            Err(e) => Err(e).context("removing owner references"),
            Ok(()) => Ok(true),
        }
    }

    async fn patch_owner<K>(&self, o: &Owner, patch: &serde_json::Value) -> anyhow::Result<()>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug,
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), o.ns.as_deref().unwrap_or_default());
        match api
            .patch(&o.name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Err(e) if !is_404(&e) => Err(e).context("removing finalizer"),
            _ => Ok(()),
        }
    }
}
