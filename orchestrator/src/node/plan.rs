//! What to do with a pod's containers now, decided without doing it: which to start (and as
//! which attempt), which to stop (spec changed, liveness asked), which adopted runs get their
//! probes back, and the waiting reasons (CrashLoopBackOff) the status shows meanwhile. A pure
//! function of the pod and the node runtime's record of it, so the rules are table-tested; the
//! kubelet's appliers (`kubelet.rs` start, `terminate.rs`, `status.rs`) carry it out.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container as CSpec, Pod};

use super::{
    container::spec_hash,
    kubelet::{Ctr, PodRt},
    runtime::Container,
};

#[derive(Default)]
pub(crate) struct Plan {
    /// Containers to start now, with their attempt number.
    pub start: Vec<(CSpec, u32)>,
    /// Runs to stop (their spec changed, or a liveness probe failed).
    pub stop: Vec<Container>,
    /// Adopted runs whose probes start again.
    pub probe: Vec<(CSpec, Container)>,
}

/// Updates `p`'s container records (adoption, stop requests, back-off waiting) and says what to
/// start and stop. `backoff` is the first restart back-off of a container seen for the first
/// time.
pub(crate) fn containers(p: &mut PodRt, pod: &Pod, now: Instant, backoff: Duration) -> Plan {
    let mut plan = Plan::default();
    let Some(spec) = &pod.spec else { return plan };
    let policy = spec.restart_policy.as_deref().unwrap_or("Always");
    for cs in &spec.containers {
        let c = p.containers.entry(cs.name.clone()).or_insert_with(|| Ctr {
            backoff,
            ..Default::default()
        });
        let hash = spec_hash(cs);
        if c.spec_hash.is_empty() {
            c.spec_hash = hash.clone();
        }
        if c.running && c.adopted {
            // Readiness as last reported for this very run, until the probes say more: an
            // agent restart must not flap the pod's endpoints.
            c.adopted = false;
            let id = c.run.as_ref().map(|r| format!("meshwork://{}", r.id()));
            c.ready = pod
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .and_then(|list| list.iter().find(|x| x.name == cs.name))
                .is_some_and(|x| x.ready && x.container_id == id);
            if let Some(run) = c.run.clone() {
                plan.probe.push((cs.clone(), run));
            }
        }
        if c.running {
            if (c.spec_hash != hash || c.kill_requested) && !c.stopping {
                c.stopping = true;
                c.spec_hash = hash;
                if let Some(run) = c.run.clone() {
                    plan.stop.push(run);
                }
            }
            continue;
        }
        if c.stopping {
            continue;
        }
        let restart = match &c.last_exit {
            // Never ran, or adopted without an exit: start it.
            None => true,
            Some((exit, _, _)) => match policy {
                "Never" => false,
                "OnFailure" => exit.code != 0,
                _ => true,
            },
        };
        if !restart {
            continue;
        }
        if c.next_start.is_some_and(|t| now < t) {
            if c.last_exit.is_some() {
                c.waiting = Some((
                    "CrashLoopBackOff".into(),
                    format!(
                        "back-off restarting failed container {} in pod {}_{}",
                        cs.name, p.name, p.namespace
                    ),
                ));
            }
            continue;
        }
        let attempt = c.run.as_ref().map_or(0, |r| r.attempt + 1);
        plan.start.push((cs.clone(), attempt));
    }
    plan
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use serde_json::json;

    use super::*;
    use crate::node::runtime::Exit;

    fn pod(policy: &str, image: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
            "spec": {"restartPolicy": policy, "containers": [{"name": "c", "image": image}]}
        }))
        .unwrap()
    }

    fn run(attempt: u32) -> Container {
        Container {
            pod_uid: "u".into(),
            name: "c".into(),
            image: "busybox".into(),
            attempt,
            pid: 1,
            start_ticks: 0,
            started_at: 0,
            log: "/dev/null".into(),
            exit_file: "/dev/null".into(),
            cgroup: "/".into(),
        }
    }

    /// The record of container `c` after it ran once: exited with `code`, or still running.
    fn ran(p: &Pod, exit: Option<i32>) -> PodRt {
        let mut rt = PodRt::new("ns".into(), "p".into());
        let cs = &p.spec.as_ref().unwrap().containers[0];
        let c = Ctr {
            run: Some(run(0)),
            running: exit.is_none(),
            last_exit: exit.map(|code| {
                (
                    Exit {
                        code,
                        reason: "Completed".into(),
                    },
                    0,
                    1,
                )
            }),
            backoff: Duration::from_secs(10),
            spec_hash: spec_hash(cs),
            ..Default::default()
        };
        rt.containers.insert("c".into(), c);
        rt
    }

    fn starts(plan: &Plan) -> Vec<u32> {
        plan.start.iter().map(|(_, a)| *a).collect()
    }

    #[test]
    fn first_start_and_restart_policies() {
        let now = Instant::now();
        let b = Duration::from_secs(10);
        // A new pod: attempt 0 of its container.
        let p = pod("Always", "busybox");
        let mut rt = PodRt::new("ns".into(), "p".into());
        assert_eq!(starts(&containers(&mut rt, &p, now, b)), [0]);
        // (policy, exit code) → restarted as attempt 1?
        for (policy, code, restarted) in [
            ("Always", 0, true),
            ("Always", 1, true),
            ("OnFailure", 0, false),
            ("OnFailure", 2, true),
            ("Never", 0, false),
            ("Never", 1, false),
        ] {
            let p = pod(policy, "busybox");
            let mut rt = ran(&p, Some(code));
            let plan = containers(&mut rt, &p, now, b);
            let want: &[u32] = if restarted { &[1] } else { &[] };
            assert_eq!(starts(&plan), want, "{policy} after exit {code}");
        }
    }

    #[test]
    fn back_off_shows_crash_loop_and_holds_the_restart() {
        let p = pod("Always", "busybox");
        let mut rt = ran(&p, Some(1));
        let now = Instant::now();
        rt.containers.get_mut("c").unwrap().next_start = Some(now + Duration::from_secs(5));
        let plan = containers(&mut rt, &p, now, Duration::from_secs(10));
        assert!(plan.start.is_empty());
        let waiting = rt.containers["c"].waiting.clone().unwrap();
        assert_eq!(waiting.0, "CrashLoopBackOff");
        assert!(
            waiting.1.contains("container c in pod p_ns"),
            "{}",
            waiting.1
        );
        // Once the back-off has passed, the next attempt starts.
        let later = now + Duration::from_secs(6);
        assert_eq!(starts(&containers(&mut rt, &p, later, Duration::ZERO)), [1]);
    }

    #[test]
    fn a_changed_spec_or_a_liveness_failure_stops_the_run_once() {
        let now = Instant::now();
        let p = pod("Always", "busybox");
        // Running with the same spec: nothing to do.
        let mut rt = ran(&p, None);
        let plan = containers(&mut rt, &p, now, Duration::ZERO);
        assert!(plan.start.is_empty() && plan.stop.is_empty());
        // The image changed: stop the run (started again after it exits), only once.
        let changed = pod("Always", "busybox:2");
        let plan = containers(&mut rt, &changed, now, Duration::ZERO);
        assert_eq!(plan.stop.len(), 1);
        assert!(rt.containers["c"].stopping);
        assert!(containers(&mut rt, &changed, now, Duration::ZERO)
            .stop
            .is_empty());
        // A liveness failure asks for a kill.
        let mut rt = ran(&p, None);
        rt.containers.get_mut("c").unwrap().kill_requested = true;
        assert_eq!(containers(&mut rt, &p, now, Duration::ZERO).stop.len(), 1);
    }

    #[test]
    fn an_adopted_run_keeps_its_reported_readiness_and_gets_probes() {
        let now = Instant::now();
        let mut p = pod("Always", "busybox");
        let id = format!("meshwork://{}", run(0).id());
        p.status = Some(
            serde_json::from_value(json!({"containerStatuses": [
                {"name": "c", "ready": true, "containerID": id, "image": "busybox", "imageID": "",
                 "restartCount": 0}]}))
            .unwrap(),
        );
        let mut rt = ran(&p, None);
        rt.containers.get_mut("c").unwrap().adopted = true;
        let plan = containers(&mut rt, &p, now, Duration::ZERO);
        assert_eq!(plan.probe.len(), 1);
        assert!(rt.containers["c"].ready && !rt.containers["c"].adopted);
        // Reported ready for another run (another container id): not ready until probed.
        let mut rt = ran(&p, None);
        {
            let c = rt.containers.get_mut("c").unwrap();
            c.adopted = true;
            c.run = Some(run(3));
        }
        containers(&mut rt, &p, now, Duration::ZERO);
        assert!(!rt.containers["c"].ready);
    }
}
