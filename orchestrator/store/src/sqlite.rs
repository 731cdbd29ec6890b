//! SQLite backend: one WAL database, one transaction per write, a bounded change log for watch.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use futures::StreamExt;
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::broadcast;
use tokio_stream::wrappers::{errors::BroadcastStreamRecvError, BroadcastStream};

use crate::{Event, Revision, Store, StoreError, Stored, WatchStream, DEFAULT_HISTORY};

/// Durability of a COMMIT. `Full` fsyncs the WAL at every commit (survives power loss);
/// `Normal` survives process death (kill -9) but not power loss.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Sync {
    #[default]
    Full,
    Normal,
}

/// Live events buffered per watcher before a slow watcher is cut off (it re-watches).
const LIVE_BUFFER: usize = 4096;

struct Inner {
    conn: Connection,
    rev: Revision,
    oldest: Revision,
}

#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Mutex<Inner>>,
    live: broadcast::Sender<Event>,
    history: i64,
    path: PathBuf,
}

fn be(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl SqliteStore {
    pub fn open(path: &Path, sync: Sync) -> Result<Self, StoreError> {
        Self::open_with_history(path, sync, DEFAULT_HISTORY)
    }

    pub fn open_with_history(path: &Path, sync: Sync, history: i64) -> Result<Self, StoreError> {
        let conn = Connection::open(path).map_err(be)?;
        let mode = match sync {
            Sync::Full => "FULL",
            Sync::Normal => "NORMAL",
        };
        conn.execute_batch(&format!(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous={mode};
             CREATE TABLE IF NOT EXISTS kv (
                 key TEXT PRIMARY KEY, value BLOB NOT NULL,
                 create_rev INTEGER NOT NULL, mod_rev INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS log (
                 rev INTEGER PRIMARY KEY, key TEXT NOT NULL, value BLOB,
                 create_rev INTEGER NOT NULL, prev BLOB);
             CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL);"
        ))
        .map_err(be)?;
        let rev: Revision = conn
            .query_row("SELECT v FROM meta WHERE k='rev'", [], |r| r.get(0))
            .optional()
            .map_err(be)?
            .unwrap_or(0);
        let oldest: Revision = conn
            .query_row("SELECT v FROM meta WHERE k='compacted'", [], |r| r.get(0))
            .optional()
            .map_err(be)?
            .unwrap_or(0);
        let (live, _) = broadcast::channel(LIVE_BUFFER);
        Ok(SqliteStore {
            inner: Arc::new(Mutex::new(Inner { conn, rev, oldest })),
            live,
            history,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the connection off the async workers (SQLite calls block).
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut g = inner
                .lock()
                .map_err(|_| StoreError::Backend("store lock poisoned".into()))?;
            f(&mut g)
        })
        .await
        .map_err(be)?
    }

    /// One write: bump the revision, apply, log, compact, COMMIT — then publish.
    async fn write(
        &self,
        key: &str,
        op: WriteOp,
    ) -> Result<(Stored, Option<Stored>, Revision), StoreError> {
        let key = key.to_string();
        let history = self.history;
        let live = self.live.clone();
        self.with(move |inner| {
                let tx = inner.conn.transaction().map_err(be)?;
                let cur = read_one(&tx, &key)?;
                let rev = inner.rev + 1;
                let (stored, event) = op.apply(&key, cur.clone(), rev)?;
                match &event {
                    Event::Put { object, prev } => {
                        tx.execute(
                            "INSERT OR REPLACE INTO kv (key, value, create_rev, mod_rev) VALUES (?1, ?2, ?3, ?4)",
                            params![key, object.value, object.create_revision, rev],
                        )
                        .map_err(be)?;
                        tx.execute(
                            "INSERT INTO log (rev, key, value, create_rev, prev) VALUES (?1, ?2, ?3, ?4, ?5)",
                            params![rev, key, object.value, object.create_revision, prev],
                        )
                        .map_err(be)?;
                    }
                    Event::Delete { object, .. } => {
                        tx.execute("DELETE FROM kv WHERE key=?1", params![key]).map_err(be)?;
                        tx.execute(
                            "INSERT INTO log (rev, key, value, create_rev, prev) VALUES (?1, ?2, NULL, ?3, ?4)",
                            params![rev, key, object.create_revision, object.value],
                        )
                        .map_err(be)?;
                    }
                }
                tx.execute("INSERT OR REPLACE INTO meta (k, v) VALUES ('rev', ?1)", params![rev])
                    .map_err(be)?;
                let mut oldest = inner.oldest;
                if rev - oldest > history + history / 10 {
                    // Compact in steps of 10% of the window, not on every write.
                    oldest = rev - history;
                    tx.execute("DELETE FROM log WHERE rev <= ?1", params![oldest]).map_err(be)?;
                    tx.execute("INSERT OR REPLACE INTO meta (k, v) VALUES ('compacted', ?1)", params![oldest])
                        .map_err(be)?;
                }
                tx.commit().map_err(be)?;
                inner.rev = rev;
                inner.oldest = oldest;
                // Published after COMMIT (a watcher never sees an unacknowledged write) and
                // under the lock, so concurrent writers' events reach watchers in revision order.
                let _ = live.send(event);
                Ok((stored, cur, rev))
            })
            .await
    }
}

enum WriteOp {
    Create(Vec<u8>),
    Update(Vec<u8>, Option<Revision>),
    Delete(Option<Revision>),
}

impl WriteOp {
    fn apply(
        self,
        key: &str,
        cur: Option<Stored>,
        rev: Revision,
    ) -> Result<(Stored, Event), StoreError> {
        let check = |cur: &Stored, expected: Option<Revision>| match expected {
            Some(e) if e != cur.mod_revision => Err(StoreError::Conflict {
                key: key.to_string(),
                expected: e,
                actual: cur.mod_revision,
            }),
            _ => Ok(()),
        };
        let not_found = || StoreError::NotFound {
            key: key.to_string(),
        };
        match self {
            WriteOp::Create(value) => {
                if cur.is_some() {
                    return Err(StoreError::AlreadyExists {
                        key: key.to_string(),
                    });
                }
                let object = Stored {
                    key: key.to_string(),
                    value,
                    create_revision: rev,
                    mod_revision: rev,
                };
                Ok((object.clone(), Event::Put { object, prev: None }))
            }
            WriteOp::Update(value, expected) => {
                let cur = cur.ok_or_else(not_found)?;
                check(&cur, expected)?;
                let object = Stored {
                    key: key.to_string(),
                    value,
                    create_revision: cur.create_revision,
                    mod_revision: rev,
                };
                Ok((
                    object.clone(),
                    Event::Put {
                        object,
                        prev: Some(cur.value),
                    },
                ))
            }
            WriteOp::Delete(expected) => {
                let cur = cur.ok_or_else(not_found)?;
                check(&cur, expected)?;
                let mut gone = cur.clone();
                gone.mod_revision = rev;
                Ok((
                    cur,
                    Event::Delete {
                        object: gone,
                        revision: rev,
                    },
                ))
            }
        }
    }
}

impl Store for SqliteStore {
    async fn create(&self, key: &str, value: Vec<u8>) -> Result<Stored, StoreError> {
        Ok(self.write(key, WriteOp::Create(value)).await?.0)
    }

    async fn get(&self, key: &str) -> Result<Option<Stored>, StoreError> {
        let key = key.to_string();
        self.with(move |inner| read_one(&inner.conn, &key)).await
    }

    async fn update(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: Option<Revision>,
    ) -> Result<Stored, StoreError> {
        Ok(self.write(key, WriteOp::Update(value, expected)).await?.0)
    }

    async fn delete(
        &self,
        key: &str,
        expected: Option<Revision>,
    ) -> Result<(Stored, Revision), StoreError> {
        let (obj, _, rev) = self.write(key, WriteOp::Delete(expected)).await?;
        Ok((obj, rev))
    }

    async fn list(&self, prefix: &str) -> Result<(Vec<Stored>, Revision), StoreError> {
        let prefix = prefix.to_string();
        self.with(move |inner| {
            let mut stmt = inner
                .conn
                .prepare_cached(
                    "SELECT key, value, create_rev, mod_rev FROM kv WHERE key >= ?1 AND key < ?2 ORDER BY key",
                )
                .map_err(be)?;
            let rows = stmt
                .query_map(params![prefix, prefix_end(&prefix)], |r| {
                    Ok(Stored {
                        key: r.get(0)?,
                        value: r.get(1)?,
                        create_revision: r.get(2)?,
                        mod_revision: r.get(3)?,
                    })
                })
                .map_err(be)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(be)?;
            Ok((rows, inner.rev))
        })
        .await
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        // Subscribe first, then read history: an event committed in between shows up in both
        // and is dropped from the live side by revision.
        let live = BroadcastStream::new(self.live.subscribe());
        let p = prefix.to_string();
        let (history, last) = self
            .with(move |inner| {
                if after < inner.oldest {
                    return Err(StoreError::Expired {
                        requested: after,
                        oldest: inner.oldest + 1,
                    });
                }
                let mut stmt = inner
                    .conn
                    .prepare_cached(
                        "SELECT l.rev, l.key, l.value, l.create_rev, l.prev FROM log l
                         WHERE l.rev > ?1 AND l.key >= ?2 AND l.key < ?3 ORDER BY l.rev",
                    )
                    .map_err(be)?;
                let events = stmt
                    .query_map(params![after, p, prefix_end(&p)], |r| {
                        let rev: Revision = r.get(0)?;
                        let key: String = r.get(1)?;
                        let value: Option<Vec<u8>> = r.get(2)?;
                        let create_revision: Revision = r.get(3)?;
                        let prev: Option<Vec<u8>> = r.get(4)?;
                        Ok(match value {
                            Some(value) => Event::Put {
                                object: Stored {
                                    key,
                                    value,
                                    create_revision,
                                    mod_revision: rev,
                                },
                                prev,
                            },
                            None => Event::Delete {
                                object: Stored {
                                    key,
                                    value: prev.unwrap_or_default(),
                                    create_revision,
                                    mod_revision: rev,
                                },
                                revision: rev,
                            },
                        })
                    })
                    .map_err(be)?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(be)?;
                Ok((events, inner.rev))
            })
            .await?;
        let prefix = prefix.to_string();
        let live = live.filter_map(move |e| {
            let prefix = prefix.clone();
            async move {
                match e {
                    Ok(ev) if ev.revision() > last && ev.key().starts_with(&prefix) => Some(Ok(ev)),
                    Ok(_) => None,
                    // Too slow to keep up: end with an error so the client re-watches.
                    Err(BroadcastStreamRecvError::Lagged(n)) => Some(Err(StoreError::Backend(
                        format!("watcher fell {n} events behind"),
                    ))),
                }
            }
        });
        let stream = futures::stream::iter(history.into_iter().map(Ok)).chain(live);
        Ok(Box::pin(stream))
    }

    async fn revision(&self) -> Result<Revision, StoreError> {
        self.with(|inner| Ok(inner.rev)).await
    }
}

/// The current state of one key (a transaction derefs to a connection, so both fit).
fn read_one(conn: &Connection, key: &str) -> Result<Option<Stored>, StoreError> {
    conn.query_row(
        "SELECT value, create_rev, mod_rev FROM kv WHERE key=?1",
        params![key],
        |r| {
            Ok(Stored {
                key: key.to_string(),
                value: r.get(0)?,
                create_revision: r.get(1)?,
                mod_revision: r.get(2)?,
            })
        },
    )
    .optional()
    .map_err(be)
}

/// The smallest string greater than every string starting with `prefix`.
fn prefix_end(prefix: &str) -> String {
    let mut bytes = prefix.as_bytes().to_vec();
    while let Some(last) = bytes.pop() {
        if last < 0xff {
            bytes.push(last + 1);
            return String::from_utf8_lossy(&bytes).into_owned();
        }
    }
    "\u{10ffff}".to_string()
}
