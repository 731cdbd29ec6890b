//! The few things aya does not do for us: mounting bpffs.

use std::path::Path;

use crate::Error;

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// Mounts bpffs at `root` (normally /sys/fs/bpf) unless one is there already. The mount is left
/// in place (as systemd does); only our pins under it are ours to remove.
pub fn ensure_bpffs(root: &Path) -> Result<(), Error> {
    let io = |what| {
        move |source| Error::Io {
            what,
            path: root.to_path_buf(),
            source,
        }
    };
    std::fs::create_dir_all(root).map_err(io("creating"))?;
    let c = std::ffi::CString::new(root.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::Invalid(format!("bad path {}", root.display())))?;
    // SAFETY: statfs into a zeroed struct we own; the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io("statfs")(std::io::Error::last_os_error()));
    }
    if st.f_type as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    let fstype = c"bpf";
    // SAFETY: plain mount(2) with NUL-terminated strings and no data.
    let rc = unsafe {
        libc::mount(
            c"bpffs".as_ptr(),
            c.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io("mounting bpffs on")(std::io::Error::last_os_error()));
    }
    Ok(())
}

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_TYPE_TCX: u32 = 11;

/// The device a pinned TCX link is attached to: Some(ifindex), or Some(0) once the device (or
/// its namespace) is gone and the kernel detached it; None if the pin is not a TCX link. aya
/// does not expose the link's attach target.
pub fn pinned_tcx_ifindex(pin: &Path) -> Result<Option<u32>, Error> {
    let io = |what| {
        move |source| Error::Io {
            what,
            path: pin.to_path_buf(),
            source,
        }
    };
    let c = std::ffi::CString::new(pin.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::Invalid(format!("bad path {}", pin.display())))?;
    // union bpf_attr for BPF_OBJ_GET: pathname, bpf_fd, file_flags.
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    let attr = ObjGet {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    // SAFETY: bpf(2) with an attr holding a NUL-terminated path that outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &attr as *const ObjGet,
            std::mem::size_of::<ObjGet>(),
        )
    };
    if fd < 0 {
        return Err(io("opening pinned link")(std::io::Error::last_os_error()));
    }
    // SAFETY: the fd was just returned to us by the kernel; OwnedFd closes it.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
    // struct bpf_link_info: type, id, prog_id, then a union at offset 16 whose tcx member
    // starts with ifindex.
    let mut info = [0u64; 16];
    #[repr(C)]
    struct InfoByFd {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let attr = InfoByFd {
        bpf_fd: std::os::fd::AsRawFd::as_raw_fd(&fd) as u32,
        info_len: std::mem::size_of_val(&info) as u32,
        info: info.as_mut_ptr() as u64,
    };
    // SAFETY: bpf(2) writing at most info_len bytes into `info`, which outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &attr as *const InfoByFd,
            std::mem::size_of::<InfoByFd>(),
        )
    };
    if rc != 0 {
        return Err(io("reading link info of")(std::io::Error::last_os_error()));
    }
    let link_type = info[0] as u32;
    if link_type != BPF_LINK_TYPE_TCX {
        return Ok(None);
    }
    Ok(Some(info[2] as u32))
}

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_LINK_CREATE: libc::c_long = 28;

/// bpf_link_create(prog, target, attach_type) and pins the link at `pin`; the link lives as
/// long as the pin (and its target). Used where aya's link types cannot be turned into a
/// pinnable `FdLink` (cgroup sockopt, sk_lookup).
pub fn link_and_pin(
    prog: std::os::fd::BorrowedFd<'_>,
    target: std::os::fd::BorrowedFd<'_>,
    attach_type: u32,
    pin: &Path,
) -> Result<(), Error> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let io = |what: &'static str| {
        move |source: std::io::Error| Error::Io {
            what,
            path: pin.to_path_buf(),
            source,
        }
    };
    // union bpf_attr for BPF_LINK_CREATE: prog_fd, target_fd, attach_type, flags (the
    // per-type union after them stays zero).
    #[repr(C)]
    struct LinkCreate {
        prog_fd: u32,
        target_fd: u32,
        attach_type: u32,
        flags: u32,
        rest: [u64; 4],
    }
    let attr = LinkCreate {
        prog_fd: prog.as_raw_fd() as u32,
        target_fd: target.as_raw_fd() as u32,
        attach_type,
        flags: 0,
        rest: [0; 4],
    };
    // SAFETY: bpf(2) with a fully initialised attr that outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_CREATE,
            &attr as *const LinkCreate,
            std::mem::size_of::<LinkCreate>(),
        )
    };
    if fd < 0 {
        return Err(io("attaching a program for")(
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: the fd was just returned to us by the kernel; OwnedFd closes it.
    let link = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let c = std::ffi::CString::new(pin.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::Invalid(format!("bad path {}", pin.display())))?;
    #[repr(C)]
    struct ObjPin {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    let attr = ObjPin {
        pathname: c.as_ptr() as u64,
        bpf_fd: link.as_raw_fd() as u32,
        file_flags: 0,
    };
    // SAFETY: bpf(2) with an attr holding a NUL-terminated path and a live fd.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_PIN,
            &attr as *const ObjPin,
            std::mem::size_of::<ObjPin>(),
        )
    };
    if rc != 0 {
        return Err(io("pinning")(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// The cookie of the network namespace at `netns` (SO_NETNS_COOKIE of a socket made there):
/// what the programs key a pod by.
pub fn netns_cookie(netns: &Path) -> Result<u64, Error> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let io = |what: &'static str| {
        move |source: std::io::Error| Error::Io {
            what,
            path: netns.to_path_buf(),
            source,
        }
    };
    let ns = std::fs::File::open(netns).map_err(io("opening"))?;
    // A thread of its own enters the namespace, so no other work runs there.
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns on an open namespace fd, in this short-lived thread only.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io("entering")(std::io::Error::last_os_error()));
            }
            // SAFETY: a plain socket(2); wrapped at once so it is closed.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
            if fd < 0 {
                return Err(io("a socket in")(std::io::Error::last_os_error()));
            }
            // SAFETY: fd was just returned by socket(2).
            let sock = unsafe { OwnedFd::from_raw_fd(fd) };
            let mut cookie: u64 = 0;
            let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
            // SAFETY: getsockopt writing at most `len` bytes into `cookie`.
            let rc = unsafe {
                libc::getsockopt(
                    sock.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_NETNS_COOKIE,
                    (&mut cookie as *mut u64).cast(),
                    &mut len,
                )
            };
            if rc != 0 {
                return Err(io("SO_NETNS_COOKIE in")(std::io::Error::last_os_error()));
            }
            Ok(cookie)
        })
        .join()
        .unwrap_or_else(|_| Err(Error::Invalid("netns cookie thread panicked".into())))
    })
}

/// A cgroup v2 directory's id (its inode number): what bpf_get_current_cgroup_id() returns
/// for tasks in it.
pub fn cgroup_id(dir: &Path) -> Result<u64, Error> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(dir)
        .map(|m| m.ino())
        .map_err(|source| Error::Io {
            what: "reading",
            path: dir.to_path_buf(),
            source,
        })
}

/// A duplicate of the IPv4 TCP socket listening on `port` held by any process in `cgroup`
/// (pidfd_getfd): how the node runtime gets a proxy's inbound listener into the steering map
/// without the proxy's help. None when nothing there listens on it (yet).
pub fn listener_in_cgroup(
    cgroup: &Path,
    port: u16,
    netns_cookie: u64,
) -> Result<Option<std::os::fd::OwnedFd>, Error> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let procs =
        std::fs::read_to_string(cgroup.join("cgroup.procs")).map_err(|source| Error::Io {
            what: "reading",
            path: cgroup.join("cgroup.procs"),
            source,
        })?;
    for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        // SAFETY: pidfd_open(2) on a pid; the result is checked and owned at once.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if pidfd < 0 {
            continue;
        }
        // SAFETY: a fresh fd from the kernel.
        let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as i32) };
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for e in fds.flatten() {
            let is_socket = std::fs::read_link(e.path())
                .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"));
            let Some(n) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            if !is_socket {
                continue;
            }
            // SAFETY: pidfd_getfd(2) duplicates the target's fd into ours; checked below.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), n, 0) };
            if fd < 0 {
                continue;
            }
            // SAFETY: a fresh fd from the kernel.
            let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
            let mut listening: libc::c_int = 0;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: getsockopt into an int of the given size.
            let rc = unsafe {
                libc::getsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_ACCEPTCONN,
                    (&mut listening as *mut libc::c_int).cast(),
                    &mut len,
                )
            };
            if rc != 0 || listening != 1 {
                continue;
            }
            // SAFETY: sockaddr_in is plain old data.
            let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            // SAFETY: getsockname into a sockaddr_in of the given size.
            let rc = unsafe {
                libc::getsockname(
                    fd.as_raw_fd(),
                    (&mut sa as *mut libc::sockaddr_in).cast(),
                    &mut len,
                )
            };
            if rc != 0
                || sa.sin_family != libc::AF_INET as libc::sa_family_t
                || u16::from_be(sa.sin_port) != port
            {
                continue;
            }
            // A pid read from cgroup.procs may have been reused since: the socket must live in
            // the pod's own network namespace.
            let mut cookie: u64 = 0;
            let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
            // SAFETY: getsockopt writing at most `len` bytes into `cookie`.
            let rc = unsafe {
                libc::getsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_NETNS_COOKIE,
                    (&mut cookie as *mut u64).cast(),
                    &mut len,
                )
            };
            if rc == 0 && cookie == netns_cookie {
                return Ok(Some(fd));
            }
        }
    }
    Ok(None)
}
