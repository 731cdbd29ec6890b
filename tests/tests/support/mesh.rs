//! A lab cluster with the mesh's parts, shared by the mesh tests and the proxy benchmark: the
//! API server, controllers, a node runtime and a control agent per node (discovery), a CA and
//! the identity service on node 1, the trust roots ConfigMap, and what a meshed pod needs
//! (`Mesh::meshed`: the proxy injected as the injector does it).

use std::{
    net::SocketAddr,
    process::{Command, Stdio},
};

use meshwork_lab::{cgroup::lab_binary, proc::Proc};
use serde_json::{json, Value};

use crate::orch::{host_catalog, Orch, IN_CLUSTER_ROUTES};

pub struct Mesh {
    pub o: Orch,
    pub identity_addr: String,
    _identity: Proc,
}

impl Mesh {
    /// The cluster, its agents, a CA and the identity service issuing certificates that live
    /// `cert_lifetime`.
    pub fn start(name: &str, cert_lifetime: &str) -> Mesh {
        meshwork_lab::require_root();
        let proxy = lab_binary("meshwork-proxy");
        let app = lab_binary("mw-meshapp");
        let (proxy, app) = (proxy.to_str().unwrap(), app.to_str().unwrap());
        let mut o = Orch::start_full(name, &IN_CLUSTER_ROUTES, false, &[], |dir| {
            Some(host_catalog(
                dir,
                &[
                    ("meshwork-proxy", &[proxy]),
                    ("meshapp", &[app]),
                    ("tools", &[]),
                ],
            ))
        });
        let dir = o.lab.dir().to_path_buf();
        let id_bin = lab_binary("meshwork-identity");
        let out = Command::new(&id_bin)
            .args(["init", "--out"])
            .arg(dir.join("ca"))
            .args(["--issuer-lifetime", "48h"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let issuer = dir.join("issuer");
        std::fs::create_dir_all(&issuer).unwrap();
        for f in ["ca.crt", "tls.crt", "tls.key"] {
            std::fs::copy(dir.join("ca").join(f), issuer.join(f)).unwrap();
        }
        // On node 1's underlay address, as a hostNetwork Deployment would serve it.
        let identity_addr = format!("{}:8080", o.nodes[0].underlay_ip);
        let log = dir.join("identity.log");
        let child = Command::new("ip")
            .args(["netns", "exec", &o.nodes[0].netns])
            .arg(&id_bin)
            .args(["serve", "--issuer-dir"])
            .arg(&issuer)
            .args([
                "--listen",
                &identity_addr,
                "--admin-listen",
                "127.0.0.1:9990",
            ])
            .args(["--cert-lifetime", cert_lifetime, "--kubeconfig"])
            .arg(&o.kubeconfig)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let identity = Proc::with_log(child, log);
        let addr: SocketAddr = identity_addr.parse().unwrap();
        o.wait("the identity service listening", || {
            o.lab.tcp_connect(&o.nodes[0].netns, addr).ok().map(|_| ())
        });
        o.kubectl(&[
            "create",
            "configmap",
            "meshwork-identity-trust-roots",
            &format!(
                "--from-file=ca-bundle.crt={}",
                dir.join("ca/ca.crt").display()
            ),
        ]);
        for sa in ["web", "client"] {
            o.kubectl(&["create", "serviceaccount", sa]);
        }
        o.agent_identity = Some((
            identity_addr.clone(),
            agent_token(&o),
            dir.join("ca/ca.crt"),
        ));
        for i in 0..o.nodes.len() {
            let a = o.start_agent(i);
            o.procs.push(a);
        }
        Mesh {
            o,
            identity_addr,
            _identity: identity,
        }
    }

    /// `spec` with the proxy injected exactly as the injector webhook and `mesh-ctl inject`
    /// do (`meshwork_inject`), plus `extra_env` for the proxy. The pod's annotations are
    /// the caller's (`MESH_ANNOTATIONS`).
    #[allow(
        dead_code,
        reason = "not every test binary sharing this file meshes by hand"
    )]
    pub fn meshed(&self, mut spec: Value, extra_env: &[(&str, &str)]) -> Value {
        let cfg = meshwork_inject::Config {
            proxy_image: "meshwork-proxy".into(),
            identity_addr: self.identity_addr.clone(),
            log: "info".into(),
        };
        let mut meta = json!({});
        assert!(meshwork_inject::inject_pod(&mut meta, &mut spec, None, &cfg).unwrap());
        let env = spec["initContainers"][0]["env"].as_array_mut().unwrap();
        env.extend(
            extra_env
                .iter()
                .map(|(k, v)| json!({"name": k, "value": v})),
        );
        spec
    }
}

/// The agents' identity token, as a DaemonSet pod's projected volume holds it: for the
/// ServiceAccount kube-system/meshwork-control and the identity audience, bound to a pod of it
/// (the identity service checks that the pod lives). The lab runs the agents as processes, so
/// a pod of that ServiceAccount stands in for theirs. Written to a file the agents read.
fn agent_token(o: &Orch) -> std::path::PathBuf {
    o.kubectl(&[
        "-n",
        "kube-system",
        "create",
        "serviceaccount",
        "meshwork-control",
    ]);
    o.apply(&json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "meshwork-control-agents", "namespace": "kube-system"},
        "spec": {"serviceAccountName": "meshwork-control", "nodeName": o.nodes[0].name,
                 "terminationGracePeriodSeconds": 0,
                 "containers": [{"name": "c", "image": "tools", "command": ["sleep", "100000"]}]},
    }));
    let uid = o.kubectl(&[
        "-n",
        "kube-system",
        "get",
        "pod",
        "meshwork-control-agents",
        "-o",
        "jsonpath={.metadata.uid}",
    ]);
    let token = o.kubectl(&[
        "-n",
        "kube-system",
        "create",
        "token",
        "meshwork-control",
        "--audience",
        meshwork_identity::DEFAULT_AUDIENCE,
        "--duration",
        "24h",
        "--bound-object-kind",
        "Pod",
        "--bound-object-name",
        "meshwork-control-agents",
        "--bound-object-uid",
        uid.trim(),
    ]);
    let path = o.lab.dir().join("agent-token");
    std::fs::write(&path, token.trim()).unwrap();
    path
}

/// Asserts that no captured segment but the admin port's (the kubelet's probes, plaintext by
/// design) carries a request, a response or the identity header in the clear.
#[allow(
    dead_code,
    reason = "not every test binary including this module captures"
)]
pub fn assert_nothing_in_clear(segments: &[meshwork_lab::capture::Segment]) {
    for s in segments
        .iter()
        .filter(|s| s.src.port() != 4191 && s.dst.port() != 4191)
    {
        for needle in [&b"HTTP/1.1"[..], b"meshwork-client-id", b"pod=", b"GET /"] {
            assert!(
                !s.payload.windows(needle.len()).any(|w| w == needle),
                "plaintext {:?} on the wire {} -> {}",
                String::from_utf8_lossy(needle),
                s.src,
                s.dst
            );
        }
    }
}
