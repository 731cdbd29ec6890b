//! The `meshwork` context in the user's kubeconfig, as kind does it: `up` merges the cluster,
//! its admin user and the context and makes it current; `down` removes them. The edits go
//! through `kubectl config`, so the file keeps kubectl's own format and everything else in it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

pub const CONTEXT: &str = "meshwork";
const CLUSTER: &str = "meshwork";
const USER: &str = "meshwork-admin";

/// The file to merge into: `explicit`, else the first of $KUBECONFIG, else ~/.kube/config.
pub fn user_path(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    if let Some(k) = std::env::var_os("KUBECONFIG") {
        if let Some(first) = std::env::split_paths(&k).find(|p| !p.as_os_str().is_empty()) {
            return Some(first);
        }
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".kube").join("config"))
}

fn kubectl(file: &Path, args: &[&str]) -> Result<String> {
    let out = std::process::Command::new(crate::state::kubectl())
        .arg("--kubeconfig")
        .arg(file)
        .arg("config")
        .args(args)
        .output()
        .context("running kubectl (scripts/setup.sh installs it)")?;
    if !out.status.success() {
        bail!(
            "kubectl config {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Merges the admin kubeconfig `admin` (as the API server wrote it) into `file`.
pub fn merge(file: &Path, admin: &Path) -> Result<()> {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(admin)?)
        .with_context(|| format!("reading {}", admin.display()))?;
    let server = v["clusters"][0]["cluster"]["server"]
        .as_str()
        .context("admin kubeconfig has no server")?;
    let ca = v["clusters"][0]["cluster"]["certificate-authority-data"]
        .as_str()
        .context("admin kubeconfig has no CA")?;
    let token = v["users"][0]["user"]["token"]
        .as_str()
        .context("admin kubeconfig has no token")?;
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)?;
    }
    kubectl(
        file,
        &["set-cluster", CLUSTER, &format!("--server={server}")],
    )?;
    kubectl(
        file,
        &[
            "set",
            &format!("clusters.{CLUSTER}.certificate-authority-data"),
            ca,
        ],
    )?;
    kubectl(
        file,
        &["set-credentials", USER, &format!("--token={token}")],
    )?;
    kubectl(
        file,
        &[
            "set-context",
            CONTEXT,
            &format!("--cluster={CLUSTER}"),
            &format!("--user={USER}"),
            "--namespace=default",
        ],
    )?;
    kubectl(file, &["use-context", CONTEXT])?;
    Ok(())
}

/// Removes what `merge` added; a current context of `meshwork` is unset. A missing file or
/// entry is not an error.
pub fn remove(file: &Path) -> Result<bool> {
    if !file.exists() {
        return Ok(false);
    }
    let contexts = kubectl(file, &["get-contexts", "-o", "name"])?;
    let had = contexts.lines().any(|c| c.trim() == CONTEXT);
    if kubectl(file, &["current-context"]).is_ok_and(|c| c == CONTEXT) {
        kubectl(file, &["unset", "current-context"])?;
    }
    let _ = kubectl(file, &["delete-context", CONTEXT]);
    let _ = kubectl(file, &["delete-cluster", CLUSTER]);
    let _ = kubectl(file, &["delete-user", USER]);
    Ok(had)
}
