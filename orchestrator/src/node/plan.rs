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
    /// Runs to stop (their spec changed, or a liveness or startup probe failed).
    pub stop: Vec<Container>,
    /// Sidecars to stop once every app container has finished, in the order to stop them
    /// (the reverse of their start order).
    pub stop_sidecars: Vec<Container>,
    /// Adopted runs whose probes start again.
    pub probe: Vec<(CSpec, Container)>,
}

/// A native sidecar: an init container with `restartPolicy: Always` (KEP-753, GA in 1.33).
pub(crate) fn is_sidecar(cs: &CSpec) -> bool {
    cs.restart_policy.as_deref() == Some("Always")
}

/// Has `c` started, as the kubelet means it for a sidecar: running, and its startupProbe (if
/// any) has passed. The next init container and the app containers wait for this.
pub(crate) fn started(cs: &CSpec, c: &Ctr) -> bool {
    c.running && (cs.startup_probe.is_none() || c.startup_ok)
}

/// The spec of the pod's container (app or init) named `name`.
pub(crate) fn spec_of<'a>(pod: &'a Pod, name: &str) -> Option<&'a CSpec> {
    let spec = pod.spec.as_ref()?;
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == name)
}

/// Would a container that exited with `code` be started again under `policy`?
pub(crate) fn restarts(policy: &str, code: i32) -> bool {
    match policy {
        "Never" => false,
        "OnFailure" => code != 0,
        _ => true,
    }
}

/// Where one container stands after `step`.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Now {
    Running,
    /// To be started (or waiting for its back-off, or stopping): not running yet.
    Pending,
    /// Exited and not to be started again, with its exit code.
    Done(i32),
}

/// Updates `p`'s container records (adoption, stop requests, back-off waiting) and says what to
/// start and stop. `backoff` is the first restart back-off of a container seen for the first
/// time.
///
/// The kubelet's order (KEP-753): init containers one at a time; a regular one must exit 0
/// before the next starts, a sidecar must have started (startupProbe passed) and keeps
/// running. Once every init container is through the pod is initialized for good and the app
/// containers run under the pod's restartPolicy; sidecars are restarted whatever that policy
/// says. When every app container has finished for good (a Job's pod), the sidecars are
/// stopped, last started first, so the pod can complete.
pub(crate) fn containers(p: &mut PodRt, pod: &Pod, now: Instant, backoff: Duration) -> Plan {
    let mut plan = Plan::default();
    let Some(spec) = &pod.spec else { return plan };
    let policy = spec.restart_policy.as_deref().unwrap_or("Always");
    let inits = spec.init_containers.as_deref().unwrap_or_default();
    // An app container that ever ran means the pod was initialized (also for runs a restarted
    // agent adopted, whose init containers may be long gone).
    p.initialized |= spec
        .containers
        .iter()
        .any(|cs| p.containers.get(&cs.name).is_some_and(|c| c.run.is_some()));
    if p.init_failed {
        // The pod has failed: its sidecars (started before the failed init container) go
        // too, and nothing starts again.
        stop_sidecars(p, inits, &mut plan);
        return plan;
    }
    if !p.initialized {
        // A failed init container under restartPolicy Never fails the pod (the kubelet's
        // rule); otherwise it is retried with back-off like any container.
        let init_policy = if policy == "Never" {
            "Never"
        } else {
            "OnFailure"
        };
        for cs in inits {
            if is_sidecar(cs) {
                step(p, pod, cs, "Always", now, backoff, &mut plan);
                if !p.containers.get(&cs.name).is_some_and(|c| started(cs, c)) {
                    return plan;
                }
                continue;
            }
            match step(p, pod, cs, init_policy, now, backoff, &mut plan) {
                Now::Done(0) => continue,
                Now::Done(_) => {
                    p.init_failed = true;
                    stop_sidecars(p, inits, &mut plan);
                    return plan;
                }
                Now::Running | Now::Pending => return plan,
            }
        }
        p.initialized = true;
    }
    if !p.finishing {
        for cs in inits.iter().filter(|cs| is_sidecar(cs)) {
            step(p, pod, cs, "Always", now, backoff, &mut plan);
        }
    }
    let mut mains_done = !spec.containers.is_empty();
    for cs in &spec.containers {
        mains_done &= matches!(
            step(p, pod, cs, policy, now, backoff, &mut plan),
            Now::Done(_)
        );
    }
    if mains_done && !p.finishing {
        p.finishing = true;
        stop_sidecars(p, inits, &mut plan);
    }
    plan
}

/// The running sidecars into `plan.stop_sidecars`, last started first, each once.
fn stop_sidecars(p: &mut PodRt, inits: &[CSpec], plan: &mut Plan) {
    for cs in inits.iter().rev().filter(|cs| is_sidecar(cs)) {
        if let Some(c) = p.containers.get_mut(&cs.name) {
            if c.running && !c.stopping {
                c.stopping = true;
                plan.stop_sidecars.extend(c.run.clone());
            }
        }
    }
}

/// One container's record brought up to date, and its start or stop decided.
fn step(
    p: &mut PodRt,
    pod: &Pod,
    cs: &CSpec,
    policy: &str,
    now: Instant,
    backoff: Duration,
    plan: &mut Plan,
) -> Now {
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
        let status = pod.status.as_ref();
        let reported = status
            .and_then(|s| s.container_statuses.as_ref())
            .into_iter()
            .chain(status.and_then(|s| s.init_container_statuses.as_ref()))
            .flatten()
            .find(|x| x.name == cs.name && x.container_id == id);
        c.ready = reported.is_some_and(|x| x.ready);
        // A run found running past its startup (it was reported started) is not held again.
        c.startup_ok = reported.is_some_and(|x| x.started == Some(true));
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
        return Now::Running;
    }
    if c.stopping {
        return Now::Pending;
    }
    // Never ran, or adopted without an exit: start it.
    if let Some((exit, _, _)) = &c.last_exit {
        if !restarts(policy, exit.code) {
            return Now::Done(exit.code);
        }
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
        return Now::Pending;
    }
    let attempt = c.run.as_ref().map_or(0, |r| r.attempt + 1);
    plan.start.push((cs.clone(), attempt));
    Now::Pending
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

    /// Init containers `i1`, sidecar `s` (with a startup probe), `i2`; app container `c`.
    fn pod_with_inits(policy: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u"},
            "spec": {"restartPolicy": policy,
                "initContainers": [
                    {"name": "i1", "image": "busybox"},
                    {"name": "s", "image": "busybox", "restartPolicy": "Always",
                     "startupProbe": {"tcpSocket": {"port": 4191}}},
                    {"name": "i2", "image": "busybox"}],
                "containers": [{"name": "c", "image": "busybox"}]}
        }))
        .unwrap()
    }

    fn names(plan: &Plan) -> Vec<&str> {
        plan.start.iter().map(|(c, _)| c.name.as_str()).collect()
    }

    fn set(rt: &mut PodRt, name: &str, running: bool, exit: Option<i32>) {
        let c = rt.containers.get_mut(name).unwrap();
        let mut r = run(0);
        r.name = name.into();
        c.run = Some(r);
        c.running = running;
        c.last_exit = exit.map(|code| {
            let reason = "Completed".into();
            (Exit { code, reason }, 0, 1)
        });
    }

    #[test]
    fn init_containers_run_in_order_and_a_sidecar_must_start_first() {
        let (now, b) = (Instant::now(), Duration::ZERO);
        let p = pod_with_inits("Always");
        let mut rt = PodRt::new("ns".into(), "p".into());
        assert_eq!(names(&containers(&mut rt, &p, now, b)), ["i1"]);
        // Still running: nothing else starts.
        set(&mut rt, "i1", true, None);
        assert!(names(&containers(&mut rt, &p, now, b)).is_empty());
        set(&mut rt, "i1", false, Some(0));
        assert_eq!(names(&containers(&mut rt, &p, now, b)), ["s"]);
        // The sidecar runs, but its startup probe has not passed: i2 waits.
        set(&mut rt, "s", true, None);
        assert!(names(&containers(&mut rt, &p, now, b)).is_empty());
        rt.containers.get_mut("s").unwrap().startup_ok = true;
        assert_eq!(names(&containers(&mut rt, &p, now, b)), ["i2"]);
        assert!(!rt.initialized);
        set(&mut rt, "i2", false, Some(0));
        assert_eq!(names(&containers(&mut rt, &p, now, b)), ["c"]);
        assert!(rt.initialized);
        // Initialized for good: a crashed sidecar is restarted, the app goes on.
        set(&mut rt, "c", true, None);
        set(&mut rt, "s", false, Some(137));
        assert_eq!(names(&containers(&mut rt, &p, now, b)), ["s"]);
    }

    #[test]
    fn a_failed_init_container_is_retried_unless_the_policy_is_never() {
        let (now, b) = (Instant::now(), Duration::ZERO);
        for (policy, retried) in [("Always", true), ("OnFailure", true), ("Never", false)] {
            let p = pod_with_inits(policy);
            let mut rt = PodRt::new("ns".into(), "p".into());
            containers(&mut rt, &p, now, b);
            set(&mut rt, "i1", false, Some(1));
            let plan = containers(&mut rt, &p, now, b);
            if retried {
                assert_eq!(names(&plan), ["i1"], "{policy}");
                assert!(!rt.init_failed);
            } else {
                assert!(names(&plan).is_empty(), "{policy}");
                assert!(rt.init_failed);
            }
        }
        // A sidecar already running when a later init container fails (Never): stopped, once.
        let (p, mut rt) = to_the_sidecar(now, b);
        set(&mut rt, "i2", false, Some(1));
        let plan = containers(&mut rt, &p, now, b);
        assert!(rt.init_failed && plan.start.is_empty());
        assert_eq!(plan.stop_sidecars.len(), 1);
        assert!(containers(&mut rt, &p, now, b).stop_sidecars.is_empty());
    }

    /// A `Never` pod with inits, run until its first init container exited 0 and its
    /// sidecar started.
    fn to_the_sidecar(now: Instant, b: Duration) -> (Pod, PodRt) {
        let p = pod_with_inits("Never");
        let mut rt = PodRt::new("ns".into(), "p".into());
        containers(&mut rt, &p, now, b);
        set(&mut rt, "i1", false, Some(0));
        containers(&mut rt, &p, now, b);
        set(&mut rt, "s", true, None);
        rt.containers.get_mut("s").unwrap().startup_ok = true;
        containers(&mut rt, &p, now, b);
        (p, rt)
    }

    #[test]
    fn sidecars_stop_once_the_app_has_finished_and_are_restarted_until_then() {
        let (now, b) = (Instant::now(), Duration::ZERO);
        let (p, mut rt) = to_the_sidecar(now, b);
        set(&mut rt, "i2", false, Some(0));
        containers(&mut rt, &p, now, b);
        set(&mut rt, "c", true, None);
        // The sidecar crashes under restartPolicy Never: it is a sidecar, so it restarts.
        set(&mut rt, "s", false, Some(2));
        assert_eq!(names(&containers(&mut rt, &p, now, b)), ["s"]);
        set(&mut rt, "s", true, None);
        // The app exits: the sidecar is stopped, once, and not restarted after.
        set(&mut rt, "c", false, Some(0));
        let plan = containers(&mut rt, &p, now, b);
        assert!(plan.start.is_empty());
        assert_eq!(plan.stop_sidecars.len(), 1);
        assert!(containers(&mut rt, &p, now, b).stop_sidecars.is_empty());
        set(&mut rt, "s", false, Some(143));
        rt.containers.get_mut("s").unwrap().stopping = false;
        assert!(containers(&mut rt, &p, now, b).start.is_empty());
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
