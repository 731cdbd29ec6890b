//! batch/v1 Job (NonIndexed): runs pods from the template until `completions` of them have
//! succeeded, `parallelism` at a time; replaces failed pods after a doubling back-off until
//! `backoffLimit` failures (with `restartPolicy: OnFailure`, container restarts count too, as
//! in kube), stops at `activeDeadlineSeconds`, and deletes the finished Job after
//! `ttlSecondsAfterFinished` (kube's TTL-after-finished controller, folded in here).
//!
//! Counting is simpler than kube's: kube tracks each finished pod with a finalizer so that a
//! deleted pod is never counted twice or lost; here the counts are the pods seen now, never
//! lowered below what the status already says. A finished pod deleted by hand before the
//! count rose is therefore not counted.

use std::{collections::HashSet, sync::Arc, time::Duration};

use anyhow::Context;
use k8s_openapi::{
    api::{
        batch::v1::{Job, JobCondition, JobStatus},
        core::v1::Pod,
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::{SignedDuration, Timestamp},
};
use kube::{
    api::{Api, DeleteParams, Patch, PatchParams, PostParams},
    Client, ResourceExt,
};

use super::{
    runner::{keys, owner_key, Event, Key, Obj, Reconcile},
    util::{controller_ref, controller_uid, pod_active, pod_ready, wake_for, Expectations, BURST},
    Caches,
};
use crate::api::kind::now_seconds;

/// kube's ceiling on the pod re-creation back-off.
const MAX_BACKOFF: Duration = Duration::from_secs(360);

pub struct Controller {
    client: Client,
    caches: Caches,
    expect: Expectations,
    backoff: Duration,
    wake: Option<Duration>,
}

impl Controller {
    pub fn new(client: Client, caches: Caches, backoff: Duration) -> Self {
        Controller {
            client,
            caches,
            expect: Expectations::default(),
            backoff,
            wake: None,
        }
    }
}

impl Reconcile for Controller {
    type Key = Key;
    const NAME: &'static str = "job";

    fn all(&self) -> Vec<Key> {
        keys(&self.caches.jobs)
    }

    fn triggers(&self, ev: &Event, out: &mut Vec<Key>) {
        match ev.obj() {
            Some(Obj::Job(j)) => out.push(Key::of(j.as_ref())),
            Some(Obj::Pod(p)) => out.extend(owner_key(&p.metadata, "Job")),
            _ => {}
        }
    }

    /// Again at the next time-driven step: the end of a back-off, the active deadline, the
    /// TTL after finishing.
    async fn reconcile(&mut self, key: &Key) -> anyhow::Result<Option<Duration>> {
        let Some(job) = key.live(&self.caches.jobs) else {
            return Ok(None);
        };
        self.wake = None;
        self.sync(&job).await?;
        Ok(self.wake)
    }
}

fn condition(status: &JobStatus, type_: &str) -> Option<JobCondition> {
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == type_ && c.status == "True")
        .cloned()
}

fn set_condition(st: &mut JobStatus, type_: &str, reason: &str, message: &str, now: Timestamp) {
    if condition(st, type_).is_some() {
        return;
    }
    let list = st.conditions.get_or_insert_with(Vec::new);
    list.retain(|c| c.type_ != type_);
    list.push(JobCondition {
        type_: type_.into(),
        status: "True".into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    });
}

/// When a finished pod finished: its containers' latest finish, else now.
fn finished_at(p: &Pod) -> Option<Timestamp> {
    p.status
        .as_ref()?
        .container_statuses
        .iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|t| t.0)
        .max()
}

/// The delay before the next replacement after `failures` failures: base doubling per
/// failure, up to 6 minutes.
pub fn replacement_delay(base: Duration, failures: i32) -> Duration {
    let n = failures.clamp(1, 20) as u32 - 1;
    base.saturating_mul(1u32 << n).min(MAX_BACKOFF)
}

impl Controller {
    async fn sync(&mut self, job: &Job) -> anyhow::Result<()> {
        let ns = job.namespace().unwrap_or_default();
        let uid = job.uid().unwrap_or_default();
        let spec = job.spec.clone().unwrap_or_default();
        let old = job.status.clone().unwrap_or_default();
        let now = now_seconds();
        let jobs: Api<Job> = Api::namespaced(self.client.clone(), &ns);
        let pods_api: Api<Pod> = Api::namespaced(self.client.clone(), &ns);

        let done = condition(&old, "Complete").or_else(|| condition(&old, "Failed"));
        if let Some(done) = done {
            self.expect.forget(&uid);
            if let Some(ttl) = spec.ttl_seconds_after_finished {
                let finished = old
                    .completion_time
                    .as_ref()
                    .or(done.last_transition_time.as_ref())
                    .map_or(now, |t| t.0);
                let at = finished + SignedDuration::from_secs(i64::from(ttl.max(0)));
                if now >= at {
                    tracing::info!(job = %job.name_any(), "ttlSecondsAfterFinished passed; deleting");
                    match jobs
                        .delete(&job.name_any(), &DeleteParams::background())
                        .await
                    {
                        Ok(_) => {}
                        Err(kube::Error::Api(e)) if e.code == 404 => {}
                        Err(e) => return Err(e).context("deleting a finished job"),
                    }
                } else {
                    wake_for(&mut self.wake, now, at);
                }
            }
            return Ok(());
        }

        let owned: Vec<Arc<Pod>> = self
            .caches
            .pods
            .state()
            .into_iter()
            .filter(|p| {
                p.namespace().as_deref() == Some(ns.as_str())
                    && controller_uid(&p.metadata) == Some(uid.as_str())
            })
            .collect();
        let names: HashSet<String> = owned
            .iter()
            .filter(|p| pod_active(p))
            .map(|p| p.name_any())
            .collect();
        let (pending, gone) = self.expect.observe(&uid, &names);
        let active: Vec<&Arc<Pod>> = owned
            .iter()
            .filter(|p| pod_active(p) && !gone.contains(&p.name_any()))
            .collect();
        let phase =
            |p: &Pod, want: &str| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some(want);
        let succeeded = (owned.iter().filter(|p| phase(p, "Succeeded")).count() as i32)
            .max(old.succeeded.unwrap_or(0));
        let failed_pods: Vec<&Arc<Pod>> = owned.iter().filter(|p| phase(p, "Failed")).collect();
        let failed = (failed_pods.len() as i32).max(old.failed.unwrap_or(0));
        let on_failure = spec
            .template
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.as_deref())
            == Some("OnFailure");
        let restarts: i32 = if on_failure {
            active
                .iter()
                .filter_map(|p| p.status.as_ref()?.container_statuses.as_ref())
                .flatten()
                .map(|c| c.restart_count)
                .sum()
        } else {
            0
        };
        let suspended = spec.suspend == Some(true);
        // Resumed after a suspension: the active deadline counts from now (kube resets
        // startTime on resume).
        let resumed = !suspended && condition(&old, "Suspended").is_some();
        let start = match &old.start_time {
            Some(t) if !resumed => t.0,
            _ => now,
        };

        let mut st = JobStatus {
            start_time: (!suspended || old.start_time.is_some()).then_some(Time(start)),
            conditions: old.conditions.clone(),
            succeeded: Some(succeeded),
            failed: Some(failed),
            ..Default::default()
        };
        let backoff_limit = spec.backoff_limit.unwrap_or(6);
        let failure = if failed + restarts > backoff_limit {
            Some((
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
            ))
        } else {
            match spec.active_deadline_seconds.filter(|_| !suspended) {
                Some(d) if now >= start + SignedDuration::from_secs(d) => Some((
                    "DeadlineExceeded",
                    "Job was active longer than specified deadline",
                )),
                Some(d) => {
                    wake_for(&mut self.wake, now, start + SignedDuration::from_secs(d));
                    None
                }
                None => None,
            }
        };
        let complete = failure.is_none()
            && match spec.completions {
                Some(c) => succeeded >= c,
                // A work queue: done when one has succeeded and the rest have finished.
                None => succeeded >= 1 && active.is_empty(),
            };

        let mut want = 0usize;
        let stop_all = failure.is_some() || complete || suspended;
        if let Some((reason, message)) = failure {
            set_condition(&mut st, "FailureTarget", reason, message, now);
            set_condition(&mut st, "Failed", reason, message, now);
            tracing::info!(job = %job.name_any(), reason, "job failed");
        } else if complete {
            set_condition(
                &mut st,
                "SuccessCriteriaMet",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
                now,
            );
            set_condition(
                &mut st,
                "Complete",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
                now,
            );
            st.completion_time = Some(Time(now));
            tracing::info!(job = %job.name_any(), succeeded, "job complete");
        } else if suspended {
            set_condition(&mut st, "Suspended", "JobSuspended", "Job suspended", now);
        } else {
            if let Some(list) = st.conditions.as_mut() {
                list.retain(|c| c.type_ != "Suspended");
            }
            let parallelism = spec.parallelism.unwrap_or(1).max(0);
            want = match spec.completions {
                Some(c) => parallelism.min((c - succeeded).max(0)),
                None if succeeded > 0 => 0,
                None => parallelism,
            } as usize;
        }

        // Pods: finished Jobs (and suspended ones) keep none running; otherwise up to `want`
        // (a work queue with one success starts no more, and lets the others finish).
        let have = active.len() + pending;
        // A work queue (no completions) with a success starts no more pods but lets the
        // running ones finish; anything else above `want` (parallelism lowered, to 0 too) goes.
        let queue_draining = spec.completions.is_none() && succeeded > 0;
        if stop_all || (!queue_draining && have > want) {
            let extra = if stop_all { active.len() } else { have - want };
            for p in active.iter().rev().take(extra.min(BURST)) {
                match pods_api
                    .delete(&p.name_any(), &DeleteParams::background())
                    .await
                {
                    Ok(_) => self.expect.deleted(&uid, p.name_any()),
                    Err(kube::Error::Api(e)) if e.code == 404 => {}
                    Err(e) => return Err(e).context("deleting pod"),
                }
            }
        } else if have < want {
            // A failed pod is replaced after a back-off from its finish.
            let held = match failed_pods.iter().filter_map(|p| finished_at(p)).max() {
                Some(last) if failed > 0 => {
                    let delay = replacement_delay(self.backoff, failed);
                    let at = last + SignedDuration::try_from(delay).unwrap_or_default();
                    (now < at)
                        .then(|| wake_for(&mut self.wake, now, at))
                        .is_some()
                }
                _ => false,
            };
            if !held {
                let template = spec.template.clone();
                for _ in 0..(want - have).min(BURST) {
                    let mut meta = template.metadata.clone().unwrap_or_default();
                    meta.generate_name = Some(format!("{}-", job.name_any()));
                    meta.namespace = Some(ns.clone());
                    meta.owner_references =
                        Some(vec![controller_ref("batch/v1", "Job", &job.metadata)]);
                    let pod = Pod {
                        metadata: meta,
                        spec: template.spec.clone(),
                        status: None,
                    };
                    let made = pods_api
                        .create(&PostParams::default(), &pod)
                        .await
                        .context("creating pod")?;
                    self.expect.created(&uid, made.name_any());
                }
            }
        }

        let (running, ready) = if stop_all {
            (0, 0)
        } else {
            (active.len(), active.iter().filter(|p| pod_ready(p)).count())
        };
        st.active = (running > 0).then_some(running as i32);
        st.ready = Some(ready as i32);
        if job.status.as_ref() != Some(&st) {
            // A merge patch leaves out what is None; `active` must be cleared explicitly.
            let mut body = serde_json::to_value(&st).context("encoding status")?;
            if let Some(m) = body.as_object_mut() {
                m.entry("active").or_insert(serde_json::Value::Null);
            }
            match jobs
                .patch_status(
                    &job.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(serde_json::json!({ "status": body })),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replacement_back_off_doubles_to_six_minutes() {
        let b = Duration::from_secs(10);
        assert_eq!(replacement_delay(b, 1), Duration::from_secs(10));
        assert_eq!(replacement_delay(b, 2), Duration::from_secs(20));
        assert_eq!(replacement_delay(b, 4), Duration::from_secs(80));
        assert_eq!(replacement_delay(b, 12), MAX_BACKOFF);
        assert_eq!(replacement_delay(b, i32::MAX), MAX_BACKOFF);
    }
}
