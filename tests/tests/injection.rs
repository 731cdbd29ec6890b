//! Injection the way a cluster does it, on the mesh lab (API server, controllers, node
//! runtimes, control agents, identity service): `meshwork-injector` serves HTTPS with a
//! certificate from a test CA, a MutatingWebhookConfiguration registers it with that CA as
//! its caBundle, and the `default` namespace is annotated `meshwork.io/inject: enabled`.
//!
//! - kubectl-applied Deployments get the proxy as a native sidecar, and their pods turn Ready
//!   with it certified;
//! - the client app's very first request, made the moment its container starts to the
//!   Service's name, is intercepted in the kernel (eBPF, no iptables or nftables rule in any
//!   pod, asserted) and passes through its proxy with mTLS (the server sees the client's
//!   SPIFFE ID; a capture at the web pod shows the client reaching only its proxy's port and
//!   nothing in the clear), by name, ClusterIP and pod IP: the proxy was ready before the app
//!   started; a WebSocket (tungstenite client and server) to the Service passes both proxies
//!   the same way, the server seeing the client's identity; an excluded port
//!   (`config.meshwork.io/skip-outbound-ports`), an excluded subnet
//!   (`config.meshwork.io/skip-subnets`) and DNS over TCP go around it; a client outside the
//!   mesh connecting straight to a meshed pod's app port is steered to that pod's proxy
//!   (sk_lookup), which strips the identity header it forges;
//! - `mesh-ctl top` shows the web Service's request rate, success rate and latency, and
//!   `mesh-ctl tap deploy/web` its requests live, with the client's identity;
//! - a meshed Job completes: its proxy stops when the app exits;
//! - a pod annotated `disabled` is left alone;
//! - a webhook that is down fails pod creation under failurePolicy Fail with a message
//!   naming it, and is passed over under Ignore; a webhook answering garbage gets a clear
//!   error; a validating webhook sees the pod as the injector left it, and its denial is the
//!   request's error;
//! - a rolling update of the meshed web Deployment under the client's intercepted load: no
//!   request fails, and the new pod answers.
#![cfg(target_os = "linux")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic with its location is the failure report"
)]

#[path = "support/mesh.rs"]
mod mesh_lab;
#[path = "support/orch.rs"]
mod orch;

use std::{net::SocketAddr, process::Stdio, time::Duration};

use base64::Engine;
use mesh_lab::Mesh;
use meshwork_lab::{cgroup::lab_binary, proc::Proc};
use serde_json::{json, Value};

/// `cmd` run in the client pod's app container (kubectl exec).
fn in_client_out(o: &orch::Orch, cmd: &[&str]) -> std::process::Output {
    o.kubectl_out(&[&["exec", "deploy/client", "-c", "c", "--"][..], cmd].concat())
}

/// Its output, asserting it succeeded.
fn in_client(o: &orch::Orch, cmd: &[&str]) -> String {
    o.kubectl(&[&["exec", "deploy/client", "-c", "c", "--"][..], cmd].concat())
}

fn webhook_config(name: &str, url: &str, ca: &str, policy: &str, selector: Value) -> Value {
    json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
    "metadata": {"name": name},
    "webhooks": [{
        "name": format!("{name}.meshwork.io"),
        "clientConfig": {"url": url,
                         "caBundle": base64::engine::general_purpose::STANDARD.encode(ca)},
        "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                   "resources": ["pods"]}],
        "failurePolicy": policy,
        "objectSelector": selector,
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
        "timeoutSeconds": 5,
    }]})
}

#[test]
fn annotated_namespace_gets_ready_sidecars_and_webhook_failures_are_clear() {
    let m = Mesh::start("meshinj", "1h");
    let o = &m.o;
    let ip = o.nodes[0].underlay_ip;
    let meshwork_inject::pki::ServingPki { ca, cert, key } =
        meshwork_inject::pki::serving_pki(&[], &[ip.into()], Duration::from_secs(3600)).unwrap();
    let dir = o.lab.dir().to_path_buf();
    std::fs::write(dir.join("webhook.crt"), &cert).unwrap();
    std::fs::write(dir.join("webhook.key"), &key).unwrap();
    let listen = format!("{ip}:9443");
    let log = dir.join("injector.log");
    let child = o
        .lab
        .command_in_node(
            &o.nodes[0],
            &o.nodes[0].netns,
            lab_binary("meshwork-injector").to_str().unwrap(),
            &[
                "--listen",
                &listen,
                "--tls-cert",
                dir.join("webhook.crt").to_str().unwrap(),
                "--tls-key",
                dir.join("webhook.key").to_str().unwrap(),
                "--kubeconfig",
                o.kubeconfig.to_str().unwrap(),
                "--identity-addr",
                &m.identity_addr,
            ],
        )
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let _injector = Proc::with_log(child, log);
    let addr: SocketAddr = listen.parse().unwrap();
    o.wait("the injector listening", || {
        o.lab.tcp_connect(&o.nodes[0].netns, addr).ok().map(|_| ())
    });

    let url = format!("https://{listen}/inject");
    o.apply(&webhook_config("inject", &url, &ca, "Fail", json!({})));
    o.kubectl(&[
        "annotate",
        "namespace",
        "default",
        "meshwork.io/inject=enabled",
    ]);

    // Two plain Deployments: nothing in them knows about the mesh but annotations (web's
    // routes for its proxy's metrics, below). The client's first request goes out, to the
    // Service's name, the moment its container starts; the kernel sends it through the
    // client's proxy.
    o.apply(&json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": "web", "namespace": "default"},
         "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                  "template": {"metadata": {"labels": {"app": "web"},
                                            "annotations": {"config.meshwork.io/routes": "GET /; /healthz"}},
                               "spec": {"serviceAccountName": "web", "terminationGracePeriodSeconds": 2,
                                        "containers": [{"name": "http", "image": "meshapp", "args": ["http", "0.0.0.0:8080"],
                                            "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                                            "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1}},
                                            {"name": "ws", "image": "meshapp", "args": ["ws", "0.0.0.0:8081"],
                                            "readinessProbe": {"tcpSocket": {"port": 8081}, "periodSeconds": 1}},
                                            // A server for the pod's own containers only.
                                            {"name": "local", "image": "meshapp", "args": ["http", "127.0.0.1:9000"]}]}}}},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": "web", "namespace": "default"},
         "spec": {"selector": {"app": "web"}, "ports": [
             {"name": "http", "port": 80, "targetPort": 8080},
             {"name": "bypass", "port": 81, "targetPort": 8080},
             {"name": "ws", "port": 82, "targetPort": 8081}]}},
        {"apiVersion": "v1", "kind": "Service",
         "metadata": {"name": "web-direct", "namespace": "default"},
         "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]}},
    ]}));
    // The client excludes web-direct's ClusterIP by subnet.
    let direct = o.kubectl(&[
        "get",
        "svc",
        "web-direct",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    o.wait_long("the web pod ready", Duration::from_secs(90), || {
        let p = o.pods("default", "app=web");
        (p.len() == 1 && p[0].ready).then_some(())
    });
    o.apply(&json!({"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": "client", "namespace": "default"},
         "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "client"}},
                  "template": {"metadata": {"labels": {"app": "client"},
                                            "annotations": {"config.meshwork.io/skip-outbound-ports": "81",
                                                            "config.meshwork.io/skip-subnets": format!("{direct}/32")}},
                               "spec": {"serviceAccountName": "client", "terminationGracePeriodSeconds": 1,
                                        "nodeName": o.nodes[1].name,
                                        "containers": [{"name": "c", "image": "tools", "command": ["sh", "-c",
                                            "if curl -sf --resolve web.default.svc.cluster.local:80:$WEB_SERVICE_HOST http://web.default.svc.cluster.local/; then echo FIRST-OK; else echo FIRST-FAILED; fi; exec sleep 100000"]}]}}}}));
    o.wait_long("the client pod ready", Duration::from_secs(90), || {
        let p = o.pods("default", "app=client");
        (p.len() == 1 && p[0].ready).then_some(())
    });

    // Both got the proxy as their first init container, a native sidecar.
    for app in ["web", "client"] {
        let pods = o.json(&["get", "pods", "-l", &format!("app={app}")]);
        let pod = &pods["items"][0];
        let init = &pod["spec"]["initContainers"][0];
        assert_eq!(init["name"], "meshwork-proxy", "{pod}");
        assert_eq!(init["restartPolicy"], "Always", "{pod}");
        assert_eq!(
            pod["metadata"]["annotations"]["meshwork.io/proxy-inbound-port"],
            "4143"
        );
        let st = &pod["status"]["initContainerStatuses"][0];
        assert!(st["ready"] == true && st["started"] == true, "{pod}");
        // The table counts the sidecar: 2/2 (4/4 with the web pod's WebSocket and loopback
        // servers).
        let name = pod["metadata"]["name"].as_str().unwrap();
        let row = o.kubectl(&["get", "pod", name, "--no-headers"]);
        let want = if app == "web" { "4/4" } else { "2/2" };
        assert!(row.contains(want), "{row}");
    }
    let logs = o.kubectl(&["logs", "deploy/client", "-c", "c"]);
    assert!(
        logs.contains("FIRST-OK")
            && logs.contains("client=spiffe://cluster.local/ns/default/sa/client"),
        "the client's first request: {logs}"
    );
    // Later requests too, by name, by ClusterIP and by pod IP; the excluded port goes around
    // the proxy (the server sees no client identity).
    let cip = o.kubectl(&["get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}"]);
    let by_name = format!("web.default.svc.cluster.local:80:{cip}");
    let by_ip = format!("http://{cip}/");
    // And straight to the web pod's address (what a headless Service or a StatefulSet
    // gives): discovery knows the pod, so that is mTLS too.
    let web_pod = o.pods("default", "app=web")[0].clone();
    let pod_ip = format!("http://{}:8080/", web_pod.ip);
    let client_ip = o.pods("default", "app=client")[0].ip.clone();
    // On the wire at the web pod, meanwhile: the client reaches only the web proxy's port,
    // and not one byte of the requests or answers is in the clear.
    let web_ns = o.pod_netns(o.node_index(&web_pod.node), &web_pod.uid);
    let cap = o.lab.capture(&web_ns, "eth0");
    for args in [
        vec![
            "--resolve",
            by_name.as_str(),
            "http://web.default.svc.cluster.local/",
        ],
        vec![by_ip.as_str()],
        vec![pod_ip.as_str()],
    ] {
        let url = args.join(" ");
        let out = in_client(o, &[&["curl", "-sf"][..], &args].concat());
        assert!(
            out.contains("client=spiffe://cluster.local/ns/default/sa/client"),
            "{url}: {out}"
        );
    }
    // A WebSocket (tungstenite at both ends) to the Service: the upgrade passes both proxies,
    // the server sees the client's identity, and messages go both ways, encrypted between
    // the pods like everything else.
    let meshapp = lab_binary("mw-meshapp");
    let ws_url = format!("ws://{cip}:82/chat");
    let out = in_client(
        o,
        &[
            meshapp.to_str().unwrap(),
            "ws-client",
            &ws_url,
            "hello",
            "mesh",
        ],
    );
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "client=spiffe://cluster.local/ns/default/sa/client hello",
            "client=spiffe://cluster.local/ns/default/sa/client mesh"
        ],
        "{ws_url}: {out}"
    );
    let segments = cap.stop();
    let from_client: Vec<_> = segments
        .iter()
        .filter(|s| s.src.ip().to_string() == client_ip)
        .collect();
    assert!(!from_client.is_empty(), "nothing from the client captured");
    for seg in &from_client {
        assert_eq!(
            seg.dst.port(),
            4143,
            "the client to {} on the wire",
            seg.dst
        );
    }
    mesh_lab::assert_nothing_in_clear(&segments);
    // An IPv6 socket to the IPv4-mapped ClusterIP is intercepted just the same; a native IPv6
    // destination is refused at connect() (not let past the proxy).
    let mapped = format!("http://[::ffff:{cip}]/");
    let out = in_client(o, &["curl", "-sf", &mapped]);
    assert!(
        out.contains("client=spiffe://cluster.local/ns/default/sa/client"),
        "{mapped}: {out}"
    );
    let v6 = in_client_out(o, &["sh",
        "-c",
        "python3 -c 'import socket; socket.create_connection((\"fd00:99::1\", 80), timeout=5)' 2>&1; echo exit=$?"]);
    let v6 = String::from_utf8_lossy(&v6.stdout);
    // Refused by the hook (there is no route either: that would say "unreachable").
    assert!(v6.contains("ConnectionRefusedError"), "native IPv6: {v6}");
    // A port the app binds on 127.0.0.1 only stays inside its pod, as without the mesh: the
    // web proxy reaches the app on the pod's address, where nothing listens on 9000 (it
    // once relayed to 127.0.0.1, which lent such ports out to any client).
    let local = format!("http://{}:9000/", web_pod.ip);
    let out = in_client_out(o, &["curl", "-s", "--max-time", "5", &local]);
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        !body.contains("client="),
        "{local} reached the loopback-only server: {body}"
    );
    let bypass = format!("http://{cip}:81/");
    let out = in_client(o, &["curl", "-sf", &bypass]);
    assert!(
        out.contains("pod=web-") && out.contains("client= "),
        "port 81: {out}"
    );
    // So does the excluded subnet (web-direct's ClusterIP), and DNS over TCP (port 53): the
    // client's proxy accepts no connection for either, while one to web's ClusterIP is its.
    let outbound_opens = || {
        let m = in_client(o, &["curl", "-sf", "http://127.0.0.1:4191/metrics"]);
        m.lines()
            .filter(|l| {
                l.starts_with("meshwork_proxy_tcp_open_total")
                    && l.contains(r#"direction="outbound""#)
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum::<u64>()
    };
    let before = outbound_opens();
    let skipped = format!("http://{direct}/");
    let out = in_client(o, &["curl", "-sf", &skipped]);
    assert!(
        out.contains("pod=web-") && out.contains("client= "),
        "skip-subnets {direct}/32: {out}"
    );
    let web_ip = o.pods("default", "app=web")[0].ip.clone();
    let dns_tcp = format!(
        "python3 -c 'import socket; socket.create_connection((\"{web_ip}\", 53), timeout=5)' 2>&1; echo done"
    );
    in_client(o, &["sh", "-c", &dns_tcp]);
    assert_eq!(
        outbound_opens(),
        before,
        "the excluded subnet and port 53 went around the proxy"
    );
    in_client(o, &["curl", "-sf", &by_ip]);
    assert_eq!(
        outbound_opens(),
        before + 1,
        "a ClusterIP request is the proxy's"
    );
    // Seeing it: `mesh-ctl top` and `mesh-ctl tap` (run from node 1, as a user on a node or
    // on the host of `mesh-ctl up` would) while the client sends requests.
    let traffic = {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (kc, ns, resolve) = (
            o.kubeconfig.clone(),
            o.nodes[0].netns.clone(),
            by_name.clone(),
        );
        let flag = stop.clone();
        let t = std::thread::spawn(move || {
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = std::process::Command::new("ip")
                    .args(["netns", "exec", &ns, meshwork_lab::kubectl::KUBECTL, "--kubeconfig"])
                    .arg(&kc)
                    .args(["exec", "deploy/client", "-c", "c", "--", "sh", "-c"])
                    .arg(format!(
                        "for i in 1 2 3 4 5 6 7 8 9 10; do curl -s --resolve {resolve} http://web.default.svc.cluster.local/ >/dev/null; done"
                    ))
                    .output();
            }
        });
        (stop, t)
    };
    let mesh_ctl = |args: &[&str]| {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &o.nodes[0].netns])
            .arg(lab_binary("mesh-ctl"))
            .args(args)
            .arg("--kubeconfig")
            .arg(&o.kubeconfig)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mesh-ctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let top = mesh_ctl(&[
        "top",
        "-n",
        "default",
        "--interval",
        "3s",
        "--iterations",
        "1",
    ]);
    let row = top
        .lines()
        .find(|l| l.starts_with("default/web "))
        .unwrap_or_else(|| panic!("no row for default/web: {top}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    let rps: f64 = cols[2].parse().unwrap();
    assert!(
        rps > 0.0 && cols[3] == "100.00%" && cols[4].ends_with("ms"),
        "{top}"
    );
    eprintln!("{top}");
    // By route: the injector gave web's proxy its pod's routes annotation.
    let routes = mesh_ctl(&["routes", "deploy/web", "-n", "default", "--interval", "3s"]);
    eprintln!("{routes}");
    let row = routes
        .lines()
        .find(|l| l.starts_with("GET / "))
        .unwrap_or_else(|| panic!("no row for the route GET /: {routes}"));
    let cols: Vec<&str> = row.split_whitespace().collect();
    let rps: f64 = cols[2].parse().unwrap();
    assert!(rps > 0.0 && cols[3] == "100.00%", "{routes}");
    // Latency percentiles from the proxy's histogram by route, p50 ≤ p95 ≤ p99.
    let ms: Vec<f64> = cols[4..7]
        .iter()
        .map(|c| {
            c.strip_suffix("ms")
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("latency {c:?}: {routes}"))
        })
        .collect();
    assert!(ms[0] <= ms[1] && ms[1] <= ms[2], "{routes}");
    let tap = mesh_ctl(&["tap", "deploy/web", "-n", "default", "--max-requests", "3"]);
    eprintln!("{tap}");
    let lines: Vec<&str> = tap.lines().collect();
    assert_eq!(lines.len(), 3, "{tap}");
    assert!(
        lines.iter().all(|l| l.starts_with("req-in ")
            && l.contains(":path=/ ")
            && l.contains("status=200")
            && l.contains("peer=spiffe://cluster.local/ns/default/sa/client")),
        "{tap}"
    );
    traffic.0.store(true, std::sync::atomic::Ordering::Relaxed);
    traffic.1.join().unwrap();

    // And not one iptables or nftables rule in any pod's network namespace.
    let pods = o.json(&["get", "pods", "-l", "app in (web,client)"]);
    for p in pods["items"].as_array().unwrap() {
        let uid = p["metadata"]["uid"].as_str().unwrap();
        let node = o.node_index(p["spec"]["nodeName"].as_str().unwrap());
        let ns = o.pod_netns(node, uid);
        let nft = o.lab.exec(&ns, &["nft", "list", "ruleset"]);
        assert!(nft.trim().is_empty(), "nft rules in {ns}: {nft}");
        let ipt = o.lab.exec(&ns, &["iptables-save"]);
        assert!(
            !ipt.lines().any(|l| l.starts_with("-A")),
            "iptables rules in {ns}: {ipt}"
        );
    }

    // A meshed Job: its one request goes through its proxy, and it completes, because the
    // proxy (a native sidecar) is stopped once the app has exited.
    o.kubectl(&[
        "create",
        "job",
        "meshed-job",
        "--image=tools",
        "--",
        "sh",
        "-c",
        "curl -sf http://$WEB_SERVICE_HOST/",
    ]);
    o.kubectl(&[
        "wait",
        "--for=condition=complete",
        "job/meshed-job",
        "--timeout=90s",
    ]);
    let pods = o.json(&[
        "get",
        "pods",
        "-l",
        "batch.kubernetes.io/job-name=meshed-job",
    ]);
    let pod = &pods["items"][0];
    assert_eq!(pod["status"]["phase"], "Succeeded", "{pod}");
    assert_eq!(pod["spec"]["initContainers"][0]["name"], "meshwork-proxy");
    assert!(
        pod["status"]["initContainerStatuses"][0]["state"]["terminated"].is_object(),
        "{pod}"
    );
    let logs = o.kubectl(&["logs", "job/meshed-job"]);
    assert!(
        logs.contains("client=spiffe://cluster.local/ns/default/sa/default"),
        "{logs}"
    );

    // Opted out: left alone.
    o.kubectl(&[
        "run",
        "plain",
        "--image=tools",
        "--restart=Never",
        "--annotations=meshwork.io/inject=disabled",
        "--",
        "sleep",
        "1000",
    ]);
    let plain = o.json(&["get", "pod", "plain"]);
    assert!(plain["spec"]["initContainers"].is_null(), "{plain}");
    // Inbound: a client outside the mesh that connects straight to the web pod's app port
    // is steered to the web pod's proxy (permissive policy): the identity header it forges
    // is stripped before the app sees the request.
    o.wait("the plain pod running", || {
        let p = o.pods("default", "run=plain");
        (p.len() == 1 && p[0].running).then_some(())
    });
    let web_ip = o.pods("default", "app=web")[0].ip.clone();
    let out = o.kubectl(&[
        "exec",
        "plain",
        "--",
        "curl",
        "-sf",
        "-H",
        "meshwork-client-id: spiffe://cluster.local/ns/default/sa/forged",
        &format!("http://{web_ip}:8080/"),
    ]);
    assert!(
        out.contains("pod=web-") && out.contains("client= "),
        "straight to the web pod: {out}"
    );

    // `meshwork.io/inbound-policy: strict` on a pod reaches its proxy: the same plaintext
    // client is refused, while a meshed client still gets in; kubelet's probe (from outside
    // the mesh too) still passes, so the pod becomes Ready.
    o.apply(&json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "guarded", "namespace": "default", "labels": {"app": "guarded"},
                     "annotations": {"meshwork.io/inbound-policy": "strict"}},
        "spec": {"terminationGracePeriodSeconds": 1, "restartPolicy": "Never",
                 "containers": [{"name": "http", "image": "meshapp", "args": ["http", "0.0.0.0:8080"],
                                 "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080},
                                                    "periodSeconds": 1}}]}}));
    let guarded = o.json(&["get", "pod", "guarded"]);
    let env = guarded["spec"]["initContainers"][0]["env"].to_string();
    assert!(
        env.contains(r#"{"name":"MESHWORK_PROXY_INBOUND_POLICY","value":"strict"}"#)
            && env.contains(
                r#"{"name":"MESHWORK_PROXY_INBOUND_PROBE_PATHS","value":"8080:/healthz"}"#
            ),
        "{env}"
    );
    let guarded_ip = o.wait_long("the guarded pod ready", Duration::from_secs(90), || {
        let p = o.pods("default", "app=guarded");
        (p.len() == 1 && p[0].ready).then(|| p[0].ip.clone())
    });
    let code = |path: &str| {
        let url = format!("http://{guarded_ip}:8080{path}");
        let out = o.kubectl_out(&[
            "exec",
            "plain",
            "--",
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-m",
            "10",
            &url,
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(code("/"), "403", "strict: plaintext refused");
    assert_eq!(code("/healthz"), "200", "strict: the probe's path passes");
    let out = in_client(
        o,
        &[
            "curl",
            "-sf",
            "-m",
            "10",
            &format!("http://{guarded_ip}:8080/"),
        ],
    );
    assert!(
        out.contains("client=spiffe://cluster.local/ns/default/sa/client"),
        "strict: a meshed client: {out}"
    );
    // A value the proxy would not start with: the pod is refused, saying why.
    let bad = o.kubectl_out(&[
        "run",
        "badpolicy",
        "--image=tools",
        "--restart=Never",
        "--annotations=meshwork.io/inbound-policy=strictt",
        "--",
        "sleep",
        "1",
    ]);
    let why = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success()
            && why.contains("meshwork.io/inbound-policy")
            && why.contains("strictt"),
        "{why}"
    );

    // A pod of the (meshed) default namespace with `label`.
    let run_labeled = |name: &str, label: &str| {
        o.kubectl_out(&[
            "run",
            name,
            "--image=tools",
            "--restart=Never",
            &format!("--labels={label}"),
            "--",
            "sleep",
            "1000",
        ])
    };
    // A webhook that is down: Fail refuses with its name; Ignore lets the pod through.
    let down = |policy: &str| {
        webhook_config(
            "down",
            &format!("https://{ip}:9444/inject"),
            &ca,
            policy,
            json!({"matchLabels": {"webhook-test": "down"}}),
        )
    };
    o.apply(&down("Fail"));
    let run = |name: &str, label: &str| {
        o.kubectl_out(&[
            "run",
            name,
            "--image=tools",
            "--restart=Never",
            &format!("--labels=webhook-test={label}"),
            "--annotations=meshwork.io/inject=disabled",
            "--",
            "sleep",
            "1000",
        ])
    };
    let out = run("down1", "down");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("failed calling webhook \"down.meshwork.io\"")
            && err.contains("9444"),
        "{err}"
    );
    assert!(!o.kubectl_out(&["get", "pod", "down1"]).status.success());
    o.apply(&down("Ignore"));
    let out = run("down2", "down");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A webhook answering garbage (the injector's probe path: 200 and "ok").
    o.apply(&webhook_config(
        "garbage",
        &format!("https://{listen}/ready"),
        &ca,
        "Fail",
        json!({"matchLabels": {"webhook-test": "garbage"}}),
    ));
    let out = run("garbage1", "garbage");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("failed calling webhook \"garbage.meshwork.io\"")
            && err.contains("received invalid webhook response"),
        "{err}"
    );
    // A configuration that could never be called is refused when written.
    let path = o.lab.dir().join("plain-http-webhook.json");
    let cfg = webhook_config(
        "plain",
        &format!("http://{listen}/"),
        &ca,
        "Fail",
        json!({}),
    );
    std::fs::write(&path, cfg.to_string()).unwrap();
    let out = o.kubectl_out(&["apply", "-f", path.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("'https' is the only allowed URL scheme"),
        "{err}"
    );

    // A validating webhook (a user's policy server: Python's http.server behind TLS from
    // the same test CA) sees the pod as the mutating webhooks left it, and its denial is the
    // request's error, with its code and message.
    let vlisten = format!("{ip}:9445");
    let vlog = dir.join("validator.log");
    let child = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &o.nodes[0].netns,
            "python3",
            "-c",
            VALIDATOR,
        ])
        .arg(ip.to_string())
        .arg("9445")
        .arg(dir.join("webhook.crt"))
        .arg(dir.join("webhook.key"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&vlog).unwrap())
        .spawn()
        .unwrap();
    let _validator = Proc::with_log(child, vlog);
    let vaddr: SocketAddr = vlisten.parse().unwrap();
    o.wait("the validating webhook listening", || {
        o.lab.tcp_connect(&o.nodes[0].netns, vaddr).ok().map(|_| ())
    });
    let mut validating = webhook_config(
        "policy",
        &format!("https://{vlisten}/validate"),
        &ca,
        "Fail",
        json!({"matchExpressions": [{"key": "policy-test", "operator": "Exists"}]}),
    );
    validating["kind"] = json!("ValidatingWebhookConfiguration");
    o.apply(&validating);
    let out = run_labeled("denied", "policy-test=deny");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains(r#"admission webhook "policy.meshwork.io" denied the request"#)
            && err.contains("policy-test=deny is refused here (saw the proxy: True)"),
        "{err}"
    );
    assert!(!o.kubectl_out(&["get", "pod", "denied"]).status.success());
    let out = run_labeled("allowed", "policy-test=allow");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A rolling update of the meshed web Deployment under constant load from the client,
    // intercepted (to the ClusterIP; nothing in the client names a proxy): not one request
    // fails, and the new pod answers. The load runs in the client pod and says which pods
    // answered as it sees them; stdin tells it to stop.
    let old_web = o.pods("default", "app=web")[0].name.clone();
    let mut load = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &o.nodes[0].netns,
            meshwork_lab::kubectl::KUBECTL,
        ])
        .arg("--kubeconfig")
        .arg(&o.kubeconfig)
        .args([
            "exec",
            "-i",
            "deploy/client",
            "-c",
            "c",
            "--",
            "python3",
            "-c",
            LOAD,
            &by_ip,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let out = load.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    let first = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(first, format!("pod={old_web}"), "the load's first answer");
    o.kubectl(&["rollout", "restart", "deployment/web"]);
    o.kubectl(&["rollout", "status", "deployment/web", "--timeout=120s"]);
    let new = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert!(
        new.starts_with("pod=web-") && new != first,
        "a new pod answers: {new}"
    );
    // The load goes on until the old pod (app, then proxy) is gone.
    o.wait("the old web pod gone", || {
        (!o.kubectl_out(&["get", "pod", &old_web]).status.success()).then_some(())
    });
    {
        use std::io::Write;
        let mut stdin = load.stdin.take().unwrap();
        stdin.write_all(b"stop\n").unwrap();
    }
    let summary = loop {
        let l = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        if l.starts_with("ok ") {
            break l;
        }
    };
    let _ = load.wait();
    let n: Vec<u64> = summary
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(
        n.len() >= 2 && n[0] >= 20 && n[1] == 0,
        "requests through the rolling update (ok N fail M): {summary}"
    );
    eprintln!("rolling update under load: {summary}");
}

/// The client's load for the rolling update: GET argv[1] until stdin has something; prints
/// each pod as it first answers, then `ok N fail M` and the first failures.
const LOAD: &str = r#"
import select, sys, time, urllib.request
ok, fail, seen = 0, [], set()
while not select.select([sys.stdin], [], [], 0)[0]:
    try:
        body = urllib.request.urlopen(sys.argv[1], timeout=5).read().decode()
        ok += 1
        for w in body.split():
            if w.startswith("pod=") and w not in seen:
                seen.add(w)
                print(w, flush=True)
    except Exception as e:
        fail.append(repr(e))
    time.sleep(0.02)
print("ok", ok, "fail", len(fail), fail[:3], flush=True)
"#;

/// A validating webhook: refuses pods labelled `policy-test=deny`, saying whether the pod it
/// was shown carries the injected proxy (mutating webhooks run first). argv: address, port,
/// certificate chain, key.
const VALIDATOR: &str = r#"
import http.server, json, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        req = review["request"]
        pod = req["object"]
        proxy = any(c["name"] == "meshwork-proxy" for c in pod["spec"].get("initContainers", []))
        deny = pod["metadata"].get("labels", {}).get("policy-test") == "deny"
        resp = {"uid": req["uid"], "allowed": not deny}
        if deny:
            resp["status"] = {"code": 403, "message": "policy-test=deny is refused here (saw the proxy: %s)" % proxy}
        body = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": resp}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
srv = http.server.HTTPServer((sys.argv[1], int(sys.argv[2])), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[3], sys.argv[4])
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
srv.serve_forever()
"#;
