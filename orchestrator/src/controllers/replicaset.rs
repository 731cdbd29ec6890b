//! ReplicaSet: keeps `spec.replicas` active pods from the template, owned by the ReplicaSet,
//! and reports replicas/ready/available in its status.

use std::collections::HashSet;

use anyhow::Context;
use k8s_openapi::api::{
    apps::v1::{ReplicaSet, ReplicaSetStatus},
    core::v1::Pod,
};
use kube::{
    api::{Api, DeleteParams, Patch, PatchParams, PostParams},
    Client, ResourceExt,
};

use super::{
    runner::{keys, owner_key, Event, Key, Obj, Reconcile},
    util::{
        controller_ref, controller_uid, pod_active, pod_available, pod_ready, selector_matches,
        wake_for, Expectations, BURST,
    },
    Caches,
};

pub struct Controller {
    client: Client,
    caches: Caches,
    expect: Expectations,
    wake: Option<std::time::Duration>,
}

impl Controller {
    pub fn new(client: Client, caches: Caches) -> Self {
        Controller {
            client,
            caches,
            expect: Expectations::default(),
            wake: None,
        }
    }
}

impl Reconcile for Controller {
    type Key = Key;
    const NAME: &'static str = "replicaset";

    fn all(&self) -> Vec<Key> {
        keys(&self.caches.replicasets)
    }

    /// The ReplicaSet itself; a pod's owner; for an orphan pod, every ReplicaSet of its
    /// namespace whose selector takes it (adoption).
    fn triggers(&self, ev: &Event, out: &mut Vec<Key>) {
        match ev.obj() {
            Some(Obj::ReplicaSet(rs)) => out.push(Key::of(rs.as_ref())),
            Some(Obj::Pod(p)) => match owner_key(&p.metadata, "ReplicaSet") {
                Some(k) => out.push(k),
                None if controller_uid(&p.metadata).is_none() && pod_active(p) => {
                    let labels = p.metadata.labels.clone().unwrap_or_default();
                    if labels.is_empty() {
                        return;
                    }
                    let ns = p.namespace();
                    out.extend(
                        self.caches
                            .replicasets
                            .state()
                            .iter()
                            .filter(|r| r.namespace() == ns)
                            .filter(|r| {
                                r.spec
                                    .as_ref()
                                    .is_some_and(|s| selector_matches(&s.selector, &labels))
                            })
                            .map(|r| Key::of(r.as_ref())),
                    );
                }
                None => {}
            },
            _ => {}
        }
    }

    /// Again when a Ready pod turns available (minReadySeconds).
    async fn reconcile(&mut self, key: &Key) -> anyhow::Result<Option<std::time::Duration>> {
        // A ReplicaSet being deleted is left alone: its pods go with the garbage collector
        // (Background, Foreground) or stay as orphans (Orphan).
        let Some(rs) = key.live(&self.caches.replicasets) else {
            return Ok(None);
        };
        self.wake = None;
        self.sync(&rs).await?;
        Ok(self.wake)
    }
}

impl Controller {
    async fn sync(&mut self, rs: &ReplicaSet) -> anyhow::Result<()> {
        let ns = rs.namespace().unwrap_or_default();
        let uid = rs.uid().unwrap_or_default();
        let spec = rs.spec.clone().unwrap_or_default();
        let mut owned: Vec<std::sync::Arc<Pod>> = self
            .caches
            .pods
            .state()
            .into_iter()
            .filter(|p| {
                p.namespace().as_deref() == Some(ns.as_str())
                    && controller_uid(&p.metadata) == Some(uid.as_str())
            })
            .collect();
        // Adopt active orphans the selector matches (kube's ControllerRefManager).
        if rs.metadata.deletion_timestamp.is_none() {
            let pods_api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
            for p in self.caches.pods.state() {
                let labels = p.metadata.labels.clone().unwrap_or_default();
                if p.namespace().as_deref() != Some(ns.as_str())
                    || controller_uid(&p.metadata).is_some()
                    || !pod_active(&p)
                    || labels.is_empty()
                    || !selector_matches(&spec.selector, &labels)
                {
                    continue;
                }
                let mut refs = p.metadata.owner_references.clone().unwrap_or_default();
                refs.push(controller_ref("apps/v1", "ReplicaSet", &rs.metadata));
                let patch = serde_json::json!({"metadata": {
                    "ownerReferences": refs, "resourceVersion": p.resource_version()}});
                match pods_api
                    .patch(&p.name_any(), &PatchParams::default(), &Patch::Merge(patch))
                    .await
                {
                    Ok(adopted) => owned.push(std::sync::Arc::new(adopted)),
                    Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                    Err(e) => return Err(e).context("adopting pod"),
                }
            }
        }
        let names: HashSet<String> = owned
            .iter()
            .filter(|p| pod_active(p))
            .map(|p| p.name_any())
            .collect();
        let (pending, gone) = self.expect.observe(&uid, &names);
        owned.retain(|p| !gone.contains(&p.name_any()));
        let active: Vec<&std::sync::Arc<Pod>> = owned.iter().filter(|p| pod_active(p)).collect();
        let want = spec.replicas.unwrap_or(1).max(0) as usize;
        let have = active.len() + pending;
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        if have < want && rs.metadata.deletion_timestamp.is_none() {
            let template = spec.template.clone().unwrap_or_default();
            for _ in 0..(want - have).min(BURST) {
                let mut meta = template.metadata.clone().unwrap_or_default();
                meta.generate_name = Some(format!("{}-", rs.name_any()));
                meta.namespace = Some(ns.clone());
                meta.owner_references =
                    Some(vec![controller_ref("apps/v1", "ReplicaSet", &rs.metadata)]);
                let pod = Pod {
                    metadata: meta,
                    spec: template.spec.clone(),
                    status: None,
                };
                let made = pods
                    .create(&PostParams::default(), &pod)
                    .await
                    .context("creating pod")?;
                self.expect.created(&uid, made.name_any());
            }
        } else if have > want && pending == 0 {
            // Least useful first: unscheduled, then not running, then not ready, then newest.
            let mut victims = active.clone();
            victims.sort_by_key(|p| {
                let scheduled = p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
                let running = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
                let created = p
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .map(|t| -t.0.as_second())
                    .unwrap_or(0);
                (scheduled, running, pod_ready(p), created)
            });
            for p in victims.into_iter().take((have - want).min(BURST)) {
                tracing::info!(replicaset = %rs.name_any(), pod = %p.name_any(), have, want, "scaling down");
                match pods.delete(&p.name_any(), &DeleteParams::default()).await {
                    Ok(_) => self.expect.deleted(&uid, p.name_any()),
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => return Err(e).context("deleting pod"),
                }
            }
        }
        // Status from what the cache shows.
        let labels_ok = |p: &Pod| {
            spec.template
                .as_ref()
                .and_then(|t| t.metadata.as_ref())
                .and_then(|m| m.labels.as_ref())
                .is_none_or(|want| {
                    let got = p.metadata.labels.clone().unwrap_or_default();
                    want.iter().all(|(k, v)| got.get(k) == Some(v))
                })
        };
        let ready = active.iter().filter(|p| pod_ready(p)).count() as i32;
        // Available: Ready for longer than minReadySeconds (kube's IsPodAvailable); wake up
        // when the next one gets there.
        let now = crate::api::kind::now_seconds();
        let min_ready = spec.min_ready_seconds.unwrap_or(0);
        let mut available = 0;
        for p in &active {
            match pod_available(p, min_ready, now) {
                Ok(()) => available += 1,
                Err(Some(at)) => wake_for(&mut self.wake, now, at),
                Err(None) => {}
            }
        }
        let status = ReplicaSetStatus {
            replicas: active.len() as i32,
            fully_labeled_replicas: Some(active.iter().filter(|p| labels_ok(p)).count() as i32),
            ready_replicas: Some(ready),
            available_replicas: Some(available),
            observed_generation: rs.metadata.generation,
            conditions: None,
            terminating_replicas: None,
        };
        if rs.status.as_ref() != Some(&status) {
            let rss: Api<ReplicaSet> = Api::namespaced(self.client.clone(), &ns);
            match rss
                .patch_status(
                    &rs.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(serde_json::json!({ "status": status })),
                )
                .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => self.expect.forget(&uid),
                Err(e) => return Err(e).context("updating status"),
            }
        }
        Ok(())
    }
}
