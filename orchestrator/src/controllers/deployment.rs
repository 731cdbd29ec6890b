//! Deployment: one ReplicaSet per pod template (named by its `pod-template-hash`), rolled with
//! RollingUpdate (maxSurge/maxUnavailable) or Recreate, and a status `kubectl rollout status`
//! reads (observedGeneration, updated/ready/available replicas, Available and Progressing).

use std::sync::Arc;

use anyhow::Context;
use k8s_openapi::{
    api::apps::v1::{
        Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet, ReplicaSetSpec,
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time},
};
use kube::{
    api::{Api, Patch, PatchParams, PostParams},
    Client, ResourceExt,
};
use serde_json::json;

use super::{
    util::{controller_ref, controller_uid, scaled, template_hash},
    Caches,
};

const HASH_LABEL: &str = "pod-template-hash";
const REVISION: &str = "deployment.kubernetes.io/revision";

pub struct Controller {
    client: Client,
    caches: Caches,
}

fn replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}
fn status_of(rs: &ReplicaSet) -> (i32, i32, i32) {
    let s = rs.status.clone().unwrap_or_default();
    (
        s.replicas,
        s.ready_replicas.unwrap_or(0),
        s.available_replicas.unwrap_or(0),
    )
}
fn revision(rs: &ReplicaSet) -> i64 {
    rs.annotations()
        .get(REVISION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

impl Controller {
    pub fn new(client: Client, caches: Caches) -> Self {
        Controller { client, caches }
    }

    pub async fn reconcile_all(&mut self) -> anyhow::Result<()> {
        let mut first_err = None;
        for d in self.caches.deployments.state() {
            if d.metadata.deletion_timestamp.is_some() {
                continue;
            }
            if let Err(e) = self.reconcile(&d).await {
                first_err.get_or_insert(e.context(format!("deployment {}", d.name_any())));
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    async fn reconcile(&mut self, d: &Deployment) -> anyhow::Result<()> {
        let ns = d.namespace().unwrap_or_default();
        let uid = d.uid().unwrap_or_default();
        let spec = d.spec.clone().unwrap_or_default();
        let desired = spec.replicas.unwrap_or(1).max(0);
        let mut template = spec.template.clone();
        let hash = template_hash(&serde_json::to_value(&template)?);
        let rss: Api<ReplicaSet> = Api::namespaced(self.client.clone(), &ns);
        let owned: Vec<Arc<ReplicaSet>> = self
            .caches
            .replicasets
            .state()
            .into_iter()
            .filter(|r| {
                r.namespace().as_deref() == Some(ns.as_str())
                    && controller_uid(&r.metadata) == Some(uid.as_str())
            })
            .collect();
        let new_rs = owned
            .iter()
            .find(|r| r.labels().get(HASH_LABEL) == Some(&hash))
            .cloned();
        let mut olds: Vec<Arc<ReplicaSet>> = owned
            .iter()
            .filter(|r| r.labels().get(HASH_LABEL) != Some(&hash))
            .cloned()
            .collect();
        olds.sort_by_key(|r| revision(r));
        let max_rev = owned.iter().map(|r| revision(r)).max().unwrap_or(0);
        let strategy = spec.strategy.clone().unwrap_or_default();
        let recreate = strategy.type_.as_deref() == Some("Recreate");
        let ru = strategy.rolling_update.unwrap_or_default();
        let surge = scaled(ru.max_surge.as_ref(), desired, 25, true);
        let mut unavailable = scaled(ru.max_unavailable.as_ref(), desired, 25, false);
        if surge == 0 && unavailable == 0 {
            unavailable = 1;
        }

        let new_rs = match new_rs {
            Some(r) => r,
            None => {
                let name = format!("{}-{hash}", d.name_any());
                let labels = template.metadata.get_or_insert_with(Default::default);
                labels
                    .labels
                    .get_or_insert_with(Default::default)
                    .insert(HASH_LABEL.into(), hash.clone());
                let mut selector = spec.selector.clone();
                selector
                    .match_labels
                    .get_or_insert_with(Default::default)
                    .insert(HASH_LABEL.into(), hash.clone());
                let mut rs_labels = template
                    .metadata
                    .as_ref()
                    .and_then(|m| m.labels.clone())
                    .unwrap_or_default();
                rs_labels.insert(HASH_LABEL.into(), hash.clone());
                // Sized as kube's NewRSNewReplicas: what the surge budget leaves beside the
                // old ReplicaSets (all of it when there are none, or they are scaled to 0 —
                // e.g. a ReplicaSet recreated after an orphaning delete adopts its pods at full
                // size instead of scaling them away); Recreate waits for the old ones.
                let old_total: i32 = olds.iter().map(|r| replicas(r)).sum();
                let start = if recreate {
                    if old_total == 0 {
                        desired
                    } else {
                        0
                    }
                } else {
                    (desired + surge - old_total).clamp(0, desired)
                };
                let rs = ReplicaSet {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        namespace: Some(ns.clone()),
                        labels: Some(rs_labels),
                        annotations: Some(
                            [(REVISION.to_string(), (max_rev + 1).to_string())]
                                .into_iter()
                                .collect(),
                        ),
                        owner_references: Some(vec![controller_ref(
                            "apps/v1",
                            "Deployment",
                            &d.metadata,
                        )]),
                        ..Default::default()
                    },
                    spec: Some(ReplicaSetSpec {
                        replicas: Some(start),
                        min_ready_seconds: spec.min_ready_seconds,
                        selector,
                        template: Some(template),
                    }),
                    status: None,
                };
                match rss.create(&PostParams::default(), &rs).await {
                    Ok(made) => Arc::new(made),
                    Err(kube::Error::Api(e)) if e.code == 409 => return Ok(()),
                    Err(e) => return Err(e).context("creating replicaset"),
                }
            }
        };

        let all: Vec<&Arc<ReplicaSet>> = olds.iter().chain(std::iter::once(&new_rs)).collect();
        let total_spec: i32 = all.iter().map(|r| replicas(r)).sum();
        let new_spec = replicas(&new_rs);
        let (_, _, new_avail) = status_of(&new_rs);
        let active_olds: Vec<&Arc<ReplicaSet>> = olds
            .iter()
            .filter(|r| replicas(r) > 0 || status_of(r).0 > 0)
            .collect();

        if recreate {
            if active_olds.iter().any(|r| replicas(r) > 0) {
                for r in &active_olds {
                    self.scale(&rss, r, 0).await?;
                }
            } else if active_olds.is_empty() && new_spec != desired {
                self.scale(&rss, &new_rs, desired).await?;
            }
        } else if active_olds.is_empty() {
            if new_spec != desired {
                self.scale(&rss, &new_rs, desired).await?;
            }
        } else {
            // Grow the new ReplicaSet within the surge budget.
            if new_spec < desired {
                let room = desired + surge - total_spec;
                let up = room.min(desired - new_spec);
                if up > 0 {
                    self.scale(&rss, &new_rs, new_spec + up).await?;
                }
            } else if new_spec > desired {
                self.scale(&rss, &new_rs, desired).await?;
            }
            // Shrink old ones while enough stay available (kube's reconcileOldReplicaSets):
            // unhealthy old pods first, then available ones down to minAvailable.
            let all_pods: i32 = all.iter().map(|r| status_of(r).0).sum();
            let min_available = desired - unavailable;
            let new_unavailable = (new_spec - new_avail).max(0);
            let mut max_down = all_pods - min_available - new_unavailable;
            if max_down > 0 {
                let mut targets: Vec<i32> = active_olds.iter().map(|r| replicas(r)).collect();
                for (i, r) in active_olds.iter().enumerate() {
                    let unhealthy = (targets[i] - status_of(r).2).max(0);
                    let cut = unhealthy.min(max_down);
                    targets[i] -= cut;
                    max_down -= cut;
                }
                let available_all: i32 = all.iter().map(|r| status_of(r).2).sum();
                let mut total_down = (available_all - min_available).max(0);
                for t in targets.iter_mut() {
                    let cut = (*t).min(total_down);
                    *t -= cut;
                    total_down -= cut;
                }
                for (r, t) in active_olds.iter().zip(targets) {
                    self.scale(&rss, r, t).await?;
                }
            }
        }

        // Status.
        let (mut rep, mut ready, mut avail) = (0, 0, 0);
        for r in &all {
            let (a, b, c) = status_of(r);
            rep += a;
            ready += b;
            avail += c;
        }
        let (updated, _, _) = status_of(&new_rs);
        let complete = updated == desired
            && rep == desired
            && avail == desired
            && new_rs.status.as_ref().and_then(|s| s.observed_generation)
                == new_rs.metadata.generation;
        let old_status = d.status.clone().unwrap_or_default();
        let cond = |type_: &str, ok: bool, reason: &str, message: String| {
            let prev = old_status
                .conditions
                .iter()
                .flatten()
                .find(|c| c.type_ == type_);
            let status = if ok { "True" } else { "False" }.to_string();
            let same =
                prev.is_some_and(|p| p.status == status && p.reason.as_deref() == Some(reason));
            DeploymentCondition {
                type_: type_.into(),
                status,
                reason: Some(reason.into()),
                message: Some(message),
                last_transition_time: if same {
                    prev.and_then(|p| p.last_transition_time.clone())
                } else {
                    Some(Time(crate::api::kind::now_seconds()))
                },
                last_update_time: if same {
                    prev.and_then(|p| p.last_update_time.clone())
                } else {
                    Some(Time(crate::api::kind::now_seconds()))
                },
            }
        };
        let available_ok = avail >= desired - unavailable;
        let status = DeploymentStatus {
            replicas: Some(rep),
            updated_replicas: Some(updated),
            ready_replicas: Some(ready),
            available_replicas: Some(avail),
            unavailable_replicas: Some((desired - avail).max(0)),
            observed_generation: d.metadata.generation,
            collision_count: old_status.collision_count,
            terminating_replicas: None,
            conditions: Some(vec![
                cond(
                    "Available",
                    available_ok,
                    if available_ok {
                        "MinimumReplicasAvailable"
                    } else {
                        "MinimumReplicasUnavailable"
                    },
                    if available_ok {
                        "Deployment has minimum availability.".into()
                    } else {
                        "Deployment does not have minimum availability.".into()
                    },
                ),
                cond(
                    "Progressing",
                    true,
                    if complete {
                        "NewReplicaSetAvailable"
                    } else {
                        "ReplicaSetUpdated"
                    },
                    if complete {
                        format!(
                            "ReplicaSet \"{}\" has successfully progressed.",
                            new_rs.name_any()
                        )
                    } else {
                        format!("ReplicaSet \"{}\" is progressing.", new_rs.name_any())
                    },
                ),
            ]),
        };
        let rev = revision(&new_rs).to_string();
        if d.annotations().get(REVISION) != Some(&rev) {
            let deps: Api<Deployment> = Api::namespaced(self.client.clone(), &ns);
            deps.patch(
                &d.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"annotations": {REVISION: rev}}})),
            )
            .await
            .context("annotating revision")?;
        }
        if d.status.as_ref() != Some(&status) {
            let deps: Api<Deployment> = Api::namespaced(self.client.clone(), &ns);
            deps.patch_status(
                &d.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await
            .context("updating status")?;
        }
        Ok(())
    }

    async fn scale(&self, rss: &Api<ReplicaSet>, rs: &ReplicaSet, n: i32) -> anyhow::Result<()> {
        if replicas(rs) == n {
            return Ok(());
        }
        rss.patch(
            &rs.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": n}})),
        )
        .await
        .with_context(|| format!("scaling {} to {n}", rs.name_any()))?;
        Ok(())
    }
}
