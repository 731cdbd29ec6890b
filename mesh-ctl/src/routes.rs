//! `mesh-ctl routes RESOURCE` (`linkerd viz routes`): per route, the requests a pod,
//! Deployment or Service's pods received over an interval and the share that succeeded, from
//! the `route` label of their proxies' inbound request counters (the pods'
//! `config.meshwork.io/routes`, ARCHITECTURE.md "Routes"). Requests no route matched show as
//! `[DEFAULT]`, as Linkerd shows them. Latency percentiles come from the proxies' latency by
//! route, estimated from its buckets as Prometheus's `histogram_quantile` does.

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

/// What a proxy counted for one route: requests, failed ones (`viz::failed`), and its
/// latency histogram's cumulative buckets (upper bound in seconds as written, count).
#[derive(Clone, Debug, Default, PartialEq)]
struct Counted {
    n: f64,
    failed: f64,
    buckets: BTreeMap<String, f64>,
}

/// Inbound requests by route in a proxy's Prometheus text, with their latency by route
/// (`meshwork_proxy_route_response_latency_seconds`, summed over authorities).
fn by_route(text: &str) -> BTreeMap<String, Counted> {
    let mut out: BTreeMap<String, Counted> = BTreeMap::new();
    for line in text.lines() {
        let (counter, rest) = if let Some(r) = line.strip_prefix("meshwork_proxy_requests_total{") {
            (true, r)
        } else if let Some(r) =
            line.strip_prefix("meshwork_proxy_route_response_latency_seconds_bucket{")
        {
            (false, r)
        } else {
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
        if counter {
            e.n += v;
            if crate::viz::failed(labels) {
                e.failed += v;
            }
        } else if let Some(le) = label(labels, "le") {
            *e.buckets.entry(le.to_string()).or_default() += v;
        }
    }
    out
}

/// The `q` quantile of cumulative `buckets`, in seconds, as Prometheus's
/// `histogram_quantile` estimates it: linear within the bucket the rank falls in; the highest
/// finite bound if it falls in `+Inf`. None: no observation.
fn quantile(q: f64, buckets: &BTreeMap<String, f64>) -> Option<f64> {
    let mut b: Vec<(f64, f64)> = buckets
        .iter()
        .filter_map(|(le, n)| Some((le.parse::<f64>().ok()?, *n)))
        .collect();
    b.sort_by(|x, y| x.0.total_cmp(&y.0));
    // Cumulative whatever sums and differences made of it (histogram_quantile's own fix).
    let mut most = 0.0f64;
    for x in &mut b {
        most = most.max(x.1);
        x.1 = most;
    }
    let total = b.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for (le, n) in b {
        if n >= rank {
            if le.is_infinite() {
                return Some(lower);
            }
            let width = n - below;
            let into = if width > 0.0 {
                (rank - below) / width
            } else {
                1.0
            };
            return Some(lower + (le - lower) * into);
        }
        (lower, below) = (le, n);
    }
    None
}

type ByRoute = BTreeMap<String, Counted>;

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
        for (route, c) in now {
            let mut c0 = then.get(route).cloned().unwrap_or_default();
            // Counters that fell were reset (the proxy restarted): all they hold now is new,
            // as Prometheus's rate() takes it — buckets and all, so they stay cumulative.
            if c.n < c0.n || c.buckets.get("+Inf") < c0.buckets.get("+Inf") {
                c0 = Counted::default();
            }
            let e = sum.entry(route.clone()).or_default();
            e.n += (c.n - c0.n).max(0.0);
            e.failed += (c.failed - c0.failed).max(0.0);
            for (le, n) in &c.buckets {
                let n0 = c0.buckets.get(le).copied().unwrap_or_default();
                *e.buckets.entry(le.clone()).or_default() += (n - n0).max(0.0);
            }
        }
    }
    sum
}

/// The table of what was counted over `secs`: routes by name, `[DEFAULT]` last, with
/// `linkerd viz routes`' columns.
fn table(counted: &ByRoute, secs: f64) -> String {
    let mut rows: Vec<(&String, &Counted)> = counted.iter().collect();
    rows.sort_by_key(|(route, _)| (route.is_empty(), (*route).clone()));
    let mut out = format!(
        "{:<40} {:>9} {:>8} {:>11} {:>11} {:>11}\n",
        "ROUTE", "RPS", "SUCCESS", "LATENCY_P50", "LATENCY_P95", "LATENCY_P99"
    );
    for (route, c) in rows {
        let name = if route.is_empty() {
            "[DEFAULT]"
        } else {
            route.as_str()
        };
        let success = if c.n > 0.0 {
            format!("{:.2}%", 100.0 * (c.n - c.failed) / c.n)
        } else {
            "-".into()
        };
        let ms = |q: f64| {
            quantile(q, &c.buckets).map_or_else(|| "-".to_string(), |s| format!("{:.1}ms", s * 1e3))
        };
        out.push_str(&format!(
            "{name:<40} {:>9.1} {success:>8} {:>11} {:>11} {:>11}\n",
            c.n / secs,
            ms(0.5),
            ms(0.95),
            ms(0.99)
        ));
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
meshwork_proxy_route_response_latency_seconds_bucket{direction="inbound",authority="web:80",route="GET /books/{id}",le="0.001"} 50
meshwork_proxy_route_response_latency_seconds_bucket{direction="inbound",authority="web:80",route="GET /books/{id}",le="0.002"} 90
meshwork_proxy_route_response_latency_seconds_bucket{direction="inbound",authority="web:80",route="GET /books/{id}",le="0.004"} 100
meshwork_proxy_route_response_latency_seconds_bucket{direction="inbound",authority="web:80",route="GET /books/{id}",le="+Inf"} 100
meshwork_proxy_route_response_latency_seconds_bucket{direction="outbound",authority="x:80",route="GET /x",le="+Inf"} 7
"#;

    #[test]
    fn quantiles_as_prometheus_estimates_them() {
        let b = |pairs: &[(&str, f64)]| -> BTreeMap<String, f64> {
            pairs.iter().map(|(le, n)| (le.to_string(), *n)).collect()
        };
        let h = b(&[
            ("0.001", 50.0),
            ("0.002", 90.0),
            ("0.004", 100.0),
            ("+Inf", 100.0),
        ]);
        let close = |a: Option<f64>, want: f64| a.is_some_and(|a| (a - want).abs() < 1e-9);
        // Rank 50 is the first bucket's top; 95 is a quarter into 2–4 ms (90..100).
        assert!(close(quantile(0.5, &h), 0.001), "{:?}", quantile(0.5, &h));
        assert!(close(quantile(0.95, &h), 0.003), "{:?}", quantile(0.95, &h));
        // A rank in +Inf: the highest finite bound.
        let h = b(&[("0.001", 1.0), ("+Inf", 10.0)]);
        assert!(close(quantile(0.99, &h), 0.001));
        assert_eq!(quantile(0.5, &b(&[("+Inf", 0.0)])), None);
        assert_eq!(quantile(0.5, &BTreeMap::new()), None);
    }

    #[test]
    fn inbound_requests_by_route_and_the_table() {
        let after = by_route(METRICS);
        assert_eq!(after.len(), 2, "{after:?}");
        let books = &after["GET /books/{id}"];
        assert_eq!((books.n, books.failed), (100.0, 10.0));
        assert_eq!(books.buckets.len(), 4, "outbound buckets are not read");
        assert_eq!((after[""].n, after[""].failed), (4.0, 0.0));
        // Pod a counted 50 more, its first 50 all under 1 ms; pod b restarted meanwhile (its
        // counters fell): nothing of its takes from a's.
        let then = Counted {
            n: 50.0,
            failed: 0.0,
            buckets: [
                ("0.001", 50.0),
                ("0.002", 50.0),
                ("0.004", 50.0),
                ("+Inf", 50.0),
            ]
            .into_iter()
            .map(|(le, n)| (le.to_string(), n))
            .collect(),
        };
        let before = BTreeMap::from([
            (
                "a".to_string(),
                ByRoute::from([("GET /books/{id}".to_string(), then)]),
            ),
            (
                "b".to_string(),
                ByRoute::from([(
                    String::new(),
                    Counted {
                        n: 400.0,
                        ..Default::default()
                    },
                )]),
            ),
        ]);
        let after = BTreeMap::from([
            ("a".to_string(), after),
            (
                "b".to_string(),
                ByRoute::from([(String::new(), Counted::default())]),
            ),
        ]);
        let t = table(&deltas(&before, &after), 2.0);
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[0].starts_with("ROUTE") && lines[0].ends_with("LATENCY_P99"),
            "{t}"
        );
        // Of the 50 in the interval: 40 in 1–2 ms, 10 in 2–4 ms (p95: rank 47.5, three quarters
        // into 2–4 ms).
        let cols: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            cols[cols.len() - 5..],
            ["25.0", "80.00%", "1.6ms", "3.5ms", "3.9ms"],
            "{t}"
        );
        assert!(lines[1].starts_with("GET /books/{id}"), "{t}");
        assert!(
            lines[2].starts_with("[DEFAULT]") && lines[2].contains("100.00%"),
            "{t}"
        );
        assert!(lines[2].ends_with("-"), "no latency without buckets: {t}");

        // A proxy that restarted between the samples: what it holds now is the interval's.
        let restarted = BTreeMap::from([(
            "a".to_string(),
            ByRoute::from([(
                "GET /".to_string(),
                Counted {
                    n: 10.0,
                    failed: 0.0,
                    buckets: [("0.001", 10.0), ("+Inf", 10.0)]
                        .into_iter()
                        .map(|(le, n)| (le.to_string(), n))
                        .collect(),
                },
            )]),
        )]);
        let earlier = BTreeMap::from([(
            "a".to_string(),
            ByRoute::from([(
                "GET /".to_string(),
                Counted {
                    n: 500.0,
                    failed: 0.0,
                    buckets: [("0.001", 100.0), ("+Inf", 500.0)]
                        .into_iter()
                        .map(|(le, n)| (le.to_string(), n))
                        .collect(),
                },
            )]),
        )]);
        let d = deltas(&earlier, &restarted);
        assert_eq!(d["GET /"].n, 10.0);
        assert_eq!(d["GET /"].buckets["+Inf"], 10.0);
        assert!(quantile(0.5, &d["GET /"].buckets).is_some_and(|q| q <= 0.001));
    }
}
