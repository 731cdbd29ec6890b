//! Deployment, as kube's deployment controller: one ReplicaSet per pod template (found by
//! template, named by its `pod-template-hash`), rolled with RollingUpdate (maxSurge /
//! maxUnavailable) or Recreate, revisions on ReplicaSets and the Deployment (a ReplicaSet
//! brought back by `kubectl rollout undo` is reused and gets the next revision), old
//! ReplicaSets beyond `revisionHistoryLimit` deleted, `spec.paused` (scales, does not roll),
//! proportional scaling mid-rollout, and a status `kubectl rollout status` reads: replica
//! counts, Available, and Progressing with `progressDeadlineSeconds`. The arithmetic is in
//! `rollout.rs`; this file reads the caches and writes.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use anyhow::Context;
use k8s_openapi::{
    api::apps::v1::{Deployment, DeploymentSpec, DeploymentStatus, ReplicaSet, ReplicaSetSpec},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{
    api::{Api, DeleteParams, Patch, PatchParams, PostParams},
    runtime::reflector::ObjectRef,
    Client, ResourceExt,
};
use serde_json::json;

use super::{
    rollout::{self, Budget, Counts, Rs},
    runner::{keys, owner_key, Event, Key, Obj, Reconcile},
    util::{
        controller_ref, controller_uid, pod_template_hash, scaled, templates_equal, Fresh,
        POD_TEMPLATE_HASH,
    },
    Caches,
};
use crate::api::kind::now_seconds;

pub struct Controller {
    client: Client,
    caches: Caches,
    fresh_rs: Fresh<ReplicaSet>,
    fresh_d: Fresh<Deployment>,
    wake: Option<Duration>,
}

fn replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn revision(rs: &ReplicaSet) -> i64 {
    rs.annotations()
        .get(rollout::REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

fn view(r: &ReplicaSet) -> Rs {
    let st = r.status.clone().unwrap_or_default();
    let ann = |k: &str| r.annotations().get(k).and_then(|v| v.parse().ok());
    Rs {
        name: r.name_any(),
        spec: replicas(r),
        replicas: st.replicas,
        ready: st.ready_replicas.unwrap_or(0),
        available: st.available_replicas.unwrap_or(0),
        revision: revision(r),
        created: r
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(0, |t| t.0.as_second()),
        desired_ann: ann(rollout::DESIRED_REPLICAS),
        max_ann: ann(rollout::MAX_REPLICAS),
        generation: r.metadata.generation.unwrap_or(0),
        observed_generation: st.observed_generation.unwrap_or(0),
        deleting: r.metadata.deletion_timestamp.is_some(),
    }
}

fn budget(spec: &DeploymentSpec) -> Budget {
    let desired = spec.replicas.unwrap_or(1).max(0);
    let strategy = spec.strategy.clone().unwrap_or_default();
    let rolling = strategy.type_.as_deref() != Some("Recreate");
    let ru = strategy.rolling_update.unwrap_or_default();
    Budget::new(
        desired,
        rolling,
        scaled(ru.max_surge.as_ref(), desired, 25, true),
        scaled(ru.max_unavailable.as_ref(), desired, 25, false),
    )
}

/// The counts a Deployment's status holds now.
fn status_counts(s: &DeploymentStatus) -> Counts {
    Counts {
        replicas: s.replicas.unwrap_or(0),
        updated: s.updated_replicas.unwrap_or(0),
        ready: s.ready_replicas.unwrap_or(0),
        available: s.available_replicas.unwrap_or(0),
        unavailable: s.unavailable_replicas.unwrap_or(0),
    }
}

/// Which status kube would compute: the rollout's (with the Progressing evaluation) or the
/// plain one of `sync` (paused, scaling).
#[derive(PartialEq)]
enum StatusKind {
    Rollout,
    Sync,
}

impl Controller {
    pub fn new(client: Client, caches: Caches) -> Self {
        Controller {
            client,
            caches,
            fresh_rs: Fresh::default(),
            fresh_d: Fresh::default(),
            wake: None,
        }
    }
}

impl Reconcile for Controller {
    type Key = Key;
    const NAME: &'static str = "deployment";

    fn all(&self) -> Vec<Key> {
        keys(&self.caches.deployments)
    }

    /// The Deployment itself; a ReplicaSet's owner; a pod's owner's owner (Recreate waits on
    /// old pods, and the status counts them through their ReplicaSets).
    fn triggers(&self, ev: &Event, out: &mut Vec<Key>) {
        match ev.obj() {
            Some(Obj::Deployment(d)) => out.push(Key::of(d.as_ref())),
            Some(Obj::ReplicaSet(r)) => out.extend(owner_key(&r.metadata, "Deployment")),
            Some(Obj::Pod(p)) => {
                let rs = owner_key(&p.metadata, "ReplicaSet").and_then(|k| {
                    self.caches
                        .replicasets
                        .get(&ObjectRef::new(&k.name).within(&k.ns))
                });
                out.extend(rs.and_then(|r| owner_key(&r.metadata, "Deployment")));
            }
            _ => {}
        }
    }

    /// Again when a time-driven change is due (a progress deadline).
    async fn reconcile(&mut self, key: &Key) -> anyhow::Result<Option<Duration>> {
        let Some(d) = key.live(&self.caches.deployments) else {
            return Ok(None);
        };
        let d = self.fresh_d.get(d);
        if d.metadata.deletion_timestamp.is_some() {
            return Ok(None);
        }
        self.wake = None;
        let rss = self.fresh_rs.overlay(self.caches.replicasets.state());
        self.sync(&d, &rss).await?;
        Ok(self.wake)
    }
}

impl Controller {
    async fn sync(&mut self, d: &Deployment, all_rs: &[Arc<ReplicaSet>]) -> anyhow::Result<()> {
        let ns = d.namespace().unwrap_or_default();
        let uid = d.uid().unwrap_or_default();
        let spec = d.spec.clone().unwrap_or_default();
        let b = budget(&spec);
        let now = now_seconds();
        let rss: Api<ReplicaSet> = Api::namespaced(self.client.clone(), &ns);
        let mut owned: Vec<Arc<ReplicaSet>> = all_rs
            .iter()
            .filter(|r| {
                r.namespace().as_deref() == Some(ns.as_str())
                    && controller_uid(&r.metadata) == Some(uid.as_str())
                    && r.metadata.deletion_timestamp.is_none()
            })
            .cloned()
            .collect();
        owned.sort_by_key(|r| {
            let v = view(r);
            (v.created, v.name)
        });
        // kube's FindNewReplicaSet: the oldest ReplicaSet with the Deployment's template.
        let mut new_rs = owned
            .iter()
            .position(|r| {
                r.spec
                    .as_ref()
                    .and_then(|s| s.template.as_ref())
                    .is_some_and(|t| templates_equal(t, &spec.template))
            })
            .map(|i| owned.remove(i));
        let mut olds = owned;
        let old_status = d.status.clone().unwrap_or_default();
        let mut status = old_status.clone();
        let mut conds = status.conditions.take().unwrap_or_default();
        let deadline = spec.progress_deadline_seconds.filter(|s| *s != i32::MAX);
        let paused = spec.paused == Some(true);
        rollout::paused_condition(&mut conds, paused, now);
        let new_revision = olds.iter().map(|r| revision(r)).max().unwrap_or(0) + 1;
        let d_ann = d.annotations().clone();

        // The existing new ReplicaSet: annotations (a rolled-back-to one gets the next
        // revision) and minReadySeconds follow the Deployment.
        if let Some(n) = new_rs.clone() {
            let mut ann = n.annotations().clone();
            let changed = rollout::new_rs_annotations(&d_ann, &mut ann, new_revision, true, &b);
            let mrs = spec.min_ready_seconds.unwrap_or(0);
            let rs_mrs = n
                .spec
                .as_ref()
                .and_then(|s| s.min_ready_seconds)
                .unwrap_or(0);
            if changed || mrs != rs_mrs {
                let patch =
                    json!({"metadata": {"annotations": ann}, "spec": {"minReadySeconds": mrs}});
                new_rs = Some(self.patch_rs(&rss, &n, patch).await?);
            }
            if deadline.is_some() && rollout::condition(&conds, rollout::PROGRESSING).is_none() {
                rollout::new_rs_condition(
                    &mut conds,
                    rollout::FOUND_NEW_RS,
                    format!("Found new replica set \"{}\"", n.name_any()),
                    now,
                );
            }
        }

        let all_views: Vec<Rs> = olds.iter().chain(new_rs.iter()).map(|r| view(r)).collect();
        let all_refs: Vec<&Rs> = all_views.iter().collect();
        let kind = if paused || rollout::is_scaling_event(&b, &all_refs) {
            // kube's sync: scale (proportionally), and while paused, clean up history.
            let old_views: Vec<Rs> = olds.iter().map(|r| view(r)).collect();
            let new_view = new_rs.as_deref().map(view);
            let plan = rollout::scale(
                &b,
                old_status.replicas.unwrap_or(0),
                new_view.as_ref(),
                &old_views,
            );
            for (name, size) in plan {
                self.scale_named(&rss, &mut olds, &mut new_rs, &name, size, &b)
                    .await?;
            }
            if paused {
                self.cleanup(&rss, &olds, spec.revision_history_limit)
                    .await?;
            }
            StatusKind::Sync
        } else if b.rolling {
            let n = match new_rs.clone() {
                Some(n) => n,
                None => {
                    let old_spec: i32 = olds.iter().map(|r| replicas(r)).sum();
                    let size = rollout::new_rs_replicas(&b, old_spec, 0);
                    match self
                        .create_new_rs(d, &rss, &mut status, &mut conds, new_revision, size, &b)
                        .await?
                    {
                        Some(n) => n,
                        None => return Ok(()),
                    }
                }
            };
            new_rs = Some(n.clone());
            let all_spec: i32 = olds.iter().map(|r| replicas(r)).sum::<i32>() + replicas(&n);
            if let Some(size) = rollout::reconcile_new(&b, all_spec, replicas(&n)) {
                new_rs = Some(self.scale_rs(&rss, &n, size, &b).await?);
            } else {
                let old_views: Vec<Rs> = olds.iter().map(|r| view(r)).collect();
                let sizes = rollout::reconcile_olds(&b, &old_views, &view(&n));
                let mut scaled_down = false;
                for (i, size) in sizes.into_iter().enumerate() {
                    if size != replicas(&olds[i]) {
                        olds[i] = self.scale_rs(&rss, &olds[i], size, &b).await?;
                        scaled_down = true;
                    }
                }
                if !scaled_down && self.was_complete(d, &b) {
                    self.cleanup(&rss, &olds, spec.revision_history_limit)
                        .await?;
                }
            }
            StatusKind::Rollout
        } else {
            // Recreate: old ReplicaSets to 0, wait until their pods are gone, then the new one.
            let mut scaled_down = false;
            for r in olds.iter_mut() {
                if replicas(r) > 0 {
                    *r = self.scale_rs(&rss, r, 0, &b).await?;
                    scaled_down = true;
                }
            }
            if !scaled_down && !self.old_pods_running(&olds) {
                let n = match new_rs.clone() {
                    Some(n) => n,
                    None => match self
                        .create_new_rs(
                            d,
                            &rss,
                            &mut status,
                            &mut conds,
                            new_revision,
                            b.replicas,
                            &b,
                        )
                        .await?
                    {
                        Some(n) => n,
                        None => return Ok(()),
                    },
                };
                new_rs = Some(if replicas(&n) != b.replicas {
                    self.scale_rs(&rss, &n, b.replicas, &b).await?
                } else {
                    n
                });
                if self.was_complete(d, &b) {
                    self.cleanup(&rss, &olds, spec.revision_history_limit)
                        .await?;
                }
            }
            StatusKind::Rollout
        };

        // The Deployment's revision is its new ReplicaSet's.
        if let Some(n) = &new_rs {
            let rev = revision(n).to_string();
            if d_ann.get(rollout::REVISION) != Some(&rev) {
                let deps: Api<Deployment> = Api::namespaced(self.client.clone(), &ns);
                let made = deps
                    .patch(
                        &d.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(
                            json!({"metadata": {"annotations": {rollout::REVISION: rev}}}),
                        ),
                    )
                    .await
                    .context("annotating revision")?;
                self.fresh_d.wrote(made, false);
            }
        }

        // Status.
        let all_views: Vec<Rs> = olds.iter().chain(new_rs.iter()).map(|r| view(r)).collect();
        let new_view = new_rs.as_deref().map(view);
        let all_refs: Vec<&Rs> = all_views.iter().collect();
        let c = rollout::counts(&all_refs, new_view.as_ref());
        rollout::available_condition(&mut conds, &b, &c, now);
        let observed = new_view
            .as_ref()
            .is_none_or(|n| n.observed_generation >= n.generation);
        let complete = rollout::complete(b.replicas, &c, observed);
        if kind == StatusKind::Rollout {
            rollout::rollout_conditions(
                &mut conds,
                deadline,
                &status_counts(&old_status),
                &c,
                complete,
                new_rs.as_ref().map(|n| n.name_any()).as_deref(),
                &d.name_any(),
                now,
            );
            if let Some(w) = rollout::recheck_in(&conds, deadline, complete, now) {
                self.wake = Some(self.wake.map_or(w, |x| x.min(w)));
            }
        }
        let new_status = DeploymentStatus {
            replicas: Some(c.replicas),
            updated_replicas: Some(c.updated),
            ready_replicas: Some(c.ready),
            available_replicas: Some(c.available),
            unavailable_replicas: Some(c.unavailable),
            observed_generation: d.metadata.generation,
            collision_count: status.collision_count,
            terminating_replicas: None,
            conditions: Some(conds),
        };
        if d.status.as_ref() != Some(&new_status) {
            self.write_status(d, &new_status).await?;
        }
        Ok(())
    }

    /// kube's DeploymentComplete over the status read at the start of the pass.
    fn was_complete(&self, d: &Deployment, b: &Budget) -> bool {
        let s = d.status.clone().unwrap_or_default();
        rollout::complete(
            b.replicas,
            &status_counts(&s),
            s.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0),
        )
    }

    /// kube's oldPodsRunning (Recreate): an old ReplicaSet still reports pods, or a pod of one
    /// has not finished (terminating pods count until they are gone or Succeeded/Failed).
    fn old_pods_running(&self, olds: &[Arc<ReplicaSet>]) -> bool {
        if olds
            .iter()
            .any(|r| r.status.as_ref().is_some_and(|s| s.replicas > 0))
        {
            return true;
        }
        let uids: Vec<String> = olds.iter().filter_map(|r| r.uid()).collect();
        self.caches.pods.state().iter().any(|p| {
            controller_uid(&p.metadata).is_some_and(|u| uids.iter().any(|x| x == u))
                && !matches!(
                    p.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Succeeded" | "Failed")
                )
        })
    }

    /// kube's getNewReplicaSet when there is none: creates `<name>-<hash>` with the template
    /// (plus the hash label) at `size`. None: not now (the name is held by a ReplicaSet being
    /// deleted, or by another template — then collisionCount goes up and the next pass hashes
    /// differently).
    #[allow(clippy::too_many_arguments, reason = "the parts of one sync pass")]
    async fn create_new_rs(
        &mut self,
        d: &Deployment,
        rss: &Api<ReplicaSet>,
        status: &mut DeploymentStatus,
        conds: &mut Vec<k8s_openapi::api::apps::v1::DeploymentCondition>,
        new_revision: i64,
        size: i32,
        b: &Budget,
    ) -> anyhow::Result<Option<Arc<ReplicaSet>>> {
        let spec = d.spec.clone().unwrap_or_default();
        let ns = d.namespace().unwrap_or_default();
        let hash = pod_template_hash(&spec.template, status.collision_count);
        let mut template = spec.template.clone();
        template
            .metadata
            .get_or_insert_with(Default::default)
            .labels
            .get_or_insert_with(Default::default)
            .insert(POD_TEMPLATE_HASH.into(), hash.clone());
        let mut selector = spec.selector.clone();
        selector
            .match_labels
            .get_or_insert_with(Default::default)
            .insert(POD_TEMPLATE_HASH.into(), hash.clone());
        let labels = template.metadata.as_ref().and_then(|m| m.labels.clone());
        let mut annotations = BTreeMap::new();
        rollout::new_rs_annotations(d.annotations(), &mut annotations, new_revision, false, b);
        let name = format!("{}-{hash}", d.name_any());
        let rs = ReplicaSet {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(ns.clone()),
                labels,
                annotations: Some(annotations),
                owner_references: Some(vec![controller_ref("apps/v1", "Deployment", &d.metadata)]),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(size),
                min_ready_seconds: spec.min_ready_seconds,
                selector,
                template: Some(template),
            }),
            status: None,
        };
        match rss.create(&PostParams::default(), &rs).await {
            Ok(made) => {
                tracing::info!(deployment = %d.name_any(), replicaset = %name, size, revision = new_revision, "created new replica set");
                if spec
                    .progress_deadline_seconds
                    .is_some_and(|s| s != i32::MAX)
                {
                    rollout::new_rs_condition(
                        conds,
                        rollout::NEW_RS_CREATED,
                        format!("Created new replica set \"{name}\""),
                        now_seconds(),
                    );
                }
                Ok(Some(self.fresh_rs.wrote(made, true)))
            }
            Err(kube::Error::Api(e)) if e.code == 409 => {
                let existing = match rss.get_opt(&name).await.context("reading replicaset")? {
                    Some(r) => r,
                    None => return Ok(None),
                };
                let ours = controller_uid(&existing.metadata) == d.uid().as_deref();
                let same = existing
                    .spec
                    .as_ref()
                    .and_then(|s| s.template.as_ref())
                    .is_some_and(|t| templates_equal(t, &spec.template));
                if ours && same {
                    if existing.metadata.deletion_timestamp.is_some() {
                        return Ok(None);
                    }
                    return Ok(Some(self.fresh_rs.wrote(existing, false)));
                }
                status.collision_count = Some(status.collision_count.unwrap_or(0) + 1);
                tracing::info!(deployment = %d.name_any(), replicaset = %name, collisions = ?status.collision_count, "replica set name taken by another template");
                let deps: Api<Deployment> = Api::namespaced(self.client.clone(), &ns);
                let made = deps
                    .patch_status(
                        &d.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(
                            json!({"status": {"collisionCount": status.collision_count}}),
                        ),
                    )
                    .await
                    .context("recording a hash collision")?;
                self.fresh_d.wrote(made, false);
                Ok(None)
            }
            Err(e) => Err(e).context("creating replicaset"),
        }
    }

    /// kube's cleanupDeployment: deletes old, empty ReplicaSets beyond `revisionHistoryLimit`.
    async fn cleanup(
        &mut self,
        rss: &Api<ReplicaSet>,
        olds: &[Arc<ReplicaSet>],
        limit: Option<i32>,
    ) -> anyhow::Result<()> {
        let Some(limit) = limit.filter(|l| *l != i32::MAX) else {
            return Ok(());
        };
        let views: Vec<Rs> = olds.iter().map(|r| view(r)).collect();
        for name in rollout::cleanup(&views, limit) {
            let Some(r) = olds.iter().find(|r| r.name_any() == name) else {
                continue;
            };
            tracing::info!(replicaset = %name, limit, "deleting old replica set beyond the history limit");
            let dp = DeleteParams {
                preconditions: Some(kube::api::Preconditions {
                    uid: r.uid(),
                    resource_version: None,
                }),
                ..Default::default()
            };
            match rss.delete(&name, &dp).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                Err(e) => return Err(e).context("deleting old replicaset"),
            }
            if let Some(u) = r.uid() {
                self.fresh_rs.forget(&u);
            }
        }
        Ok(())
    }

    async fn scale_named(
        &mut self,
        rss: &Api<ReplicaSet>,
        olds: &mut [Arc<ReplicaSet>],
        new_rs: &mut Option<Arc<ReplicaSet>>,
        name: &str,
        size: i32,
        b: &Budget,
    ) -> anyhow::Result<()> {
        if let Some(n) = new_rs.as_ref().filter(|n| n.name_any() == name) {
            *new_rs = Some(self.scale_rs(rss, &n.clone(), size, b).await?);
        } else if let Some(r) = olds.iter_mut().find(|r| r.name_any() == name) {
            *r = self.scale_rs(rss, &r.clone(), size, b).await?;
        }
        Ok(())
    }

    /// kube's scaleReplicaSet: the size, with the replica annotations of today's Deployment.
    async fn scale_rs(
        &mut self,
        rss: &Api<ReplicaSet>,
        rs: &Arc<ReplicaSet>,
        n: i32,
        b: &Budget,
    ) -> anyhow::Result<Arc<ReplicaSet>> {
        let mut ann = rs.annotations().clone();
        let ann_changed = rollout::replica_annotations(&mut ann, b);
        if replicas(rs) == n && !ann_changed {
            return Ok(rs.clone());
        }
        if replicas(rs) != n {
            tracing::info!(replicaset = %rs.name_any(), from = replicas(rs), to = n, "scaling");
        }
        let patch = json!({
            "metadata": {"annotations": {
                rollout::DESIRED_REPLICAS: ann.get(rollout::DESIRED_REPLICAS),
                rollout::MAX_REPLICAS: ann.get(rollout::MAX_REPLICAS),
            }},
            "spec": {"replicas": n},
        });
        self.patch_rs(rss, rs, patch)
            .await
            .with_context(|| format!("scaling {} to {n}", rs.name_any()))
    }

    async fn patch_rs(
        &mut self,
        rss: &Api<ReplicaSet>,
        rs: &ReplicaSet,
        patch: serde_json::Value,
    ) -> anyhow::Result<Arc<ReplicaSet>> {
        match rss
            .patch(
                &rs.name_any(),
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await
        {
            Ok(made) => Ok(self.fresh_rs.wrote(made, false)),
            Err(e) => {
                if let (kube::Error::Api(ae), Some(u)) = (&e, rs.uid()) {
                    if ae.code == 404 {
                        self.fresh_rs.forget(&u);
                    }
                }
                Err(e).context(format!("updating replicaset {}", rs.name_any()))
            }
        }
    }

    async fn write_status(
        &mut self,
        d: &Deployment,
        status: &DeploymentStatus,
    ) -> anyhow::Result<()> {
        let deps: Api<Deployment> =
            Api::namespaced(self.client.clone(), &d.namespace().unwrap_or_default());
        match deps
            .patch_status(
                &d.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await
        {
            Ok(made) => {
                self.fresh_d.wrote(made, false);
                Ok(())
            }
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(e).context("updating status"),
        }
    }
}
