//! Stopping a pod: its app containers with their preStop hooks and grace period, then its
//! native sidecars in the reverse of their start order with what is left of the grace (so the
//! proxy outlives the app it serves), then its sandbox (CNI DEL), then the pod object itself
//! once nothing of it runs (the kubelet's final delete with grace 0).

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::{Container as CSpec, LifecycleHandler, Pod};
use kube::{
    api::{Api, DeleteParams, Preconditions},
    ResourceExt,
};

use super::{
    kubelet::Kubelet,
    plan::{is_sidecar, spec_of},
    runtime::{Container, PodRuntime},
};

impl<R: PodRuntime> Kubelet<R> {
    /// Stops one run as the kubelet does: its preStop hook first, then SIGTERM, and SIGKILL
    /// when the grace runs out. The hook's time counts against the grace.
    pub(crate) async fn stop_run(
        &self,
        cs: Option<&CSpec>,
        run: &Container,
        grace: Duration,
        ip: Option<IpAddr>,
    ) {
        let t0 = Instant::now();
        let hook = cs.and_then(|c| Some((c, c.lifecycle.as_ref()?.pre_stop.as_ref()?)));
        if let Some((cs, hook)) = hook.filter(|_| !grace.is_zero()) {
            let hooked = self.pre_stop(cs, run, hook, ip, grace);
            if tokio::time::timeout(grace, hooked).await.is_err() {
                tracing::info!(container = %cs.name, "preStop hook ran out the grace period");
            }
        }
        let left = grace.saturating_sub(t0.elapsed());
        self.inner.rt.stop_container(run, left).await;
    }

    async fn pre_stop(
        &self,
        cs: &CSpec,
        run: &Container,
        hook: &LifecycleHandler,
        ip: Option<IpAddr>,
        grace: Duration,
    ) {
        if let Some(e) = &hook.exec {
            let cmd = e.command.clone().unwrap_or_default();
            if !cmd.is_empty() {
                match self.inner.rt.exec(run, &cmd, grace).await {
                    Ok((0, _)) => {}
                    Ok((code, _)) => {
                        tracing::info!(container = %cs.name, code, "preStop hook failed")
                    }
                    Err(e) => {
                        tracing::info!(container = %cs.name, error = %e, "preStop hook failed")
                    }
                }
            }
        } else if let Some(h) = &hook.http_get {
            if !super::probe::http_get(cs, h, ip, grace).await {
                tracing::info!(container = %cs.name, "preStop hook failed");
            }
        } else if let Some(s) = &hook.sleep {
            tokio::time::sleep(Duration::from_secs(s.seconds.max(0) as u64)).await;
        }
    }

    pub(crate) fn spawn_terminate(&self, uid: String, grace: Duration, pod: Option<Pod>) {
        let k = self.clone();
        tokio::spawn(async move {
            // A start in progress finishes first: what it starts is then stopped here.
            let op = k
                .inner
                .state
                .lock()
                .await
                .pods
                .get(&uid)
                .map(|p| p.op.clone());
            let _op = match &op {
                Some(op) => Some(op.lock().await),
                None => None,
            };
            let (runs, sandbox) = {
                let st = k.inner.state.lock().await;
                match st.pods.get(&uid) {
                    Some(p) => (
                        p.containers
                            .values()
                            .filter(|c| c.running)
                            .filter_map(|c| c.run.clone())
                            .collect::<Vec<_>>(),
                        p.sandbox.clone(),
                    ),
                    None => (Vec::new(), None),
                }
            };
            let deadline = Instant::now() + grace;
            let ip = sandbox.as_ref().and_then(|sb| sb.ip);
            let spec = |name: &str| pod.as_ref().and_then(|p| spec_of(p, name));
            // Sidecars by their place among the init containers, last started first.
            let place = |name: &str| {
                pod.as_ref()
                    .and_then(|p| p.spec.as_ref())
                    .and_then(|s| s.init_containers.as_ref())
                    .and_then(|ics| ics.iter().position(|c| c.name == name && is_sidecar(c)))
            };
            let (mut sidecars, apps): (Vec<_>, Vec<_>) =
                runs.into_iter().partition(|r| place(&r.name).is_some());
            sidecars.sort_by_key(|r| std::cmp::Reverse(place(&r.name)));
            futures::future::join_all(apps.iter().map(|r| k.stop_run(spec(&r.name), r, grace, ip)))
                .await;
            for r in &sidecars {
                // What the apps left of the grace, but at least 2 s as the kubelet gives
                // sidecars (none on a forced stop).
                let mut left = deadline.saturating_duration_since(Instant::now());
                if !grace.is_zero() {
                    left = left.max(Duration::from_secs(2));
                }
                k.stop_run(spec(&r.name), r, left, ip).await;
            }
            let rt = &k.inner.rt;
            if let Some(sb) = &sandbox {
                if let Err(e) = rt.stop_sandbox(sb).await {
                    tracing::warn!(pod = %sb.name, error = %e, "tearing down sandbox");
                }
            }
            if let Some(p) = k.inner.state.lock().await.pods.remove(&uid) {
                for c in p.containers.into_values() {
                    for t in c.probes {
                        t.abort();
                    }
                }
            }
            if let Some(pod) = pod {
                let api: Api<Pod> =
                    Api::namespaced(k.inner.client.clone(), &pod.namespace().unwrap_or_default());
                let dp = DeleteParams {
                    grace_period_seconds: Some(0),
                    preconditions: Some(Preconditions {
                        uid: pod.uid(),
                        resource_version: None,
                    }),
                    ..Default::default()
                };
                match api.delete(&pod.name_any(), &dp).await {
                    Ok(_) => tracing::info!(pod = %pod.name_any(), "pod stopped and deleted"),
                    Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                    Err(e) => tracing::warn!(pod = %pod.name_any(), error = %e, "deleting pod"),
                }
            }
            k.poke();
        });
    }
}
