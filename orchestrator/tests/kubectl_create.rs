//! kubectl 1.33's `create` generators, which send protobuf bodies and accept protobuf answers,
//! against the `meshwork-orchestrator` binary. Each object is made twice: by the generator
//! (protobuf both ways) and from the generator's own `--dry-run=client -o json` output created
//! as JSON; the two must read back the same.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: panics are the report"
)]

mod common;

use common::{kubectl::Kubectl, ServerProc};
use serde_json::Value;

/// What differs between two creations of the same object, by design.
fn normalized(mut v: Value) -> Value {
    let meta = v["metadata"].as_object_mut().unwrap();
    for k in [
        "uid",
        "resourceVersion",
        "creationTimestamp",
        "namespace",
        "managedFields",
    ] {
        meta.remove(k);
    }
    if let Some(spec) = v.get_mut("spec").and_then(Value::as_object_mut) {
        // Allocated per Service.
        spec.remove("clusterIP");
        spec.remove("clusterIPs");
        for p in spec
            .get_mut("ports")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            p.as_object_mut().unwrap().remove("nodePort");
        }
    }
    // Written by controllers at their own pace.
    v.as_object_mut().unwrap().remove("status");
    let meta = v["metadata"].as_object_mut().unwrap();
    if let Some(a) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
        a.remove("deployment.kubernetes.io/revision");
        if a.is_empty() {
            meta.remove("annotations");
        }
    }
    without_nulls(v)
}

/// kubectl prints a typed object's zero `creationTimestamp` as null; stored JSON omits it.
fn without_nulls(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, without_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(without_nulls).collect()),
        v => v,
    }
}

#[test]
fn create_generators_speak_protobuf() {
    let dir = tempfile::Builder::new()
        .prefix("mwapi-kubectl-create-")
        .tempdir()
        .unwrap();
    let server = ServerProc::start(&dir.path().join("data"), &[]);
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let k = Kubectl {
        kubeconfig: &server.kubeconfig,
        home: &home,
    };

    // kubectl really speaks protobuf to this server, both ways (-v=8 prints the headers).
    let (ok, out, err) = k.run_in(&["create", "namespace", "pb", "-v=8"], "");
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("namespace/pb created"), "{out}");
    assert_eq!(
        err.matches("Content-Type: application/vnd.kubernetes.protobuf")
            .count(),
        2,
        "request and response are protobuf:\n{err}"
    );
    let js = k.ok(
        &[
            "create",
            "namespace",
            "js",
            "--dry-run=client",
            "-o",
            "json",
        ],
        "",
    );
    k.ok(&["create", "-f", "-"], &js);
    let ns = |n: &str| {
        let mut v = normalized(k.json(&["get", "namespace", n]));
        v["metadata"].as_object_mut().unwrap().remove("name");
        v["metadata"]["labels"]
            .as_object_mut()
            .unwrap()
            .remove("kubernetes.io/metadata.name");
        v
    };
    assert_eq!(ns("pb"), ns("js"));

    let generators: &[(&str, &[&str])] = &[
        (
            "configmap/cm",
            &[
                "configmap",
                "cm",
                "--from-literal=a=1",
                "--from-literal=b=two",
            ],
        ),
        (
            "secret/s",
            &["secret", "generic", "s", "--from-literal=pw=hunter2"],
        ),
        ("serviceaccount/sa", &["serviceaccount", "sa"]),
        (
            "service/svc",
            &["service", "clusterip", "svc", "--tcp=80:8080"],
        ),
        (
            "service/np",
            &["service", "nodeport", "np", "--tcp=81:8081"],
        ),
        // replicas=0 is a set pointer: protobuf must not turn it into "unset" (default 1).
        (
            "deployment.apps/web",
            &[
                "deployment",
                "web",
                "--image=busybox",
                "--replicas=0",
                "--port=8080",
            ],
        ),
        (
            "deployment.apps/three",
            &["deployment", "three", "--image=busybox", "--replicas=3"],
        ),
    ];
    for (name, args) in generators {
        let mut pb: Vec<&str> = vec!["create"];
        pb.extend_from_slice(args);
        pb.extend(["-n", "pb", "-o", "json"]);
        // The object printed comes from the server's protobuf answer.
        let answered: Value = serde_json::from_str(&k.ok(&pb, "")).unwrap();
        let mut dry: Vec<&str> = vec!["create"];
        dry.extend_from_slice(args);
        dry.extend(["-n", "js", "--dry-run=client", "-o", "json"]);
        let json = k.ok(&dry, "");
        k.ok(&["create", "-f", "-"], &json);

        let read_pb = k.json(&["get", name, "-n", "pb"]);
        let read_js = k.json(&["get", name, "-n", "js"]);
        assert_eq!(
            normalized(read_pb.clone()),
            normalized(read_js),
            "{name}: protobuf and JSON creations differ"
        );
        assert_eq!(
            normalized(answered),
            normalized(read_pb),
            "{name}: the protobuf answer differs from the stored object"
        );
    }
    let d = k.json(&["get", "deploy", "web", "-n", "pb"]);
    assert_eq!(d["spec"]["replicas"], 0);
    let s = k.json(&["get", "secret", "s", "-n", "pb"]);
    assert_eq!(s["data"]["pw"], "aHVudGVyMg==");

    let out = k.ok(
        &[
            "expose",
            "deployment",
            "three",
            "-n",
            "pb",
            "--port=80",
            "--target-port=8080",
        ],
        "",
    );
    assert!(out.contains("service/three exposed"), "{out}");
    let svc = k.json(&["get", "svc", "three", "-n", "pb"]);
    assert_eq!(svc["spec"]["selector"]["app"], "three");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 8080);

    // A server error reaches kubectl as a protobuf Status with kube-apiserver's wording.
    let err = k.fails(&["create", "configmap", "cm", "-n", "pb"], "");
    assert!(err.contains(r#"configmaps "cm" already exists"#), "{err}");
}
