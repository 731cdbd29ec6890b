//! The node agent's pod lifecycle: sync the pods bound to this node with what the runtime
//! runs, report their status, register the node and keep it fresh.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
    path::PathBuf,
    sync::{Arc, Mutex as StdMutex},
    time::{Duration, Instant},
};

use anyhow::Context;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::{
    api::Api,
    runtime::{reflector::Store, watcher},
    Client, ResourceExt,
};
use serde::Serialize;
use tokio::{sync::Notify, task::JoinHandle};

use super::{
    container::{container_config, grace_of, pod_resolv_conf, spec_hash},
    probe,
    runtime::{Container, Exit, PodRuntime, Sandbox, SandboxConfig},
    NodeArgs,
};
use crate::api::kind::now_seconds;

const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// Pods synced at once (starts in flight on a node): twice the CPUs, 2 to 16. A start is mostly
/// CPU (building the container's root, spawning its shim) with short waits (CNI ADD, API
/// calls); more in flight than that only makes each start slower (BENCHMARKS.md, node_idle).
fn pod_workers() -> usize {
    std::thread::available_parallelism()
        .map_or(2, |n| n.get() * 2)
        .clamp(2, 16)
}

/// Settings of the agent (from the command line).
#[derive(Clone, Debug)]
pub struct Settings {
    pub node_name: String,
    pub node_ip: IpAddr,
    pub cluster_dns: IpAddr,
    pub cluster_domain: String,
    pub heartbeat: Duration,
    pub backoff: Duration,
    pub labels: BTreeMap<String, String>,
    pub cpu: String,
    pub memory: String,
    pub max_pods: u32,
    pub port: u16,
    pub cni_conf_dir: PathBuf,
}

impl Settings {
    pub fn from_args(a: &NodeArgs) -> Self {
        let mut labels: BTreeMap<String, String> = BTreeMap::new();
        labels.insert("kubernetes.io/hostname".into(), a.node_name.clone());
        labels.insert("kubernetes.io/os".into(), "linux".into());
        labels.insert(
            "kubernetes.io/arch".into(),
            std::env::consts::ARCH
                .replace("x86_64", "amd64")
                .replace("aarch64", "arm64"),
        );
        for l in &a.labels {
            if let Some((k, v)) = l.split_once('=') {
                labels.insert(k.into(), v.into());
            }
        }
        let cpu = a.cpu.clone().unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .to_string()
        });
        let memory = a.memory.clone().unwrap_or_else(|| {
            let kb = std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|m| {
                    m.lines()
                        .find(|l| l.starts_with("MemTotal:"))
                        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                })
                .unwrap_or(1 << 20);
            format!("{kb}Ki")
        });
        Settings {
            node_name: a.node_name.clone(),
            node_ip: a.node_ip,
            cluster_dns: a.cluster_dns,
            cluster_domain: a.cluster_domain.clone(),
            heartbeat: Duration::from_secs(a.heartbeat_seconds.max(1)),
            backoff: Duration::from_secs(a.restart_backoff_seconds),
            labels,
            cpu,
            memory,
            max_pods: a.max_pods,
            port: a.port,
            cni_conf_dir: a.cni_conf_dir.clone(),
        }
    }
}

/// Where one pod's start went (the start-latency benchmark reads these).
#[derive(Clone, Debug, Serialize)]
pub struct StartTiming {
    pub namespace: String,
    pub pod: String,
    /// Network namespace and cgroup.
    pub sandbox_ms: f64,
    pub cni_ms: f64,
    /// Starting every container's process.
    pub process_ms: f64,
    /// From the agent seeing the pod to every container started.
    pub total_ms: f64,
}

#[derive(Default)]
pub(crate) struct Ctr {
    pub run: Option<Container>,
    pub running: bool,
    pub stopping: bool,
    pub restart_count: i32,
    pub last_exit: Option<(Exit, i64, i64)>,
    pub backoff: Duration,
    pub next_start: Option<Instant>,
    pub waiting: Option<(String, String)>,
    pub ready: bool,
    pub kill_requested: bool,
    pub spec_hash: String,
    pub probes: Vec<JoinHandle<()>>,
    /// Found running by a restarted agent: probes and readiness still to pick up.
    pub adopted: bool,
    /// This run's startupProbe has passed (its readiness and liveness probes run from then).
    pub startup_ok: bool,
}

pub(crate) struct PodRt {
    /// Held across this pod's slow operations (start, terminate): one at a time per pod,
    /// while other pods go on.
    pub op: Arc<tokio::sync::Mutex<()>>,
    pub namespace: String,
    pub name: String,
    pub sandbox: Option<Sandbox>,
    /// Why the pod cannot start yet: its sandbox or volumes failed (shown as
    /// ContainerCreating with this message, retried on every sync).
    pub setup_error: Option<String>,
    pub volumes: Option<super::volumes::PodVolumes>,
    pub containers: HashMap<String, Ctr>,
    pub terminating: bool,
    /// Every init container is through (regular ones exited 0, sidecars started); from then
    /// on the app containers run and init containers are not waited for again.
    pub initialized: bool,
    /// A regular init container failed under restartPolicy Never: the pod has failed.
    pub init_failed: bool,
    /// Every app container has finished for good; the sidecars are being stopped.
    pub finishing: bool,
    /// A meshed pod: the proxy run whose inbound listener the kernel steers to.
    pub inbound_for: Option<u32>,
    pub seen: Instant,
    pub timed: bool,
    pub process_ms: f64,
}

impl PodRt {
    pub(crate) fn new(namespace: String, name: String) -> Self {
        PodRt {
            op: Arc::default(),
            namespace,
            name,
            sandbox: None,
            setup_error: None,
            volumes: None,
            containers: HashMap::new(),
            terminating: false,
            initialized: false,
            init_failed: false,
            finishing: false,
            inbound_for: None,
            seen: Instant::now(),
            timed: false,
            process_ms: 0.0,
        }
    }
}

/// Pod starts kept for `/debug/pod-starts` (the metrics count them all).
const MAX_TIMINGS: usize = 1000;

#[derive(Default)]
pub(crate) struct State {
    pub pods: HashMap<String, PodRt>,
    pub timings: Vec<StartTiming>,
}

/// What the log endpoint needs: per (namespace, pod), per container, its dir and current run.
pub type LogIndex = Arc<StdMutex<LogView>>;

/// One container's logs: its dir, current run, running.
pub type LogEntry = (PathBuf, u32, bool);

#[derive(Default)]
pub struct LogView {
    /// (namespace, pod) → container → logs.
    pub pods: HashMap<(String, String), HashMap<String, LogEntry>>,
    pub timings: Vec<StartTiming>,
}

pub(crate) struct Inner<R: PodRuntime> {
    pub client: Client,
    pub rt: R,
    pub s: Settings,
    pub state: tokio::sync::Mutex<State>,
    pub notify: Notify,
    pub logs: LogIndex,
    pub metrics: Arc<super::metrics::NodeMetrics>,
}

pub struct Kubelet<R: PodRuntime> {
    pub(crate) inner: Arc<Inner<R>>,
}

impl<R: PodRuntime> Clone for Kubelet<R> {
    fn clone(&self) -> Self {
        Kubelet {
            inner: self.inner.clone(),
        }
    }
}

impl<R: PodRuntime> Kubelet<R> {
    pub fn new(client: Client, rt: R, s: Settings) -> Self {
        Kubelet {
            inner: Arc::new(Inner {
                client,
                rt,
                s,
                state: tokio::sync::Mutex::new(State::default()),
                notify: Notify::new(),
                logs: Arc::new(StdMutex::new(LogView::default())),
                metrics: super::metrics::NodeMetrics::new(),
            }),
        }
    }

    pub fn logs(&self) -> LogIndex {
        self.inner.logs.clone()
    }

    pub fn metrics(&self) -> Arc<super::metrics::NodeMetrics> {
        self.inner.metrics.clone()
    }

    pub(crate) fn poke(&self) {
        self.inner.notify.notify_one();
    }

    /// Registers the node, adopts what is running, then syncs pods until the process ends.
    pub async fn run(self) -> anyhow::Result<()> {
        let mut reported = super::heartbeat::Reported::default();
        self.report_node(&mut reported, true)
            .await
            .context("registering the node")?;
        let hb = {
            let k = self.clone();
            tokio::spawn(async move {
                loop {
                    if let Err(e) = k.renew_lease(&mut reported).await {
                        tracing::warn!(error = format!("{e:#}"), "node lease renewal failed");
                    }
                    if let Err(e) = k.report_node(&mut reported, false).await {
                        tracing::warn!(error = format!("{e:#}"), "node status failed");
                    }
                    tokio::time::sleep(k.inner.s.heartbeat).await;
                }
            })
        };
        self.adopt().await;
        let changes = meshwork_kube_watch::Changes::new();
        let (pods, task) = meshwork_kube_watch::reflect(
            Api::<Pod>::all(self.inner.client.clone()),
            watcher::Config::default().fields(&format!("spec.nodeName={}", self.inner.s.node_name)),
            changes.clone(),
        );
        // Every Service, for the containers' service variables (envvars.rs); a change to
        // them does not wake the pod sync (the kubelet does not restart containers either).
        let (services, stask) = meshwork_kube_watch::reflect(
            Api::<Service>::all(self.inner.client.clone()),
            watcher::Config::default(),
            meshwork_kube_watch::Changes::new(),
        );
        let _ = pods.wait_until_ready().await;
        let _ = services.wait_until_ready().await;
        let mut rx = changes.subscribe();
        let res: anyhow::Result<()> = async {
            loop {
                rx.mark_unchanged();
                if let Err(e) = self.sync_all(&pods, &services).await {
                    tracing::warn!(error = format!("{e:#}"), "pod sync failed");
                }
                tokio::select! {
                    _ = rx.changed() => {}
                    _ = self.inner.notify.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
        .await;
        hb.abort();
        task.abort();
        stask.abort();
        res
    }

    /// Takes over sandboxes and containers a previous agent left running.
    async fn adopt(&self) {
        let mut st = self.inner.state.lock().await;
        for (sb, runs) in self.inner.rt.list() {
            // A sandbox whose network namespace is gone (the node rebooted, or its namespaces
            // were removed) cannot be adopted: its containers would be started into nothing.
            // Release it (CNI DEL frees the address; the spec allows a missing netns) and let
            // the sync give the pod a new sandbox, as the kubelet does after a reboot.
            if !sb.netns_path.exists() {
                tracing::info!(pod = %sb.name, netns = %sb.netns, "sandbox gone; replacing it");
                if let Err(e) = self.inner.rt.stop_sandbox(&sb).await {
                    tracing::warn!(pod = %sb.name, error = %e, "releasing a vanished sandbox");
                }
                continue;
            }
            let mut p = PodRt::new(sb.namespace.clone(), sb.name.clone());
            p.sandbox = Some(sb.clone());
            p.timed = true;
            for run in runs {
                let mut c = Ctr {
                    restart_count: run.attempt as i32,
                    backoff: self.inner.s.backoff,
                    ..Default::default()
                };
                if self.inner.rt.alive(&run) {
                    c.running = true;
                    c.adopted = true;
                    self.inner.metrics.adopted.inc();
                    self.spawn_waiter(sb.uid.clone(), run.clone());
                } else {
                    let exit = self.inner.rt.wait(&run).await;
                    c.last_exit = Some((exit, run.started_at, now_seconds().as_second()));
                }
                tracing::info!(pod = %sb.name, container = %run.name, running = c.running, "adopted");
                c.run = Some(run.clone());
                p.containers.insert(run.name.clone(), c);
            }
            st.pods.insert(sb.uid.clone(), p);
        }
    }

    fn spawn_waiter(&self, uid: String, run: Container) {
        let k = self.clone();
        tokio::spawn(async move {
            let exit = k.inner.rt.wait(&run).await;
            let mut st = k.inner.state.lock().await;
            if let Some(c) = st
                .pods
                .get_mut(&uid)
                .and_then(|p| p.containers.get_mut(&run.name))
                .filter(|c| c.run.as_ref().map(|r| r.attempt) == Some(run.attempt))
            {
                let now = now_seconds().as_second();
                tracing::info!(container = %run.name, code = exit.code, "container exited");
                // Ten minutes of good running resets the back-off, as in the kubelet.
                if now - run.started_at > 600 {
                    c.backoff = k.inner.s.backoff;
                }
                c.next_start = Some(Instant::now() + c.backoff);
                c.backoff = (c.backoff * 2).clamp(Duration::from_secs(1), MAX_BACKOFF);
                c.last_exit = Some((exit, run.started_at, now));
                c.running = false;
                c.stopping = false;
                c.ready = false;
                c.startup_ok = false;
                c.kill_requested = false;
                for p in c.probes.drain(..) {
                    p.abort();
                }
            }
            drop(st);
            k.poke();
        });
    }

    async fn sync_all(&self, pods: &Store<Pod>, services: &Store<Service>) -> anyhow::Result<()> {
        let pods = pods.state();
        let services = services.state();
        let mut first_err = None;
        let live: HashSet<String> = pods.iter().filter_map(|p| p.uid()).collect();
        let mut live_pods = Vec::new();
        for pod in &pods {
            let uid = pod.uid().unwrap_or_default();
            if pod.metadata.deletion_timestamp.is_some() {
                let mut st = self.inner.state.lock().await;
                let p = st.pods.get_mut(&uid);
                if p.as_ref().is_none_or(|p| !p.terminating) {
                    if let Some(p) = p {
                        p.terminating = true;
                    }
                    drop(st);
                    self.spawn_terminate(uid.clone(), grace_of(pod), Some(pod.as_ref().clone()));
                }
                continue;
            }
            live_pods.push(pod);
        }
        // Pods side by side (each under its own operation lock), as the kubelet's pod
        // workers: one slow start does not hold up the others.
        let services = &services;
        let errors = futures::stream::iter(live_pods)
            .map(|pod| async move {
                let mut errs = Vec::new();
                if let Err(e) = self.sync_pod(pod, services).await {
                    errs.push(e.context(format!("pod {}", pod.name_any())));
                }
                if let Err(e) = self.report(pod).await {
                    errs.push(e.context(format!("status of pod {}", pod.name_any())));
                }
                errs
            })
            .buffer_unordered(pod_workers())
            .collect::<Vec<_>>()
            .await;
        if let Some(e) = errors.into_iter().flatten().next() {
            first_err.get_or_insert(e);
        }
        // Pods gone from the API (force-deleted) or never known to it: stop at once.
        let gone: Vec<String> = {
            let st = self.inner.state.lock().await;
            st.pods
                .iter()
                .filter(|(uid, p)| !live.contains(*uid) && !p.terminating)
                .map(|(uid, _)| uid.clone())
                .collect()
        };
        for uid in gone {
            if let Some(p) = self.inner.state.lock().await.pods.get_mut(&uid) {
                p.terminating = true;
            }
            self.spawn_terminate(uid, Duration::ZERO, None);
        }
        self.publish_logs().await;
        self.inner.metrics.syncs.inc();
        first_err.map_or(Ok(()), Err)
    }

    async fn publish_logs(&self) {
        let st = self.inner.state.lock().await;
        let mut view = LogView::default();
        for p in st.pods.values() {
            let Some(sb) = &p.sandbox else { continue };
            let m = view
                .pods
                .entry((p.namespace.clone(), p.name.clone()))
                .or_default();
            for (name, c) in &p.containers {
                if let Some(run) = &c.run {
                    m.insert(
                        name.clone(),
                        (sb.dir.join("containers").join(name), run.attempt, c.running),
                    );
                }
            }
        }
        view.timings = st.timings.clone();
        *self.inner.logs.lock().unwrap_or_else(|p| p.into_inner()) = view;
    }

    /// One pod brought towards its spec. The node-wide state lock is held only to read and
    /// record; the slow steps (sandbox and CNI ADD, volumes and their API calls, container
    /// starts) run under this pod's own operation lock, so pods start side by side and a
    /// terminate waits for a start in progress instead of racing it.
    async fn sync_pod(&self, pod: &Pod, services: &[Arc<Service>]) -> anyhow::Result<()> {
        let uid = pod.uid().unwrap_or_default();
        let spec = pod.spec.clone().unwrap_or_default();
        let op = {
            let mut st = self.inner.state.lock().await;
            st.pods
                .entry(uid.clone())
                .or_insert_with(|| PodRt::new(pod.namespace().unwrap_or_default(), pod.name_any()))
                .op
                .clone()
        };
        let _op = op.lock().await;

        // 1. The sandbox (network namespace, cgroup, CNI ADD).
        let want_sandbox = {
            let st = self.inner.state.lock().await;
            let Some(p) = st.pods.get(&uid) else {
                return Ok(());
            };
            if p.terminating {
                return Ok(());
            }
            p.sandbox.is_none().then(|| {
                let host_network = spec.host_network == Some(true);
                let mesh = super::mesh::spec_of(pod);
                (
                    mesh,
                    SandboxConfig {
                        uid: uid.clone(),
                        namespace: p.namespace.clone(),
                        name: p.name.clone(),
                        // A host-network pod shares the node's name, as it shares its network.
                        hostname: if host_network {
                            self.inner.s.node_name.clone()
                        } else {
                            spec.hostname.clone().unwrap_or_else(|| pod.name_any())
                        },
                        resolv_conf: pod_resolv_conf(&self.inner.s, pod),
                        host_network,
                        host_ip: self.inner.s.node_ip,
                        mesh: None,
                    },
                )
            })
        };
        if let Some((mesh, mut cfg)) = want_sandbox {
            let res = match mesh {
                Ok(m) => {
                    cfg.mesh = m;
                    self.inner.rt.run_sandbox(&cfg).await
                }
                Err(e) => Err(super::runtime::RuntimeError::Other(e)),
            };
            let mut st = self.inner.state.lock().await;
            let Some(p) = st.pods.get_mut(&uid) else {
                return Ok(());
            };
            match res {
                Ok(sb) => {
                    p.sandbox = Some(sb);
                    p.setup_error = None;
                }
                Err(e) => {
                    // The kubelet's FailedCreatePodSandBox: in the pod's status and the log.
                    tracing::warn!(pod = %p.name, error = %e, "creating the pod sandbox failed");
                    p.setup_error = Some(e.to_string());
                    return Ok(());
                }
            }
        }
        let (sb, vols, name) = {
            let mut st = self.inner.state.lock().await;
            let Some(p) = st.pods.get_mut(&uid) else {
                return Ok(());
            };
            let Some(sb) = p.sandbox.clone() else {
                return Ok(());
            };
            // Taken out while this pod's operation lock is held: nobody else writes them.
            (sb, p.volumes.take(), p.name.clone())
        };

        // 2. Volumes: mounted once, projected tokens refreshed when due.
        let mounter = super::volumes::Mounter {
            client: &self.inner.client,
            pod,
            root: sb.dir.join("volumes"),
        };
        let vols = match vols {
            None => match mounter.mount_all().await {
                Ok(v) => Ok(v),
                Err(e) => {
                    tracing::warn!(pod = %name, error = %e, "setting up volumes failed");
                    Err(e)
                }
            },
            Some(mut v) => {
                let now = std::time::SystemTime::now();
                for t in v.tokens.iter_mut().filter(|t| t.refresh_at <= now) {
                    // A failed refresh keeps the current token (still valid for another
                    // fifth of its life) and is retried on the next sync.
                    match mounter.refresh(t).await {
                        Ok(()) => tracing::debug!(pod = %name, path = %t.path, "token refreshed"),
                        Err(e) => tracing::warn!(pod = %name, error = %e, "refreshing a token"),
                    }
                }
                Ok(v)
            }
        };
        let svc_env = super::envvars::service_env(
            services.iter().map(|s| s.as_ref()),
            &pod.namespace().unwrap_or_default(),
            spec.enable_service_links != Some(false),
        );

        // 3. Containers: decided under the lock, started outside it, recorded under it.
        let mut to_start = Vec::new();
        let to_probe;
        let to_stop;
        let stop_sidecars;
        {
            let mut st = self.inner.state.lock().await;
            let Some(p) = st.pods.get_mut(&uid) else {
                return Ok(());
            };
            let vols = match vols {
                Ok(v) => {
                    p.setup_error = None;
                    p.volumes = Some(v.clone());
                    v
                }
                Err(e) => {
                    p.setup_error = Some(e);
                    return Ok(());
                }
            };
            let plan = super::plan::containers(p, pod, Instant::now(), self.inner.s.backoff);
            to_stop = plan.stop;
            stop_sidecars = plan.stop_sidecars;
            to_probe = plan.probe;
            for (cs, attempt) in plan.start {
                let hash = spec_hash(&cs);
                let mounts = match super::volumes::binds(
                    &vols,
                    cs.volume_mounts.as_deref().unwrap_or_default(),
                ) {
                    Ok(m) => m,
                    Err(e) => {
                        if let Some(c) = p.containers.get_mut(&cs.name) {
                            c.waiting = Some(("CreateContainerConfigError".into(), e));
                        }
                        continue;
                    }
                };
                let cfg = container_config(
                    pod,
                    &sb,
                    &cs,
                    attempt,
                    self.inner.s.node_ip,
                    &svc_env,
                    mounts,
                );
                to_start.push((cs, cfg, hash));
            }
        }
        if let Some(m) = &sb.mesh {
            self.mesh_inbound(&uid, pod, &sb, m, &mut to_start).await;
        }
        let t0 = Instant::now();
        let mut started = Vec::new();
        for (cs, cfg, hash) in to_start {
            let res = self.inner.rt.start_container(&sb, &cfg).await;
            started.push((cs, res, hash));
        }
        let process_ms = t0.elapsed().as_secs_f64() * 1e3;

        let mut to_watch = Vec::new();
        {
            let mut st = self.inner.state.lock().await;
            let Some(p) = st.pods.get_mut(&uid) else {
                return Ok(());
            };
            for (cs, res, hash) in started {
                let Some(c) = p.containers.get_mut(&cs.name) else {
                    continue;
                };
                match res {
                    Ok(run) => {
                        if c.run.is_some() {
                            c.restart_count += 1;
                        }
                        c.run = Some(run.clone());
                        c.running = true;
                        c.waiting = None;
                        c.ready = false;
                        c.spec_hash = hash;
                        to_watch.push((cs, run));
                    }
                    Err(e) => {
                        let reason = match e {
                            super::runtime::RuntimeError::ImageNotFound(_) => "ErrImageNeverPull",
                            _ => "CreateContainerError",
                        };
                        c.waiting = Some((reason.into(), e.to_string()));
                        c.next_start = Some(Instant::now() + c.backoff);
                        c.backoff = (c.backoff * 2).clamp(Duration::from_secs(1), MAX_BACKOFF);
                    }
                }
            }
            if !to_watch.is_empty() {
                p.process_ms += process_ms;
            }
            let all_started = spec
                .containers
                .iter()
                .all(|cs| p.containers.get(&cs.name).is_some_and(|c| c.run.is_some()));
            if all_started && !p.timed {
                p.timed = true;
                let timing = StartTiming {
                    namespace: p.namespace.clone(),
                    pod: p.name.clone(),
                    sandbox_ms: sb.netns_ms,
                    cni_ms: sb.cni_ms,
                    process_ms: p.process_ms,
                    total_ms: p.seen.elapsed().as_secs_f64() * 1e3,
                };
                self.inner.metrics.observe(&timing);
                // The debug list keeps the latest starts only: a long-lived node would grow it
                // (and the copy the log view takes of it) without end.
                if st.timings.len() >= MAX_TIMINGS {
                    st.timings.remove(0);
                }
                st.timings.push(timing);
            }
        }
        // Started runs get a waiter; they and adopted runs get their probes.
        for (_, run) in &to_watch {
            self.spawn_waiter(uid.clone(), run.clone());
        }
        for (cs, run) in to_watch.into_iter().chain(to_probe) {
            let probes = probe::spawn_all(self.clone(), uid.clone(), &cs, &run, sb.ip);
            let mut st = self.inner.state.lock().await;
            if let Some(c) = st
                .pods
                .get_mut(&uid)
                .and_then(|p| p.containers.get_mut(&cs.name))
            {
                if probes.is_empty() {
                    c.ready = true;
                }
                c.probes = probes;
            }
        }
        let ip = sb.ip;
        for run in to_stop {
            let (k, pod) = (self.clone(), pod.clone());
            tokio::spawn(async move {
                let cs = super::plan::spec_of(&pod, &run.name);
                k.stop_run(cs, &run, grace_of(&pod), ip).await
            });
        }
        if !stop_sidecars.is_empty() {
            let (k, pod) = (self.clone(), pod.clone());
            tokio::spawn(async move {
                for run in stop_sidecars {
                    let cs = super::plan::spec_of(&pod, &run.name);
                    k.stop_run(cs, &run, grace_of(&pod), ip).await;
                }
            });
        }
        Ok(())
    }

    /// A meshed pod's inbound connections go to its proxy's listener once that has started
    /// (the kernel drops them until then); the app containers start only after. Checked on
    /// every sync, so a restarted proxy's new listener is handed over too.
    async fn mesh_inbound(
        &self,
        uid: &str,
        pod: &Pod,
        sb: &Sandbox,
        m: &super::mesh::MeshSpec,
        to_start: &mut Vec<(
            k8s_openapi::api::core::v1::Container,
            super::runtime::ContainerConfig,
            String,
        )>,
    ) {
        let cs = super::plan::spec_of(pod, &m.proxy_container);
        let (run, done) = {
            let st = self.inner.state.lock().await;
            let Some(p) = st.pods.get(uid) else { return };
            let c = p.containers.get(&m.proxy_container);
            let run = c
                .filter(|c| cs.is_some_and(|cs| super::plan::started(cs, c)))
                .and_then(|c| c.run.clone());
            let done = run.as_ref().map(|r| r.attempt) == p.inbound_for && run.is_some();
            (run, done)
        };
        let mut ready = done;
        if let (Some(run), false) = (&run, done) {
            match self.inner.rt.register_inbound(sb, run).await {
                Ok(true) => {
                    tracing::info!(pod = %sb.name, attempt = run.attempt, "inbound connections steered to the proxy");
                    if let Some(p) = self.inner.state.lock().await.pods.get_mut(uid) {
                        p.inbound_for = Some(run.attempt);
                    }
                    ready = true;
                }
                Ok(false) => tracing::debug!(pod = %sb.name, "the proxy does not listen yet"),
                Err(e) => {
                    tracing::warn!(pod = %sb.name, error = %e, "steering inbound connections")
                }
            }
        }
        if !ready {
            to_start.retain(|(cs, _, _)| cs.name == m.proxy_container);
        }
    }
}
