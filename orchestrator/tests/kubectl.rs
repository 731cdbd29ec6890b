//! kubectl 1.33 (the minor the server reports) against the `meshwork-orchestrator` binary:
//! apply, re-apply with a changed port and env (strategic merge), get (table, yaml, -w),
//! describe, scale, label, delete, and kubectl's errors for invalid manifests.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: panics are the report"
)]

mod common;

use std::{process::Stdio, time::Duration};

use common::{kubectl::Kubectl, ServerProc};

const APP: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: httpd
        image: busybox
        command: ["httpd", "-f", "-p", "8080"]
        ports:
        - containerPort: 8080
        env:
        - {name: A, value: "1"}
      - name: sidecar
        image: busybox
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
  - name: http
    port: 80
    targetPort: 8080
"#;

fn scenario(extra: &[&str]) {
    let dir = tempfile::Builder::new()
        .prefix("mwapi-kubectl-")
        .tempdir()
        .unwrap();
    let server = ServerProc::start(&dir.path().join("data"), extra);
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let k = Kubectl {
        kubeconfig: &server.kubeconfig,
        home: &home,
    };

    let v = k.ok(&["version"], "");
    assert!(v.contains("Server Version: v1.33"), "{v}");

    let out = k.ok(&["apply", "-f", "-"], APP);
    assert!(
        out.contains("deployment.apps/web created") && out.contains("service/web created"),
        "{out}"
    );
    let out = k.ok(&["apply", "-f", "-"], APP);
    assert!(
        out.contains("deployment.apps/web unchanged") && out.contains("service/web unchanged"),
        "{out}"
    );
    let rv_before = k.json(&["get", "deploy", "web"])["metadata"]["resourceVersion"].clone();

    // Re-apply with a changed container port and env: kubectl sends a strategic merge patch;
    // a JSON merge patch would have replaced the lists (losing nothing here would be luck).
    let changed = APP
        .replace("containerPort: 8080", "containerPort: 9090")
        .replace("targetPort: 8080", "targetPort: 9090")
        .replace(
            r#"- {name: A, value: "1"}"#,
            "- {name: A, value: \"2\"}\n        - {name: B, value: x}",
        );
    let out = k.ok(&["apply", "-f", "-"], &changed);
    assert!(
        out.contains("deployment.apps/web configured") && out.contains("service/web configured"),
        "{out}"
    );
    let d = k.json(&["get", "deploy", "web"]);
    assert_ne!(d["metadata"]["resourceVersion"], rv_before);
    let containers = d["spec"]["template"]["spec"]["containers"]
        .as_array()
        .unwrap();
    assert_eq!(containers.len(), 2, "sidecar kept");
    assert_eq!(
        containers[0]["ports"],
        serde_json::json!([{"containerPort": 9090, "protocol": "TCP"}])
    );
    assert_eq!(
        containers[0]["env"],
        serde_json::json!([{"name": "A", "value": "2"}, {"name": "B", "value": "x"}])
    );
    assert_eq!(d["metadata"]["generation"], 2);
    let s = k.json(&["get", "svc", "web"]);
    assert_eq!(s["spec"]["ports"][0]["targetPort"], 9090);

    // get: server-side tables with kubectl's usual columns.
    let out = k.ok(&["get", "deploy"], "");
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]);
    assert!(lines.next().unwrap().starts_with("web    0/2"), "{out}");
    let out = k.ok(&["get", "svc", "-o", "wide"], "");
    assert!(
        out.contains("PORT(S)") && out.contains("80/TCP") && out.contains("app=web"),
        "{out}"
    );
    let out = k.ok(&["get", "all"], "");
    assert!(
        out.contains("service/web") && out.contains("deployment.apps/web"),
        "{out}"
    );
    let yaml = k.ok(&["get", "deploy", "web", "-o", "yaml"], "");
    assert!(
        yaml.contains("kind: Deployment")
            && yaml.contains("resourceVersion:")
            && yaml.contains("kubectl.kubernetes.io/last-applied-configuration"),
        "{yaml}"
    );

    // What `get -o yaml` writes for several objects (a v1 List) applies back: kubectl checks a
    // List on the client against /openapi/v2, then leaves its items to the server's Strict
    // field validation, which still refuses an unknown field in an item.
    let list = k.ok(&["get", "deploy/web", "svc/web", "-o", "yaml"], "");
    assert!(list.starts_with("apiVersion: v1\nitems:"), "{list}");
    let out = k.ok(&["apply", "-f", "-"], &list);
    assert!(
        out.contains("deployment.apps/web") && out.contains("service/web"),
        "{out}"
    );
    let err = k.fails(
        &["apply", "-f", "-"],
        &list.replacen("  spec:\n", "  spec:\n    bogus: 1\n", 1),
    );
    assert!(err.contains(r#"unknown field "spec.bogus""#), "{err}");

    // get -w: the initial row, then the change made by `scale`.
    let mut watch = k
        .command(&["get", "deploy", "web", "-w", "--output-watch-events"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let wout = watch.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(wout).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(first.contains("EVENT"), "{first}");
    let added = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(
        added.starts_with("ADDED") && added.contains("0/2"),
        "{added}"
    );
    let out = k.ok(&["scale", "deploy", "web", "--replicas=5"], "");
    assert!(out.contains("deployment.apps/web scaled"), "{out}");
    let modified = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(
        modified.starts_with("MODIFIED") && modified.contains("0/5"),
        "{modified}"
    );
    let _ = watch.kill();
    let _ = watch.wait();

    let out = k.ok(&["label", "deploy", "web", "tier=front"], "");
    assert!(out.contains("deployment.apps/web labeled"), "{out}");
    let out = k.ok(&["get", "deploy", "-l", "tier=front", "-o", "name"], "");
    assert_eq!(out.trim(), "deployment.apps/web");

    let out = k.ok(&["describe", "deploy", "web"], "");
    assert!(
        out.contains("Replicas:") && out.contains("5 desired") && out.contains("tier=front"),
        "{out}"
    );
    let out = k.ok(&["describe", "svc", "web"], "");
    assert!(
        out.contains("TargetPort:") && out.contains("9090/TCP"),
        "{out}"
    );

    // Invalid manifests: kubectl's usual messages, nothing created.
    let bogus = APP
        .split("---")
        .next()
        .unwrap()
        .replace("replicas: 2", "replicas: 2\n  bogus: 1")
        .replace("name: web\n  labels", "name: bad\n  labels");
    let err = k.fails(&["apply", "-f", "-"], &bogus);
    assert!(
        err.contains(r#"strict decoding error: unknown field "spec.bogus""#),
        "{err}"
    );
    let mismatch = APP
        .split("---")
        .next()
        .unwrap()
        .replace("name: web\n  labels", "name: bad\n  labels")
        .replace(
            "labels: {app: web}\n    spec",
            "labels: {app: other}\n    spec",
        );
    let err = k.fails(&["apply", "-f", "-"], &mismatch);
    assert!(
        err.contains(r#"The Deployment "bad" is invalid"#)
            && err.contains("`selector` does not match template `labels`"),
        "{err}"
    );
    let err = k.fails(&["create", "-f", "-"], APP);
    assert!(
        err.contains("AlreadyExists") && err.contains(r#"deployments.apps "web" already exists"#),
        "{err}"
    );
    let err = k.fails(&["apply", "--server-side", "-f", "-"], APP);
    assert!(
        err.contains("unknown format") || err.contains("415"),
        "{err}"
    );
    let err = k.fails(&["get", "deploy", "bad"], "");
    assert!(err.contains(r#"deployments.apps "bad" not found"#), "{err}");

    let out = k.ok(&["delete", "-f", "-"], APP);
    assert!(
        out.contains(r#"deployment.apps "web" deleted"#)
            && out.contains(r#"service "web" deleted"#),
        "{out}"
    );
    // What is left is the API server's own `kubernetes` Service.
    let out = k.ok(&["get", "deploy,svc", "-o", "name"], "");
    assert_eq!(out.trim(), "service/kubernetes");
}

#[test]
fn kubectl_on_sqlite() {
    scenario(&[]);
}

#[test]
fn kubectl_on_etcd() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (_store, etcd) = rt.block_on(meshwork_orchestrator_store::testing::Etcd::start(10_000));
    scenario(&["--store", "etcd", "--etcd-endpoints", etcd.url()]);
    drop(etcd);
}
