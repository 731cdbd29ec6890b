//! `mesh-ctl routes RESOURCE` (`linkerd viz routes`): per route, the requests a pod,
//! Deployment or Service's pods received over an interval and the share that succeeded, from
//! the `route` label of their proxies' inbound request counters (the pods'
//! `config.meshwork.io/routes`, ARCHITECTURE.md "Routes"). Requests no route matched show as
//! `[DEFAULT]`, as Linkerd shows them. Latency is not kept per route: `mesh-ctl top` has it per
//! Service.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use anyhow::bail;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;

use crate::viz::{client, label, pods_of, scrape};

#[derive(clap::Args)]
pub struct RoutesArgs {
    /// pod/NAME, deploy/NAME or svc/NAME.
    pub resource: String,
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
    /// How long the sample covers.
    #[arg(long, default_value = "5s", value_parser = meshwork_daemon::parse_duration)]
    pub interval: Duration,
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
}

/// Inbound requests by route in a proxy's Prometheus text: (all, failed: 5xx or no answer).
fn by_route(text: &str) -> BTreeMap<String, (f64, f64)> {
    let mut out: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("meshwork_proxy_requests_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let Ok(v) = value.trim().parse::<f64>() else {
            continue;
        };
        if label(labels, "direction") != Some("inbound") {
            continue;
        }
        let route = label(labels, "route").unwrap_or_default().to_string();
        let e = out.entry(route).or_default();
        e.0 += v;
        if matches!(label(labels, "status_class"), Some("5xx" | "error")) {
            e.1 += v;
        }
    }
    out
}

type ByRoute = BTreeMap<String, (f64, f64)>;

/// Each pod's counters now, by route; a pod whose proxy cannot be read (one going away in a
/// rollout) is left out with a warning.
async fn sample(pods: &[(String, String)]) -> BTreeMap<String, ByRoute> {
    let mut out = BTreeMap::new();
    for (name, ip) in pods {
        let ip = ip.clone();
        match tokio::task::spawn_blocking(move || scrape(&ip)).await {
            Ok(Ok(text)) => {
                out.insert(name.clone(), by_route(&text));
            }
            Ok(Err(e)) => eprintln!("mesh-ctl: {name}: reading its proxy's metrics: {e:#}"),
            Err(e) => eprintln!("mesh-ctl: {name}: {e}"),
        }
    }
    out
}

/// What each pod counted between the samples, summed: per pod first, so that a proxy that
/// restarted meanwhile (its counters from zero) takes nothing from the others.
fn deltas(before: &BTreeMap<String, ByRoute>, after: &BTreeMap<String, ByRoute>) -> ByRoute {
    let mut sum = ByRoute::new();
    for (pod, now) in after {
        let Some(then) = before.get(pod) else {
            continue;
        };
        for (route, (n, failed)) in now {
            let (n0, f0) = then.get(route).copied().unwrap_or_default();
            let e = sum.entry(route.clone()).or_default();
            e.0 += (n - n0).max(0.0);
            e.1 += (failed - f0).max(0.0);
        }
    }
    sum
}

/// The table of what was counted over `secs`: routes by name, `[DEFAULT]` last.
fn table(counted: &ByRoute, secs: f64) -> String {
    let mut rows: Vec<(&String, f64, f64)> = counted
        .iter()
        .map(|(route, (n, failed))| (route, *n, *failed))
        .collect();
    rows.sort_by_key(|(route, ..)| (route.is_empty(), (*route).clone()));
    let mut out = format!("{:<40} {:>9} {:>8}\n", "ROUTE", "RPS", "SUCCESS");
    for (route, n, failed) in rows {
        let name = if route.is_empty() {
            "[DEFAULT]"
        } else {
            route.as_str()
        };
        let success = if n > 0.0 {
            format!("{:.2}%", 100.0 * (n - failed) / n)
        } else {
            "-".into()
        };
        out.push_str(&format!("{name:<40} {:>9.1} {success:>8}\n", n / secs));
    }
    out
}

pub async fn routes(a: RoutesArgs) -> anyhow::Result<()> {
    let c = client(&a.kubeconfig).await?;
    let names = pods_of(c.clone(), &a.namespace, &a.resource).await?;
    let pods: Api<Pod> = Api::namespaced(c, &a.namespace);
    let mut ips = Vec::new();
    for name in &names {
        if let Some(ip) = pods.get(name).await?.status.and_then(|s| s.pod_ip) {
            ips.push((name.clone(), ip));
        }
    }
    if ips.is_empty() {
        bail!("{}: no running meshed pods", a.resource);
    }
    let before = sample(&ips).await;
    tokio::time::sleep(a.interval).await;
    let after = sample(&ips).await;
    if after.is_empty() {
        bail!("{}: no proxy could be read", a.resource);
    }
    let secs = a.interval.as_secs_f64().max(0.001);
    print!("{}", table(&deltas(&before, &after), secs));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS: &str = r#"# TYPE meshwork_proxy_requests_total counter
meshwork_proxy_requests_total{direction="inbound",authority="web:80",route="GET /books/{id}",status_class="2xx",peer="a"} 90
meshwork_proxy_requests_total{direction="inbound",authority="web:80",route="GET /books/{id}",status_class="5xx",peer="a"} 10
meshwork_proxy_requests_total{direction="inbound",authority="web:80",route="",status_class="2xx",peer="a"} 4
meshwork_proxy_requests_total{direction="outbound",authority="x:80",route="GET /x",status_class="2xx",peer=""} 7
"#;

    #[test]
    fn inbound_requests_by_route_and_the_table() {
        let after = by_route(METRICS);
        assert_eq!(after.len(), 2, "{after:?}");
        assert_eq!(after["GET /books/{id}"], (100.0, 10.0));
        assert_eq!(after[""], (4.0, 0.0));
        // Pod a counted 50 more; pod b restarted meanwhile (its counters fell): nothing of
        // its takes from a's.
        let before = BTreeMap::from([
            (
                "a".to_string(),
                ByRoute::from([("GET /books/{id}".to_string(), (50.0, 0.0))]),
            ),
            (
                "b".to_string(),
                ByRoute::from([(String::new(), (400.0, 0.0))]),
            ),
        ]);
        let after = BTreeMap::from([
            ("a".to_string(), after),
            (
                "b".to_string(),
                ByRoute::from([(String::new(), (0.0, 0.0))]),
            ),
        ]);
        let t = table(&deltas(&before, &after), 2.0);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("ROUTE"), "{t}");
        assert!(lines[1].starts_with("GET /books/{id}"), "{t}");
        assert!(
            lines[1].contains(" 25.0 ") && lines[1].ends_with("80.00%"),
            "{t}"
        );
        assert!(
            lines[2].starts_with("[DEFAULT]") && lines[2].ends_with("100.00%"),
            "{t}"
        );
    }
}
