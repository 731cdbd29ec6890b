use std::{io, path::PathBuf};

/// A failed netlink or namespace operation. `op` names what was attempted so the message reads
/// like "adding veth mw1a2b3c: File exists (os error 17)".
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("opening network namespace {path}: {source}")]
    OpenNetns {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("joining network namespace {path}: {source}")]
    Setns {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{what} {path}: {source}")]
    NamedNetns {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("opening netlink socket: {0}")]
    Socket(#[source] io::Error),
    #[error("{op}: {source}")]
    Request {
        op: String,
        #[source]
        source: rtnetlink::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    pub(crate) fn request(op: impl Into<String>, source: rtnetlink::Error) -> Self {
        Error::Request {
            op: op.into(),
            source,
        }
    }

    /// The kernel's errno for a rejected request (positive, e.g. `libc::EEXIST`).
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Request {
                source: rtnetlink::Error::NetlinkError(msg),
                ..
            } => msg.code.map(|c| -c.get()),
            Error::OpenNetns { source, .. }
            | Error::Setns { source, .. }
            | Error::NamedNetns { source, .. }
            | Error::Socket(source) => source.raw_os_error(),
            _ => None,
        }
    }

    pub fn is_exists(&self) -> bool {
        self.errno() == Some(libc::EEXIST)
    }

    /// The object (link, route, neighbour) is not there.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self.errno(),
            Some(libc::ENODEV) | Some(libc::ENOENT) | Some(libc::ESRCH) | Some(libc::EADDRNOTAVAIL)
        )
    }
}
