//! Workload identity in the lab, end to end: the API server, two node runtimes and (for the
//! in-cluster client) a Meshwork agent per node.
//!
//! - A pod gets its ServiceAccount token, the cluster CA and its namespace at
//!   `/var/run/secrets/kubernetes.io/serviceaccount`, read-only, bound to the pod; the node
//!   replaces the token before 80% of its life (the API server here grants 12 s lives);
//!   a projected `serviceAccountToken` volume with its own audience and path works; a pod with
//!   `automountServiceAccountToken: false` gets nothing; the service variables are set.
//! - A node may ask for tokens only for pods it runs (NodeRestriction's rule).
//! - kube-rs in a pod with `Config::infer()` reaches the API server through the `kubernetes`
//!   Service with that token and gets what RBAC allows and 403 for the rest; `kubectl auth
//!   can-i` with the same identity agrees.
#![cfg(target_os = "linux")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic with its location is the failure report"
)]

#[path = "support/orch.rs"]
mod orch;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use base64::Engine;
use orch::{Orch, KUBECTL};
use serde_json::{json, Value};

const TOKEN_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

fn claims(jwt: &str) -> Value {
    let payload = jwt.trim().split('.').nth(1).expect("a JWT has three parts");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn exec(o: &Orch, pod: &str, cmd: &[&str]) -> (bool, String) {
    let mut args = vec!["exec", pod, "--"];
    args.extend_from_slice(cmd);
    let out = o.kubectl_out(&args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn busybox(name: &str, spec: Value) -> Value {
    let mut pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "c", "image": "busybox", "command": ["sleep", "3600"]}]},
    });
    for (k, v) in spec.as_object().unwrap() {
        pod["spec"][k] = v.clone();
    }
    pod
}

fn wait_running(o: &Orch, pod: &str) -> Value {
    o.wait(&format!("pod {pod} Running"), || {
        let p = o.json(&["get", "pod", pod]);
        (p["status"]["phase"] == "Running").then_some(p)
    })
}

/// kubectl with another kubeconfig (a node's), from node 1.
fn kubectl_as(o: &Orch, kubeconfig: &Path, args: &[&str]) -> std::process::Output {
    Command::new("ip")
        .args(["netns", "exec", &o.nodes[0].netns, KUBECTL, "--kubeconfig"])
        .arg(kubeconfig)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn pods_get_their_token_ca_namespace_and_service_variables() {
    let o = Orch::start_full(
        "wid_tok",
        &[],
        false,
        &["--service-account-max-token-expiration", "12s"],
        |_| None,
    );
    o.kubectl(&["create", "serviceaccount", "reader"]);
    o.apply(&busybox(
        "tok",
        json!({
            "serviceAccountName": "reader",
            "containers": [{
                "name": "c", "image": "busybox", "command": ["sleep", "3600"],
                "volumeMounts": [{"name": "mesh", "mountPath": "/var/run/mesh"}],
            }],
            "volumes": [{"name": "mesh", "projected": {"sources": [
                {"serviceAccountToken": {"audience": "mesh.meshwork.io", "expirationSeconds": 600, "path": "mesh/token"}},
            ]}}],
        }),
    ));
    o.apply(&busybox(
        "noauto",
        json!({"automountServiceAccountToken": false}),
    ));
    let pod = wait_running(&o, "tok");
    wait_running(&o, "noauto");

    // The admission's volume and mount, as kube writes them.
    let vols = pod["spec"]["volumes"].as_array().unwrap();
    let access = vols
        .iter()
        .find(|v| v["name"].as_str().unwrap().starts_with("kube-api-access-"))
        .unwrap_or_else(|| panic!("no kube-api-access volume: {vols:?}"));
    assert_eq!(
        access["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"],
        3607
    );
    let mounts = &pod["spec"]["containers"][0]["volumeMounts"];
    assert!(
        mounts
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["mountPath"] == TOKEN_DIR && m["readOnly"] == true),
        "{mounts}"
    );

    // token, ca.crt, namespace.
    let (ok, token) = exec(&o, "tok", &["cat", &format!("{TOKEN_DIR}/token")]);
    assert!(ok, "{token}\n{}", o.dump());
    let c = claims(&token);
    assert_eq!(c["sub"], "system:serviceaccount:default:reader", "{c}");
    assert_eq!(c["kubernetes.io"]["pod"]["name"], "tok", "{c}");
    assert_eq!(
        c["kubernetes.io"]["pod"]["uid"], pod["metadata"]["uid"],
        "{c}"
    );
    assert_eq!(
        c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(),
        12,
        "the server's 12 s cap: {c}"
    );
    let (_, ca) = exec(&o, "tok", &["cat", &format!("{TOKEN_DIR}/ca.crt")]);
    let want_ca = std::fs::read_to_string(o.data.join("pki/ca.crt")).unwrap();
    assert_eq!(ca.trim(), want_ca.trim());
    let (_, ns) = exec(&o, "tok", &["cat", &format!("{TOKEN_DIR}/namespace")]);
    assert_eq!(ns, "default");
    let (ok, out) = exec(&o, "tok", &["touch", &format!("{TOKEN_DIR}/x")]);
    assert!(!ok && out.contains("Read-only file system"), "{out}");

    // The projected volume with the mesh's audience and its own path.
    let (ok, mesh) = exec(&o, "tok", &["cat", "/var/run/mesh/mesh/token"]);
    assert!(ok, "{mesh}");
    assert_eq!(claims(&mesh)["aud"], json!(["mesh.meshwork.io"]));

    // The kubernetes Service's variables.
    let (_, env) = exec(&o, "tok", &["env"]);
    assert!(
        env.lines()
            .any(|l| l == "KUBERNETES_SERVICE_HOST=10.96.0.1"),
        "{env}"
    );
    assert!(
        env.lines().any(|l| l == "KUBERNETES_SERVICE_PORT=443"),
        "{env}"
    );
    assert!(
        env.lines()
            .any(|l| l == "KUBERNETES_PORT=tcp://10.96.0.1:443"),
        "{env}"
    );

    // No automount: no volume, nothing mounted.
    let p = o.json(&["get", "pod", "noauto"]);
    assert!(p["spec"]["volumes"].is_null(), "{}", p["spec"]);
    let (ok, _) = exec(&o, "noauto", &["test", "-e", &format!("{TOKEN_DIR}/token")]);
    assert!(!ok, "a pod that opted out has a token");

    // Refreshed before 80% of the 12 s life: a new token, issued later, in place.
    let fresh = meshwork_lab::wait::eventually_or(
        "the token refreshed",
        Duration::from_secs(30),
        || {
            let (ok, now) = exec(&o, "tok", &["cat", &format!("{TOKEN_DIR}/token")]);
            (ok && now != token).then_some(now)
        },
        || o.dump(),
    );
    let f = claims(&fresh);
    assert!(f["iat"].as_i64() > c["iat"].as_i64(), "{f} after {c}");
    assert!(
        f["iat"].as_i64().unwrap() <= c["iat"].as_i64().unwrap() + 10,
        "refreshed after 80% of the life: {f} after {c}"
    );

    // A node asks for tokens only for its own pods.
    let node = pod["spec"]["nodeName"].as_str().unwrap();
    let other = o.nodes.iter().find(|n| n.name != node).unwrap();
    let other_kc: PathBuf = o.data.join(format!("{}.kubeconfig", other.name));
    let out = kubectl_as(
        &o,
        &other_kc,
        &[
            "create",
            "token",
            "reader",
            "--bound-object-kind=Pod",
            "--bound-object-name=tok",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("node requested token bound to a pod scheduled on a different node"),
        "{err}"
    );
    let out = kubectl_as(&o, &other_kc, &["create", "token", "reader"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("node requested token not bound to a pod"),
        "{err}"
    );
    let own_kc = o.data.join(format!("{node}.kubeconfig"));
    let out = kubectl_as(
        &o,
        &own_kc,
        &[
            "create",
            "token",
            "reader",
            "--bound-object-kind=Pod",
            "--bound-object-name=tok",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn kube_rs_in_a_pod_gets_what_rbac_allows_and_403_for_the_rest() {
    let bin = env!("CARGO_BIN_EXE_mw-incluster");
    let mut o = Orch::start_full("wid_rbac", &orch::IN_CLUSTER_ROUTES, false, &[], |dir| {
        Some(orch::host_catalog(dir, &[("mw-incluster", &[bin])]))
    });
    for i in 0..o.nodes.len() {
        let a = o.start_agent(i);
        o.procs.push(a);
    }
    o.kubectl(&["create", "namespace", "app"]);
    o.kubectl(&["create", "serviceaccount", "reader", "-n", "app"]);
    o.kubectl(&[
        "create",
        "role",
        "pod-reader",
        "--verb=get,list",
        "--resource=pods",
        "-n",
        "app",
    ]);
    o.kubectl(&[
        "create",
        "rolebinding",
        "reader",
        "--role=pod-reader",
        "--serviceaccount=app:reader",
        "-n",
        "app",
    ]);

    // kubectl auth can-i with the account's own token.
    let token = o.kubectl(&["create", "token", "reader", "-n", "app"]);
    let can = |args: &[&str]| {
        let mut a = vec!["--token", token.as_str(), "auth", "can-i"];
        a.extend_from_slice(args);
        let out = o.kubectl_out(&a);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    o.wait("the RoleBinding in effect", || {
        (can(&["list", "pods", "-n", "app"]) == "yes").then_some(())
    });
    assert_eq!(
        can(&["get", "pods", "--subresource=log", "-n", "app"]),
        "no"
    );
    assert_eq!(can(&["list", "secrets", "-n", "app"]), "no");
    assert_eq!(can(&["list", "pods", "-n", "default"]), "no");
    assert_eq!(can(&["delete", "pods", "-n", "app"]), "no");

    // The same identity from inside a pod, found by kube-rs's in-cluster configuration.
    // HOME points nowhere: this host's root has a kubeconfig that infer() would prefer.
    o.apply(&json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "client", "namespace": "app"},
        "spec": {
            "serviceAccountName": "reader",
            "restartPolicy": "Never",
            "containers": [{
                "name": "c", "image": "mw-incluster",
                "args": ["/api/v1/namespaces/{ns}/pods", "/api/v1/namespaces/{ns}/secrets", "/api/v1/namespaces/default/pods"],
                "env": [{"name": "HOME", "value": "/nonexistent"}],
            }],
        },
    }));
    let phase = o.wait_long("the client pod to finish", Duration::from_secs(60), || {
        let p = o.json(&["get", "pod", "client", "-n", "app"]);
        let phase = p["status"]["phase"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        matches!(phase.as_str(), "Succeeded" | "Failed").then_some(phase)
    });
    let logs = o.kubectl(&["logs", "client", "-n", "app"]);
    assert_eq!(phase, "Succeeded", "{logs}\n{}", o.dump());
    let lines: Vec<&str> = logs.lines().collect();
    assert_eq!(
        lines,
        [
            "server https://10.96.0.1/",
            "/api/v1/namespaces/app/pods 200",
            "/api/v1/namespaces/app/secrets 403",
            "/api/v1/namespaces/default/pods 403",
        ],
        "{logs}"
    );
}
