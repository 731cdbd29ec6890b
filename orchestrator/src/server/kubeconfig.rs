//! kubeconfig files for the admin and for node agents (token user, embedded CA).

use std::path::Path;

use base64::Engine;
use serde_json::json;

use super::{write_private, Error};

/// Writes a kubeconfig (JSON, which kubectl and kube-rs read as YAML) for `server` with a
/// bearer token.
pub fn write(
    path: &Path,
    server: &str,
    ca_pem: &str,
    user: &str,
    token: &str,
) -> Result<(), Error> {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let cfg = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "meshwork", "cluster": {"server": server, "certificate-authority-data": ca}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "meshwork", "context": {"cluster": "meshwork", "user": user, "namespace": "default"}}],
        "current-context": "meshwork",
        "preferences": {},
    });
    let text = serde_json::to_string_pretty(&cfg).map_err(|e| Error::Config(e.to_string()))?;
    write_private(path, text.as_bytes())
}
