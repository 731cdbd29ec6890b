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
