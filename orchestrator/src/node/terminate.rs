//! Stopping a pod: its containers with their grace period, then its sandbox (CNI DEL), then
//! the pod object itself once nothing of it runs (the kubelet's final delete with grace 0).

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::{
    api::{Api, DeleteParams, Preconditions},
    ResourceExt,
};

use super::{kubelet::Kubelet, runtime::PodRuntime};

impl<R: PodRuntime> Kubelet<R> {
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
            let rt = &k.inner.rt;
            futures::future::join_all(runs.iter().map(|r| rt.stop_container(r, grace))).await;
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
