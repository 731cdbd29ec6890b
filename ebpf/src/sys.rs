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
