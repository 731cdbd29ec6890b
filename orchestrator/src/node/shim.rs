//! The per-container shim (containerd-shim's role, much smaller). The node runtime starts one
//! per container run with stdout/stderr on the container's log file. The shim leaves the
//! runtime's session (so it outlives a runtime restart), joins the pod's cgroup and network
//! namespace, takes a private mount and UTS namespace, sets the hostname, mounts what the pod
//! needs, chroots into the image root, then runs the command as its child: it forwards
//! SIGTERM/SIGINT/SIGHUP to it and records its exit code in `--exit-file` when it ends.
//!
//! `--enter PID` instead joins the namespaces and root of a running container's process (and,
//! with `--cgroup`, its cgroup) and execs the command there (exec probes, `kubectl exec`).
//!
//! Runs before any thread exists: entering mount namespaces needs a single-threaded process.

use std::{
    ffi::CString,
    io::Write,
    os::unix::process::{CommandExt, ExitStatusExt},
    path::{Path, PathBuf},
    process::{Command, ExitCode},
    sync::atomic::{AtomicI32, Ordering},
};

#[derive(clap::Args, Debug, Default)]
pub struct ShimArgs {
    /// Network namespace to join.
    #[arg(long)]
    pub netns: Option<PathBuf>,
    /// cgroup (v2 directory) to join.
    #[arg(long)]
    pub cgroup: Option<PathBuf>,
    /// Root filesystem to chroot into ("/" for none).
    #[arg(long, default_value = "/")]
    pub rootfs: PathBuf,
    /// SRC:DST[:ro] bind mounts; DST is inside the root filesystem.
    #[arg(long = "bind")]
    pub binds: Vec<String>,
    #[arg(long)]
    pub hostname: Option<String>,
    #[arg(long)]
    pub workdir: Option<PathBuf>,
    /// Where the exit code goes.
    #[arg(long)]
    pub exit_file: Option<PathBuf>,
    /// KEY=VALUE; the command's whole environment.
    #[arg(long = "env")]
    pub env: Vec<String>,
    /// Join this process's namespaces and root and exec the command (exec probes).
    #[arg(long)]
    pub enter: Option<i32>,
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(sig: libc::c_int) {
    let pid = CHILD.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe.
        unsafe { libc::kill(pid, sig) };
    }
}

fn cstr(p: &Path) -> std::io::Result<CString> {
    CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
}

fn check(rc: libc::c_int, what: &str) -> std::io::Result<()> {
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        Err(std::io::Error::new(e.kind(), format!("{what}: {e}")))
    } else {
        Ok(())
    }
}

fn setns_path(path: &Path, flag: libc::c_int) -> std::io::Result<()> {
    let f = std::fs::File::open(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("opening {}: {e}", path.display())))?;
    // SAFETY: a valid namespace fd and flag.
    check(
        unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&f), flag) },
        &format!("setns {}", path.display()),
    )
}

fn mount(
    src: &Path,
    dst: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
) -> std::io::Result<()> {
    let s = cstr(src)?;
    let d = cstr(dst)?;
    let t = fstype.map(|t| CString::new(t).unwrap_or_default());
    // SAFETY: valid C strings; null data.
    check(
        unsafe {
            libc::mount(
                s.as_ptr(),
                d.as_ptr(),
                t.as_ref().map_or(std::ptr::null(), |t| t.as_ptr()),
                flags,
                std::ptr::null(),
            )
        },
        &format!("mount {} on {}", src.display(), dst.display()),
    )
}

fn chroot_to(root: &Path) -> std::io::Result<()> {
    let r = cstr(root)?;
    // SAFETY: valid C strings.
    check(
        unsafe { libc::chroot(r.as_ptr()) },
        &format!("chroot {}", root.display()),
    )?;
    std::env::set_current_dir("/")
}

/// Sets up namespaces and mounts, then runs (or, with --enter, execs) the command.
fn setup(a: &ShimArgs) -> std::io::Result<()> {
    if let Some(pid) = a.enter {
        let proc = PathBuf::from(format!("/proc/{pid}"));
        let root = std::fs::File::open(proc.join("root"))?;
        // kubectl exec runs in the container's cgroup too (exec probes pass none).
        if let Some(cg) = &a.cgroup {
            std::fs::write(cg.join("cgroup.procs"), b"0").map_err(|e| {
                std::io::Error::new(e.kind(), format!("joining cgroup {}: {e}", cg.display()))
            })?;
        }
        setns_path(&proc.join("ns/net"), libc::CLONE_NEWNET)?;
        setns_path(&proc.join("ns/uts"), libc::CLONE_NEWUTS)?;
        setns_path(&proc.join("ns/mnt"), libc::CLONE_NEWNS)?;
        // SAFETY: a valid directory fd.
        check(
            unsafe { libc::fchdir(std::os::fd::AsRawFd::as_raw_fd(&root)) },
            "fchdir",
        )?;
        chroot_to(Path::new("."))?;
        return Ok(());
    }
    // SAFETY: plain syscalls on our own process.
    unsafe { libc::setsid() };
    if let Some(cg) = &a.cgroup {
        std::fs::write(cg.join("cgroup.procs"), b"0").map_err(|e| {
            std::io::Error::new(e.kind(), format!("joining cgroup {}: {e}", cg.display()))
        })?;
    }
    if let Some(ns) = &a.netns {
        setns_path(ns, libc::CLONE_NEWNET)?;
    }
    // SAFETY: single-threaded here (checked by the caller's design: no runtime started).
    check(
        unsafe { libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWUTS) },
        "unshare",
    )?;
    mount(
        Path::new("none"),
        Path::new("/"),
        None,
        libc::MS_REC | libc::MS_PRIVATE,
    )?;
    if let Some(h) = &a.hostname {
        // SAFETY: pointer and length of a live buffer.
        check(
            unsafe { libc::sethostname(h.as_ptr().cast(), h.len()) },
            "sethostname",
        )?;
    }
    let root = &a.rootfs;
    let inside = |dst: &str| root.join(dst.trim_start_matches('/'));
    if root != Path::new("/") {
        let proc = inside("/proc");
        std::fs::create_dir_all(&proc)?;
        mount(Path::new("proc"), &proc, Some("proc"), 0)?;
        let dev = inside("/dev");
        std::fs::create_dir_all(&dev)?;
        mount(Path::new("/dev"), &dev, None, libc::MS_BIND | libc::MS_REC)?;
    }
    for b in &a.binds {
        let (b, read_only) = match b.strip_suffix(":ro") {
            Some(rest) => (rest, true),
            None => (b.as_str(), false),
        };
        let (src, dst) = b.split_once(':').ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("bind {b:?} is not SRC:DST"),
            )
        })?;
        let target = inside(dst);
        if Path::new(src).is_dir() {
            std::fs::create_dir_all(&target)?;
        } else if !target.exists() {
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&target, b"")?;
        }
        // Recursive, as runc binds volumes ("rbind"): a hostPath such as /sys/fs/bpf brings
        // the mounts below it along.
        mount(Path::new(src), &target, None, libc::MS_BIND | libc::MS_REC)?;
        if read_only {
            // A bind mount takes its read-only flag only on a remount.
            mount(
                Path::new("none"),
                &target,
                None,
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
            )?;
        }
    }
    chroot_to(root)?;
    if let Some(w) = &a.workdir {
        std::fs::create_dir_all(w)?;
        std::env::set_current_dir(w)?;
    }
    Ok(())
}

fn command(a: &ShimArgs) -> Command {
    let mut cmd = Command::new(&a.command[0]);
    cmd.args(&a.command[1..]);
    if a.enter.is_none() {
        cmd.env_clear();
    }
    for kv in &a.env {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd
}

pub fn main(a: ShimArgs) -> ExitCode {
    // Opened before the chroot hides it.
    let mut exit_file = a
        .exit_file
        .as_ref()
        .and_then(|p| std::fs::File::create(p).ok());
    let mut record = |code: i32, reason: &str| {
        if let Some(f) = exit_file.as_mut() {
            let _ = writeln!(f, "{code} {reason}");
        }
    };
    if let Err(e) = setup(&a) {
        eprintln!("meshwork shim: {e}");
        record(128, "ContainerCannotRun");
        return ExitCode::from(128);
    }
    if a.enter.is_some() {
        let e = command(&a).exec();
        eprintln!("meshwork shim: exec {:?}: {e}", a.command[0]);
        return ExitCode::from(126);
    }
    let mut child = match command(&a).spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("meshwork shim: starting {:?}: {e}", a.command[0]);
            record(
                if e.kind() == std::io::ErrorKind::NotFound {
                    127
                } else {
                    126
                },
                "StartError",
            );
            return ExitCode::from(128);
        }
    };
    CHILD.store(child.id() as i32, Ordering::SeqCst);
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: installing a handler that only calls kill().
        unsafe {
            libc::signal(sig, forward as *const () as libc::sighandler_t);
        }
    }
    let status = loop {
        match child.wait() {
            Ok(s) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                eprintln!("meshwork shim: waiting: {e}");
                record(255, "Unknown");
                return ExitCode::from(255);
            }
        }
    };
    let code = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    let reason = if code == 0 { "Completed" } else { "Error" };
    record(code, reason);
    ExitCode::from(code.clamp(0, 255) as u8)
}
