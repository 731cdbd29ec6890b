//! batch/v1 Jobs and init containers (regular and native sidecars) on the lab cluster: the
//! real API server, controllers and node runtimes, driven by kubectl.
//!
//! - `kubectl create job` and `kubectl wait --for=condition=complete`; completions with
//!   parallelism; a failing Job retried to its backoffLimit; activeDeadlineSeconds;
//!   ttlSecondsAfterFinished.
//! - A Job whose pod has a regular init container and a native sidecar (an init container
//!   with `restartPolicy: Always`, the shape the injected proxy takes): the init container
//!   finishes first, the app's first request to the sidecar at its start succeeds because the
//!   sidecar's startupProbe held the app back, and the Job completes because the sidecar is
//!   stopped once the app has exited.
//! - A failing init container under `restartPolicy: Never` fails the pod; the app never runs.
#![cfg(target_os = "linux")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic with its location is the failure report"
)]

#[path = "support/orch.rs"]
mod orch;

use orch::Orch;
use serde_json::{json, Value};

fn job(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "batch/v1", "kind": "Job",
           "metadata": {"name": name, "namespace": "default"}, "spec": spec})
}

/// Pods of Job `name`, by the label the API server put on its template.
fn job_pods(o: &Orch, name: &str) -> Vec<Value> {
    let sel = format!("batch.kubernetes.io/job-name={name}");
    o.json(&["get", "pods", "-l", &sel])["items"]
        .as_array()
        .unwrap()
        .clone()
}

fn phases(pods: &[Value]) -> Vec<String> {
    let mut v: Vec<String> = pods
        .iter()
        .map(|p| p["status"]["phase"].as_str().unwrap_or("").to_string())
        .collect();
    v.sort();
    v
}

fn condition(o: &Orch, job: &str, ty: &str) -> Option<Value> {
    let j = o.json(&["get", "job", job]);
    j["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == ty && c["status"] == "True")
        .cloned()
}

#[test]
fn jobs_complete_retry_fail_and_expire_through_kubectl() {
    let o = Orch::start("orch_job");

    // kubectl create job + kubectl wait, as any tutorial does.
    o.kubectl(&[
        "create",
        "job",
        "hello",
        "--image=busybox:1.36",
        "--",
        "sh",
        "-c",
        "echo hello from the job",
    ]);
    o.kubectl(&[
        "wait",
        "--for=condition=complete",
        "job/hello",
        "--timeout=90s",
    ]);
    let j = o.json(&["get", "job", "hello"]);
    assert_eq!(j["status"]["succeeded"], 1, "{j}");
    assert!(j["status"]["completionTime"].is_string(), "{j}");
    let pods = job_pods(&o, "hello");
    assert_eq!(phases(&pods), ["Succeeded"]);
    let logs = o.kubectl(&["logs", "job/hello"]);
    assert!(logs.contains("hello from the job"), "{logs}");
    let table = o.kubectl(&["get", "job", "hello"]);
    assert!(
        table.contains("Complete") && table.contains("1/1"),
        "{table}"
    );

    // Three completions, two at a time.
    o.apply(&job(
        "three",
        json!({"completions": 3, "parallelism": 2, "template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "c", "image": "busybox:1.36", "command": ["sh", "-c", "sleep 1"]}]}}}),
    ));
    // A failing Job: the first pod and two replacements (backoffLimit 2), then Failed.
    o.apply(&job(
        "fails",
        json!({"backoffLimit": 2, "template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "c", "image": "busybox:1.36", "command": ["sh", "-c", "exit 3"]}]}}}),
    ));
    // Runs past its deadline: failed, and its pod removed.
    o.apply(&job(
        "deadline",
        json!({"activeDeadlineSeconds": 3, "template": {"spec": {
            "restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "c", "image": "busybox:1.36", "command": ["sleep", "300"]}]}}}),
    ));
    // Deleted (with its pod) two seconds after it completes.
    o.apply(&job(
        "expires",
        json!({"ttlSecondsAfterFinished": 2, "template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "c", "image": "busybox:1.36", "command": ["true"]}]}}}),
    ));

    o.kubectl(&[
        "wait",
        "--for=condition=complete",
        "job/three",
        "--timeout=90s",
    ]);
    let pods = job_pods(&o, "three");
    assert_eq!(phases(&pods), ["Succeeded"; 3], "{pods:?}");
    assert_eq!(o.json(&["get", "job", "three"])["status"]["succeeded"], 3);

    o.kubectl(&[
        "wait",
        "--for=condition=failed",
        "job/fails",
        "--timeout=90s",
    ]);
    let failed = condition(&o, "fails", "Failed").unwrap();
    assert_eq!(failed["reason"], "BackoffLimitExceeded", "{failed}");
    let pods = job_pods(&o, "fails");
    assert_eq!(phases(&pods), ["Failed"; 3], "backoffLimit 2: three pods");
    assert_eq!(o.json(&["get", "job", "fails"])["status"]["failed"], 3);

    o.kubectl(&[
        "wait",
        "--for=condition=failed",
        "job/deadline",
        "--timeout=60s",
    ]);
    let failed = condition(&o, "deadline", "Failed").unwrap();
    assert_eq!(failed["reason"], "DeadlineExceeded", "{failed}");
    o.wait("the deadline job's pod removed", || {
        job_pods(&o, "deadline").is_empty().then_some(())
    });

    o.wait("the expired job deleted with its pod", || {
        let gone = !o.kubectl_out(&["get", "job", "expires"]).status.success();
        (gone && job_pods(&o, "expires").is_empty()).then_some(())
    });
    // The others stay: ttl is per Job.
    o.kubectl(&["get", "job", "hello"]);
}

#[test]
fn init_containers_and_a_native_sidecar_let_a_job_complete() {
    let o = Orch::start("orch_side");

    // The sidecar serves only after 2 s, and its startup probe holds the app until then: the
    // app's very first request must succeed. The regular init container writes a file the
    // app checks, so it ran (to completion) first.
    o.apply(&job(
        "meshed",
        json!({"backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 5,
            "volumes": [{"name": "shared", "emptyDir": {}}],
            "initContainers": [
                {"name": "setup", "image": "busybox:1.36",
                 "command": ["sh", "-c", "echo prepared > /shared/setup"],
                 "volumeMounts": [{"name": "shared", "mountPath": "/shared"}]},
                {"name": "proxy", "image": "busybox:1.36", "restartPolicy": "Always",
                 "command": ["sh", "-c", "mkdir -p /www && echo up > /www/ready && sleep 2 && exec httpd -f -p 9000 -h /www"],
                 "startupProbe": {"tcpSocket": {"port": 9000}, "periodSeconds": 1, "failureThreshold": 30}}
            ],
            "containers": [{"name": "app", "image": "busybox:1.36",
                "command": ["sh", "-c", "cat /shared/setup && wget -q -O- http://127.0.0.1:9000/ready && echo first-request-ok"],
                "volumeMounts": [{"name": "shared", "mountPath": "/shared"}]}]}}}),
    ));
    o.kubectl(&[
        "wait",
        "--for=condition=complete",
        "job/meshed",
        "--timeout=90s",
    ]);
    let pods = job_pods(&o, "meshed");
    assert_eq!(phases(&pods), ["Succeeded"], "{pods:?}");
    let pod = &pods[0];
    let name = pod["metadata"]["name"].as_str().unwrap();
    let logs = o.kubectl(&["logs", name, "-c", "app"]);
    assert!(
        logs.contains("prepared") && logs.contains("first-request-ok"),
        "{logs}"
    );
    // Both init containers ended: setup with 0, the sidecar stopped by the node (SIGTERM)
    // after the app; the app once, with 0.
    let inits = pod["status"]["initContainerStatuses"].as_array().unwrap();
    let term = |name: &str| {
        inits
            .iter()
            .find(|c| c["name"] == name)
            .map(|c| c["state"]["terminated"].clone())
            .unwrap()
    };
    assert_eq!(term("setup")["exitCode"], 0, "{inits:?}");
    assert!(term("proxy").is_object(), "{inits:?}");
    let app = &pod["status"]["containerStatuses"][0];
    assert_eq!(app["state"]["terminated"]["exitCode"], 0, "{app}");
    assert_eq!(app["restartCount"], 0, "{app}");
    let proxy_end = term("proxy")["finishedAt"].as_str().unwrap().to_string();
    let app_end = app["state"]["terminated"]["finishedAt"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        proxy_end >= app_end,
        "sidecar stopped before the app: {pod}"
    );

    // A failing init container under restartPolicy Never: the pod fails, the app never ran.
    o.apply(&json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "badinit", "namespace": "default"},
        "spec": {"restartPolicy": "Never",
            "initContainers": [{"name": "init", "image": "busybox:1.36", "command": ["sh", "-c", "exit 7"]}],
            "containers": [{"name": "app", "image": "busybox:1.36", "command": ["sh", "-c", "echo ran"]}]}}));
    let pod = o.wait("badinit Failed", || {
        let p = o.json(&["get", "pod", "badinit"]);
        (p["status"]["phase"] == "Failed").then_some(p)
    });
    let init = &pod["status"]["initContainerStatuses"][0];
    assert_eq!(init["state"]["terminated"]["exitCode"], 7, "{pod}");
    let app = &pod["status"]["containerStatuses"][0];
    assert!(
        app["state"]["terminated"].is_null() && app["containerID"].is_null(),
        "{pod}"
    );
    let table = o.kubectl(&["get", "pod", "badinit"]);
    assert!(table.contains("Init:Error"), "{table}");
}
