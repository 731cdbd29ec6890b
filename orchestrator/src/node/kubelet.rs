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
use jiff::Timestamp;
use k8s_openapi::{
    api::core::v1::{
        Container as CSpec, ContainerState, ContainerStateRunning, ContainerStateTerminated,
        ContainerStateWaiting, ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus,
        Service,
    },
    apimachinery::pkg::apis::meta::v1::Time,
};
use kube::{
    api::{Api, DeleteParams, PostParams, Preconditions},
    runtime::{reflector::Store, watcher},
    Client, ResourceExt,
};
use serde::Serialize;
use tokio::{sync::Notify, task::JoinHandle};

use super::{
    probe,
    runtime::{Container, ContainerConfig, Exit, PodRuntime, Sandbox, SandboxConfig},
    NodeArgs,
};
use crate::api::kind::now_seconds;

const MAX_BACKOFF: Duration = Duration::from_secs(300);

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
}

pub(crate) struct PodRt {
    pub namespace: String,
    pub name: String,
    pub sandbox: Option<Sandbox>,
    /// Why the pod cannot start yet: its sandbox or volumes failed (shown as
    /// ContainerCreating with this message, retried on every sync).
    pub setup_error: Option<String>,
    pub volumes: Option<super::volumes::PodVolumes>,
    pub containers: HashMap<String, Ctr>,
    pub terminating: bool,
    pub seen: Instant,
    pub timed: bool,
    pub process_ms: f64,
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

/// The pod's /etc/resolv.conf for dnsPolicy ClusterFirst: the cluster DNS address and the
/// search path `<ns>.svc.<domain> svc.<domain> <domain>`, ndots 5 (as the kubelet writes it).
pub fn resolv_conf(dns: IpAddr, domain: &str, ns: &str) -> String {
    format!("search {ns}.svc.{domain} svc.{domain} {domain}\nnameserver {dns}\noptions ndots:5\n")
}

fn pod_resolv_conf(s: &Settings, pod: &Pod) -> String {
    let spec = pod.spec.clone().unwrap_or_default();
    let ns = pod.namespace().unwrap_or_default();
    let policy = spec.dns_policy.as_deref().unwrap_or("ClusterFirst");
    let host_net = spec.host_network == Some(true);
    let mut text = match policy {
        "Default" => std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        "None" => String::new(),
        "ClusterFirstWithHostNet" => resolv_conf(s.cluster_dns, &s.cluster_domain, &ns),
        _ if host_net => std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        _ => resolv_conf(s.cluster_dns, &s.cluster_domain, &ns),
    };
    if let Some(cfg) = &spec.dns_config {
        for n in cfg.nameservers.iter().flatten() {
            text.push_str(&format!("nameserver {n}\n"));
        }
        if let Some(search) = &cfg.searches {
            text.push_str(&format!("search {}\n", search.join(" ")));
        }
        for o in cfg.options.iter().flatten() {
            match &o.value {
                Some(v) => text.push_str(&format!(
                    "options {}:{v}\n",
                    o.name.clone().unwrap_or_default()
                )),
                None => text.push_str(&format!("options {}\n", o.name.clone().unwrap_or_default())),
            }
        }
    }
    text
}

/// `$(VAR)` references expanded from `env` (`$$` escapes), as the kubelet does for env values,
/// command and args.
pub fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('(') {
            match body.find(')') {
                Some(end) => {
                    let name = &body[..end];
                    match env.iter().rev().find(|(k, _)| k == name) {
                        Some((_, v)) => out.push_str(v),
                        None => out.push_str(&format!("$({name})")),
                    }
                    rest = &body[end + 1..];
                }
                None => {
                    out.push('$');
                    rest = after;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn field_ref(pod: &Pod, sb: &Sandbox, path: &str, node_ip: IpAddr) -> String {
    let spec = pod.spec.clone().unwrap_or_default();
    match path {
        "metadata.name" => pod.name_any(),
        "metadata.namespace" => pod.namespace().unwrap_or_default(),
        "metadata.uid" => pod.uid().unwrap_or_default(),
        "spec.nodeName" => spec.node_name.unwrap_or_default(),
        "spec.serviceAccountName" => spec.service_account_name.unwrap_or_default(),
        "status.podIP" => sb.ip.map(|i| i.to_string()).unwrap_or_default(),
        "status.hostIP" => node_ip.to_string(),
        other => {
            if let Some(k) = other
                .strip_prefix("metadata.labels['")
                .and_then(|k| k.strip_suffix("']"))
            {
                return pod.labels().get(k).cloned().unwrap_or_default();
            }
            String::new()
        }
    }
}

fn container_config(
    pod: &Pod,
    sb: &Sandbox,
    c: &CSpec,
    attempt: u32,
    node_ip: IpAddr,
    service_env: &[(String, String)],
    mounts: Vec<String>,
) -> ContainerConfig {
    // Service variables come first: the container's own env may refer to them, and wins.
    let mut env: Vec<(String, String)> = service_env.to_vec();
    for e in c.env.iter().flatten() {
        let v = match (&e.value, &e.value_from) {
            (Some(v), _) => expand(v, &env),
            (None, Some(from)) => from
                .field_ref
                .as_ref()
                .map(|f| field_ref(pod, sb, &f.field_path, node_ip))
                .unwrap_or_default(),
            _ => String::new(),
        };
        env.push((e.name.clone(), v));
    }
    ContainerConfig {
        name: c.name.clone(),
        image: c.image.clone().unwrap_or_default(),
        command: c
            .command
            .iter()
            .flatten()
            .map(|a| expand(a, &env))
            .collect(),
        args: c.args.iter().flatten().map(|a| expand(a, &env)).collect(),
        env,
        workdir: c.working_dir.clone(),
        attempt,
        mounts,
    }
}

fn time(secs: i64) -> Time {
    Time(Timestamp::from_second(secs).unwrap_or_else(|_| now_seconds()))
}

fn spec_hash(c: &CSpec) -> String {
    crate::controllers::template_hash(&serde_json::to_value(c).unwrap_or_default())
}

fn grace_of(pod: &Pod) -> Duration {
    let secs = pod
        .metadata
        .deletion_grace_period_seconds
        .or_else(|| pod.spec.as_ref()?.termination_grace_period_seconds)
        .unwrap_or(30)
        .max(0);
    Duration::from_secs(secs as u64)
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
            let mut p = PodRt {
                namespace: sb.namespace.clone(),
                name: sb.name.clone(),
                sandbox: Some(sb.clone()),
                setup_error: None,
                volumes: None,
                containers: HashMap::new(),
                terminating: false,
                seen: Instant::now(),
                timed: true,
                process_ms: 0.0,
            };
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
            if let Err(e) = self.sync_pod(pod, &services).await {
                first_err.get_or_insert(e.context(format!("pod {}", pod.name_any())));
            }
            if let Err(e) = self.report(pod).await {
                first_err.get_or_insert(e.context(format!("status of pod {}", pod.name_any())));
            }
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

    async fn sync_pod(&self, pod: &Pod, services: &[Arc<Service>]) -> anyhow::Result<()> {
        let uid = pod.uid().unwrap_or_default();
        let spec = pod.spec.clone().unwrap_or_default();
        let mut st = self.inner.state.lock().await;
        let p = st.pods.entry(uid.clone()).or_insert_with(|| PodRt {
            namespace: pod.namespace().unwrap_or_default(),
            name: pod.name_any(),
            sandbox: None,
            setup_error: None,
            volumes: None,
            containers: HashMap::new(),
            terminating: false,
            seen: Instant::now(),
            timed: false,
            process_ms: 0.0,
        });
        if p.terminating {
            return Ok(());
        }
        if p.sandbox.is_none() {
            let host_network = spec.host_network == Some(true);
            let cfg = SandboxConfig {
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
            };
            match self.inner.rt.run_sandbox(&cfg).await {
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
        let Some(sb) = p.sandbox.clone() else {
            return Ok(());
        };
        let mounter = super::volumes::Mounter {
            client: &self.inner.client,
            pod,
            root: sb.dir.join("volumes"),
        };
        match &mut p.volumes {
            None => match mounter.mount_all().await {
                Ok(v) => {
                    p.volumes = Some(v);
                    p.setup_error = None;
                }
                Err(e) => {
                    tracing::warn!(pod = %p.name, error = %e, "setting up volumes failed");
                    p.setup_error = Some(e);
                    return Ok(());
                }
            },
            Some(v) => {
                let now = std::time::SystemTime::now();
                for t in v.tokens.iter_mut().filter(|t| t.refresh_at <= now) {
                    // A failed refresh keeps the current token (still valid for another
                    // fifth of its life) and is retried on the next sync.
                    match mounter.refresh(t).await {
                        Ok(()) => tracing::debug!(pod = %p.name, path = %t.path, "token refreshed"),
                        Err(e) => tracing::warn!(pod = %p.name, error = %e, "refreshing a token"),
                    }
                }
            }
        }
        let vols = p.volumes.clone().unwrap_or_default();
        let svc_env = super::envvars::service_env(
            services.iter().map(|s| s.as_ref()),
            &p.namespace,
            spec.enable_service_links != Some(false),
        );
        let policy = spec
            .restart_policy
            .clone()
            .unwrap_or_else(|| "Always".into());
        let mut to_watch = Vec::new();
        let mut to_probe = Vec::new();
        let mut to_stop = Vec::new();
        let t0 = Instant::now();
        for cs in &spec.containers {
            let c = p.containers.entry(cs.name.clone()).or_insert_with(|| Ctr {
                backoff: self.inner.s.backoff,
                ..Default::default()
            });
            let hash = spec_hash(cs);
            if c.spec_hash.is_empty() {
                c.spec_hash = hash.clone();
            }
            if c.running && c.adopted {
                // Readiness as last reported for this very run, until the probes say more:
                // an agent restart must not flap the pod's endpoints.
                c.adopted = false;
                let id = c.run.as_ref().map(|r| format!("meshwork://{}", r.id()));
                c.ready = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .and_then(|list| list.iter().find(|x| x.name == cs.name))
                    .is_some_and(|x| x.ready && x.container_id == id);
                if let Some(run) = c.run.clone() {
                    to_probe.push((cs.clone(), run));
                }
            }
            if c.running {
                if (c.spec_hash != hash || c.kill_requested) && !c.stopping {
                    c.stopping = true;
                    c.spec_hash = hash;
                    if let Some(run) = c.run.clone() {
                        to_stop.push(run);
                    }
                }
                continue;
            }
            if c.stopping {
                continue;
            }
            let restart = match &c.last_exit {
                // Never ran, or adopted without an exit: start it.
                None => true,
                Some((exit, _, _)) => match policy.as_str() {
                    "Never" => false,
                    "OnFailure" => exit.code != 0,
                    _ => true,
                },
            };
            if !restart {
                continue;
            }
            if c.next_start.is_some_and(|t| Instant::now() < t) {
                if c.last_exit.is_some() {
                    c.waiting = Some((
                        "CrashLoopBackOff".into(),
                        format!(
                            "back-off restarting failed container {} in pod {}_{}",
                            cs.name, p.name, p.namespace
                        ),
                    ));
                }
                continue;
            }
            let attempt = c.run.as_ref().map_or(0, |r| r.attempt + 1);
            let mounts =
                match super::volumes::binds(&vols, cs.volume_mounts.as_deref().unwrap_or_default())
                {
                    Ok(m) => m,
                    Err(e) => {
                        c.waiting = Some(("CreateContainerConfigError".into(), e));
                        continue;
                    }
                };
            let cfg = container_config(
                pod,
                &sb,
                cs,
                attempt,
                self.inner.s.node_ip,
                &svc_env,
                mounts,
            );
            match self.inner.rt.start_container(&sb, &cfg).await {
                Ok(run) => {
                    if c.run.is_some() {
                        c.restart_count += 1;
                    }
                    c.run = Some(run.clone());
                    c.running = true;
                    c.waiting = None;
                    c.ready = false;
                    c.spec_hash = hash;
                    to_watch.push((cs.clone(), run));
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
            p.process_ms += t0.elapsed().as_secs_f64() * 1e3;
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
        drop(st);
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
        for run in to_stop {
            let k = self.clone();
            let grace = grace_of(pod);
            tokio::spawn(async move { k.inner.rt.stop_container(&run, grace).await });
        }
        Ok(())
    }

    fn spawn_terminate(&self, uid: String, grace: Duration, pod: Option<Pod>) {
        let k = self.clone();
        tokio::spawn(async move {
            let (runs, sandbox) = {
                let st = k.inner.state.lock().await;
                match st.pods.get(&uid) {
                    Some(p) => (
                        p.containers
                            .values()
                            .filter(|c| c.running)
                            .filter_map(|c| c.run.clone())
                            .collect::<Vec<_>>(),
                        p.sandbox.clone(),
                    ),
                    None => (Vec::new(), None),
                }
            };
            let rt = &k.inner.rt;
            futures::future::join_all(runs.iter().map(|r| rt.stop_container(r, grace))).await;
            if let Some(sb) = &sandbox {
                if let Err(e) = rt.stop_sandbox(sb).await {
                    tracing::warn!(pod = %sb.name, error = %e, "tearing down sandbox");
                }
            }
            if let Some(p) = k.inner.state.lock().await.pods.remove(&uid) {
                for c in p.containers.into_values() {
                    for t in c.probes {
                        t.abort();
                    }
                }
            }
            if let Some(pod) = pod {
                let api: Api<Pod> =
                    Api::namespaced(k.inner.client.clone(), &pod.namespace().unwrap_or_default());
                let dp = DeleteParams {
                    grace_period_seconds: Some(0),
                    preconditions: Some(Preconditions {
                        uid: pod.uid(),
                        resource_version: None,
                    }),
                    ..Default::default()
                };
                match api.delete(&pod.name_any(), &dp).await {
                    Ok(_) => tracing::info!(pod = %pod.name_any(), "pod stopped and deleted"),
                    Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                    Err(e) => tracing::warn!(pod = %pod.name_any(), error = %e, "deleting pod"),
                }
            }
            k.poke();
        });
    }

    /// Builds the pod's status from what runs and writes it when it differs.
    async fn report(&self, pod: &Pod) -> anyhow::Result<()> {
        let uid = pod.uid().unwrap_or_default();
        let status = {
            let st = self.inner.state.lock().await;
            let Some(p) = st.pods.get(&uid) else {
                return Ok(());
            };
            build_status(p, pod, &self.inner.s)
        };
        if pod.status.as_ref() == Some(&status) {
            return Ok(());
        }
        let api: Api<Pod> = Api::namespaced(
            self.inner.client.clone(),
            &pod.namespace().unwrap_or_default(),
        );
        let mut new = pod.clone();
        new.status = Some(status);
        match api
            .replace_status(&pod.name_any(), &PostParams::default(), &new)
            .await
        {
            Ok(_) => Ok(()),
            // Someone else wrote first: the next pass sees their version.
            Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

fn condition(old: &Option<PodStatus>, type_: &str, ok: bool, reason: Option<&str>) -> PodCondition {
    let status = if ok { "True" } else { "False" };
    let prev = old
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == type_));
    PodCondition {
        type_: type_.into(),
        status: status.into(),
        reason: if ok { None } else { reason.map(str::to_string) },
        last_transition_time: match prev {
            Some(p) if p.status == status => p.last_transition_time.clone(),
            _ => Some(Time(now_seconds())),
        },
        ..Default::default()
    }
}

pub(crate) fn build_status(p: &PodRt, pod: &Pod, s: &Settings) -> PodStatus {
    let spec = pod.spec.clone().unwrap_or_default();
    let old = pod.status.clone();
    let policy = spec
        .restart_policy
        .clone()
        .unwrap_or_else(|| "Always".into());
    let mut statuses = Vec::new();
    let (mut all_ready, mut any_running, mut all_done, mut all_ok) = (true, false, true, true);
    for cs in &spec.containers {
        let image = cs.image.clone().unwrap_or_default();
        let c = p.containers.get(&cs.name);
        let run = c.and_then(|c| c.run.as_ref());
        let terminated = |(e, started, finished): &(Exit, i64, i64)| ContainerStateTerminated {
            exit_code: e.code,
            reason: Some(e.reason.clone()),
            started_at: Some(time(*started)),
            finished_at: Some(time(*finished)),
            container_id: run.map(|r| format!("meshwork://{}", r.id())),
            ..Default::default()
        };
        let (state, last) = match c {
            Some(c) if c.running => (
                ContainerState {
                    running: Some(ContainerStateRunning {
                        started_at: run.map(|r| time(r.started_at)),
                    }),
                    ..Default::default()
                },
                c.last_exit.as_ref().map(terminated),
            ),
            Some(c) if c.waiting.is_some() => {
                let (reason, message) = c.waiting.clone().unwrap_or_default();
                (
                    ContainerState {
                        waiting: Some(ContainerStateWaiting {
                            reason: Some(reason),
                            message: Some(message),
                        }),
                        ..Default::default()
                    },
                    c.last_exit.as_ref().map(terminated),
                )
            }
            Some(c) if c.last_exit.is_some() => {
                let exit = c.last_exit.as_ref().map(terminated);
                (
                    ContainerState {
                        terminated: exit.clone(),
                        ..Default::default()
                    },
                    None,
                )
            }
            _ => {
                let (reason, message) = match &p.setup_error {
                    Some(e) => ("ContainerCreating".to_string(), Some(e.clone())),
                    None => ("ContainerCreating".to_string(), None),
                };
                (
                    ContainerState {
                        waiting: Some(ContainerStateWaiting {
                            reason: Some(reason),
                            message,
                        }),
                        ..Default::default()
                    },
                    None,
                )
            }
        };
        let running = c.is_some_and(|c| c.running);
        let ready = running && c.is_some_and(|c| c.ready);
        all_ready &= ready;
        any_running |= running;
        let will_restart = c.is_some_and(|c| match &c.last_exit {
            None => true,
            Some((e, _, _)) => match policy.as_str() {
                "Never" => false,
                "OnFailure" => e.code != 0,
                _ => true,
            },
        });
        let done = !running && c.is_some_and(|c| c.last_exit.is_some()) && !will_restart;
        all_done &= done;
        all_ok &= c
            .and_then(|c| c.last_exit.as_ref())
            .is_none_or(|(e, _, _)| e.code == 0);
        statuses.push(ContainerStatus {
            name: cs.name.clone(),
            image: image.clone(),
            image_id: format!("meshwork-catalog://{}", super::catalog::image_name(&image)),
            container_id: run.map(|r| format!("meshwork://{}", r.id())),
            ready,
            started: Some(running),
            restart_count: c.map_or(0, |c| c.restart_count),
            state: Some(state),
            last_state: Some(ContainerState {
                terminated: last,
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    let phase = if p.sandbox.is_none() {
        "Pending"
    } else if all_done && !spec.containers.is_empty() {
        if all_ok {
            "Succeeded"
        } else {
            "Failed"
        }
    } else if any_running || statuses.iter().any(|s| s.restart_count > 0) {
        "Running"
    } else {
        "Pending"
    };
    let scheduled = old
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled").cloned())
        .unwrap_or_else(|| condition(&old, "PodScheduled", true, None));
    let conditions = vec![
        condition(&old, "PodReadyToStartContainers", p.sandbox.is_some(), None),
        condition(&old, "Initialized", true, None),
        condition(&old, "Ready", all_ready, Some("ContainersNotReady")),
        condition(
            &old,
            "ContainersReady",
            all_ready,
            Some("ContainersNotReady"),
        ),
        scheduled,
    ];
    let ip = p
        .sandbox
        .as_ref()
        .and_then(|sb| sb.ip)
        .map(|i| i.to_string());
    let qos = {
        let any = spec.containers.iter().any(|c| {
            c.resources
                .as_ref()
                .is_some_and(|r| r.requests.is_some() || r.limits.is_some())
        });
        if any {
            "Burstable"
        } else {
            "BestEffort"
        }
    };
    PodStatus {
        phase: Some(phase.into()),
        conditions: Some(conditions),
        host_ip: Some(s.node_ip.to_string()),
        host_ips: Some(vec![HostIP {
            ip: s.node_ip.to_string(),
        }]),
        pod_ip: ip.clone(),
        pod_ips: ip.map(|ip| vec![PodIP { ip }]),
        start_time: old
            .as_ref()
            .and_then(|s| s.start_time.clone())
            .or_else(|| Some(Time(now_seconds()))),
        container_statuses: Some(statuses),
        qos_class: Some(qos.into()),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollar_references_expand() {
        let env = vec![
            ("A".to_string(), "x".to_string()),
            ("B".to_string(), "y".to_string()),
        ];
        assert_eq!(expand("$(A)-$(B)", &env), "x-y");
        assert_eq!(expand("$$(A) $(C)", &env), "$(A) $(C)");
        assert_eq!(expand("cost $5", &env), "cost $5");
    }

    #[test]
    fn resolv_conf_has_the_kubernetes_search_path() {
        let text = resolv_conf("10.96.0.10".parse().unwrap(), "cluster.local", "web");
        assert!(text.contains("nameserver 10.96.0.10\n"));
        assert!(text.contains("search web.svc.cluster.local svc.cluster.local cluster.local\n"));
        assert!(text.contains("options ndots:5"));
    }
}
