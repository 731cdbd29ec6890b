use std::{
    fs::File,
    os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd},
    path::{Path, PathBuf},
};

use crate::Error;

/// An open network namespace (a `/run/netns/x` or `/proc/<pid>/ns/net` file).
///
/// Holding the file keeps the namespace alive and lets us hand its fd to the kernel
/// (`IFLA_NET_NS_FD`) without a path lookup racing a deletion.
#[derive(Debug)]
pub struct Netns {
    file: File,
    path: PathBuf,
}

impl Netns {
    pub fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|source| Error::OpenNetns {
            path: path.clone(),
            source,
        })?;
        Ok(Netns { file, path })
    }

    /// The namespace of the calling thread.
    pub fn current() -> Result<Self, Error> {
        Self::open("/proc/thread-self/ns/net")
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Moves the calling thread into this namespace. Only call it on a thread you own and will
    /// not hand back to a pool (see [`Netns::run`]).
    pub fn enter_current_thread(&self) -> Result<(), Error> {
        // SAFETY: setns only reads the fd; it affects the calling thread alone.
        let rc = unsafe { libc::setns(self.file.as_raw_fd(), libc::CLONE_NEWNET) };
        if rc != 0 {
            return Err(Error::Setns {
                path: self.path.clone(),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Runs `f` on a fresh thread that has joined this namespace. Sockets created inside stay in
    /// the namespace after the thread ends, which is how the netlink handle and test sockets are
    /// made without moving any long-lived thread.
    pub fn run<F, R>(&self, f: F) -> Result<R, Error>
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        std::thread::scope(|s| {
            s.spawn(|| {
                self.enter_current_thread()?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}

fn cstr(p: &Path) -> Result<std::ffi::CString, Error> {
    std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::Invalid(format!("bad path {}", p.display())))
}

fn last(what: &'static str, path: &Path) -> Error {
    Error::NamedNetns {
        what,
        path: path.to_path_buf(),
        source: std::io::Error::last_os_error(),
    }
}

/// Makes `dir` (normally /run/netns) a shared mount point, as iproute2 does, so that the
/// namespaces bound below it show up in mount namespaces created later (a container's).
fn shared_dir(dir: &Path) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(|source| Error::NamedNetns {
        what: "creating",
        path: dir.to_path_buf(),
        source,
    })?;
    let d = cstr(dir)?;
    let none = c"none";
    // SAFETY: mount(2) with NUL-terminated strings and no data.
    let shared = || unsafe {
        libc::mount(
            none.as_ptr(),
            d.as_ptr(),
            none.as_ptr(),
            libc::MS_SHARED | libc::MS_REC,
            std::ptr::null(),
        )
    };
    if shared() == 0 {
        return Ok(());
    }
    if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
        return Err(last("making shared", dir));
    }
    // Not a mount point yet: bind it onto itself first.
    // SAFETY: as above.
    let rc = unsafe {
        libc::mount(
            d.as_ptr(),
            d.as_ptr(),
            none.as_ptr(),
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        )
    };
    if rc != 0 || shared() != 0 {
        return Err(last("making shared", dir));
    }
    Ok(())
}

impl Netns {
    /// Creates a new network namespace bound at `path` (`ip netns add`): an empty file under a
    /// shared mount, with a new namespace's `ns/net` bind-mounted onto it from a short-lived
    /// thread that unshared. Its loopback is down, as the kernel makes it.
    pub fn create(path: impl AsRef<Path>) -> Result<Netns, Error> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent() {
            shared_dir(dir)?;
        }
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|source| Error::NamedNetns {
                what: "creating",
                path: path.clone(),
                source,
            })?;
        let target = cstr(&path)?;
        let bound = std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: unshare affects this thread only, which ends right after.
                if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                    return Err(last("creating a network namespace for", &path));
                }
                let src = c"/proc/thread-self/ns/net";
                let none = c"none";
                // SAFETY: mount(2) with NUL-terminated strings and no data.
                let rc = unsafe {
                    libc::mount(
                        src.as_ptr(),
                        target.as_ptr(),
                        none.as_ptr(),
                        libc::MS_BIND,
                        std::ptr::null(),
                    )
                };
                if rc != 0 {
                    return Err(last("binding a network namespace at", &path));
                }
                Ok(())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        });
        if let Err(e) = bound {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Netns::open(&path)
    }

    /// Removes a namespace created by [`Netns::create`] (or `ip netns add`): unmounts and
    /// unlinks its file; the namespace itself goes when nothing holds it any more.
    pub fn delete(path: impl AsRef<Path>) -> Result<(), Error> {
        let path = path.as_ref();
        let p = cstr(path)?;
        // SAFETY: umount2 with a NUL-terminated path.
        if unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) } != 0 {
            let e = std::io::Error::last_os_error();
            // Not mounted (a half-created file) is fine: remove it all the same.
            if e.raw_os_error() != Some(libc::EINVAL) && e.raw_os_error() != Some(libc::ENOENT) {
                return Err(Error::NamedNetns {
                    what: "unmounting",
                    path: path.to_path_buf(),
                    source: e,
                });
            }
        }
        match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(Error::NamedNetns {
                what: "removing",
                path: path.to_path_buf(),
                source,
            }),
        }
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}
