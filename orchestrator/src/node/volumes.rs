//! Pod volumes on this node (the kubelet's volume manager, for the kinds a single-machine
//! cluster needs): `emptyDir`, `hostPath`, `configMap`, `secret`, `downwardAPI`, and
//! `projected` volumes of those sources plus `serviceAccountToken`. Each volume is a directory
//! under the sandbox (`<sandbox>/volumes/<name>`, removed with it, except hostPath) that the
//! shim bind-mounts into the containers that mount it (`runtime.rs`).
//!
//! ServiceAccount tokens are bound to the pod (TokenRequest with a Pod boundObjectRef, as the
//! kubelet's token manager asks for them) and refreshed once 80% of their life has passed —
//! the life the API server granted, which may be shorter than asked. Files are replaced by
//! rename, so a reader sees the old token or the new one, never half of either.
//!
//! Other volume kinds are refused with a message naming them: running a pod without the
//! volume it asked for would be worse.

use std::{
    collections::{BTreeMap, HashMap},
    io::Write,
    os::unix::fs::PermissionsExt,
    path::{Component, Path, PathBuf},
    time::{Duration, SystemTime},
};

use k8s_openapi::api::{
    authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec},
    core::v1::{
        ConfigMap, DownwardAPIVolumeFile, KeyToPath, Pod, Secret, ServiceAccount, Volume,
        VolumeMount,
    },
};
use kube::{api::PostParams, Api, Client, ResourceExt};

/// A projected token to keep fresh.
#[derive(Clone, Debug)]
pub struct TokenFile {
    pub dir: PathBuf,
    pub path: String,
    pub audience: Option<String>,
    pub expiration_seconds: i64,
    pub mode: u32,
    pub refresh_at: SystemTime,
}

/// A pod's volumes, set up.
#[derive(Clone, Debug, Default)]
pub struct PodVolumes {
    /// Volume name → the host directory (or, for hostPath, file) to mount.
    pub paths: HashMap<String, PathBuf>,
    /// Volumes the node writes (configMap, secret, downwardAPI, projected): mounted read-only
    /// whatever the pod says, as the kubelet does, so a container cannot plant links in them.
    pub read_only: std::collections::HashSet<String>,
    pub tokens: Vec<TokenFile>,
}

/// Where a configMap or secret volume's keys come from.
#[derive(Clone, Copy)]
enum Source {
    ConfigMap,
    Secret,
}

/// kube's default for a projected token that names no expirationSeconds.
const DEFAULT_TOKEN_SECONDS: i64 = 3600;
const DEFAULT_MODE: u32 = 0o644;

fn err(volume: &str, why: impl std::fmt::Display) -> String {
    format!("MountVolume.SetUp failed for volume \"{volume}\": {why}")
}

/// A relative path that stays inside its volume (`..` and absolute paths are refused, as the
/// API server's validation also does).
fn inside(dir: &Path, rel: &str) -> Result<PathBuf, String> {
    let p = Path::new(rel);
    if rel.is_empty() || !p.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(format!(
            "path {rel:?} must be relative and may not contain '..'"
        ));
    }
    Ok(dir.join(p))
}

/// Writes `data` at `path` by rename, with `mode`. The temporary file is created anew and
/// never through a symbolic link (`O_EXCL|O_NOFOLLOW`): this runs as root.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    // A leftover (or a planted link) goes; remove_file removes a link, not its target.
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(data)?;
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    drop(f);
    std::fs::rename(&tmp, path)
}

fn field_value(pod: &Pod, path: &str) -> Result<String, String> {
    let kv = |m: &BTreeMap<String, String>| {
        m.iter()
            .map(|(k, v)| format!("{k}={v:?}\n"))
            .collect::<String>()
    };
    Ok(match path {
        "metadata.name" => pod.name_any(),
        "metadata.namespace" => pod.namespace().unwrap_or_default(),
        "metadata.uid" => pod.uid().unwrap_or_default(),
        "metadata.labels" => kv(pod.labels()),
        "metadata.annotations" => kv(pod.annotations()),
        other => {
            if let Some(k) = other
                .strip_prefix("metadata.labels['")
                .and_then(|k| k.strip_suffix("']"))
            {
                pod.labels().get(k).cloned().unwrap_or_default()
            } else if let Some(k) = other
                .strip_prefix("metadata.annotations['")
                .and_then(|k| k.strip_suffix("']"))
            {
                pod.annotations().get(k).cloned().unwrap_or_default()
            } else {
                return Err(format!("fieldRef {other:?} is not supported"));
            }
        }
    })
}

/// Writes `data` (key → bytes) selected by `items` (all keys when None) into `dir`.
fn write_keys(
    dir: &Path,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&Vec<KeyToPath>>,
    mode: u32,
    what: &str,
) -> Result<(), String> {
    match items {
        None => {
            for (k, v) in data {
                write_atomic(&inside(dir, k)?, v, mode).map_err(|e| e.to_string())?;
            }
        }
        Some(items) => {
            for it in items {
                let v = data
                    .get(&it.key)
                    .ok_or_else(|| format!("{what} has no key {:?}", it.key))?;
                let m = it.mode.map_or(mode, |m| m as u32);
                write_atomic(&inside(dir, &it.path)?, v, m).map_err(|e| e.to_string())?;
            }
        }
    }
    Ok(())
}

fn downward(
    pod: &Pod,
    dir: &Path,
    items: &[DownwardAPIVolumeFile],
    mode: u32,
) -> Result<(), String> {
    for it in items {
        let Some(f) = &it.field_ref else {
            return Err(format!(
                "downwardAPI {:?}: only fieldRef items are supported",
                it.path
            ));
        };
        let v = field_value(pod, &f.field_path)?;
        let m = it.mode.map_or(mode, |m| m as u32);
        write_atomic(&inside(dir, &it.path)?, v.as_bytes(), m).map_err(|e| e.to_string())?;
    }
    Ok(())
}

pub struct Mounter<'a> {
    pub client: &'a Client,
    pub pod: &'a Pod,
    /// `<sandbox>/volumes`.
    pub root: PathBuf,
}

impl Mounter<'_> {
    fn ns(&self) -> String {
        self.pod.namespace().unwrap_or_default()
    }

    async fn configmap(&self, name: &str, optional: bool) -> Result<Option<ConfigMap>, String> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &self.ns());
        match api.get_opt(name).await {
            Ok(Some(cm)) => Ok(Some(cm)),
            Ok(None) if optional => Ok(None),
            Ok(None) => Err(format!("configmap \"{name}\" not found")),
            Err(e) => Err(format!("configmap \"{name}\": {e}")),
        }
    }

    async fn secret(&self, name: &str, optional: bool) -> Result<Option<Secret>, String> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.ns());
        match api.get_opt(name).await {
            Ok(Some(s)) => Ok(Some(s)),
            Ok(None) if optional => Ok(None),
            Ok(None) => Err(format!("secret \"{name}\" not found")),
            Err(e) => Err(format!("secret \"{name}\": {e}")),
        }
    }

    fn configmap_data(cm: &ConfigMap) -> BTreeMap<String, Vec<u8>> {
        let mut out: BTreeMap<String, Vec<u8>> = cm
            .data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
            .collect();
        for (k, v) in cm.binary_data.iter().flatten() {
            out.insert(k.clone(), v.0.clone());
        }
        out
    }

    fn secret_data(s: &Secret) -> BTreeMap<String, Vec<u8>> {
        let mut out: BTreeMap<String, Vec<u8>> = s
            .data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect();
        for (k, v) in s.string_data.iter().flatten() {
            out.insert(k.clone(), v.clone().into_bytes());
        }
        out
    }

    /// A ConfigMap's or Secret's keys (or `items`) into `dir`; nothing when optional and
    /// missing.
    async fn write_source(
        &self,
        dir: &Path,
        source: Source,
        name: &str,
        optional: Option<bool>,
        items: Option<&Vec<KeyToPath>>,
        mode: u32,
    ) -> Result<(), String> {
        let optional = optional == Some(true);
        let (data, kind) = match source {
            Source::ConfigMap => (
                self.configmap(name, optional)
                    .await?
                    .map(|cm| Self::configmap_data(&cm)),
                "configmap",
            ),
            Source::Secret => (
                self.secret(name, optional)
                    .await?
                    .map(|s| Self::secret_data(&s)),
                "secret",
            ),
        };
        if let Some(data) = data {
            write_keys(dir, &data, items, mode, &format!("{kind} \"{name}\""))?;
        }
        Ok(())
    }

    /// Sets up every volume of the pod.
    pub async fn mount_all(&self) -> Result<PodVolumes, String> {
        let mut out = PodVolumes::default();
        let spec = self.pod.spec.clone().unwrap_or_default();
        for v in spec.volumes.iter().flatten() {
            self.mount(v, &mut out).await.map_err(|e| err(&v.name, e))?;
        }
        Ok(out)
    }

    async fn mount(&self, v: &Volume, out: &mut PodVolumes) -> Result<(), String> {
        let dir = inside(&self.root, &v.name)?;
        let mkdir = |d: &Path| std::fs::create_dir_all(d).map_err(|e| e.to_string());
        if v.empty_dir.is_some() {
            mkdir(&dir)?;
        } else if let Some(h) = &v.host_path {
            let p = PathBuf::from(&h.path);
            match h.type_.as_deref().unwrap_or_default() {
                "" => {}
                "DirectoryOrCreate" => mkdir(&p)?,
                "FileOrCreate" if !p.exists() => {
                    std::fs::write(&p, b"").map_err(|e| e.to_string())?;
                }
                "Directory" if !p.is_dir() => {
                    return Err(format!(
                        "hostPath type check failed: {} is not a directory",
                        h.path
                    ))
                }
                "File" if !p.is_file() => {
                    return Err(format!(
                        "hostPath type check failed: {} is not a file",
                        h.path
                    ))
                }
                "Socket" | "CharDevice" | "BlockDevice" if !p.exists() => {
                    return Err(format!(
                        "hostPath type check failed: {} does not exist",
                        h.path
                    ))
                }
                _ => {}
            }
            out.paths.insert(v.name.clone(), p);
            return Ok(());
        } else if let Some(c) = &v.config_map {
            mkdir(&dir)?;
            let mode = c.default_mode.map_or(DEFAULT_MODE, |m| m as u32);
            self.write_source(
                &dir,
                Source::ConfigMap,
                &c.name,
                c.optional,
                c.items.as_ref(),
                mode,
            )
            .await?;
        } else if let Some(s) = &v.secret {
            mkdir(&dir)?;
            let mode = s.default_mode.map_or(DEFAULT_MODE, |m| m as u32);
            let name = s.secret_name.clone().unwrap_or_default();
            self.write_source(
                &dir,
                Source::Secret,
                &name,
                s.optional,
                s.items.as_ref(),
                mode,
            )
            .await?;
        } else if let Some(d) = &v.downward_api {
            mkdir(&dir)?;
            let mode = d.default_mode.map_or(DEFAULT_MODE, |m| m as u32);
            downward(self.pod, &dir, d.items.as_deref().unwrap_or_default(), mode)?;
        } else if let Some(p) = &v.projected {
            mkdir(&dir)?;
            let mode = p.default_mode.map_or(DEFAULT_MODE, |m| m as u32);
            for src in p.sources.iter().flatten() {
                if let Some(c) = &src.config_map {
                    self.write_source(
                        &dir,
                        Source::ConfigMap,
                        &c.name,
                        c.optional,
                        c.items.as_ref(),
                        mode,
                    )
                    .await?;
                } else if let Some(sec) = &src.secret {
                    self.write_source(
                        &dir,
                        Source::Secret,
                        &sec.name,
                        sec.optional,
                        sec.items.as_ref(),
                        mode,
                    )
                    .await?;
                } else if let Some(d) = &src.downward_api {
                    downward(self.pod, &dir, d.items.as_deref().unwrap_or_default(), mode)?;
                } else if let Some(t) = &src.service_account_token {
                    inside(&dir, &t.path)?;
                    let mut tf = TokenFile {
                        dir: dir.clone(),
                        path: t.path.clone(),
                        audience: t.audience.clone().filter(|a| !a.is_empty()),
                        expiration_seconds: t.expiration_seconds.unwrap_or(DEFAULT_TOKEN_SECONDS),
                        mode,
                        refresh_at: SystemTime::UNIX_EPOCH,
                    };
                    self.refresh(&mut tf).await?;
                    out.tokens.push(tf);
                } else {
                    return Err("a projected source of a kind this node does not support".into());
                }
            }
        } else {
            return Err("volume type not supported by the Meshwork node runtime (supported: emptyDir, hostPath, configMap, secret, downwardAPI, projected)".into());
        }
        if v.empty_dir.is_none() {
            out.read_only.insert(v.name.clone());
        }
        out.paths.insert(v.name.clone(), dir);
        Ok(())
    }

    /// Asks for a new bound token and writes it; sets the next refresh time.
    pub async fn refresh(&self, t: &mut TokenFile) -> Result<(), String> {
        let spec = self.pod.spec.as_ref();
        let sa = spec
            .and_then(|s| s.service_account_name.clone())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".into());
        let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &self.ns());
        let req = TokenRequest {
            spec: TokenRequestSpec {
                audiences: t.audience.iter().cloned().collect(),
                expiration_seconds: Some(t.expiration_seconds),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: Some(self.pod.name_any()),
                    uid: self.pod.uid(),
                }),
            },
            ..Default::default()
        };
        let asked = SystemTime::now();
        let got = api
            .create_token_request(&sa, &PostParams::default(), &req)
            .await
            .map_err(|e| format!("requesting a token for service account \"{sa}\": {e}"))?;
        let status = got.status.ok_or("TokenRequest answered without a status")?;
        write_atomic(&t.dir.join(&t.path), status.token.as_bytes(), t.mode)
            .map_err(|e| e.to_string())?;
        let exp = SystemTime::UNIX_EPOCH
            + Duration::from_secs(status.expiration_timestamp.0.as_second().max(0) as u64);
        t.refresh_at = refresh_time(asked, exp);
        Ok(())
    }
}

/// When to replace a token issued at `issued` that expires at `exp`: at 80% of its life
/// (kube's token manager), and at least a day after issue.
pub fn refresh_time(issued: SystemTime, exp: SystemTime) -> SystemTime {
    let life = exp.duration_since(issued).unwrap_or_default();
    issued + (life * 4 / 5).min(Duration::from_secs(24 * 3600))
}

/// The bind mounts (`SRC:DST[:ro]`, as the shim takes them) for a container's volumeMounts.
pub fn binds(vols: &PodVolumes, mounts: &[VolumeMount]) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for m in mounts {
        let base = vols.paths.get(&m.name).ok_or_else(|| {
            format!(
                "volumeMount {:?}: the pod has no volume of that name",
                m.name
            )
        })?;
        let src = match m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            Some(sp) => {
                let p = inside(base, sp)?;
                // A container may have made a component a link (to / or anywhere): refused, as
                // the kubelet refuses subPaths that leave their volume.
                let mut at = base.clone();
                for c in Path::new(sp).components() {
                    at.push(c);
                    if at
                        .symlink_metadata()
                        .is_ok_and(|md| md.file_type().is_symlink())
                    {
                        return Err(format!(
                            "volumeMount {:?}: subPath {sp:?} goes through a symbolic link",
                            m.name
                        ));
                    }
                }
                if !p.exists() {
                    std::fs::create_dir_all(&p).map_err(|e| e.to_string())?;
                }
                p
            }
            None => base.clone(),
        };
        if src.to_string_lossy().contains(':') || m.mount_path.contains(':') {
            return Err(format!(
                "volumeMount {:?}: ':' in a path is not supported",
                m.name
            ));
        }
        let ro = if m.read_only == Some(true) || vols.read_only.contains(&m.name) {
            ":ro"
        } else {
            ""
        };
        out.push(format!("{}:{}{ro}", src.display(), m.mount_path));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_at_four_fifths_of_the_granted_life() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        assert_eq!(
            refresh_time(t0, t0 + Duration::from_secs(3607)),
            t0 + Duration::from_millis(2_885_600)
        );
        assert_eq!(
            refresh_time(t0, t0 + Duration::from_secs(10)),
            t0 + Duration::from_secs(8)
        );
        let year = Duration::from_secs(365 * 24 * 3600);
        assert_eq!(
            refresh_time(t0, t0 + year),
            t0 + Duration::from_secs(24 * 3600)
        );
    }

    #[test]
    fn paths_stay_inside_the_volume() {
        let d = Path::new("/v");
        assert!(inside(d, "../x").is_err());
        assert!(inside(d, "/etc/passwd").is_err());
        assert!(inside(d, "").is_err());
        assert_eq!(inside(d, "a/b").unwrap(), Path::new("/v/a/b"));
    }

    #[test]
    fn binds_name_source_target_and_read_only() {
        let mut v = PodVolumes::default();
        v.paths.insert("tok".into(), "/sb/volumes/tok".into());
        let m = VolumeMount {
            name: "tok".into(),
            mount_path: "/var/run/secrets/kubernetes.io/serviceaccount".into(),
            read_only: Some(true),
            ..Default::default()
        };
        assert_eq!(
            binds(&v, &[m]).unwrap(),
            vec!["/sb/volumes/tok:/var/run/secrets/kubernetes.io/serviceaccount:ro"]
        );
        let missing = VolumeMount {
            name: "nope".into(),
            mount_path: "/x".into(),
            ..Default::default()
        };
        assert!(binds(&v, &[missing]).unwrap_err().contains("no volume"));
    }
}
