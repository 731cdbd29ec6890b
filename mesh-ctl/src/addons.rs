//! The cluster add-ons `up` installs as workloads from deploy/addons/ (the agent DaemonSet,
//! cluster DNS, the mesh identity service): the manifests are compiled in, their `%{NAME}%`
//! placeholders filled (k3s's packaged-manifest convention), and applied with kubectl like any
//! user's manifest. The images they name are this build's binaries, through the node runtime's
//! image catalog.

use std::{io::Write, path::Path, process::Stdio};

use anyhow::{bail, Context, Result};
use meshwork_orchestrator::node::catalog::{self, Catalog, Image, Root};

pub const CONTROL: &str = include_str!("../../deploy/addons/meshwork-control.yaml");
pub const DNS: &str = include_str!("../../deploy/addons/meshwork-dns.yaml");
pub const IDENTITY: &str = include_str!("../../deploy/addons/meshwork-identity.yaml");
pub const INJECTOR: &str = include_str!("../../deploy/addons/meshwork-injector.yaml");

/// The binaries the add-ons run as images `meshwork/<name>:dev` (and the proxy the injector
/// puts into pods): they must sit next to mesh-ctl.
pub const IMAGES: [&str; 5] = [
    "meshwork-control",
    "meshwork-dns",
    "meshwork-identity",
    "meshwork-injector",
    "meshwork-proxy",
];
/// The image reference injected pods run the proxy from.
pub const PROXY_IMAGE: &str = "meshwork/meshwork-proxy:dev";

/// `template` with each `%{NAME}%` of `vars` replaced; a placeholder left over is an error
/// (a manifest and this code disagree).
pub fn render(template: &str, vars: &[(&str, &str)]) -> Result<String> {
    let mut out = template.to_string();
    for (k, v) in vars {
        out = out.replace(&format!("%{{{k}}}%"), v);
    }
    // Comments may name the convention itself.
    let left = out
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .find_map(|l| l.find("%{").map(|at| l[at..].to_string()));
    if let Some(name) = left {
        bail!("manifest placeholder {name} has no value");
    }
    Ok(out)
}

/// The node runtime's catalog: the built-in images plus one per [`IMAGES`], which run this
/// build's binaries on the host's root.
pub fn catalog() -> Result<Catalog> {
    let mut c = Catalog::default();
    for bin in IMAGES {
        let path = crate::check::sibling(bin)
            .with_context(|| format!("{bin} is not next to mesh-ctl (scripts/up.sh builds it)"))?;
        c.images.insert(
            bin.to_string(),
            Image {
                root: Root::Host,
                entrypoint: vec![path.display().to_string()],
                cmd: vec![],
                env: [("PATH".to_string(), catalog::PATH.to_string())].into(),
                writable: vec![],
                workdir: None,
            },
        );
    }
    Ok(c)
}

/// `kubectl apply -f -` of `yaml` as the cluster admin.
pub fn apply(kubeconfig: &Path, yaml: &str) -> Result<String> {
    let mut child = std::process::Command::new(crate::state::kubectl())
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running kubectl")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(yaml.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "kubectl apply failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_placeholder_of_the_manifests_is_filled() {
        let vars = [
            ("STATE_DIR", "/var/lib/meshwork"),
            ("PIN_DIR_PREFIX", "/sys/fs/bpf/meshwork/mwl-mesh-"),
            ("CLUSTER_DNS", "10.96.0.10"),
            ("DNS_UPSTREAM", "127.0.0.1:9"),
            ("TRUST_DOMAIN", "cluster.local"),
            ("INJECTOR_CA_BUNDLE", "Y2E="),
            ("PROXY_IMAGE", PROXY_IMAGE),
        ];
        for m in [CONTROL, DNS, IDENTITY, INJECTOR] {
            let out = render(m, &vars).unwrap_or_else(|e| panic!("{e}"));
            assert!(
                out.lines()
                    .all(|l| l.trim_start().starts_with('#') || !l.contains("%{")),
                "{out}"
            );
        }
        let e = render(CONTROL, &vars[..1]).unwrap_err().to_string();
        assert!(e.contains("%{PIN_DIR_PREFIX}%"), "{e}");
    }
}
