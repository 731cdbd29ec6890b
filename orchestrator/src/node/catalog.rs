//! The image catalog: what an image reference means on this node, offline. An image is either
//! the host's own filesystem with some private writable directories (Debian's nginx), or a
//! root filesystem the runtime builds per container (busybox from busybox-static: the static
//! binary and a link per applet), or a directory to chroot into. Configurable with a JSON file
//! of the same shape as `Catalog::default()`.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub enum Root {
    /// The host's root; `writable` directories are private per container.
    Host,
    /// A fresh root per container holding a static busybox and its applet links.
    Busybox { binary: PathBuf },
    /// This directory as the root (shared, read as is; `writable` directories private).
    Dir { path: PathBuf },
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Image {
    pub root: Root,
    /// The image's entrypoint and default arguments (Docker's ENTRYPOINT/CMD).
    #[serde(default)]
    pub entrypoint: Vec<String>,
    #[serde(default)]
    pub cmd: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Directories that get a private, writable copy per container.
    #[serde(default)]
    pub writable: Vec<PathBuf>,
    #[serde(default)]
    pub workdir: Option<PathBuf>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Catalog {
    pub images: BTreeMap<String, Image>,
}

/// The PATH every image of the catalog runs with.
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

impl Default for Catalog {
    fn default() -> Self {
        let env: BTreeMap<String, String> = [("PATH".to_string(), PATH.to_string())].into();
        let mut images = BTreeMap::new();
        images.insert(
            "busybox".into(),
            Image {
                root: Root::Busybox {
                    binary: "/bin/busybox".into(),
                },
                entrypoint: vec![],
                cmd: vec!["sh".into()],
                env: env.clone(),
                writable: vec![],
                workdir: None,
            },
        );
        images.insert(
            "nginx".into(),
            Image {
                root: Root::Host,
                entrypoint: vec![],
                cmd: vec!["nginx".into(), "-g".into(), "daemon off;".into()],
                env,
                writable: vec![
                    "/var/log/nginx".into(),
                    "/var/lib/nginx".into(),
                    "/run".into(),
                    "/tmp".into(),
                ],
                workdir: None,
            },
        );
        Catalog { images }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("reading image catalog {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("image catalog {path}: {source}")]
    Parse {
        path: String,
        #[source]
        source: serde_json::Error,
    },
}

/// `docker.io/library/busybox:1.36@sha256:..` → `busybox`.
pub fn image_name(reference: &str) -> &str {
    let no_digest = reference.split('@').next().unwrap_or(reference);
    let last = no_digest.rsplit('/').next().unwrap_or(no_digest);
    last.split(':').next().unwrap_or(last)
}

impl Catalog {
    pub fn load(path: Option<&Path>) -> Result<Self, CatalogError> {
        let Some(path) = path else {
            return Ok(Catalog::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| CatalogError::Read {
            path: path.display().to_string(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| CatalogError::Parse {
            path: path.display().to_string(),
            source,
        })
    }

    pub fn find(&self, reference: &str) -> Option<&Image> {
        self.images
            .get(reference)
            .or_else(|| self.images.get(image_name(reference)))
    }
}

/// Builds a busybox root at `dir`: `bin/busybox` (hard link when on the same filesystem, else
/// a copy), a link per applet, and the directories programs expect.
pub fn build_busybox_root(binary: &Path, dir: &Path) -> std::io::Result<()> {
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "tmp", "var/www", "root", "proc", "dev",
        "home",
    ] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    let target = dir.join("bin/busybox");
    if !target.exists() && std::fs::hard_link(binary, &target).is_err() {
        std::fs::copy(binary, &target)?;
    }
    let out = std::process::Command::new(binary)
        .arg("--list-full")
        .output()?;
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        let link = dir.join(applet);
        if link.exists() || applet == "bin/busybox" {
            continue;
        }
        if let Some(parent) = link.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::os::unix::fs::symlink("/bin/busybox", &link)?;
    }
    std::fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n",
    )?;
    std::fs::write(dir.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_resolve_to_catalog_names() {
        assert_eq!(image_name("busybox"), "busybox");
        assert_eq!(image_name("busybox:1.36"), "busybox");
        assert_eq!(
            image_name("docker.io/library/nginx:1.25@sha256:abc"),
            "nginx"
        );
        let c = Catalog::default();
        assert!(c.find("registry.k8s.io/busybox:latest").is_some());
        assert!(c.find("redis").is_none());
    }

    #[test]
    fn catalog_file_roundtrips() {
        let c = Catalog::default();
        let text = serde_json::to_string(&c).unwrap();
        let back: Catalog = serde_json::from_str(&text).unwrap();
        assert_eq!(back, c);
    }
}
