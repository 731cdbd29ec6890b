//! Calls CNI plugins the way containerd's CRI plugin does through libcni.
//!
//! For each plugin of a conflist: look the binary up in the bin dirs, set `CNI_*`, write the
//! plugin's config with `name`, `cniVersion`, `prevResult` and `runtimeConfig` injected, read
//! stdout. ADD runs in order chaining `prevResult`; DEL runs in reverse.

use std::{
    collections::BTreeMap,
    ffi::OsString,
    io::Write,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde_json::{Map, Value};

use crate::types::{version_cmp, Attachment, CniError, CniResult, NetConfList, VersionInfo};

/// What the runtime knows about one attachment.
#[derive(Clone, Debug, Default)]
pub struct RuntimeConf {
    pub container_id: String,
    /// Path of the container's network namespace; empty for DEL after the sandbox is gone.
    pub netns: String,
    pub ifname: String,
    /// `CNI_ARGS` pairs, e.g. `K8S_POD_NAMESPACE`.
    pub args: Vec<(String, String)>,
    /// Capability arguments (`portMappings`, ...), passed in `runtimeConfig` to plugins that
    /// declare the capability — as libcni does.
    pub capability_args: BTreeMap<String, Value>,
}

#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    #[error("CNI plugin {plugin:?} not found in {dirs:?}")]
    NotFound { plugin: String, dirs: Vec<PathBuf> },
    #[error("running CNI plugin {plugin}: {source}")]
    Spawn {
        plugin: String,
        #[source]
        source: std::io::Error,
    },
    #[error("CNI plugin {plugin} failed: {error}")]
    Plugin {
        plugin: String,
        #[source]
        error: CniError,
    },
    #[error("CNI plugin {plugin} exited with {status} without an error object; stdout {stdout:?}, stderr {stderr:?}")]
    Crashed {
        plugin: String,
        status: std::process::ExitStatus,
        stdout: String,
        stderr: String,
    },
    #[error("CNI plugin {plugin} printed an unreadable result {stdout:?}: {source}")]
    BadOutput {
        plugin: String,
        stdout: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("conflist plugin #{index} has no \"type\"")]
    NoType { index: usize },
}

impl InvokeError {
    /// The plugin's CNI error, if it returned one.
    pub fn cni_error(&self) -> Option<&CniError> {
        match self {
            InvokeError::Plugin { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// Raw output of one plugin run.
#[derive(Debug)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Finds and runs plugins.
#[derive(Clone, Debug)]
pub struct Invoker {
    pub bin_dirs: Vec<PathBuf>,
    /// Run plugins inside this network namespace (the "node" in the lab). `None`: the caller's.
    pub node_netns: Option<PathBuf>,
    /// Extra environment for plugins (e.g. a log level).
    pub env: Vec<(OsString, OsString)>,
}

impl Invoker {
    pub fn new(bin_dirs: impl IntoIterator<Item = impl Into<PathBuf>>) -> Self {
        Invoker {
            bin_dirs: bin_dirs.into_iter().map(Into::into).collect(),
            node_netns: None,
            env: Vec::new(),
        }
    }

    pub fn in_netns(mut self, netns: impl Into<PathBuf>) -> Self {
        self.node_netns = Some(netns.into());
        self
    }

    pub fn find(&self, plugin: &str) -> Result<PathBuf, InvokeError> {
        self.bin_dirs
            .iter()
            .map(|d| d.join(plugin))
            .find(|p| p.is_file())
            .ok_or_else(|| InvokeError::NotFound {
                plugin: plugin.to_string(),
                dirs: self.bin_dirs.clone(),
            })
    }

    /// Runs one plugin binary with `command` and `stdin`. A non-zero exit is parsed as the CNI
    /// error JSON from stdout.
    pub fn exec(
        &self,
        plugin: &str,
        command: &str,
        rt: &RuntimeConf,
        stdin: &[u8],
    ) -> Result<Output, InvokeError> {
        let path = self.find(plugin)?;
        let mut cmd = Command::new(&path);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", &rt.container_id)
            .env("CNI_NETNS", &rt.netns)
            .env("CNI_IFNAME", &rt.ifname)
            .env("CNI_ARGS", cni_args(&rt.args))
            .env("CNI_PATH", join_paths(&self.bin_dirs))
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let netns_file = match &self.node_netns {
            Some(p) => Some(std::fs::File::open(p).map_err(|source| InvokeError::Spawn {
                plugin: plugin.to_string(),
                source,
            })?),
            None => None,
        };
        if let Some(f) = netns_file {
            use std::os::fd::AsRawFd;
            let fd = f.as_raw_fd();
            // SAFETY: between fork and exec we only call setns(2), which is async-signal-safe;
            // `f` outlives the spawn so the fd is valid in the child.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            return run(cmd, plugin, stdin, Some(f));
        }
        run(cmd, plugin, stdin, None)
    }

    /// ADD through the whole list, returning the last plugin's result.
    pub fn add(&self, list: &NetConfList, rt: &RuntimeConf) -> Result<CniResult, InvokeError> {
        let mut prev: Option<Value> = None;
        for (i, conf) in list.plugins.iter().enumerate() {
            let plugin = plugin_type(conf, i)?;
            let stdin = build_conf(list, conf, prev.as_ref(), rt);
            let out = self.exec(&plugin, "ADD", rt, &stdin)?;
            let v: Value = parse_json(&plugin, &out.stdout)?;
            prev = Some(v);
        }
        let v = prev.unwrap_or(Value::Null);
        CniResult::from_value(v.clone()).map_err(|source| InvokeError::BadOutput {
            plugin: list.name.clone(),
            stdout: v.to_string(),
            source,
        })
    }

    /// DEL through the list in reverse; `prev` is the cached ADD result if the runtime has one.
    pub fn del(
        &self,
        list: &NetConfList,
        rt: &RuntimeConf,
        prev: Option<&CniResult>,
    ) -> Result<(), InvokeError> {
        let prev = prev.map(|r| r.to_json(&list.cni_version));
        for (i, conf) in list.plugins.iter().enumerate().rev() {
            let plugin = plugin_type(conf, i)?;
            let stdin = build_conf(list, conf, prev.as_ref(), rt);
            self.exec(&plugin, "DEL", rt, &stdin)?;
        }
        Ok(())
    }

    /// CHECK through the list with the cached result.
    pub fn check(
        &self,
        list: &NetConfList,
        rt: &RuntimeConf,
        prev: &CniResult,
    ) -> Result<(), InvokeError> {
        let prev = prev.to_json(&list.cni_version);
        for (i, conf) in list.plugins.iter().enumerate() {
            let plugin = plugin_type(conf, i)?;
            let stdin = build_conf(list, conf, Some(&prev), rt);
            self.exec(&plugin, "CHECK", rt, &stdin)?;
        }
        Ok(())
    }

    /// GC with the attachments still in use, under `cni.dev/valid-attachments` as libcni sends
    /// it. Like libcni, a no-op for lists older than 1.1.0 (GC did not exist).
    pub fn gc(&self, list: &NetConfList, valid: &[Attachment]) -> Result<(), InvokeError> {
        if version_cmp(&list.cni_version, "1.1.0").is_lt() || list.disable_gc {
            return Ok(());
        }
        let rt = RuntimeConf::default();
        let valid = serde_json::to_value(valid).unwrap_or(Value::Array(vec![]));
        for (i, conf) in list.plugins.iter().enumerate() {
            let plugin = plugin_type(conf, i)?;
            let mut obj = conf.clone();
            obj.insert("name".into(), Value::String(list.name.clone()));
            obj.insert("cniVersion".into(), Value::String(list.cni_version.clone()));
            obj.insert("cni.dev/valid-attachments".into(), valid.clone());
            let stdin = serde_json::to_vec(&obj).unwrap_or_default();
            self.exec(&plugin, "GC", &rt, &stdin)?;
        }
        Ok(())
    }

    /// STATUS of every plugin; the first failure is returned. A no-op for lists older than
    /// 1.1.0, as in libcni.
    pub fn status(&self, list: &NetConfList) -> Result<(), InvokeError> {
        if version_cmp(&list.cni_version, "1.1.0").is_lt() {
            return Ok(());
        }
        let rt = RuntimeConf::default();
        for (i, conf) in list.plugins.iter().enumerate() {
            let plugin = plugin_type(conf, i)?;
            let stdin = build_conf(list, conf, None, &rt);
            self.exec(&plugin, "STATUS", &rt, &stdin)?;
        }
        Ok(())
    }

    pub fn version(&self, plugin: &str, cni_version: &str) -> Result<VersionInfo, InvokeError> {
        let stdin = serde_json::json!({ "cniVersion": cni_version }).to_string();
        let out = self.exec(plugin, "VERSION", &RuntimeConf::default(), stdin.as_bytes())?;
        let v = parse_json(plugin, &out.stdout)?;
        serde_json::from_value(v.clone()).map_err(|source| InvokeError::BadOutput {
            plugin: plugin.to_string(),
            stdout: v.to_string(),
            source,
        })
    }
}

fn run(
    mut cmd: Command,
    plugin: &str,
    stdin: &[u8],
    _keep_open: Option<std::fs::File>,
) -> Result<Output, InvokeError> {
    let spawn_err = |source| InvokeError::Spawn {
        plugin: plugin.to_string(),
        source,
    };
    let mut child = cmd.spawn().map_err(spawn_err)?;
    if let Some(mut w) = child.stdin.take() {
        // A plugin may exit before reading stdin (e.g. on a bad env); EPIPE is not our error.
        let _ = w.write_all(stdin);
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if out.status.success() {
        return Ok(Output {
            stdout: out.stdout,
            stderr: out.stderr,
        });
    }
    match serde_json::from_slice::<CniError>(&out.stdout) {
        Ok(error) => Err(InvokeError::Plugin {
            plugin: plugin.to_string(),
            error,
        }),
        Err(_) => Err(InvokeError::Crashed {
            plugin: plugin.to_string(),
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }),
    }
}

fn parse_json(plugin: &str, stdout: &[u8]) -> Result<Value, InvokeError> {
    serde_json::from_slice(stdout).map_err(|source| InvokeError::BadOutput {
        plugin: plugin.to_string(),
        stdout: String::from_utf8_lossy(stdout).into_owned(),
        source,
    })
}

fn plugin_type(conf: &Map<String, Value>, index: usize) -> Result<String, InvokeError> {
    conf.get("type")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or(InvokeError::NoType { index })
}

/// The per-plugin stdin: its own keys plus what the runtime injects.
fn build_conf(
    list: &NetConfList,
    conf: &Map<String, Value>,
    prev: Option<&Value>,
    rt: &RuntimeConf,
) -> Vec<u8> {
    let mut obj = conf.clone();
    obj.insert("name".into(), Value::String(list.name.clone()));
    obj.insert("cniVersion".into(), Value::String(list.cni_version.clone()));
    if let Some(p) = prev {
        obj.insert("prevResult".into(), p.clone());
    }
    // libcni passes a capability argument only to plugins that declare the capability.
    if let Some(caps) = conf.get("capabilities").and_then(Value::as_object) {
        let mut runtime = Map::new();
        for (cap, on) in caps {
            if on.as_bool() == Some(true) {
                if let Some(arg) = rt.capability_args.get(cap) {
                    runtime.insert(cap.clone(), arg.clone());
                }
            }
        }
        if !runtime.is_empty() {
            obj.insert("runtimeConfig".into(), Value::Object(runtime));
        }
    }
    serde_json::to_vec(&obj).unwrap_or_default()
}

fn cni_args(args: &[(String, String)]) -> String {
    args.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(";")
}

fn join_paths(dirs: &[PathBuf]) -> OsString {
    std::env::join_paths(dirs.iter().map(|d| d.as_path())).unwrap_or_default()
}

/// Reads a conflist file.
pub fn read_conflist(path: &Path) -> Result<NetConfList, std::io::Error> {
    let s = std::fs::read_to_string(path)?;
    NetConfList::from_json(&s).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn injects_runtime_keys_and_only_declared_capabilities() {
        let list: NetConfList = serde_json::from_value(json!({
            "cniVersion": "1.0.0", "name": "net",
            "plugins": [
                {"type": "meshwork"},
                {"type": "portmap", "capabilities": {"portMappings": true}}
            ]
        }))
        .unwrap();
        let mut rt = RuntimeConf::default();
        rt.capability_args
            .insert("portMappings".into(), json!([{"hostPort": 8080}]));
        let prev = json!({"cniVersion": "1.0.0"});
        let first: Value =
            serde_json::from_slice(&build_conf(&list, &list.plugins[0], None, &rt)).unwrap();
        assert_eq!(first["name"], "net");
        assert_eq!(first["cniVersion"], "1.0.0");
        assert!(first.get("runtimeConfig").is_none());
        assert!(first.get("prevResult").is_none());
        let second: Value =
            serde_json::from_slice(&build_conf(&list, &list.plugins[1], Some(&prev), &rt)).unwrap();
        assert_eq!(second["runtimeConfig"]["portMappings"][0]["hostPort"], 8080);
        assert_eq!(second["prevResult"], prev);
    }

    #[test]
    fn cni_args_format() {
        let a = vec![
            ("K8S_POD_NAMESPACE".to_string(), "default".to_string()),
            ("K8S_POD_NAME".to_string(), "web-0".to_string()),
        ];
        assert_eq!(cni_args(&a), "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0");
    }
}
