//! The plugin as containerd runs it: exec'd by a libcni-style invoker inside a lab node, wiring
//! real network namespaces. Every assertion reads the kernel back.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic with its location is the failure report"
)]
#![cfg(target_os = "linux")]

use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr},
    process::{Command, Stdio},
};

use meshwork_cni_spec::{
    code, invoke::RuntimeConf, Attachment, CniResult, InvokeError, NetConfList,
};
use meshwork_lab::{conflist, Lab, Node, PodNs};
use serde_json::{json, Value};

fn list(v: Value) -> NetConfList {
    serde_json::from_value(v).unwrap()
}

fn rt(id: &str, pod: &PodNs) -> RuntimeConf {
    RuntimeConf {
        container_id: id.into(),
        netns: pod.path_str(),
        ifname: "eth0".into(),
        args: vec![
            ("K8S_POD_NAMESPACE".into(), "default".into()),
            ("K8S_POD_NAME".into(), pod.name.clone()),
        ],
        ..Default::default()
    }
}

fn code_of(e: InvokeError) -> u32 {
    e.cni_error()
        .unwrap_or_else(|| panic!("expected a CNI error object, got {e}"))
        .code
}

fn pod_ip(r: &CniResult) -> IpAddr {
    r.ips[0].address.addr()
}

fn leases(lab: &Lab, net: &str) -> Vec<String> {
    let dir = lab.dir().join("cni-state").join(net).join("leases");
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn host_veths(lab: &Lab, node: &Node) -> Vec<String> {
    lab.links(&node.netns)
        .into_iter()
        .filter(|l| l.starts_with("mw") && l != "mw0")
        .collect()
}

#[test]
fn add_wires_the_pod_and_the_result_matches_the_kernel() {
    let lab = Lab::new("cni_add_wires");
    let node = lab.node("n1");
    let inv = lab.invoker(&node);
    let l = list(conflist(&lab, "pods", "10.244.1.0/24", &["10.244.0.0/16"]));
    let (a, b) = (lab.pod_netns(&node, "a"), lab.pod_netns(&node, "b"));

    let ra = inv.add(&l, &rt("ctr-a", &a)).unwrap();
    let rb = inv.add(&l, &rt("ctr-b", &b)).unwrap();

    // Result shape: bridge, host veth, pod interface (with sandbox); ips point at index 2.
    assert_eq!(ra.cni_version, "1.1.0");
    assert_eq!(ra.interfaces.len(), 3);
    assert_eq!(ra.interfaces[0].name, "mw0");
    let host_if = &ra.interfaces[1].name;
    assert!(
        host_if.starts_with("mw") && host_if.len() == 14,
        "{host_if}"
    );
    assert_eq!(ra.interfaces[2].sandbox, a.path_str());
    assert_eq!(ra.ips[0].interface, Some(2));
    assert_eq!(ra.ips[0].address.to_string(), "10.244.1.2/24");
    assert_eq!(ra.ips[0].gateway.unwrap().to_string(), "10.244.1.1");
    assert_eq!(pod_ip(&rb).to_string(), "10.244.1.3");
    assert_eq!(
        ra.interfaces[0].mac, rb.interfaces[0].mac,
        "bridge MAC is stable"
    );
    assert_eq!(ra.interfaces[0].mac, "0a:58:0a:f4:01:01");

    // Kernel: pod side.
    let addr = lab.exec(&a.netns, &["ip", "-o", "addr", "show", "dev", "eth0"]);
    assert!(addr.contains("inet 10.244.1.2/24"), "{addr}");
    let link = lab.exec(&a.netns, &["ip", "-o", "link", "show", "dev", "eth0"]);
    assert!(link.contains(&ra.interfaces[2].mac), "{link}");
    assert!(
        link.contains("mtu 1450"),
        "no overlay, no default route → 1500-50: {link}"
    );
    assert!(link.contains("state UP"), "{link}");
    let routes = lab.exec(&a.netns, &["ip", "route"]);
    assert!(
        routes.contains("10.244.0.0/16 via 10.244.1.1 dev eth0"),
        "{routes}"
    );
    assert!(
        !routes.contains("default"),
        "only the configured routes: {routes}"
    );
    let lo = lab.exec(&a.netns, &["ip", "-o", "link", "show", "dev", "lo"]);
    assert!(lo.contains("UP"), "{lo}");

    // Kernel: node side. Host veth is deterministic, on the bridge, aliased for GC.
    let hv = lab.exec(&node.netns, &["ip", "-d", "link", "show", "dev", host_if]);
    assert!(hv.contains("master mw0"), "{hv}");
    assert!(hv.contains("alias meshwork/pods/ctr-a/eth0"), "{hv}");
    assert_eq!(leases(&lab, "pods"), ["10.244.1.2", "10.244.1.3"]);

    // Pods on one node talk TCP through the bridge.
    let t = lab.transfer(
        &a.netns,
        &b.netns,
        "10.244.1.3:8080".parse().unwrap(),
        1 << 20,
    );
    assert!(t.intact, "{t:?}");
    assert_eq!(t.peer.ip().to_string(), "10.244.1.2");

    // The same ADD again: the interface exists → error, nothing of the first ADD disturbed.
    let err = inv.add(&l, &rt("ctr-a", &a)).unwrap_err();
    assert_eq!(code_of(err), code::INTERFACE_EXISTS);
    assert_eq!(leases(&lab, "pods").len(), 2);
    assert_eq!(host_veths(&lab, &node).len(), 2);
}

#[test]
fn mtu_comes_from_config_uplink_or_overlay_device() {
    let lab = Lab::new("cni_mtu");
    let node = lab.node("n1");
    let inv = lab.invoker(&node);
    lab.exec(&node.netns, &["ip", "link", "set", "eth0", "mtu", "9000"]);
    let mtu_of = |pod: &PodNs| lab.link_mtu(&pod.netns, "eth0").to_string();
    let mut conf = conflist(&lab, "pods", "10.244.1.0/24", &["10.244.0.0/16"]);
    conf["plugins"][0]["uplink"] = json!("eth0");
    let p1 = lab.pod_netns(&node, "p1");
    inv.add(&list(conf.clone()), &rt("c1", &p1)).unwrap();
    assert_eq!(mtu_of(&p1), "8950", "uplink 9000 minus VXLAN overhead");

    conf["plugins"][0]["mtu"] = json!(1400);
    let p2 = lab.pod_netns(&node, "p2");
    let r = inv.add(&list(conf), &rt("c2", &p2)).unwrap();
    assert_eq!(mtu_of(&p2), "1400");
    assert_eq!(r.interfaces[2].mtu, Some(1400));

    // With an overlay device on the node, its MTU wins over defaults.
    lab.exec(
        &node.netns,
        &[
            "ip", "link", "add", "mw.vxlan", "mtu", "1234", "type", "vxlan", "id", "1", "dstport",
            "8472", "dev", "eth0",
        ],
    );
    let p3 = lab.pod_netns(&node, "p3");
    let plain = conflist(&lab, "pods", "10.244.1.0/24", &["10.244.0.0/16"]);
    inv.add(&list(plain), &rt("c3", &p3)).unwrap();
    assert_eq!(mtu_of(&p3), "1234");
}

#[test]
fn results_follow_the_requested_version_and_version_lists_all() {
    let lab = Lab::new("cni_versions");
    let node = lab.node("n1");
    let inv = lab.invoker(&node);
    for (i, ver) in ["0.4.0", "1.0.0", "1.1.0"].iter().enumerate() {
        let mut conf = conflist(&lab, "pods", "10.244.1.0/24", &["10.244.0.0/16"]);
        conf["cniVersion"] = json!(ver);
        let pod = lab.pod_netns(&node, &format!("p{i}"));
        let out = inv
            .exec(
                "meshwork",
                "ADD",
                &rt(&format!("c{i}"), &pod),
                &serde_json::to_vec(&{
                    let mut p = conf["plugins"][0].clone();
                    p["name"] = json!("pods");
                    p["cniVersion"] = json!(ver);
                    p
                })
                .unwrap(),
            )
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["cniVersion"], *ver);
        if *ver == "0.4.0" {
            assert_eq!(
                v["ips"][0]["version"], "4",
                "0.4.0 results carry ips[].version"
            );
        } else {
            assert!(v["ips"][0].get("version").is_none());
        }
    }
    let vi = inv.version("meshwork", "1.0.0").unwrap();
    assert_eq!(vi.cni_version, "1.0.0");
    assert_eq!(vi.supported_versions, ["0.4.0", "1.0.0", "1.1.0"]);
}

#[test]
fn del_is_idempotent_and_tolerates_missing_netns() {
    let lab = Lab::new("cni_del");
    let node = lab.node("n1");
    let inv = lab.invoker(&node);
    let l = list(conflist(&lab, "pods", "10.244.1.0/24", &["10.244.0.0/16"]));
    let (a, b) = (lab.pod_netns(&node, "a"), lab.pod_netns(&node, "b"));
    let ra = inv.add(&l, &rt("ctr-a", &a)).unwrap();
    inv.add(&l, &rt("ctr-b", &b)).unwrap();

    // containerd's sequence: DEL with netns + prevResult, then DEL with empty netns, no prev.
    inv.del(&l, &rt("ctr-a", &a), Some(&ra)).unwrap();
    let mut no_ns = rt("ctr-a", &a);
    no_ns.netns = String::new();
    inv.del(&l, &no_ns, None).unwrap();
    inv.del(&l, &no_ns, None).unwrap();
    assert_eq!(leases(&lab, "pods"), ["10.244.1.3"]);
    assert_eq!(host_veths(&lab, &node).len(), 1);
    assert!(!lab.links(&a.netns).contains(&"eth0".to_string()));

    // The netns vanished before DEL (pod sandbox already torn down).
    lab.exec(&node.netns, &["true"]);
    meshwork_lab::sh(&["ip", "netns", "del", &b.netns]);
    inv.del(&l, &rt("ctr-b", &b), None).unwrap();
    assert!(leases(&lab, "pods").is_empty());
    assert!(host_veths(&lab, &node).is_empty());

    // DEL of something never added.
    inv.del(&l, &rt("never-added", &a), None).unwrap();
}

#[test]
fn check_passes_after_add_and_catches_drift() {
    let lab = Lab::new("cni_check");
    let node = lab.node("n1");
    let inv = lab.invoker(&node);
    let l = list(conflist(&lab, "pods", "10.244.1.0/24", &["10.244.0.0/16"]));
    let a = lab.pod_netns(&node, "a");
    let r = inv.add(&l, &rt("ctr-a", &a)).unwrap();
    inv.check(&l, &rt("ctr-a", &a), &r).unwrap();

    lab.exec(&a.netns, &["ip", "route", "del", "10.244.0.0/16"]);
    let e = inv.check(&l, &rt("ctr-a", &a), &r).unwrap_err();
    assert_eq!(code_of(e), code::CHECK_FAILED);

    lab.exec(
        &a.netns,
        &["ip", "route", "add", "10.244.0.0/16", "via", "10.244.1.1"],
    );
    inv.check(&l, &rt("ctr-a", &a), &r).unwrap();

    lab.exec(&a.netns, &["ip", "addr", "flush", "dev", "eth0"]);
    let e = inv.check(&l, &rt("ctr-a", &a), &r).unwrap_err();
    assert!(e.to_string().contains("missing address"), "{e}");

    // A result for another MAC is caught too.
    let mut wrong = r.clone();
    wrong.interfaces[2].mac = "02:00:00:00:00:99".into();
    let e = inv.check(&l, &rt("ctr-a", &a), &wrong).unwrap_err();
    assert!(e.to_string().contains("MAC"), "{e}");
}

#[test]
fn gc_removes_leases_and_veths_not_in_the_valid_list() {
    let lab = Lab::new("cni_gc");
    let node = lab.node("n1");
    let inv = lab.invoker(&node);
    let l = list(conflist(&lab, "pods", "10.244.1.0/24", &["10.244.0.0/16"]));
    let pods: Vec<PodNs> = (0..4)
        .map(|i| lab.pod_netns(&node, &format!("p{i}")))
        .collect();
    let results: Vec<CniResult> = pods
        .iter()
        .enumerate()
        .map(|(i, p)| inv.add(&l, &rt(&format!("c{i}"), p)).unwrap())
        .collect();
    assert_eq!(leases(&lab, "pods").len(), 4);

    let keep = |ids: &[usize]| -> Vec<Attachment> {
        ids.iter()
            .map(|i| Attachment {
                container_id: format!("c{i}"),
                ifname: "eth0".into(),
            })
            .collect()
    };
    // libcni HEAD spelling.
    inv.gc(&l, &keep(&[0, 1, 2])).unwrap();
    assert_eq!(leases(&lab, "pods").len(), 3);
    assert_eq!(host_veths(&lab, &node).len(), 3);
    assert!(!host_veths(&lab, &node).contains(&results[3].interfaces[1].name));

    // The spec tag's spelling `cni.dev/attachments`.
    let mut conf = l.plugins[0].clone();
    conf.insert("name".into(), json!("pods"));
    conf.insert("cniVersion".into(), json!("1.1.0"));
    conf.insert("cni.dev/attachments".into(), json!(keep(&[0])));
    inv.exec(
        "meshwork",
        "GC",
        &RuntimeConf::default(),
        &serde_json::to_vec(&conf).unwrap(),
    )
    .unwrap();
    assert_eq!(leases(&lab, "pods"), [pod_ip(&results[0]).to_string()]);
    assert_eq!(
        host_veths(&lab, &node),
        [results[0].interfaces[1].name.clone()]
    );
    // GC touches only its own network's attachments: the survivor still works.
    inv.check(&l, &rt("c0", &pods[0]), &results[0]).unwrap();
}

#[test]
fn exhaustion_is_a_clear_error_and_status_reports_it() {
    let lab = Lab::new("cni_exhaust");
    let node = lab.node("n1");
    let inv = lab.invoker(&node);
    // /29: .1 gateway, .2–.6 for pods.
    let l = list(conflist(&lab, "small", "10.244.9.0/29", &["10.244.0.0/16"]));
    inv.status(&l).unwrap();
    let pods: Vec<PodNs> = (0..6)
        .map(|i| lab.pod_netns(&node, &format!("p{i}")))
        .collect();
    for (i, p) in pods.iter().take(5).enumerate() {
        inv.add(&l, &rt(&format!("c{i}"), p)).unwrap();
    }
    let e = inv.add(&l, &rt("c5", &pods[5])).unwrap_err();
    let ce = e.cni_error().unwrap().clone();
    assert_eq!(ce.code, code::RANGE_EXHAUSTED);
    assert!(ce.msg.contains("no free address"), "{ce}");
    // The failed ADD left nothing behind.
    assert!(!lab.links(&pods[5].netns).contains(&"eth0".to_string()));
    assert_eq!(host_veths(&lab, &node).len(), 5);

    let st = inv.status(&l).unwrap_err();
    assert_eq!(code_of(st), code::STATUS_NOT_READY);

    inv.del(&l, &rt("c2", &pods[2]), None).unwrap();
    inv.status(&l).unwrap();
    inv.add(&l, &rt("c5", &pods[5])).unwrap();
}

/// Runs the plugin with raw env and stdin, as a misbehaving runtime would.
fn raw(lab: &Lab, node: &Node, env: &[(&str, &str)], stdin: &[u8]) -> (i32, Value) {
    let out = lab
        .invoker(node)
        .exec_raw(env, stdin)
        .unwrap_or_else(|e| panic!("{e}"));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout must be error JSON ({e}): {:?} / stderr {:?}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), v)
}

trait ExecRaw {
    fn exec_raw(&self, env: &[(&str, &str)], stdin: &[u8])
        -> std::io::Result<std::process::Output>;
}

impl ExecRaw for meshwork_cni_spec::Invoker {
    fn exec_raw(
        &self,
        env: &[(&str, &str)],
        stdin: &[u8],
    ) -> std::io::Result<std::process::Output> {
        use std::io::Write;
        let bin = self.find("meshwork").unwrap();
        let ns = self.node_netns.clone().unwrap();
        let mut child = Command::new("ip")
            .args(["netns", "exec", ns.file_name().unwrap().to_str().unwrap()])
            .arg(bin)
            .env_clear()
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        child.stdin.take().unwrap().write_all(stdin).ok();
        child.wait_with_output()
    }
}

#[test]
fn bad_input_gets_spec_error_json_and_a_failed_add_rolls_back() {
    let lab = Lab::new("cni_bad_input");
    let node = lab.node("n1");
    let pod = lab.pod_netns(&node, "p");
    let ns = pod.path_str();
    let good = serde_json::to_vec(&json!({
        "cniVersion": "1.1.0", "name": "pods", "type": "meshwork",
        "dataDir": lab.dir().join("cni-state"),
        "ipam": {"subnet": "10.244.1.0/24", "routes": [{"dst": "10.244.0.0/16"}]}
    }))
    .unwrap();
    let add_env = |extra: &[(&'static str, String)]| -> Vec<(&'static str, String)> {
        let mut e = vec![
            ("CNI_COMMAND", "ADD".to_string()),
            ("CNI_CONTAINERID", "ctr1".to_string()),
            ("CNI_NETNS", ns.clone()),
            ("CNI_IFNAME", "eth0".to_string()),
        ];
        for (k, v) in extra {
            e.retain(|(ek, _)| ek != k);
            e.push((k, v.clone()));
        }
        e
    };
    let run = |env: Vec<(&'static str, String)>, stdin: &[u8]| {
        let e: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        raw(&lab, &node, &e, stdin)
    };

    type Env = Vec<(&'static str, String)>;
    let cases: Vec<(&str, Env, Vec<u8>, u32)> = vec![
        (
            "garbage stdin",
            add_env(&[]),
            b"{{not json".to_vec(),
            code::DECODE,
        ),
        ("empty stdin", add_env(&[]), Vec::new(), code::DECODE),
        (
            "old version",
            add_env(&[]),
            br#"{"cniVersion":"0.3.1","name":"pods","type":"meshwork"}"#.to_vec(),
            code::INCOMPATIBLE_VERSION,
        ),
        (
            "missing subnet",
            add_env(&[]),
            br#"{"cniVersion":"1.1.0","name":"pods","type":"meshwork"}"#.to_vec(),
            code::INVALID_CONFIG,
        ),
        (
            "bad cidr",
            add_env(&[]),
            br#"{"cniVersion":"1.1.0","name":"pods","ipam":{"subnet":"10.1.2.300/24"}}"#.to_vec(),
            code::INVALID_CONFIG,
        ),
        (
            "no command",
            add_env(&[("CNI_COMMAND", String::new())]),
            good.clone(),
            code::INVALID_ENV,
        ),
        (
            "bad command",
            add_env(&[("CNI_COMMAND", "FROB".into())]),
            good.clone(),
            code::INVALID_ENV,
        ),
        (
            "bad ifname",
            add_env(&[("CNI_IFNAME", "eth0/x".into())]),
            good.clone(),
            code::INVALID_ENV,
        ),
        (
            "bad container id",
            add_env(&[("CNI_CONTAINERID", "../x".into())]),
            good.clone(),
            code::INVALID_ENV,
        ),
        (
            "netns does not exist",
            add_env(&[("CNI_NETNS", "/run/netns/mwl-no-such-ns".into())]),
            good.clone(),
            code::INVALID_ENV,
        ),
    ];
    for (what, env, stdin, want) in cases {
        let env: Vec<(&'static str, String)> =
            env.into_iter().filter(|(_, v)| !v.is_empty()).collect();
        let (status, v) = run(env, &stdin);
        assert_ne!(status, 0, "{what}");
        assert_eq!(v["code"], want, "{what}: {v}");
        assert!(
            v["msg"].as_str().is_some_and(|m| !m.is_empty()),
            "{what}: {v}"
        );
        assert!(v["cniVersion"].is_string(), "{what}: {v}");
    }
    assert!(
        leases(&lab, "pods").is_empty(),
        "no failed case leased anything"
    );

    // An ADD that fails after the lease and veth exist (unreachable route gateway) rolls back.
    let failing = serde_json::to_vec(&json!({
        "cniVersion": "1.1.0", "name": "pods", "type": "meshwork",
        "dataDir": lab.dir().join("cni-state"),
        "ipam": {"subnet": "10.244.1.0/24", "routes": [{"dst": "10.9.0.0/16", "gw": "10.99.99.99"}]}
    }))
    .unwrap();
    let (status, v) = run(add_env(&[]), &failing);
    assert_ne!(status, 0);
    assert_eq!(v["code"], code::INTERNAL, "{v}");
    assert!(leases(&lab, "pods").is_empty(), "lease released");
    assert!(host_veths(&lab, &node).is_empty(), "veth removed");
    assert!(!lab.links(&pod.netns).contains(&"eth0".to_string()));
    // And the pod can then be added cleanly.
    let (status, v) = run(add_env(&[]), &good);
    assert_eq!(status, 0, "{v}");
}

#[test]
fn concurrent_adds_get_distinct_addresses() {
    let lab = Lab::new("cni_concurrent");
    let node = lab.node("n1");
    let inv = lab.invoker(&node);
    let l = list(conflist(&lab, "pods", "10.244.1.0/24", &["10.244.0.0/16"]));
    let pods: Vec<PodNs> = (0..40)
        .map(|i| lab.pod_netns(&node, &format!("p{i}")))
        .collect();
    let ips: Vec<IpAddr> = std::thread::scope(|s| {
        let hs: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let (inv, l) = (&inv, &l);
                s.spawn(move || pod_ip(&inv.add(l, &rt(&format!("c{i}"), p)).unwrap()))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let distinct: HashSet<_> = ips.iter().collect();
    assert_eq!(distinct.len(), 40, "{ips:?}");
    assert_eq!(leases(&lab, "pods").len(), 40);
    assert_eq!(host_veths(&lab, &node).len(), 40);
    // Each pod really carries the address it was given.
    for (p, ip) in pods.iter().zip(&ips) {
        let a = lab.exec(&p.netns, &["ip", "-o", "-4", "addr", "show", "dev", "eth0"]);
        assert!(a.contains(&format!("inet {ip}/24")), "{a}");
    }
}

#[test]
fn kill_9_in_the_middle_of_add_never_double_allocates() {
    let lab = Lab::new("cni_kill9");
    let node = lab.node("n1");
    let inv = lab.invoker(&node);
    let l = list(conflist(&lab, "pods", "10.244.1.0/24", &["10.244.0.0/16"]));

    // Deterministic crash points: right after the lease, right after the veth.
    for (i, point) in ["after-lease", "after-veth"].iter().enumerate() {
        let mut crashing = inv.clone();
        crashing
            .env
            .push(("MESHWORK_CNI_CRASH_AT".into(), (*point).into()));
        let p = lab.pod_netns(&node, &format!("crash{i}"));
        let e = crashing.add(&l, &rt(&format!("crash{i}"), &p)).unwrap_err();
        assert!(matches!(e, InvokeError::Crashed { .. }), "{point}: {e}");
    }
    let crashed_leases = leases(&lab, "pods");
    assert_eq!(
        crashed_leases.len(),
        2,
        "a crash leaks a lease, never loses one"
    );

    // Random kill -9 at any moment of ADD, 30 times.
    let conf = {
        let mut p = l.plugins[0].clone();
        p.insert("name".into(), json!("pods"));
        p.insert("cniVersion".into(), json!("1.1.0"));
        serde_json::to_vec(&p).unwrap()
    };
    let mut killed = Vec::new();
    for i in 0..30u64 {
        let p = lab.pod_netns(&node, &format!("k{i}"));
        let mut child = Command::new("ip")
            .args(["netns", "exec", &node.netns])
            .arg(meshwork_lab::cni_plugin_binary())
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", format!("k{i}"))
            .env("CNI_NETNS", p.path_str())
            .env("CNI_IFNAME", "eth0")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&conf).ok();
        // Spread the kill from "at once" to well past a loaded runner's exec + ADD (~10-30 ms).
        std::thread::sleep(std::time::Duration::from_micros(i * 1_361 % 40_000));
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        child.wait().unwrap();
        killed.push((format!("k{i}"), p));
    }

    // Survivors and new pods: every address held by an interface is held by exactly one.
    let fresh: Vec<PodNs> = (0..10)
        .map(|i| lab.pod_netns(&node, &format!("f{i}")))
        .collect();
    for (i, p) in fresh.iter().enumerate() {
        inv.add(&l, &rt(&format!("f{i}"), p)).unwrap();
    }
    let mut seen: HashSet<String> = HashSet::new();
    for ns in std::fs::read_dir("/run/netns").unwrap().flatten() {
        let name = ns.file_name().to_string_lossy().into_owned();
        if !name.starts_with(lab.prefix()) || !name.contains("-n1-") {
            continue;
        }
        let out = lab.exec_out(&name, &["ip", "-o", "-4", "addr", "show", "dev", "eth0"]);
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let ip = line
                .split("inet ")
                .nth(1)
                .unwrap()
                .split('/')
                .next()
                .unwrap();
            assert!(seen.insert(ip.to_string()), "{ip} is on two pods");
            assert!(
                leases(&lab, "pods").contains(&ip.to_string()),
                "{ip} has no lease"
            );
        }
    }
    // The kills landed at different phases: some before the lease was taken, some after.
    let owners: Vec<String> = std::fs::read_dir(lab.dir().join("cni-state/pods/leases"))
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|c| c.lines().next().map(str::to_string))
        .collect();
    let leased = killed.iter().filter(|(id, _)| owners.contains(id)).count();
    assert!(
        leased > 0 && leased < killed.len(),
        "{leased} of {} killed ADDs left a lease",
        killed.len()
    );
    // The runtime's DEL after a failed ADD cleans every leftover of the killed ones.
    for (id, p) in &killed {
        inv.del(&l, &rt(id, p), None).unwrap();
    }
    for i in 0..2 {
        let p = lab.pod_netns(&node, &format!("crash{i}-del"));
        inv.del(&l, &rt(&format!("crash{i}"), &p), None).unwrap();
    }
    assert_eq!(
        leases(&lab, "pods").len(),
        10,
        "only the fresh pods' leases remain"
    );
    assert_eq!(host_veths(&lab, &node).len(), 10);
}

#[test]
fn chains_with_portmap_and_passes_prev_result() {
    let lab = Lab::new("cni_portmap");
    let (n1, n2) = (lab.node("n1"), lab.node("n2"));
    let inv = lab.invoker(&n1);
    // Debian's reference plugins speak up to 1.0.0.
    let l = list(json!({
        "cniVersion": "1.0.0",
        "name": "pods",
        "plugins": [
            // The pod needs a route back to the (lab) underlay client: still no default route.
            {"type": "meshwork", "dataDir": lab.dir().join("cni-state"),
             "ipam": {"subnet": "10.244.1.0/24",
                      "routes": [{"dst": "10.244.0.0/16"}, {"dst": meshwork_lab::UNDERLAY_SUBNET}]}},
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    }));
    let pod = lab.pod_netns(&n1, "web");
    let mut conf = rt("web", &pod);
    conf.capability_args.insert(
        "portMappings".into(),
        json!([{"hostPort": 30080, "containerPort": 8080, "protocol": "tcp"}]),
    );
    let r = inv.add(&l, &conf).unwrap();
    assert_eq!(r.cni_version, "1.0.0");
    assert_eq!(
        pod_ip(&r).to_string(),
        "10.244.1.2",
        "portmap passed our result through"
    );

    // From another node, node1:30080 reaches the pod's :8080 through portmap's DNAT.
    let target: SocketAddr = format!("{}:30080", n1.underlay_ip).parse().unwrap();
    let listener = lab.tcp_listen(&pod.netns, "10.244.1.2:8080".parse().unwrap());
    let srv = std::thread::spawn(move || {
        let (_, peer) = listener.accept().unwrap();
        peer
    });
    lab.tcp_connect(&n2.netns, target)
        .unwrap_or_else(|e| panic!("portmap DNAT {target}: {e}"));
    let peer = srv.join().unwrap();
    assert_eq!(peer.ip(), IpAddr::V4(n2.underlay_ip));

    // CHECK our plugin alone: Debian's portmap 1.1.1 fails its own CHECK on v4-only pods
    // ("could not check ipv6 dnat: chain ... not found"), a reference-plugin limitation.
    let ours = NetConfList {
        plugins: vec![l.plugins[0].clone()],
        ..l.clone()
    };
    inv.check(&ours, &conf, &r).unwrap();
    inv.del(&l, &conf, Some(&r)).unwrap();
    let nat = lab.exec(&n1.netns, &["iptables-save", "-t", "nat"]);
    assert!(
        !nat.contains("30080"),
        "portmap DEL ran with our prevResult: {nat}"
    );
    assert!(leases(&lab, "pods").is_empty());
}

#[test]
fn dual_stack_pods_talk_over_ipv6() {
    let lab = Lab::new("cni_dual_stack");
    let node = lab.node("n1");
    let inv = lab.invoker(&node);
    let l = list(json!({
        "cniVersion": "1.1.0", "name": "pods",
        "plugins": [{"type": "meshwork", "dataDir": lab.dir().join("cni-state"),
            "ipam": {"subnet": "10.244.1.0/24", "subnet6": "fd00:244:1::/64",
                     "routes": [{"dst": "10.244.0.0/16"}, {"dst": "fd00:244::/48"}]}}]
    }));
    let (a, b) = (lab.pod_netns(&node, "a"), lab.pod_netns(&node, "b"));
    let ra = inv.add(&l, &rt("a", &a)).unwrap();
    let rb = inv.add(&l, &rt("b", &b)).unwrap();
    assert_eq!(ra.ips.len(), 2);
    assert_eq!(ra.ips[1].address.to_string(), "fd00:244:1::2/64");
    assert_eq!(ra.ips[1].gateway.unwrap().to_string(), "fd00:244:1::1");
    let v6b = rb.ips[1].address.addr();
    // No DAD delay: the address is usable at once.
    let t = lab.transfer(&a.netns, &b.netns, SocketAddr::new(v6b, 8080), 1 << 20);
    assert!(t.intact, "{t:?}");
    inv.check(&l, &rt("a", &a), &ra).unwrap();
    inv.del(&l, &rt("a", &a), Some(&ra)).unwrap();
    inv.del(&l, &rt("b", &b), Some(&rb)).unwrap();
    assert!(leases(&lab, "pods").is_empty());
}

#[test]
fn a_failed_add_never_touches_another_attachments_veth_or_lease() {
    let lab = Lab::new("cni_add_no_collateral");
    let node = lab.node("n1");
    let inv = lab.invoker(&node);
    let l = list(conflist(&lab, "pods", "10.244.1.0/24", &["10.244.0.0/16"]));
    let (a, b) = (lab.pod_netns(&node, "a"), lab.pod_netns(&node, "b"));
    let ra = inv.add(&l, &rt("same-id", &a)).unwrap();
    // The same container id and ifname into another netns: the pod side is free there, but the
    // host veth and the lease belong to the live attachment in `a`.
    let e = inv.add(&l, &rt("same-id", &b)).unwrap_err();
    assert_eq!(code_of(e), code::INTERFACE_EXISTS);
    assert_eq!(host_veths(&lab, &node), [ra.interfaces[1].name.clone()]);
    assert_eq!(leases(&lab, "pods"), [pod_ip(&ra).to_string()]);
    inv.check(&l, &rt("same-id", &a), &ra).unwrap();
}

#[test]
fn gc_and_status_need_1_1_0_and_gc_needs_the_attachment_list() {
    let lab = Lab::new("cni_gc_guard");
    let node = lab.node("n1");
    let inv = lab.invoker(&node);
    let l = list(conflist(&lab, "pods", "10.244.1.0/24", &["10.244.0.0/16"]));
    let a = lab.pod_netns(&node, "a");
    inv.add(&l, &rt("c0", &a)).unwrap();
    let mut conf = l.plugins[0].clone();
    conf.insert("name".into(), json!("pods"));
    conf.insert("cniVersion".into(), json!("1.1.0"));
    // No attachment list at all: refuse instead of treating everything as stale.
    let e = inv
        .exec(
            "meshwork",
            "GC",
            &RuntimeConf::default(),
            &serde_json::to_vec(&conf).unwrap(),
        )
        .unwrap_err();
    assert_eq!(code_of(e), code::INVALID_CONFIG);
    assert_eq!(leases(&lab, "pods").len(), 1);
    assert_eq!(host_veths(&lab, &node).len(), 1);
    // GC and STATUS on a 1.0.0 config: they did not exist then.
    conf.insert("cniVersion".into(), json!("1.0.0"));
    conf.insert("cni.dev/valid-attachments".into(), json!([]));
    for cmd in ["GC", "STATUS"] {
        let e = inv
            .exec(
                "meshwork",
                cmd,
                &RuntimeConf::default(),
                &serde_json::to_vec(&conf).unwrap(),
            )
            .unwrap_err();
        assert_eq!(code_of(e), code::INCOMPATIBLE_VERSION, "{cmd}");
    }
    assert_eq!(leases(&lab, "pods").len(), 1);
}

#[test]
fn add_keeps_an_earlier_plugins_result_and_del_creates_no_state() {
    let lab = Lab::new("cni_prev_result");
    let node = lab.node("n1");
    let inv = lab.invoker(&node);
    let a = lab.pod_netns(&node, "a");
    let mut conf =
        list(conflist(&lab, "pods", "10.244.1.0/24", &["10.244.0.0/16"])).plugins[0].clone();
    conf.insert("name".into(), json!("pods"));
    conf.insert("cniVersion".into(), json!("1.1.0"));
    conf.insert(
        "prevResult".into(),
        json!({"cniVersion": "1.1.0",
               "interfaces": [{"name": "earlier0", "sandbox": a.path_str()}],
               "ips": [{"address": "192.0.2.7/32", "interface": 0}],
               "dns": {"nameservers": ["10.96.0.10"]}}),
    );
    let out = inv
        .exec(
            "meshwork",
            "ADD",
            &rt("c0", &a),
            &serde_json::to_vec(&conf).unwrap(),
        )
        .unwrap();
    let r: CniResult = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r.interfaces.len(), 4, "{r:?}");
    assert_eq!(r.interfaces[0].name, "earlier0");
    assert_eq!(
        r.ips[0].address.to_string(),
        "192.0.2.7/32",
        "earlier addresses kept first"
    );
    assert_eq!(
        r.ips[1].interface,
        Some(3),
        "ours point at our pod interface"
    );
    assert_eq!(
        r.dns.nameservers,
        ["10.96.0.10"],
        "earlier DNS kept when we set none"
    );

    // DEL on a network that never leased anything: success, and no state dir appears.
    let mut other = conf.clone();
    other.insert("name".into(), json!("never-used"));
    other.remove("prevResult");
    inv.exec(
        "meshwork",
        "DEL",
        &rt("c9", &a),
        &serde_json::to_vec(&other).unwrap(),
    )
    .unwrap();
    assert!(!lab.dir().join("cni-state").join("never-used").exists());
    // And a network name that tries to leave the state dir is refused, not followed.
    other.insert("name".into(), json!("../escape"));
    let e = inv
        .exec(
            "meshwork",
            "DEL",
            &rt("c9", &a),
            &serde_json::to_vec(&other).unwrap(),
        )
        .unwrap_err();
    assert_eq!(code_of(e), code::INVALID_CONFIG);
}
