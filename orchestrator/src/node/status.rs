//! A pod's status from what runs for it (phase, conditions, container states, IPs), written to
//! the API when it differs from what the API has.

use k8s_openapi::{
    api::core::v1::{
        Container as CSpec, ContainerState, ContainerStateRunning, ContainerStateTerminated,
        ContainerStateWaiting, ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
    },
    apimachinery::pkg::apis::meta::v1::Time,
};
use kube::{
    api::{Api, PostParams},
    ResourceExt,
};

use super::{
    container::time,
    kubelet::{Ctr, Kubelet, PodRt, Settings},
    plan::{is_sidecar, restarts, started},
    runtime::{Exit, PodRuntime},
};
use crate::api::kind::now_seconds;

impl<R: PodRuntime> Kubelet<R> {
    /// Builds the pod's status from what runs and writes it when it differs.
    pub(crate) async fn report(&self, pod: &Pod) -> anyhow::Result<()> {
        let uid = pod.uid().unwrap_or_default();
        let status = {
            let st = self.inner.state.lock().await;
            let Some(p) = st.pods.get(&uid) else {
                return Ok(());
            };
            build_status(p, pod, &self.inner.s)
        };
        if pod.status.as_ref() == Some(&status) {
            return Ok(());
        }
        let api: Api<Pod> = Api::namespaced(
            self.inner.client.clone(),
            &pod.namespace().unwrap_or_default(),
        );
        let mut new = pod.clone();
        new.status = Some(status);
        match api
            .replace_status(&pod.name_any(), &PostParams::default(), &new)
            .await
        {
            Ok(_) => Ok(()),
            // Someone else wrote first: the next pass sees their version.
            Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

fn condition(old: &Option<PodStatus>, type_: &str, ok: bool, reason: Option<&str>) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    let prev = old
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == type_));
    PodCondition {
        type_: type_.into(),
        status: status.into(),
        reason: if ok { None } else { reason.map(str::to_string) },
        last_transition_time: match prev {
            Some(p) if p.status == status => p.last_transition_time.clone(),
            _ => Some(Time(now_seconds())),
        },
        ..Default::default()
    }
}

/// One container's status from its record; `started` is what the status's `started` says.
fn container_status(cs: &CSpec, c: Option<&Ctr>, setup_error: Option<&String>) -> ContainerStatus {
    let image = cs.image.clone().unwrap_or_default();
    let run = c.and_then(|c| c.run.as_ref());
    let terminated = |(e, started, finished): &(Exit, i64, i64)| ContainerStateTerminated {
        exit_code: e.code,
        reason: Some(e.reason.clone()),
        started_at: Some(time(*started)),
        finished_at: Some(time(*finished)),
        container_id: run.map(|r| format!("meshwork://{}", r.id())),
        ..Default::default()
    };
    let waiting = |reason: String, message: Option<String>| ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason),
            message,
        }),
        ..Default::default()
    };
    let (state, last) = match c {
        Some(c) if c.running => (
            ContainerState {
                running: Some(ContainerStateRunning {
                    started_at: run.map(|r| time(r.started_at)),
                }),
                ..Default::default()
            },
            c.last_exit.as_ref().map(terminated),
        ),
        Some(c) if c.waiting.is_some() => {
            let (reason, message) = c.waiting.clone().unwrap_or_default();
            (
                waiting(reason, Some(message)),
                c.last_exit.as_ref().map(terminated),
            )
        }
        Some(c) if c.last_exit.is_some() => (
            ContainerState {
                terminated: c.last_exit.as_ref().map(terminated),
                ..Default::default()
            },
            None,
        ),
        // Not started yet (`build_status` says PodInitializing for those the init phase holds).
        _ => (
            waiting("ContainerCreating".into(), setup_error.cloned()),
            None,
        ),
    };
    let running = c.is_some_and(|c| c.running);
    ContainerStatus {
        name: cs.name.clone(),
        image: image.clone(),
        image_id: format!("meshwork-catalog://{}", super::catalog::image_name(&image)),
        container_id: run.map(|r| format!("meshwork://{}", r.id())),
        ready: running && c.is_some_and(|c| c.ready),
        started: Some(c.is_some_and(|c| started(cs, c))),
        restart_count: c.map_or(0, |c| c.restart_count),
        state: Some(state),
        last_state: Some(ContainerState {
            terminated: last,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A container not started yet because the pod is still initializing (the kubelet's
/// wording).
fn pod_initializing() -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some("PodInitializing".into()),
            message: None,
        }),
        ..Default::default()
    }
}

pub(crate) fn build_status(p: &PodRt, pod: &Pod, s: &Settings) -> PodStatus {
    let spec = pod.spec.clone().unwrap_or_default();
    let old = pod.status.clone();
    let policy = spec
        .restart_policy
        .clone()
        .unwrap_or_else(|| "Always".into());
    let inits = spec.init_containers.clone().unwrap_or_default();
    let mut init_statuses = Vec::new();
    // Sidecars count for readiness (KEP-753); regular init containers do not.
    let mut sidecars_ready = true;
    let mut sidecars_running = false;
    for cs in &inits {
        let c = p.containers.get(&cs.name);
        let mut st = container_status(cs, c, p.setup_error.as_ref());
        if c.is_none() && p.sandbox.is_some() {
            st.state = Some(pod_initializing());
        }
        if is_sidecar(cs) {
            sidecars_ready &= st.ready;
            sidecars_running |= c.is_some_and(|c| c.running);
        }
        init_statuses.push(st);
    }
    let mut statuses = Vec::new();
    let (mut all_ready, mut any_running, mut all_done, mut all_ok) = (true, false, true, true);
    for cs in &spec.containers {
        let c = p.containers.get(&cs.name);
        let mut st = container_status(cs, c, p.setup_error.as_ref());
        if !p.initialized && c.is_none() && p.sandbox.is_some() {
            st.state = Some(pod_initializing());
        }
        let running = c.is_some_and(|c| c.running);
        all_ready &= st.ready;
        any_running |= running;
        let will_restart = c.is_some_and(|c| match &c.last_exit {
            None => true,
            Some((e, _, _)) => restarts(&policy, e.code),
        });
        let done = !running && c.is_some_and(|c| c.last_exit.is_some()) && !will_restart;
        all_done &= done;
        all_ok &= c
            .and_then(|c| c.last_exit.as_ref())
            .is_none_or(|(e, _, _)| e.code == 0);
        statuses.push(st);
    }
    let all_ready = all_ready && sidecars_ready;
    // A finished pod waits for its sidecars to stop before it is Succeeded or Failed.
    let phase = if p.sandbox.is_none() {
        "Pending"
    } else if p.init_failed {
        "Failed"
    } else if !p.initialized {
        "Pending"
    } else if all_done && !spec.containers.is_empty() && !sidecars_running {
        if all_ok {
            "Succeeded"
        } else {
            "Failed"
        }
    } else if any_running || sidecars_running || statuses.iter().any(|s| s.restart_count > 0) {
        "Running"
    } else {
        "Pending"
    };
    let scheduled = old
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled").cloned())
        .unwrap_or_else(|| condition(&old, "PodScheduled", true, None));
    let conditions = vec![
        condition(&old, "PodReadyToStartContainers", p.sandbox.is_some(), None),
        condition(
            &old,
            "Initialized",
            p.initialized,
            Some("ContainersNotInitialized"),
        ),
        condition(&old, "Ready", all_ready, Some("ContainersNotReady")),
        condition(
            &old,
            "ContainersReady",
            all_ready,
            Some("ContainersNotReady"),
        ),
        scheduled,
    ];
    let ip = p
        .sandbox
        .as_ref()
        .and_then(|sb| sb.ip)
        .map(|i| i.to_string());
    let qos = {
        let any = spec.containers.iter().any(|c| {
            c.resources
                .as_ref()
                .is_some_and(|r| r.requests.is_some() || r.limits.is_some())
        });
        if any {
            "Burstable"
        } else {
            "BestEffort"
        }
    };
    PodStatus {
        phase: Some(phase.into()),
        conditions: Some(conditions),
        host_ip: Some(s.node_ip.to_string()),
        host_ips: Some(vec![HostIP {
            ip: s.node_ip.to_string(),
        }]),
        pod_ip: ip.clone(),
        pod_ips: ip.map(|ip| vec![PodIP { ip }]),
        start_time: old
            .as_ref()
            .and_then(|s| s.start_time.clone())
            .or_else(|| Some(Time(now_seconds()))),
        container_statuses: Some(statuses),
        init_container_statuses: (!init_statuses.is_empty()).then_some(init_statuses),
        qos_class: Some(qos.into()),
        ..Default::default()
    }
}
