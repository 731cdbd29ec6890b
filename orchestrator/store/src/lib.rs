//! The API server's storage (see README.md): an etcd-shaped trait, SQLite and etcd backends.

mod etcd;
mod sqlite;
#[cfg(feature = "testing")]
pub mod testing;

use std::{future::Future, pin::Pin};

use futures::Stream;

pub use etcd::EtcdStore;
pub use sqlite::{SqliteStore, Sync as SqliteSync};

/// Changes kept for watchers that resume from an older revision (kube-apiserver's watch cache
/// keeps a comparable window); older ones are `Expired`. Both backends compact to it.
pub const DEFAULT_HISTORY: i64 = 10_000;

/// The global revision: every write increments it; objects carry theirs as resourceVersion.
pub type Revision = i64;

/// An object as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: Revision,
    pub mod_revision: Revision,
}

/// One change, as a watch sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Created (`prev` None) or updated.
    Put {
        object: Stored,
        prev: Option<Vec<u8>>,
    },
    /// Deleted at `revision`; `object` is the last stored value, stamped with the deletion
    /// revision (what a DELETED watch event carries as resourceVersion).
    Delete { object: Stored, revision: Revision },
}

impl Event {
    pub fn revision(&self) -> Revision {
        match self {
            Event::Put { object, .. } => object.mod_revision,
            Event::Delete { revision, .. } => *revision,
        }
    }
    pub fn key(&self) -> &str {
        match self {
            Event::Put { object, .. } | Event::Delete { object, .. } => &object.key,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{key} already exists")]
    AlreadyExists { key: String },
    #[error("{key} not found")]
    NotFound { key: String },
    /// Optimistic concurrency: the object changed since `expected`.
    #[error("{key} was modified: expected revision {expected}, found {actual}")]
    Conflict {
        key: String,
        expected: Revision,
        actual: Revision,
    },
    /// The requested revision is older than the retained history.
    #[error("revision {requested} is compacted; the oldest available is {oldest}")]
    Expired {
        requested: Revision,
        oldest: Revision,
    },
    #[error("storage backend: {0}")]
    Backend(String),
}

pub type WatchStream = Pin<Box<dyn Stream<Item = Result<Event, StoreError>> + Send>>;

/// The storage every backend implements. `Send` futures so the server can run them on any
/// worker.
pub trait Store: Send + Sync + 'static {
    fn create(
        &self,
        key: &str,
        value: Vec<u8>,
    ) -> impl Future<Output = Result<Stored, StoreError>> + Send;
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Stored>, StoreError>> + Send;
    /// Replaces the value; `expected` is the mod_revision the caller read (None: unconditional).
    fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Option<Revision>,
    ) -> impl Future<Output = Result<Stored, StoreError>> + Send;
    /// Deletes; returns the last stored state and the deletion's revision.
    fn delete(
        &self,
        key: &str,
        expected: Option<Revision>,
    ) -> impl Future<Output = Result<(Stored, Revision), StoreError>> + Send;
    /// Every object under `prefix`, ordered by key, and the revision the list reflects.
    fn list(
        &self,
        prefix: &str,
    ) -> impl Future<Output = Result<(Vec<Stored>, Revision), StoreError>> + Send;
    /// Changes under `prefix` with revision > `after`, then live ones.
    fn watch(
        &self,
        prefix: &str,
        after: Revision,
    ) -> impl Future<Output = Result<WatchStream, StoreError>> + Send;
    fn revision(&self) -> impl Future<Output = Result<Revision, StoreError>> + Send;
}

/// The backend chosen at start-up (a flag): the trait's `impl Future` methods are not
/// object-safe, so the server holds this enum instead of a `dyn Store`.
#[derive(Clone)]
pub enum AnyStore {
    Sqlite(SqliteStore),
    Etcd(Box<EtcdStore>),
}

macro_rules! dispatch {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            AnyStore::Sqlite($s) => $e,
            AnyStore::Etcd($s) => $e,
        }
    };
}

impl Store for AnyStore {
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<Stored, StoreError> {
        dispatch!(self, s => s.create(key, value).await)
    }
    async fn get(&self, key: &str) -> Result<Option<Stored>, StoreError> {
        dispatch!(self, s => s.get(key).await)
    }
    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Option<Revision>,
    ) -> Result<Stored, StoreError> {
        dispatch!(self, s => s.update(key, value, expected).await)
    }
    async fn delete(
        &self,
        key: &str,
        expected: Option<Revision>,
    ) -> Result<(Stored, Revision), StoreError> {
        dispatch!(self, s => s.delete(key, expected).await)
    }
    async fn list(&self, prefix: &str) -> Result<(Vec<Stored>, Revision), StoreError> {
        dispatch!(self, s => s.list(prefix).await)
    }
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        dispatch!(self, s => s.watch(prefix, after).await)
    }
    async fn revision(&self) -> Result<Revision, StoreError> {
        dispatch!(self, s => s.revision().await)
    }
}
