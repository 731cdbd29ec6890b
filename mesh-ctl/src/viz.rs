//! Seeing the mesh, as `linkerd viz stat/top` and `tap` do, from what the proxies export:
//!
//! - `mesh-ctl top`: per Service, the request rate, success rate and latency percentiles its
//!   meshed pods' proxies saw inbound over an interval (their `/metrics` on the admin port,
//!   scraped twice; the pod's address must be reachable: it is from a node and from the host
//!   of `mesh-ctl up`).
//! - `mesh-ctl tap RESOURCE`: the live request stream of a pod, Deployment or Service's pods
//!   (each proxy's `/tap`, which answers only its own pod's loopback: reached through
//!   `kubectl port-forward`, so the API server's authorization applies).

use std::{
    collections::{BTreeMap, HashMap},
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::{api::ListParams, Api, Client, ResourceExt};

const ADMIN_PORT: u16 = 4191;

#[derive(clap::Args)]
pub struct TopArgs {
    /// Namespace (default: every namespace).
    #[arg(short, long)]
    pub namespace: Option<String>,
    /// How long each sample covers.
    #[arg(long, default_value = "2s", value_parser = meshwork_daemon::parse_duration)]
    pub interval: Duration,
    /// Samples to print, then stop (0: until interrupted).
    #[arg(long, default_value_t = 0)]
    pub iterations: u32,
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct TapArgs {
    /// pod/NAME, deploy/NAME or svc/NAME.
    pub resource: String,
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
    /// Stop after this many requests (0: until interrupted).
    #[arg(long, default_value_t = 0)]
    pub max_requests: usize,
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
}

pub(crate) async fn client(kubeconfig: &Option<PathBuf>) -> anyhow::Result<Client> {
    Ok(meshwork_kube_watch::client(kubeconfig.as_deref()).await?)
}

fn meshed(p: &Pod) -> bool {
    meshwork_destination_api::is_meshed(p.metadata.annotations.as_ref())
        && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

/// The inbound counters of one proxy: requests by status class, latency buckets.
#[derive(Clone, Debug, Default)]
struct Sample {
    requests: f64,
    failures: f64,
    /// (upper bound, cumulative count)
    buckets: Vec<(f64, f64)>,
}

pub(crate) fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    labels.split(',').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"'))
    })
}

/// Whether a request counted under `labels` failed, as Linkerd's success rate has it: a 5xx,
/// no answer, or a gRPC answer whose status is not OK (told in its headers or trailers) —
/// unless its client cancelled it.
pub(crate) fn failed(labels: &str) -> bool {
    matches!(label(labels, "status_class"), Some("5xx" | "error"))
        || !matches!(
            label(labels, "grpc_status"),
            None | Some("" | "0" | "cancelled")
        )
}

/// The inbound part of a proxy's Prometheus text.
fn parse(text: &str) -> Sample {
    let mut s = Sample::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name_labels, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match name_labels.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (name_labels, ""),
        };
        if label(labels, "direction") != Some("inbound") {
            continue;
        }
        match name {
            "meshwork_proxy_requests_total" => {
                s.requests += v;
                if failed(labels) {
                    s.failures += v;
                }
            }
            "meshwork_proxy_response_latency_seconds_bucket" => {
                let le = match label(labels, "le") {
                    Some("+Inf") => f64::INFINITY,
                    Some(x) => x.parse().unwrap_or(f64::INFINITY),
                    None => continue,
                };
                s.buckets.push((le, v));
            }
            _ => {}
        }
    }
    s.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    s
}

/// The latency below which fraction `q` of the requests in `buckets` (cumulative) fell:
/// a bucket's upper bound, as histogram_quantile without interpolation.
fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    buckets
        .iter()
        .find(|(_, c)| *c >= q * total)
        .map(|(le, _)| *le)
}

pub(crate) fn scrape(ip: &str) -> anyhow::Result<String> {
    let addr: SocketAddr = format!("{ip}:{ADMIN_PORT}").parse()?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: proxy\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string()))
}

fn ms(v: Option<f64>) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{:.1}ms", x * 1e3),
        Some(_) => ">26s".into(),
        None => "-".into(),
    }
}

pub async fn top(a: TopArgs) -> anyhow::Result<()> {
    let c = client(&a.kubeconfig).await?;
    let (pods, slices): (Api<Pod>, Api<EndpointSlice>) = match &a.namespace {
        Some(ns) => (Api::namespaced(c.clone(), ns), Api::namespaced(c, ns)),
        None => (Api::all(c.clone()), Api::all(c)),
    };
    let mut prev: HashMap<String, Sample> = HashMap::new();
    let mut printed = 0;
    loop {
        // Which Services each meshed pod serves (their EndpointSlices name it).
        let mut services: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for sl in slices.list(&ListParams::default()).await? {
            let Some(svc) = sl.labels().get("kubernetes.io/service-name").cloned() else {
                continue;
            };
            let ns = sl.namespace().unwrap_or_default();
            for ep in &sl.endpoints {
                if let Some(r) = &ep.target_ref {
                    let key = format!("{ns}/{}", r.name.clone().unwrap_or_default());
                    services.entry(key).or_default().push(format!("{ns}/{svc}"));
                }
            }
        }
        let started = Instant::now();
        let mut now: HashMap<String, (Sample, Vec<String>)> = HashMap::new();
        for p in pods
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .filter(|p| meshed(p))
        {
            let key = format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any());
            let Some(ip) = p.status.as_ref().and_then(|s| s.pod_ip.clone()) else {
                continue;
            };
            let text = match tokio::task::spawn_blocking(move || scrape(&ip)).await? {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("mesh-ctl: {key}: reading its proxy's metrics: {e:#}");
                    continue;
                }
            };
            let svcs = services.get(&key).cloned().unwrap_or_default();
            now.insert(key, (parse(&text), svcs));
        }
        if !prev.is_empty() {
            // Per Service: the deltas of its pods over the interval.
            let mut rows: BTreeMap<String, (usize, Sample)> = BTreeMap::new();
            for (pod, (s, svcs)) in &now {
                let Some(old) = prev.get(pod) else { continue };
                for svc in svcs {
                    let row = rows.entry(svc.clone()).or_default();
                    row.0 += 1;
                    row.1.requests += (s.requests - old.requests).max(0.0);
                    row.1.failures += (s.failures - old.failures).max(0.0);
                    for (i, (le, c)) in s.buckets.iter().enumerate() {
                        let before = old.buckets.get(i).map_or(0.0, |b| b.1);
                        match row.1.buckets.get_mut(i) {
                            Some(b) => b.1 += (c - before).max(0.0),
                            None => row.1.buckets.push((*le, (c - before).max(0.0))),
                        }
                    }
                }
            }
            let secs = a.interval.as_secs_f64().max(0.001);
            println!(
                "{:<40} {:>5} {:>9} {:>8} {:>9} {:>9} {:>9}",
                "SERVICE", "PODS", "RPS", "SUCCESS", "P50", "P95", "P99"
            );
            for (svc, (n, d)) in &rows {
                let success = if d.requests > 0.0 {
                    format!("{:.2}%", 100.0 * (d.requests - d.failures) / d.requests)
                } else {
                    "-".into()
                };
                println!(
                    "{svc:<40} {n:>5} {:>9.1} {success:>8} {:>9} {:>9} {:>9}",
                    d.requests / secs,
                    ms(quantile(&d.buckets, 0.5)),
                    ms(quantile(&d.buckets, 0.95)),
                    ms(quantile(&d.buckets, 0.99)),
                );
            }
            println!();
            printed += 1;
            if a.iterations > 0 && printed >= a.iterations {
                return Ok(());
            }
        }
        prev = now.into_iter().map(|(k, (s, _))| (k, s)).collect();
        tokio::time::sleep(a.interval.saturating_sub(started.elapsed())).await;
    }
}

/// The pods `resource` names.
pub(crate) async fn pods_of(c: Client, ns: &str, resource: &str) -> anyhow::Result<Vec<String>> {
    let (kind, name) = resource
        .split_once('/')
        .with_context(|| format!("{resource:?}: expected pod/NAME, deploy/NAME or svc/NAME"))?;
    let selector = |labels: BTreeMap<String, String>| {
        labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let sel = match kind {
        "pod" | "pods" | "po" => return Ok(vec![name.to_string()]),
        "deploy" | "deployment" | "deployments" => {
            let d = Api::<Deployment>::namespaced(c.clone(), ns)
                .get(name)
                .await?;
            selector(
                d.spec
                    .and_then(|s| s.selector.match_labels)
                    .unwrap_or_default(),
            )
        }
        "svc" | "service" | "services" => {
            let s = Api::<Service>::namespaced(c.clone(), ns).get(name).await?;
            selector(s.spec.and_then(|s| s.selector).unwrap_or_default())
        }
        other => bail!("{other}: expected pod/NAME, deploy/NAME or svc/NAME"),
    };
    if sel.is_empty() {
        bail!("{resource} selects no pods");
    }
    let pods = Api::<Pod>::namespaced(c, ns)
        .list(&ListParams::default().labels(&sel))
        .await?;
    Ok(pods
        .items
        .iter()
        .filter(|p| meshed(p))
        .map(|p| p.name_any())
        .collect())
}

/// `kubectl port-forward pod/POD :4191`, and the local port it chose.
fn forward(
    kubeconfig: &Option<PathBuf>,
    ns: &str,
    pod: &str,
) -> anyhow::Result<(std::process::Child, u16)> {
    let mut cmd = Command::new(meshwork_lab::kubectl::KUBECTL);
    if let Some(k) = kubeconfig {
        cmd.arg("--kubeconfig").arg(k);
    }
    let mut child = cmd
        .args([
            "-n",
            ns,
            "port-forward",
            &format!("pod/{pod}"),
            &format!(":{ADMIN_PORT}"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("running {}", meshwork_lab::kubectl::KUBECTL))?;
    let out = child.stdout.take().context("kubectl's output")?;
    let mut lines = BufReader::new(out).lines();
    // "Forwarding from 127.0.0.1:41234 -> 4191"
    let port = lines
        .next()
        .transpose()?
        .and_then(|l| {
            l.strip_prefix("Forwarding from 127.0.0.1:")?
                .split_whitespace()
                .next()?
                .parse::<u16>()
                .ok()
        })
        .with_context(|| format!("kubectl port-forward to {pod} did not start"))?;
    // Keep draining its output so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Ok((child, port))
}

pub async fn tap(a: TapArgs) -> anyhow::Result<()> {
    let c = client(&a.kubeconfig).await?;
    let pods = pods_of(c, &a.namespace, &a.resource).await?;
    if pods.is_empty() {
        bail!("{}: no running meshed pods", a.resource);
    }
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let mut children = Vec::new();
    for pod in pods {
        let (child, port) = forward(&a.kubeconfig, &a.namespace, &pod)?;
        children.push(child);
        let tx = tx.clone();
        std::thread::spawn(move || {
            let res = (|| -> anyhow::Result<()> {
                let mut s = TcpStream::connect(("127.0.0.1", port))?;
                s.write_all(b"GET /tap HTTP/1.0\r\nHost: proxy\r\n\r\n")?;
                let mut r = BufReader::new(s);
                let mut status = String::new();
                r.read_line(&mut status)?;
                if !status.contains(" 200 ") {
                    bail!("the proxy answered {}", status.trim());
                }
                // Headers, then one JSON line per request.
                for line in r.lines() {
                    let line = line?;
                    if line.starts_with('{') && tx.send(format!("{pod} {line}")).is_err() {
                        break;
                    }
                }
                Ok(())
            })();
            if let Err(e) = res {
                let _ = tx.send(format!("{pod} ERROR {e:#}"));
            }
        });
    }
    drop(tx);
    let mut seen = 0;
    for msg in rx {
        let (pod, rest) = msg.split_once(' ').unwrap_or(("", &msg));
        if let Some(e) = rest.strip_prefix("ERROR ") {
            eprintln!("mesh-ctl: tap {pod}: {e}");
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(rest).unwrap_or_default();
        let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
        println!(
            "{} pod={pod} :authority={} :method={} :path={} status={} latency={:.3}ms peer={} trace={}",
            if v["direction"] == "inbound" { "req-in " } else { "req-out" },
            s("authority"),
            s("method"),
            s("path"),
            v["status"],
            v["latency_ms"].as_f64().unwrap_or(0.0),
            s("peer"),
            s("trace_id"),
        );
        seen += 1;
        if a.max_requests > 0 && seen >= a.max_requests {
            break;
        }
    }
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbound_counters_and_quantiles() {
        let text = r#"# HELP x
meshwork_proxy_requests_total{direction="inbound",authority="web:80",status_class="2xx",peer="a"} 90
meshwork_proxy_requests_total{direction="inbound",authority="web:80",status_class="5xx",peer="a"} 10
meshwork_proxy_requests_total{direction="outbound",authority="x:80",status_class="5xx",peer=""} 7
meshwork_proxy_requests_total{direction="inbound",authority="web:80",status_class="2xx",peer="a",grpc_status="0"} 20
meshwork_proxy_requests_total{direction="inbound",authority="web:80",status_class="2xx",peer="a",grpc_status="14"} 5
meshwork_proxy_requests_total{direction="inbound",authority="web:80",status_class="2xx",peer="a",grpc_status="none"} 1
meshwork_proxy_requests_total{direction="inbound",authority="web:80",status_class="2xx",peer="a",grpc_status="cancelled"} 3
meshwork_proxy_response_latency_seconds_bucket{le="0.001",direction="inbound"} 50
meshwork_proxy_response_latency_seconds_bucket{le="0.01",direction="inbound"} 99
meshwork_proxy_response_latency_seconds_bucket{le="+Inf",direction="inbound"} 100
meshwork_proxy_response_latency_seconds_bucket{le="0.001",direction="outbound"} 7
"#;
        let s = parse(text);
        // The gRPC answers: 20 OK, 5 UNAVAILABLE and one with no status (failures too), 3
        // cancelled by their clients.
        assert_eq!((s.requests, s.failures), (129.0, 16.0));
        assert_eq!(s.buckets.len(), 3);
        assert_eq!(quantile(&s.buckets, 0.5), Some(0.001));
        assert_eq!(quantile(&s.buckets, 0.95), Some(0.01));
        assert_eq!(quantile(&s.buckets, 0.999), Some(f64::INFINITY));
        assert_eq!(quantile(&[], 0.5), None);
    }
}
