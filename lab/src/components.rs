//! The command lines of a cluster's per-node components in a lab node, written once: the node
//! runtime (`meshwork-orchestrator node`; `mesh-ctl up` and the e2e harness) and the control
//! agent (`meshwork-control`; the e2e harness, while `mesh-ctl up` runs it as a DaemonSet).
//! Where they differ (ports, back-off) is a field here.

use std::path::Path;

use crate::{Lab, Node};

/// `meshwork-orchestrator node` for `node`: pods' cgroups under the node's, pod namespaces
/// named `<lab prefix><node>-p-*` (so the lab's sweep finds them).
pub struct NodeRuntime<'a> {
    pub node: &'a Node,
    pub kubeconfig: &'a Path,
    pub root_dir: &'a Path,
    pub cni_conf_dir: &'a Path,
    pub heartbeat_seconds: u32,
    pub restart_backoff_seconds: u32,
    /// Image catalog (JSON) beyond the built-in busybox and nginx.
    pub image_catalog: Option<&'a Path>,
}

impl NodeRuntime<'_> {
    pub fn args(&self, lab: &Lab) -> Vec<String> {
        let n = self.node;
        let p = |p: &Path| p.display().to_string();
        let mut a = vec![
            "node".into(),
            "--kubeconfig".into(),
            p(self.kubeconfig),
            "--node-name".into(),
            n.name.clone(),
            "--node-ip".into(),
            n.underlay_ip.to_string(),
            "--root-dir".into(),
            p(self.root_dir),
            "--cni-conf-dir".into(),
            p(self.cni_conf_dir),
            "--cni-bin-dir".into(),
            p(lab.cni_bin_dir()),
            "--cgroup-root".into(),
            p(&lab.cgroup(n).join("pods")),
            "--netns-prefix".into(),
            format!("{}{}-p-", lab.prefix(), n.name),
            "--heartbeat-seconds".into(),
            self.heartbeat_seconds.to_string(),
            "--restart-backoff-seconds".into(),
            self.restart_backoff_seconds.to_string(),
            // Beside the agent's pins, under the lab's prefix (swept with them).
            "--mesh-pin-dir".into(),
            format!("{}-mesh", lab.bpf_pin_dir(n).display()),
        ];
        if let Some(c) = self.image_catalog {
            a.extend(["--image-catalog".into(), p(c)]);
        }
        a
    }
}

/// `meshwork-control` for `node`: its own cgroup (the pods' are below it) and pin dir,
/// NodePorts on the node's underlay address served by tc on its uplink; with `overlay_pod_cidr`
/// it also owns the node's VXLAN overlay (programmed from Node objects).
pub struct Agent<'a> {
    pub node: &'a Node,
    pub kubeconfig: &'a Path,
    pub admin_listen: String,
    pub overlay_pod_cidr: Option<String>,
    /// The proxies' discovery, served over mTLS with a certificate from this identity
    /// service; None: not served (`--destination-listen off`).
    pub discovery: Option<Discovery<'a>>,
}

/// What the agent needs for its discovery certificate (`control/src/destination/identity.rs`).
pub struct Discovery<'a> {
    /// The identity service, `ip:port`.
    pub identity_addr: &'a str,
    /// A token of kube-system/meshwork-control for the identity audience, bound to a pod.
    pub token: &'a Path,
    /// The mesh's trust anchors (PEM).
    pub anchors: &'a Path,
}

impl Agent<'_> {
    pub fn args(&self, lab: &Lab) -> Vec<String> {
        let n = self.node;
        let ip = n.underlay_ip.to_string();
        let mut a: Vec<String> = vec![
            "--kubeconfig".into(),
            self.kubeconfig.display().to_string(),
            "--node-name".into(),
            n.name.clone(),
            "--cgroup".into(),
            lab.cgroup(n).display().to_string(),
            "--pin-dir".into(),
            lab.bpf_pin_dir(n).display().to_string(),
            "--admin-listen".into(),
            self.admin_listen.clone(),
            "--node-ip".into(),
            ip.clone(),
            "--uplink".into(),
            n.uplink.clone(),
        ];
        match &self.discovery {
            Some(d) => a.extend([
                "--identity-addr".into(),
                d.identity_addr.to_string(),
                "--identity-token".into(),
                d.token.display().to_string(),
                "--trust-anchors".into(),
                d.anchors.display().to_string(),
            ]),
            None => a.extend(["--destination-listen".into(), "off".into()]),
        }
        if let Some(cidr) = &self.overlay_pod_cidr {
            a.extend([
                "--overlay-uplink".into(),
                n.uplink.clone(),
                "--overlay-ip".into(),
                ip,
                "--pod-cidr".into(),
                cidr.clone(),
            ]);
        }
        a
    }
}
