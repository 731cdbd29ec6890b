//! The storage contract, run against every backend through one macro: SQLite and a real etcd.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: panics are the report"
)]

use std::time::Duration;

use futures::StreamExt;
use meshwork_orchestrator_store::{EtcdStore, Event, SqliteStore, SqliteSync, Store, StoreError};

async fn next(w: &mut meshwork_orchestrator_store::WatchStream) -> Event {
    tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .expect("watch event within 5 s")
        .expect("stream open")
        .expect("no error")
}

macro_rules! conformance {
    ($backend:ident, $make:expr) => {
        mod $backend {
            use super::*;

            #[tokio::test]
            async fn crud_and_revisions() {
                let (s, _g) = $make(10_000).await;
                let r0 = s.revision().await.unwrap();
                let a = s.create("/r/pods/ns/a", b"1".to_vec()).await.unwrap();
                assert_eq!(a.mod_revision, r0 + 1);
                assert_eq!(a.create_revision, a.mod_revision);
                let got = s.get("/r/pods/ns/a").await.unwrap().unwrap();
                assert_eq!(got, a);
                let b = s
                    .update("/r/pods/ns/a", b"2".to_vec(), Some(a.mod_revision))
                    .await
                    .unwrap();
                assert_eq!(b.mod_revision, r0 + 2);
                assert_eq!(
                    b.create_revision, a.create_revision,
                    "create revision is kept"
                );
                let (last, drev) = s.delete("/r/pods/ns/a", None).await.unwrap();
                assert_eq!(last.value, b"2");
                assert_eq!(drev, r0 + 3);
                assert!(s.get("/r/pods/ns/a").await.unwrap().is_none());
                assert_eq!(s.revision().await.unwrap(), r0 + 3);
            }

            #[tokio::test]
            async fn preconditions_and_missing_objects() {
                let (s, _g) = $make(10_000).await;
                let a = s.create("/r/x/a", b"1".to_vec()).await.unwrap();
                assert!(matches!(
                    s.create("/r/x/a", b"9".to_vec()).await,
                    Err(StoreError::AlreadyExists { .. })
                ));
                s.update("/r/x/a", b"2".to_vec(), None).await.unwrap();
                let stale = s
                    .update("/r/x/a", b"3".to_vec(), Some(a.mod_revision))
                    .await;
                assert!(
                    matches!(stale, Err(StoreError::Conflict { .. })),
                    "{stale:?}"
                );
                assert_eq!(
                    s.get("/r/x/a").await.unwrap().unwrap().value,
                    b"2",
                    "a conflict writes nothing"
                );
                assert!(matches!(
                    s.delete("/r/x/a", Some(a.mod_revision)).await,
                    Err(StoreError::Conflict { .. })
                ));
                assert!(matches!(
                    s.update("/r/x/none", b"1".to_vec(), None).await,
                    Err(StoreError::NotFound { .. })
                ));
                assert!(matches!(
                    s.delete("/r/x/none", None).await,
                    Err(StoreError::NotFound { .. })
                ));
                let rev = s.revision().await.unwrap();
                assert_eq!(
                    rev,
                    a.mod_revision + 1,
                    "failed writes do not consume revisions"
                );
            }

            #[tokio::test]
            async fn list_is_prefix_scoped_ordered_and_carries_its_revision() {
                let (s, _g) = $make(10_000).await;
                for k in [
                    "/r/pods/b/2",
                    "/r/pods/a/1",
                    "/r/pods/b/1",
                    "/r/podsx/a/1",
                    "/r/svc/a/1",
                ] {
                    s.create(k, k.as_bytes().to_vec()).await.unwrap();
                }
                let (all, rev) = s.list("/r/pods/").await.unwrap();
                let keys: Vec<&str> = all.iter().map(|o| o.key.as_str()).collect();
                assert_eq!(keys, ["/r/pods/a/1", "/r/pods/b/1", "/r/pods/b/2"]);
                assert_eq!(rev, s.revision().await.unwrap());
                let (ns, _) = s.list("/r/pods/b/").await.unwrap();
                assert_eq!(ns.len(), 2);
            }

            #[tokio::test]
            async fn watch_replays_history_then_follows_live_changes() {
                let (s, _g) = $make(10_000).await;
                let a = s.create("/r/pods/ns/a", b"1".to_vec()).await.unwrap();
                s.create("/r/svc/ns/x", b"s".to_vec()).await.unwrap();
                s.update("/r/pods/ns/a", b"2".to_vec(), None).await.unwrap();
                let mut w = s.watch("/r/pods/", a.mod_revision - 1).await.unwrap();
                match next(&mut w).await {
                    Event::Put { object, prev } => {
                        assert_eq!(object.value, b"1");
                        assert!(prev.is_none());
                    }
                    e => panic!("{e:?}"),
                }
                match next(&mut w).await {
                    Event::Put { object, prev } => {
                        assert_eq!(object.value, b"2");
                        assert_eq!(prev.as_deref(), Some(&b"1"[..]));
                    }
                    e => panic!("{e:?}"),
                }
                // Live, and other prefixes are not seen.
                s.create("/r/svc/ns/y", b"s".to_vec()).await.unwrap();
                s.delete("/r/pods/ns/a", None).await.unwrap();
                match next(&mut w).await {
                    Event::Delete { object, revision } => {
                        assert_eq!(object.key, "/r/pods/ns/a");
                        assert_eq!(object.value, b"2", "a delete carries the last state");
                        assert_eq!(revision, s.revision().await.unwrap());
                    }
                    e => panic!("{e:?}"),
                }
                // From the current revision: nothing old, only what comes next.
                let now = s.revision().await.unwrap();
                let mut w2 = s.watch("/r/", now).await.unwrap();
                s.create("/r/pods/ns/b", b"b".to_vec()).await.unwrap();
                assert_eq!(next(&mut w2).await.revision(), now + 1);
            }

            #[tokio::test]
            async fn watch_from_a_compacted_revision_is_expired() {
                let (s, _g) = $make(20).await;
                for i in 0..100 {
                    s.create(&format!("/r/cm/ns/{i}"), b"x".to_vec())
                        .await
                        .unwrap();
                }
                let err = s.watch("/r/", 1).await.err().expect("must be expired");
                assert!(
                    matches!(err, StoreError::Expired { requested: 1, .. }),
                    "{err}"
                );
                // A recent revision still works.
                let rev = s.revision().await.unwrap();
                assert!(s.watch("/r/", rev - 5).await.is_ok());
            }

            #[tokio::test]
            async fn concurrent_writers_get_distinct_revisions() {
                let (s, _g) = $make(10_000).await;
                let mut tasks = Vec::new();
                for i in 0..50 {
                    let s = s.clone();
                    tasks.push(tokio::spawn(async move {
                        s.create(&format!("/r/c/ns/{i}"), b"x".to_vec())
                            .await
                            .unwrap()
                            .mod_revision
                    }));
                }
                let mut revs = Vec::new();
                for t in tasks {
                    revs.push(t.await.unwrap());
                }
                revs.sort_unstable();
                revs.dedup();
                assert_eq!(revs.len(), 50);
            }

            #[tokio::test]
            async fn list_larger_than_one_grpc_message() {
                let (s, _g) = $make(10_000).await;
                let big = vec![b'x'; 5_000];
                for i in 0..1_200 {
                    s.create(&format!("/r/big/{i:05}"), big.clone())
                        .await
                        .unwrap();
                }
                s.create("/r/bigger", b"outside".to_vec()).await.unwrap();
                let (items, rev) = s.list("/r/big/").await.unwrap();
                assert_eq!(items.len(), 1_200, "6 MB listed in full");
                assert!(items.windows(2).all(|w| w[0].key < w[1].key));
                assert_eq!(rev, s.revision().await.unwrap());
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn concurrent_writes_reach_watchers_in_revision_order() {
                let (s, _g) = $make(10_000).await;
                let start = s.revision().await.unwrap();
                let mut w = s.watch("/r/o/", start).await.unwrap();
                let mut tasks = Vec::new();
                for i in 0..8 {
                    let s = s.clone();
                    tasks.push(tokio::spawn(async move {
                        for j in 0..25 {
                            s.create(&format!("/r/o/{i}-{j}"), b"x".to_vec())
                                .await
                                .unwrap();
                        }
                    }));
                }
                for t in tasks {
                    t.await.unwrap();
                }
                let mut last = start;
                for _ in 0..200 {
                    let rev = next(&mut w).await.revision();
                    assert!(rev > last, "watch went from {last} to {rev}");
                    last = rev;
                }
            }
        }
    };
}

async fn sqlite(history: i64) -> (SqliteStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let s =
        SqliteStore::open_with_history(&dir.path().join("db"), SqliteSync::Full, history).unwrap();
    (s, dir)
}

conformance!(sqlite_store, sqlite);
conformance!(etcd_store, etcd);

async fn etcd(history: i64) -> (EtcdStore, meshwork_orchestrator_store::testing::Etcd) {
    meshwork_orchestrator_store::testing::Etcd::start(history).await
}

#[tokio::test]
async fn sqlite_reopen_keeps_objects_and_revision() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let rev = {
        let s = SqliteStore::open(&path, SqliteSync::Full).unwrap();
        s.create("/r/a", b"1".to_vec()).await.unwrap();
        s.update("/r/a", b"2".to_vec(), None)
            .await
            .unwrap()
            .mod_revision
    };
    let s = SqliteStore::open(&path, SqliteSync::Full).unwrap();
    assert_eq!(s.revision().await.unwrap(), rev);
    assert_eq!(s.get("/r/a").await.unwrap().unwrap().value, b"2");
    // The history survives too: a watcher can resume from before the restart.
    let mut w = s.watch("/r/", rev - 1).await.unwrap();
    assert_eq!(next(&mut w).await.revision(), rev);
}

#[tokio::test]
async fn sqlite_kill_9_loses_no_acknowledged_write() {
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mw-store-writer"))
        .arg(&path)
        .arg("100000")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acked = Vec::new();
    while let Some(l) = lines.next_line().await.unwrap() {
        acked.push(l.trim_start_matches("ack ").to_string());
        if acked.len() == 300 {
            break;
        }
    }
    // SIGKILL mid-stream: no chance to flush or close anything.
    child.start_kill().unwrap();
    // Acks already in the pipe are acknowledged writes too.
    while let Ok(Some(l)) = lines.next_line().await {
        acked.push(l.trim_start_matches("ack ").to_string());
    }
    child.wait().await.unwrap();
    let s = SqliteStore::open(&path, SqliteSync::Full).unwrap();
    for k in &acked {
        assert!(s.get(k).await.unwrap().is_some(), "acknowledged {k} lost");
    }
    let (all, _) = s.list("/registry/").await.unwrap();
    assert!(
        all.len() >= acked.len() && all.len() <= acked.len() + 1,
        "{} stored, {} acked",
        all.len(),
        acked.len()
    );
}
