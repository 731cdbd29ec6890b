use std::path::PathBuf;

/// A datapath operation that failed. Load failures keep the verifier log (aya's
/// `ProgramError::LoadError` prints it).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("loading eBPF object {object}: {source}")]
    Load {
        object: &'static str,
        #[source]
        source: Box<aya::EbpfError>,
    },
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("pinning {path}: {detail}")]
    Pin { path: PathBuf, detail: String },
    #[error(transparent)]
    Netns(#[from] meshwork_netlink::Error),
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    pub(crate) fn map(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> Error {
        move |e| Error::Map {
            name,
            source: Box::new(e),
        }
    }

    pub(crate) fn prog(name: &'static str) -> impl FnOnce(aya::programs::ProgramError) -> Error {
        move |e| Error::Program {
            name,
            source: Box::new(e),
        }
    }
}
