//! The Service datapath loop: reported changes → desired frontends of the touched Services →
//! plan against what is programmed → apply. Runs on its own, apart from the overlay loop, so
//! that nothing but Service and EndpointSlice changes wakes it.

use std::{
    sync::{atomic::Ordering, Arc, Mutex},
    time::{Duration, Instant},
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::runtime::reflector::{ObjectRef, Store};
use meshwork_ebpf::Datapath;
use meshwork_service_model::Key;
use tokio::sync::mpsc;

use crate::{
    apply::apply,
    desired::{Desired, NodeInfo, Options},
    incremental::{within, Change, Objects, Tracker},
    metrics::{now_ms, Metrics},
    plan::plan,
};

/// Changes arriving within this of each other are applied together.
const DEBOUNCE: Duration = Duration::from_millis(2);
/// A failed apply is retried after this.
const RETRY: Duration = Duration::from_millis(500);

/// The reflectors' stores as a pass reads them.
#[derive(Clone)]
pub struct Stores {
    pub services: Store<Service>,
    pub slices: Store<EndpointSlice>,
}

fn oref<K: kube::Resource<DynamicType = ()>>(k: &Key) -> ObjectRef<K> {
    ObjectRef::new(&k.1).within(&k.0)
}

impl Objects for Stores {
    fn service(&self, k: &Key) -> Option<Arc<Service>> {
        self.services.get(&oref(k))
    }
    fn slice(&self, k: &Key) -> Option<Arc<EndpointSlice>> {
        self.slices.get(&oref(k))
    }
    fn services(&self) -> Vec<Arc<Service>> {
        self.services.state()
    }
    fn slices(&self) -> Vec<Arc<EndpointSlice>> {
        self.slices.state()
    }
}

pub struct ServiceSync<D> {
    pub node: NodeInfo,
    pub opts: Options,
    pub stores: Stores,
    /// The datapath and what it holds (read back at start).
    pub dp: Arc<Mutex<(D, Desired)>>,
    pub metrics: Arc<Metrics>,
}

impl<D: Datapath + 'static> ServiceSync<D> {
    /// Runs until `rx` closes. Nothing is planned before both lists are in: a partial view
    /// would remove live frontends of a restarted agent.
    pub async fn run(self, mut rx: mpsc::UnboundedReceiver<Change>) {
        let _ = self.stores.services.wait_until_ready().await;
        let _ = self.stores.slices.wait_until_ready().await;
        let m = self.metrics.clone();
        let mut tracker = Some(Tracker::default());
        // A full pass first and after any failed apply or relist; otherwise only what changed.
        let mut full = true;
        loop {
            if !full {
                let Some(first) = rx.recv().await else { return };
                m.pending_since_ms
                    .compare_exchange(0, now_ms(), Ordering::Relaxed, Ordering::Relaxed)
                    .ok();
                tokio::time::sleep(DEBOUNCE).await;
                if let Some(t) = tracker.as_mut() {
                    t.note(first);
                }
            }
            // Everything reported so far joins this pass (a full pass covers it anyway, but a
            // relist among it must still make the pass full).
            let mut t = tracker.take().unwrap_or_default();
            while let Ok(c) = rx.try_recv() {
                t.note(c);
            }
            let was_full = full || t.needs_full();
            let seen = Instant::now();
            let (node, opts, stores, dp, m2) = (
                self.node.clone(),
                self.opts.clone(),
                self.stores.clone(),
                self.dp.clone(),
                m.clone(),
            );
            let res = tokio::task::spawn_blocking(move || {
                // Convert before locking the datapath: the lock is held for the writes only.
                let (want, scope) = if was_full {
                    (t.full(&node, &opts, &stores), None)
                } else {
                    let (w, s) = t.changes(&node, &opts, &stores);
                    (w, Some(s))
                };
                let Ok(mut g) = dp.lock() else {
                    return (t, usize::MAX);
                };
                let (dp, have) = &mut *g;
                let ops = match &scope {
                    None => plan(&want, have),
                    Some(scope) => plan(&want, &within(have, scope)),
                };
                let failed = apply(dp, have, ops);
                m2.services
                    .set(i64::try_from(have.len()).unwrap_or(i64::MAX));
                m2.endpoints.set(
                    i64::try_from(have.values().map(|s| s.backends.len()).sum::<usize>())
                        .unwrap_or(i64::MAX),
                );
                (t, failed)
            })
            .await;
            let failed = match res {
                Ok((t, failed)) => {
                    tracker = Some(t);
                    failed
                }
                Err(_) => usize::MAX,
            };
            m.sync_duration.observe(seen.elapsed().as_secs_f64());
            if failed == 0 {
                m.pending_since_ms.store(0, Ordering::Relaxed);
                m.last_sync.set(now_ms() / 1000);
                m.synced.store(true, Ordering::Relaxed);
                full = false;
            } else {
                m.sync_errors.inc();
                tokio::time::sleep(RETRY).await;
                full = true;
            }
        }
    }
}
