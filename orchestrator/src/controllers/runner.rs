//! The loop every controller runs, in the shape of kube-runtime's `Controller` and client-go's
//! workqueue: watch events are mapped to the keys of the objects they concern (a pod to its
//! owner, a slice to its Service), keys wait in a de-duplicated queue, and one key is
//! reconciled at a time. A reconcile can ask to run again later (time-driven transitions:
//! minReadySeconds, progress deadlines, node grace periods); a failed one is retried with
//! per-key exponential back-off (the error policy) while other keys go on. Every key is
//! queued again at each resync and after a watch relist or a lagging event stream, because a
//! missed event must never wedge an object.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    fmt::Debug,
    future::Future,
    sync::Arc,
    time::Duration,
};

use k8s_openapi::api::{
    apps::v1::{DaemonSet, Deployment, ReplicaSet},
    core::v1::{ConfigMap, Namespace, Node, Pod, Service, ServiceAccount},
    discovery::v1::EndpointSlice,
};
use kube::{
    runtime::reflector::{ObjectRef, Store},
    ResourceExt,
};
use tokio::{
    sync::broadcast::{self, error::TryRecvError},
    task::JoinHandle,
    time::Instant,
};

/// An object a reflector took in, shared by every controller that looks at it.
#[derive(Clone, Debug)]
pub enum Obj {
    Pod(Arc<Pod>),
    ReplicaSet(Arc<ReplicaSet>),
    Job(Arc<k8s_openapi::api::batch::v1::Job>),
    Deployment(Arc<Deployment>),
    DaemonSet(Arc<DaemonSet>),
    Service(Arc<Service>),
    Slice(Arc<EndpointSlice>),
    Node(Arc<Node>),
    Namespace(Arc<Namespace>),
    ServiceAccount(Arc<ServiceAccount>),
    /// A `kube-root-ca.crt` ConfigMap (the only ConfigMaps watched).
    RootCa(Arc<ConfigMap>),
}

impl Obj {
    pub fn meta(&self) -> &kube::api::ObjectMeta {
        match self {
            Obj::Pod(o) => &o.metadata,
            Obj::ReplicaSet(o) => &o.metadata,
            Obj::Job(o) => &o.metadata,
            Obj::Deployment(o) => &o.metadata,
            Obj::DaemonSet(o) => &o.metadata,
            Obj::Service(o) => &o.metadata,
            Obj::Slice(o) => &o.metadata,
            Obj::Node(o) => &o.metadata,
            Obj::Namespace(o) => &o.metadata,
            Obj::ServiceAccount(o) => &o.metadata,
            Obj::RootCa(o) => &o.metadata,
        }
    }
}

/// What the reflectors report, in the order they took it in.
#[derive(Clone, Debug)]
pub enum Event {
    Applied(Obj),
    Deleted(Obj),
    /// A watch (re)listed: deletions meanwhile may have no `Deleted`. Everything is requeued.
    Relisted,
}

impl Event {
    pub fn obj(&self) -> Option<&Obj> {
        match self {
            Event::Applied(o) | Event::Deleted(o) => Some(o),
            Event::Relisted => None,
        }
    }
}

/// A namespaced object's key, or a cluster-scoped one's with an empty namespace.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub ns: String,
    pub name: String,
}

impl Key {
    pub fn new(ns: impl Into<String>, name: impl Into<String>) -> Self {
        Key {
            ns: ns.into(),
            name: name.into(),
        }
    }
    pub fn of<K: kube::Resource>(o: &K) -> Self {
        Key::new(o.namespace().unwrap_or_default(), o.name_any())
    }
    pub fn of_meta(m: &kube::api::ObjectMeta) -> Self {
        Key::new(
            m.namespace.clone().unwrap_or_default(),
            m.name.clone().unwrap_or_default(),
        )
    }
}

impl Key {
    /// The object under this key in `store`, unless it is gone or being deleted (what a
    /// controller leaves to the garbage collector).
    pub fn live<K>(&self, store: &Store<K>) -> Option<Arc<K>>
    where
        K: kube::Resource<DynamicType = ()> + Clone,
    {
        let r = if self.ns.is_empty() {
            ObjectRef::new(&self.name)
        } else {
            ObjectRef::new(&self.name).within(&self.ns)
        };
        store
            .get(&r)
            .filter(|o| o.meta().deletion_timestamp.is_none())
    }
}

/// The keys of every object in `store`.
pub fn keys<K>(store: &Store<K>) -> Vec<Key>
where
    K: kube::Resource<DynamicType = ()> + Clone,
{
    store.state().iter().map(|o| Key::of(o.as_ref())).collect()
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.ns.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}/{}", self.ns, self.name)
        }
    }
}

/// One controller: which keys exist, which keys an event concerns, and how one key converges.
pub trait Reconcile: Send + 'static {
    type Key: Clone + Ord + Debug + std::fmt::Display + Send + Sync + 'static;
    const NAME: &'static str;

    /// Every key there is now (start, resync, relist).
    fn all(&self) -> Vec<Self::Key>;

    /// The keys `event` concerns; each is reconciled once however often it is named before
    /// its turn.
    fn triggers(&self, event: &Event, out: &mut Vec<Self::Key>);

    /// Converges one key from the caches. `Ok(Some(d))`: run it again in `d` even without an
    /// event. An error retries it with back-off.
    fn reconcile(
        &mut self,
        key: &Self::Key,
    ) -> impl Future<Output = anyhow::Result<Option<Duration>>> + Send;
}

/// Retry delay after `failures` consecutive errors of one key: 100 ms doubling to 30 s.
/// client-go's default per-item limiter runs 5 ms to 1000 s; the ceiling is lower here so a
/// key that failed while the API server restarted is back within a lab test's patience. As with
/// client-go's `Add`, an event for the key or the resync runs it at once regardless: the
/// back-off only spaces retries nobody asked for.
pub fn backoff(failures: u32) -> Duration {
    let ms = 100u64.saturating_mul(1u64 << failures.saturating_sub(1).min(16));
    Duration::from_millis(ms.min(30_000))
}

/// The de-duplicated work queue of one controller.
pub struct Queue<K> {
    ready: VecDeque<K>,
    queued: BTreeSet<K>,
    /// Keys to run at a time (requeue or back-off), earliest first.
    later: BTreeSet<(Instant, K)>,
    at: BTreeMap<K, Instant>,
    failures: BTreeMap<K, u32>,
}

impl<K> Default for Queue<K> {
    fn default() -> Self {
        Queue {
            ready: VecDeque::new(),
            queued: BTreeSet::new(),
            later: BTreeSet::new(),
            at: BTreeMap::new(),
            failures: BTreeMap::new(),
        }
    }
}

impl<K: Clone + Ord> Queue<K> {
    /// Queues `k` now, unless it already waits; a later run it had is superseded.
    pub fn add(&mut self, k: K) {
        if let Some(t) = self.at.remove(&k) {
            self.later.remove(&(t, k.clone()));
        }
        if self.queued.insert(k.clone()) {
            self.ready.push_back(k);
        }
    }

    /// Queues `k` at `t` (the earlier of two asks wins); nothing if it already waits to run.
    pub fn add_at(&mut self, k: K, t: Instant) {
        if self.queued.contains(&k) {
            return;
        }
        if let Some(old) = self.at.get(&k).copied() {
            if old <= t {
                return;
            }
            self.later.remove(&(old, k.clone()));
        }
        self.at.insert(k.clone(), t);
        self.later.insert((t, k));
    }

    /// Moves what is due by `now` to the ready queue.
    pub fn promote(&mut self, now: Instant) {
        while let Some((t, _)) = self.later.first() {
            if *t > now {
                break;
            }
            let Some((_, k)) = self.later.pop_first() else {
                break;
            };
            self.at.remove(&k);
            self.add(k);
        }
    }

    pub fn pop(&mut self) -> Option<K> {
        let k = self.ready.pop_front()?;
        self.queued.remove(&k);
        Some(k)
    }

    pub fn next_at(&self) -> Option<Instant> {
        self.later.first().map(|(t, _)| *t)
    }

    /// Counts a failure of `k` and returns how many in a row.
    pub fn failed(&mut self, k: &K) -> u32 {
        let n = self.failures.entry(k.clone()).or_default();
        *n += 1;
        *n
    }

    pub fn succeeded(&mut self, k: &K) {
        self.failures.remove(k);
    }

    pub fn len(&self) -> usize {
        self.ready.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ready.is_empty()
    }
}

/// Runs `ctl` on the events of `events` until the sender goes, with every key queued at start
/// and each `resync`.
pub fn spawn<R: Reconcile>(
    mut ctl: R,
    events: &broadcast::Sender<Event>,
    resync: Duration,
) -> JoinHandle<()> {
    let mut rx = events.subscribe();
    tokio::spawn(async move {
        let mut q: Queue<R::Key> = Queue::default();
        let mut keys = Vec::new();
        for k in ctl.all() {
            q.add(k);
        }
        let mut resync_at = Instant::now() + resync;
        loop {
            // Take in whatever arrived while the last key ran.
            loop {
                match rx.try_recv() {
                    Ok(ev) => take(&ctl, &mut q, &mut keys, &ev),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Lagged(n)) => {
                        tracing::debug!(controller = R::NAME, missed = n, "events lagged");
                        ctl.all().into_iter().for_each(|k| q.add(k));
                    }
                    Err(TryRecvError::Closed) => return,
                }
            }
            let now = Instant::now();
            if now >= resync_at {
                ctl.all().into_iter().for_each(|k| q.add(k));
                resync_at = now + resync;
            }
            q.promote(now);
            if let Some(k) = q.pop() {
                match ctl.reconcile(&k).await {
                    Ok(again) => {
                        q.succeeded(&k);
                        if let Some(d) = again {
                            q.add_at(k, Instant::now() + d);
                        }
                    }
                    Err(e) => {
                        let n = q.failed(&k);
                        let delay = backoff(n);
                        tracing::warn!(
                            controller = R::NAME, key = %k, failures = n,
                            retry_in_ms = delay.as_millis() as u64,
                            error = format!("{e:#}"), "reconcile failed"
                        );
                        q.add_at(k, Instant::now() + delay);
                    }
                }
                continue;
            }
            let wake = q.next_at().map_or(resync_at, |t| t.min(resync_at));
            tokio::select! {
                ev = rx.recv() => match ev {
                    Ok(ev) => take(&ctl, &mut q, &mut keys, &ev),
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        ctl.all().into_iter().for_each(|k| q.add(k));
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    })
}

fn take<R: Reconcile>(ctl: &R, q: &mut Queue<R::Key>, keys: &mut Vec<R::Key>, ev: &Event) {
    if matches!(ev, Event::Relisted) {
        ctl.all().into_iter().for_each(|k| q.add(k));
        return;
    }
    ctl.triggers(ev, keys);
    for k in keys.drain(..) {
        q.add(k);
    }
}

/// The controller owner reference of `m` if it is of `kind`: the key of its owner.
pub fn owner_key(m: &kube::api::ObjectMeta, kind: &str) -> Option<Key> {
    let r = m
        .owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true))?;
    (r.kind == kind).then(|| Key::new(m.namespace.clone().unwrap_or_default(), r.name.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_dedupes_and_orders() {
        let mut q = Queue::default();
        q.add("a");
        q.add("b");
        q.add("a");
        assert_eq!(q.len(), 2);
        assert_eq!(q.pop(), Some("a"));
        q.add("a");
        assert_eq!(q.pop(), Some("b"));
        assert_eq!(q.pop(), Some("a"));
        assert_eq!(q.pop(), None);
    }

    #[test]
    fn later_keys_run_when_due_and_an_event_runs_them_now() {
        let t0 = Instant::now();
        let mut q = Queue::default();
        q.add_at("slow", t0 + Duration::from_secs(10));
        q.add_at("slow", t0 + Duration::from_secs(20)); // the earlier ask stands
        q.add_at("soon", t0 + Duration::from_secs(1));
        assert_eq!(q.next_at(), Some(t0 + Duration::from_secs(1)));
        q.promote(t0);
        assert!(q.is_empty());
        q.promote(t0 + Duration::from_secs(1));
        assert_eq!(q.pop(), Some("soon"));
        q.promote(t0 + Duration::from_secs(9));
        assert!(q.is_empty());
        // An event for a key waiting on a timer runs it now, and the timer is gone.
        q.add("slow");
        assert_eq!(q.pop(), Some("slow"));
        assert_eq!(q.next_at(), None);
        // A key waiting to run ignores a timer.
        q.add("x");
        q.add_at("x", t0);
        assert_eq!(q.next_at(), None);
    }

    /// Records each reconcile; "bad" fails its first two runs.
    struct Flaky {
        runs: Arc<std::sync::Mutex<Vec<(&'static str, bool)>>>,
        bad_failures: u32,
        done: Arc<tokio::sync::Notify>,
    }

    impl Reconcile for Flaky {
        type Key = &'static str;
        const NAME: &'static str = "flaky";
        fn all(&self) -> Vec<&'static str> {
            vec!["bad", "good"]
        }
        fn triggers(&self, ev: &Event, out: &mut Vec<&'static str>) {
            if let Some(Obj::Namespace(n)) = ev.obj() {
                out.push(if n.name_any() == "good" {
                    "good"
                } else {
                    "bad"
                });
            }
        }
        async fn reconcile(&mut self, key: &&'static str) -> anyhow::Result<Option<Duration>> {
            let fail = *key == "bad" && self.bad_failures < 2;
            self.runs.lock().unwrap().push((key, !fail));
            if fail {
                self.bad_failures += 1;
                anyhow::bail!("injected");
            }
            if *key == "bad" {
                self.done.notify_one();
            }
            Ok(None)
        }
    }

    #[tokio::test]
    async fn a_failing_key_backs_off_without_holding_up_the_others() {
        let runs = Arc::new(std::sync::Mutex::new(Vec::new()));
        let done = Arc::new(tokio::sync::Notify::new());
        let (tx, _) = broadcast::channel(16);
        let started = Instant::now();
        let task = spawn(
            Flaky {
                runs: runs.clone(),
                bad_failures: 0,
                done: done.clone(),
            },
            &tx,
            Duration::from_secs(3600),
        );
        tokio::time::timeout(Duration::from_secs(10), done.notified())
            .await
            .expect("the failing key was retried until it succeeded");
        let took = started.elapsed();
        task.abort();
        let runs = runs.lock().unwrap().clone();
        // "good" ran once, right after the first failure, not after the retries.
        assert_eq!(
            runs,
            vec![
                ("bad", false),
                ("good", true),
                ("bad", false),
                ("bad", true)
            ]
        );
        // Two back-offs: 100 ms then 200 ms.
        assert!(
            took >= Duration::from_millis(300),
            "retried too early: {took:?}"
        );
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(5), Duration::from_millis(1600));
        assert_eq!(backoff(40), Duration::from_secs(30));
        let mut q = Queue::default();
        assert_eq!(q.failed(&"k"), 1);
        assert_eq!(q.failed(&"k"), 2);
        q.succeeded(&"k");
        assert_eq!(q.failed(&"k"), 1);
    }
}
