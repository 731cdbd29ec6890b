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

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}
