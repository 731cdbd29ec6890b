//! The one process guard of the tests and benchmarks: a process a test started (a component
//! binary, a server), killed and reaped when the guard drops — also when the test panics — so
//! no run leaves processes behind.

use std::{
    path::PathBuf,
    process::{Child, ExitStatus},
};

pub struct Proc {
    /// None once stopped.
    pub child: Option<Child>,
    /// Where its stderr goes (empty: nowhere kept).
    pub log: PathBuf,
}

impl From<Child> for Proc {
    fn from(child: Child) -> Self {
        Proc {
            child: Some(child),
            log: PathBuf::new(),
        }
    }
}

impl Proc {
    pub fn with_log(child: Child, log: PathBuf) -> Self {
        Proc {
            child: Some(child),
            log,
        }
    }

    /// Its pid (0 once stopped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends `sig` and waits for the process to end; its exit status (None if it had already
    /// been stopped).
    pub fn stop(&mut self, sig: i32) -> Option<ExitStatus> {
        let mut c = self.child.take()?;
        // SAFETY: signalling our own child, not yet reaped (so the pid is still ours).
        unsafe { libc::kill(c.id() as i32, sig) };
        c.wait().ok()
    }

    /// [`Proc::stop`], ignoring the status.
    pub fn kill(&mut self, sig: i32) {
        let _ = self.stop(sig);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill(libc::SIGKILL);
    }
}
