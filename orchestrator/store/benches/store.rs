//! The API server's storage, SQLite vs etcd in the same run: per-operation latency at 10k
//! objects, concurrent create throughput, full list, and watch fan-out to 50 watchers.
//!
//! Run: `cargo bench -p meshwork-orchestrator-store --bench store` (etcd from scripts/setup.sh).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "bench code: a panic with its location is the failure report"
)]

use std::time::{Duration, Instant};

use futures::StreamExt;
use meshwork_orchestrator_store::{testing::Etcd, SqliteStore, SqliteSync, Store, DEFAULT_HISTORY};

const N: usize = 10_000;
const WATCHERS: usize = 50;
const FANOUT_WRITES: usize = 200;

fn value(i: usize) -> Vec<u8> {
    // About the size of a small Service object.
    format!(
        r#"{{"apiVersion":"v1","kind":"Service","metadata":{{"name":"svc-{i}","namespace":"default","labels":{{"app":"web"}}}},"spec":{{"clusterIP":"10.96.{}.{}","ports":[{{"port":80,"targetPort":8080,"protocol":"TCP"}}],"selector":{{"app":"web"}}}}}}"#,
        i / 250,
        i % 250
    )
    .into_bytes()
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1e6
}

async fn run<S: Store + Clone>(name: &str, s: S) {
    // Sequential creates: latency per acknowledged write.
    let mut lat = Vec::with_capacity(N);
    let t = Instant::now();
    for i in 0..N {
        let k = format!("/registry/services/default/svc-{i:05}");
        let t1 = Instant::now();
        s.create(&k, value(i)).await.unwrap();
        lat.push(t1.elapsed());
    }
    let create_total = t.elapsed();
    let (c50, c99) = (pct(&mut lat, 0.5), pct(&mut lat, 0.99));

    // Concurrent creates: 16 writers, 2000 objects.
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..16 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..125 {
                let k = format!("/registry/configmaps/default/cm-{w:02}-{i:03}");
                s.create(&k, value(i)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let conc_rate = 2000.0 / t.elapsed().as_secs_f64();

    // Gets of random existing keys.
    let mut lat = Vec::with_capacity(N);
    for i in 0..N {
        let k = format!("/registry/services/default/svc-{:05}", (i * 7919) % N);
        let t1 = Instant::now();
        assert!(s.get(&k).await.unwrap().is_some());
        lat.push(t1.elapsed());
    }
    let (g50, g99) = (pct(&mut lat, 0.5), pct(&mut lat, 0.99));

    // Listing all 10k.
    let mut lat = Vec::new();
    for _ in 0..10 {
        let t1 = Instant::now();
        let (items, _) = s.list("/registry/services/").await.unwrap();
        assert_eq!(items.len(), N);
        lat.push(t1.elapsed());
    }
    let l50 = pct(&mut lat, 0.5) / 1e3;

    // Watch fan-out: 50 watchers on the prefix; time from each write's acknowledgement to its
    // arrival at every watcher.
    let from = s.revision().await.unwrap();
    let mut watchers = Vec::new();
    for _ in 0..WATCHERS {
        watchers.push(s.watch("/registry/endpointslices/", from).await.unwrap());
    }
    let acks = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Instant>::with_capacity(
        FANOUT_WRITES,
    )));
    let mut handles = Vec::new();
    for mut w in watchers {
        let acks = acks.clone();
        handles.push(tokio::spawn(async move {
            let mut delays = Vec::with_capacity(FANOUT_WRITES);
            for i in 0..FANOUT_WRITES {
                let ev = tokio::time::timeout(Duration::from_secs(30), w.next())
                    .await
                    .unwrap()
                    .unwrap()
                    .unwrap();
                let now = Instant::now();
                // The ack of write i is recorded before the next write starts.
                let acked = loop {
                    if let Some(a) = acks.lock().unwrap().get(i).copied() {
                        break a;
                    }
                    tokio::task::yield_now().await;
                };
                let _ = ev;
                delays.push(now.saturating_duration_since(acked));
            }
            delays
        }));
    }
    for i in 0..FANOUT_WRITES {
        let k = format!("/registry/endpointslices/default/es-{i:04}");
        s.create(&k, value(i)).await.unwrap();
        acks.lock().unwrap().push(Instant::now());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let mut delays = Vec::new();
    for h in handles {
        delays.extend(h.await.unwrap());
    }
    let (w50, w99) = (pct(&mut delays, 0.5), pct(&mut delays, 0.99));

    println!(
        "{name:<16} | {c50:>8.0} {c99:>8.0} | {:>8.0} | {conc_rate:>8.0} | {g50:>6.0} {g99:>6.0} | {l50:>7.1} | {w50:>7.0} {w99:>7.0}",
        N as f64 / create_total.as_secs_f64()
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    println!("latencies in µs (list in ms); {N} objects; watch: {WATCHERS} watchers × {FANOUT_WRITES} writes");
    println!(
        "{:<16} | {:>8} {:>8} | {:>8} | {:>8} | {:>6} {:>6} | {:>7} | {:>7} {:>7}",
        "store",
        "create50",
        "create99",
        "seq/s",
        "16conc/s",
        "get50",
        "get99",
        "list ms",
        "watch50",
        "watch99"
    );
    for (name, sync) in [
        ("sqlite (FULL)", SqliteSync::Full),
        ("sqlite (NORMAL)", SqliteSync::Normal),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let s =
            SqliteStore::open_with_history(&dir.path().join("db"), sync, DEFAULT_HISTORY).unwrap();
        run(name, s).await;
    }
    let (etcd, _guard) = Etcd::start(DEFAULT_HISTORY).await;
    run("etcd 3.4", etcd).await;
}
