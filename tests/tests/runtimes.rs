//! Real container runtimes call the installed plugin (`/opt/cni/bin/meshwork`) from a conflist:
//! containerd's CRI plugin on the kubelet path (RunPodSandbox → CNI ADD) and `podman run
//! --network`. Two containers talk TCP; teardown leaves no veth and no lease.
//!
//! Recipe and the host state each runtime leaves (and how it is removed): tests/runtimes/RECIPE.md.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic with its location is the failure report"
)]
#![cfg(target_os = "linux")]

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use meshwork_lab::{require_root, sh, sh_out};
use serde_json::json;

const INSTALLED_PLUGIN: &str = "/opt/cni/bin/meshwork";
const IMAGE: &str = "localhost/meshwork-busybox:latest";
/// Prefix of everything these tests create on the host (bridges, cgroups, temp dirs).
const PREFIX: &str = "mwrt";
/// Pod subnets for the runtimes' bridge, which lives in the root namespace (the runtimes run
/// there): inside 198.18.0.0/15, the benchmarking range the lab uses, so no route of the host's
/// real networks can be shadowed while a test runs.
const RUNTIME_SUBNET_CTD: &str = "198.19.1.0/24";
const RUNTIME_SUBNET_PODMAN: &str = "198.19.2.0/24";

/// The server container: answers its one connection with `ack` and prints what it receives.
/// The `ack` makes the client's success mean it reached this server: busybox nc exits 0 once
/// any listener completed the handshake, even if nothing ever read its data (see
/// .config/nextest.toml on the missing-output flake).
/// The server container answers one connection with `ack:` and the line it read, so the
/// client's exit status proves both directions. (It used to print the line for the test to find
/// in the runtime's container log; that log once stayed empty for 20 s on a loaded CI machine
/// after the client had been answered, and the log is the runtime's plumbing, not ours.)
const SERVER: &str = "nc -l -p 8080 -e sh -c 'read m; echo \"ack:$m\"'";

/// The client container: sends `msg` to `ip`:8080 until the server's `ack:{msg}` comes back
/// (the server may not listen yet); it prints every attempt's answer for the failure report.
fn client_loop(msg: &str, ip: &str) -> String {
    format!(
        "for i in 1 2 3 4 5 6 7 8 9 10; do r=$(echo {msg} | nc -w 3 {ip} 8080); echo \"attempt $i: $r\"; \
         [ \"$r\" = ack:{msg} ] && exit 0; sleep 0.2; done; exit 1"
    )
}

fn require_installed_plugin() {
    assert!(
        Path::new(INSTALLED_PLUGIN).is_file(),
        "{INSTALLED_PLUGIN} is missing: scripts/test.sh installs it before the suite runs"
    );
}

fn busybox_archive() -> PathBuf {
    podman_setup::busybox_archive()
}

/// Host state outside the test dir that a runtime test may create; removed on drop (also on
/// panic) and swept at start by prefix.
///
/// The tests of this file sweep and clean up host-wide by prefix (processes under the `mwrt`
/// cgroup, `mwrt-*` links and temp dirs): two of them at once would remove each other's state.
/// That was the "missing server output" flake: run side by side (cargo test's threads, or two
/// runs), one test's start-up sweep deleted the other's temp dir, CRI logs included, while its
/// client had already been answered by its server. The guard holds an exclusive lock for the
/// test's whole life, cleanup included, so they take turns in any runner.
struct HostGuard {
    /// Dropped last (fields drop after `Drop::drop`), so the cleanup runs under it.
    _serial: std::fs::File,
    bridge: String,
    had_var_lib_cni: bool,
    had_var_lib_containers: bool,
    dir: tempfile::TempDir,
}

impl HostGuard {
    fn new(name: &str) -> HostGuard {
        require_root();
        require_installed_plugin();
        let serial = exclusive("/run/meshwork-runtimes-test.lock");
        sweep();
        HostGuard {
            _serial: serial,
            bridge: format!("{PREFIX}-{name}"),
            had_var_lib_cni: Path::new("/var/lib/cni").exists(),
            had_var_lib_containers: Path::new("/var/lib/containers").exists(),
            dir: tempfile::Builder::new()
                .prefix(&format!("{PREFIX}-{name}-"))
                .tempdir()
                .unwrap(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn conflist(&self, net: &str, subnet: &str) -> serde_json::Value {
        json!({
            "cniVersion": "1.0.0",
            "name": net,
            "plugins": [{
                "type": "meshwork",
                "bridge": self.bridge,
                "mtu": 1450,
                "dataDir": self.path().join("cni-state"),
                // The pod subnet only: no default route, the host's network stays out of reach.
                "ipam": {"subnet": subnet, "routes": [{"dst": subnet}]}
            }]
        })
    }

    /// After the runtime's teardown: no host veth and no lease of `net` is left.
    fn assert_torn_down(&self, net: &str) {
        assert!(
            our_veths(net).is_empty(),
            "veths left: {:?}",
            our_veths(net)
        );
        assert!(
            self.leases(net).is_empty(),
            "leases left: {:?}",
            self.leases(net)
        );
    }

    fn leases(&self, net: &str) -> Vec<String> {
        std::fs::read_dir(self.path().join("cni-state").join(net).join("leases"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Host veths our plugin made for network `net` (identified by their alias).
fn our_veths(net: &str) -> Vec<String> {
    let out = sh(&["ip", "-o", "-d", "link", "show"]);
    out.lines()
        .filter(|l| l.contains(&format!("alias meshwork/{net}/")))
        .map(|l| {
            l.split(": ")
                .nth(1)
                .unwrap_or("")
                .split('@')
                .next()
                .unwrap_or("")
                .to_string()
        })
        .collect()
}

impl Drop for HostGuard {
    fn drop(&mut self) {
        // Processes of ours (containerd, shims, conmon) still running: kill by their temp dir;
        // the containers themselves by their cgroup parent.
        kill_matching(&self.path().to_string_lossy());
        kill_cgroup_members();
        unmount_under(self.path());
        delete_test_veths();
        let _ = sh_out(&["ip", "link", "del", &self.bridge]);
        remove_cgroups();
        if !self.had_var_lib_cni {
            let _ = std::fs::remove_dir_all("/var/lib/cni");
        }
        if !self.had_var_lib_containers {
            let _ = std::fs::remove_dir_all("/var/lib/containers");
        }
        for d in [
            "/run/containerd/s",
            "/run/containerd",
            "/run/runc",
            "/run/mount",
        ] {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// `path` opened and locked (flock, exclusive), waiting for any other holder.
fn exclusive(path: &str) -> std::fs::File {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    // SAFETY: flock on a descriptor we own; released when the file is closed.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(r, 0, "flock {path}: {}", std::io::Error::last_os_error());
    f
}

/// Leftovers of a crashed earlier run: processes, mounts, bridges and cgroups named `mwrt*`.
fn sweep() {
    let tmp = std::env::temp_dir();
    for e in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(&format!("{PREFIX}-")) {
            kill_matching(&e.path().to_string_lossy());
            unmount_under(&e.path());
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    kill_cgroup_members();
    delete_test_veths();
    let links = sh(&["ip", "-o", "link", "show"]);
    for l in links.lines() {
        let name = l
            .split(": ")
            .nth(1)
            .unwrap_or("")
            .split('@')
            .next()
            .unwrap_or("");
        if name.starts_with(&format!("{PREFIX}-")) {
            let _ = sh_out(&["ip", "link", "del", name]);
        }
    }
    remove_cgroups();
}

fn kill_matching(needle: &str) {
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if pid == std::process::id() as i32 {
            continue;
        }
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmd)
            .replace('\0', " ")
            .contains(needle)
        {
            // SAFETY: kill(2) by pid; a stale pid at worst gets ESRCH.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

fn unmount_under(dir: &Path) {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter(|m| m.starts_with(&*dir.to_string_lossy()))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = sh_out(&["umount", "-l", p]);
    }
}

/// Container processes (sandbox pause loops, test commands) are children of the runtime's
/// shims, not of anything named after our temp dir: they are found through the cgroup parent
/// every test pod gets (`/mwrt/...`). Killing them releases the pods' network namespaces, and
/// with them the veth pairs.
fn kill_cgroup_members() {
    for _ in 0..50 {
        let mut found = false;
        for root in cgroup_roots() {
            let out = sh_out(&["find", root.to_str().unwrap_or(""), "-name", "cgroup.procs"]);
            for f in String::from_utf8_lossy(&out.stdout).lines() {
                for pid in std::fs::read_to_string(f)
                    .unwrap_or_default()
                    .split_whitespace()
                {
                    if let Ok(pid) = pid.parse::<i32>() {
                        found = true;
                        // SAFETY: kill(2) of a process in our test cgroup.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            }
        }
        if !found {
            return;
        }
        // Killed processes need a moment to leave their cgroups; nothing to wait on.
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Host veths our plugin made for any runtime test network (alias `meshwork/mwrt-...`).
fn delete_test_veths() {
    let out = sh(&["ip", "-o", "-d", "link", "show"]);
    for l in out
        .lines()
        .filter(|l| l.contains(&format!("alias meshwork/{PREFIX}-")))
    {
        let name = l
            .split(": ")
            .nth(1)
            .unwrap_or("")
            .split('@')
            .next()
            .unwrap_or("");
        if !name.is_empty() {
            let _ = sh_out(&["ip", "link", "del", name]);
        }
    }
}

/// `/mwrt` in every hierarchy: per controller on hybrid/v1 hosts, the root on pure cgroup v2.
fn cgroup_roots() -> Vec<PathBuf> {
    let mut roots = vec![Path::new("/sys/fs/cgroup").join(PREFIX)];
    for h in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        roots.push(h.path().join(PREFIX));
    }
    roots.into_iter().filter(|p| p.is_dir()).collect()
}

/// cgroup parents `/mwrt/...` in every hierarchy, removed depth first.
fn remove_cgroups() {
    for root in cgroup_roots() {
        {
            let _ = sh_out(&[
                "find",
                root.to_str().unwrap(),
                "-depth",
                "-type",
                "d",
                "-exec",
                "rmdir",
                "{}",
                ";",
            ]);
        }
    }
}

/// Polls `f` until it returns Some, for up to `tries` × `every` (the lab's one polling helper;
/// no signal to wait on: a runtime's container state is only observable by asking).
async fn eventually<T>(
    what: &str,
    tries: u32,
    every: Duration,
    f: impl AsyncFnMut() -> Option<T>,
) -> T {
    meshwork_lab::wait::eventually_async(what, every * tries, f).await
}

mod containerd {
    use super::*;
    use hyper_util::rt::TokioIo;
    use k8s_cri::v1::{runtime_service_client::RuntimeServiceClient, *};
    use tokio::net::UnixStream;
    use tonic::transport::{Channel, Endpoint, Uri};

    const CONFIG: &str = r#"version = 2
root = "@DIR@/root"
state = "@DIR@/state"
oom_score = 0
disabled_plugins = [
  "io.containerd.internal.v1.opt",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
]
[grpc]
  address = "@DIR@/containerd.sock"
[ttrpc]
  address = "@DIR@/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "@IMAGE@"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  enable_selinux = false
  systemd_cgroup = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        Root = "@DIR@/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "@DIR@/cni/bin"
    conf_dir = "@DIR@/cni/net.d"
    max_conf_num = 1
"#;

    async fn connect(sock: PathBuf) -> Channel {
        Endpoint::try_from("http://[::]:50051")
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let sock = sock.clone();
                async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(sock).await?)) }
            }))
            .await
            .expect("connecting to containerd")
    }

    fn ns_opts() -> NamespaceOption {
        NamespaceOption {
            network: NamespaceMode::Pod as i32,
            pid: NamespaceMode::Container as i32,
            ipc: NamespaceMode::Pod as i32,
            ..Default::default()
        }
    }

    fn pod_config(name: &str, logs: &Path) -> PodSandboxConfig {
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "mwtest".into(),
                attempt: 0,
            }),
            hostname: name.into(),
            log_directory: logs.join(name).to_string_lossy().into_owned(),
            // Lookups stay inside the pod; the host's resolver is never copied in.
            dns_config: Some(DnsConfig {
                servers: vec!["127.0.0.1".into()],
                ..Default::default()
            }),
            linux: Some(LinuxPodSandboxConfig {
                cgroup_parent: format!("/{PREFIX}/{name}"),
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(ns_opts()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn ctr_config(name: &str, command: &[&str]) -> ContainerConfig {
        ContainerConfig {
            metadata: Some(ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: IMAGE.into(),
                ..Default::default()
            }),
            command: command.iter().map(|s| s.to_string()).collect(),
            log_path: format!("{name}/0.log"),
            linux: Some(LinuxContainerConfig {
                security_context: Some(LinuxContainerSecurityContext {
                    namespace_options: Some(ns_opts()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    async fn run_container(
        rt: &mut RuntimeServiceClient<Channel>,
        pod: &str,
        pcfg: &PodSandboxConfig,
        ccfg: ContainerConfig,
    ) -> String {
        let id = rt
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.into(),
                config: Some(ccfg),
                sandbox_config: Some(pcfg.clone()),
            })
            .await
            .unwrap()
            .into_inner()
            .container_id;
        rt.start_container(StartContainerRequest {
            container_id: id.clone(),
        })
        .await
        .unwrap();
        id
    }

    #[tokio::test]
    async fn containerd_cri_run_pod_sandbox_calls_the_plugin_and_pods_talk_tcp() {
        let host = HostGuard::new("ctd");
        let archive = busybox_archive();
        let dir = host.path().to_path_buf();
        let net = "mwrt-ctd";
        for d in ["cni/bin", "cni/net.d", "logs"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        std::os::unix::fs::symlink(INSTALLED_PLUGIN, dir.join("cni/bin/meshwork")).unwrap();
        // containerd runs `loopback` for lo on every sandbox.
        std::os::unix::fs::symlink("/usr/lib/cni/loopback", dir.join("cni/bin/loopback")).unwrap();
        std::fs::write(
            dir.join("cni/net.d/10-meshwork.conflist"),
            host.conflist(net, RUNTIME_SUBNET_CTD).to_string(),
        )
        .unwrap();
        let cfg = CONFIG
            .replace("@DIR@", &dir.to_string_lossy())
            .replace("@IMAGE@", IMAGE);
        std::fs::write(dir.join("config.toml"), cfg).unwrap();

        let mut containerd = tokio::process::Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdout(std::fs::File::create(dir.join("containerd.log")).unwrap())
            .stderr(std::fs::File::create(dir.join("containerd.err")).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("starting containerd");
        let sock = dir.join("containerd.sock");
        let ctr = |args: &[&str]| {
            let mut full = vec!["ctr", "--address", sock.to_str().unwrap(), "-n", "k8s.io"];
            full.extend_from_slice(args);
            sh_out(&full)
        };
        eventually(
            "containerd socket",
            200,
            Duration::from_millis(50),
            async || ctr(&["version"]).status.success().then_some(()),
        )
        .await;
        let imp = ctr(&["images", "import", archive.to_str().unwrap()]);
        assert!(
            imp.status.success(),
            "{}",
            String::from_utf8_lossy(&imp.stderr)
        );

        let mut rt = RuntimeServiceClient::new(connect(sock.clone()).await);
        eventually(
            "CRI runtime and network ready",
            100,
            Duration::from_millis(100),
            async || {
                let st = rt
                    .status(StatusRequest { verbose: false })
                    .await
                    .ok()?
                    .into_inner();
                let conds = st.status?.conditions;
                (!conds.is_empty() && conds.iter().all(|c| c.status)).then_some(())
            },
        )
        .await;

        // The kubelet path: RunPodSandbox makes containerd call CNI ADD on our conflist.
        let logs = dir.join("logs");
        let (srv_cfg, cli_cfg) = (pod_config("srv", &logs), pod_config("cli", &logs));
        let mut pods = Vec::new();
        for c in [&srv_cfg, &cli_cfg] {
            let id = rt
                .run_pod_sandbox(RunPodSandboxRequest {
                    config: Some(c.clone()),
                    runtime_handler: String::new(),
                })
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "RunPodSandbox: {e}\ncontainerd log: {}",
                        std::fs::read_to_string(dir.join("containerd.err")).unwrap_or_default()
                    )
                })
                .into_inner()
                .pod_sandbox_id;
            pods.push(id);
        }
        let mut ips = Vec::new();
        for p in &pods {
            let st = rt
                .pod_sandbox_status(PodSandboxStatusRequest {
                    pod_sandbox_id: p.clone(),
                    verbose: false,
                })
                .await
                .unwrap()
                .into_inner();
            ips.push(st.status.unwrap().network.unwrap().ip);
        }
        assert!(ips.iter().all(|ip| ip.starts_with("198.19.1.")), "{ips:?}");
        assert_ne!(ips[0], ips[1]);
        let veths = our_veths(net);
        assert_eq!(veths.len(), 2, "one host veth per sandbox: {veths:?}");
        let alias = sh(&["ip", "-d", "link", "show", &veths[0]]);
        assert!(
            pods.iter()
                .any(|p| alias.contains(&format!("meshwork/{net}/{p}/eth0"))),
            "{alias}"
        );
        assert_eq!(host.leases(net).len(), 2);

        // Two containers talk TCP across the pods.
        let srv = run_container(
            &mut rt,
            &pods[0],
            &srv_cfg,
            ctr_config("server", &["sh", "-c", SERVER]),
        )
        .await;
        let msg = "hello-through-meshwork";
        let script = client_loop(msg, &ips[0].to_string());
        let cli = run_container(
            &mut rt,
            &pods[1],
            &cli_cfg,
            ctr_config("client", &["sh", "-c", &script]),
        )
        .await;
        let code = eventually(
            "client container to exit",
            300,
            Duration::from_millis(100),
            async || {
                let st = rt
                    .container_status(ContainerStatusRequest {
                        container_id: cli.clone(),
                        verbose: false,
                    })
                    .await
                    .ok()?
                    .into_inner()
                    .status?;
                (st.state == ContainerState::ContainerExited as i32).then_some(st.exit_code)
            },
        )
        .await;
        assert_eq!(
            code,
            0,
            "the client was not answered with its own line by the server pod; client log:\n{}",
            std::fs::read_to_string(logs.join("cli/client/0.log")).unwrap_or_default()
        );
        let _ = srv;

        // Teardown the kubelet way: DEL with netns (Stop), DEL again without (Remove).
        for p in &pods {
            rt.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: p.clone(),
            })
            .await
            .unwrap();
            rt.remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: p.clone(),
            })
            .await
            .unwrap();
        }
        host.assert_torn_down(net);

        // SAFETY: SIGTERM to our child.
        unsafe { libc::kill(containerd.id().unwrap() as i32, libc::SIGTERM) };
        let _ = tokio::time::timeout(Duration::from_secs(10), containerd.wait()).await;
    }
}

#[path = "support/podman.rs"]
mod podman_setup;

mod podman {
    use super::*;

    struct Podman {
        dir: PathBuf,
    }

    impl Podman {
        fn new(dir: &Path, conflist: &serde_json::Value, net: &str) -> Podman {
            podman_setup::setup(dir, Path::new(INSTALLED_PLUGIN), conflist, net);
            Podman {
                dir: dir.to_path_buf(),
            }
        }

        fn run(&self, args: &[&str]) -> std::process::Output {
            Command::new("podman")
                .envs(podman_setup::env(&self.dir))
                .args(podman_setup::global_args(&self.dir))
                .args(args)
                .output()
                .expect("running podman")
        }

        fn ok(&self, args: &[&str]) -> String {
            let out = self.run(args);
            assert!(
                out.status.success(),
                "podman {args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        }
    }

    impl Drop for Podman {
        fn drop(&mut self) {
            let _ = self.run(&["rm", "-f", "-a", "-t", "0"]);
        }
    }

    #[tokio::test]
    async fn podman_run_network_calls_the_plugin_and_containers_talk_tcp() {
        let host = HostGuard::new("pod");
        let archive = busybox_archive();
        let net = "mwrt-pod";
        let pm = Podman::new(host.path(), &host.conflist(net, RUNTIME_SUBNET_PODMAN), net);
        pm.ok(&["load", "-q", "-i", archive.to_str().unwrap()]);
        let cgroup = format!("/{PREFIX}/podman");
        let run = [
            "run",
            "--network",
            net,
            "--dns=none",
            "--cgroup-parent",
            &cgroup,
        ];

        let mut args = run.to_vec();
        args.extend(["-d", "--name", "mw-srv", IMAGE, "sh", "-c", SERVER]);
        pm.ok(&args);
        let ip = pm.ok(&[
            "inspect",
            "-f",
            &format!("{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}"),
            "mw-srv",
        ]);
        assert!(ip.starts_with("198.19.2."), "{ip}");
        assert_eq!(our_veths(net).len(), 1);
        assert_eq!(host.leases(net), std::slice::from_ref(&ip));

        let msg = "hello-from-podman";
        let script = client_loop(msg, &ip);
        let mut args = run.to_vec();
        args.extend(["--rm", "--name", "mw-cli", IMAGE, "sh", "-c", &script]);
        // `ok` fails the test unless the client was answered with its own line.
        pm.ok(&args);

        pm.ok(&["rm", "-f", "-t", "0", "mw-srv"]);
        host.assert_torn_down(net);
    }
}
