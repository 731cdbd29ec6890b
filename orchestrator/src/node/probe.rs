//! Startup, readiness and liveness probes (httpGet, tcpSocket, exec), run by the agent from
//! the node against the pod's address, with the kubelet's timing fields and thresholds. Until
//! a startup probe passes, the others wait and the container does not count as started (a
//! native sidecar holds the next init container and the app until then); failing it, as
//! failing liveness, asks for the container to be restarted. Readiness sets the ready flag.

use std::{net::IpAddr, time::Duration};

use k8s_openapi::{
    api::core::v1::{Container as CSpec, HTTPGetAction, Probe},
    apimachinery::pkg::util::intstr::IntOrString,
};
use tokio::task::JoinHandle;

use super::{
    kubelet::Kubelet,
    runtime::{Container, PodRuntime},
};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Startup,
    Readiness,
    Liveness,
}

/// Starts the container's probe loops; none when it has no probes. With a startup probe, one
/// task runs it and then the others.
pub(crate) fn spawn_all<R: PodRuntime>(
    k: Kubelet<R>,
    uid: String,
    cs: &CSpec,
    run: &Container,
    ip: Option<IpAddr>,
) -> Vec<JoinHandle<()>> {
    let loops = |k: &Kubelet<R>| {
        [
            (Kind::Readiness, cs.readiness_probe.clone()),
            (Kind::Liveness, cs.liveness_probe.clone()),
        ]
        .into_iter()
        .filter_map(|(kind, probe)| {
            let (k, uid, cs, run, probe) =
                (k.clone(), uid.clone(), cs.clone(), run.clone(), probe?);
            Some(async move {
                probe_loop(k, uid, cs, run, ip, kind, probe).await;
            })
        })
        .collect::<Vec<_>>()
    };
    match cs.startup_probe.clone() {
        Some(startup) => {
            let rest = loops(&k);
            let (uid, cs, run) = (uid.clone(), cs.clone(), run.clone());
            vec![tokio::spawn(async move {
                if probe_loop(k, uid, cs, run, ip, Kind::Startup, startup).await {
                    futures::future::join_all(rest).await;
                }
            })]
        }
        None => loops(&k).into_iter().map(tokio::spawn).collect(),
    }
}

/// An httpGet probe or hook against the pod's address: a 2xx or 3xx answer in time.
pub(crate) async fn http_get(
    cs: &CSpec,
    h: &HTTPGetAction,
    ip: Option<IpAddr>,
    timeout: Duration,
) -> bool {
    let (Some(ip), Some(port)) = (ip, port_of(cs, &h.port)) else {
        return false;
    };
    let host = match ip {
        IpAddr::V6(v6) => format!("[{v6}]"),
        v4 => v4.to_string(),
    };
    let path = h.path.clone().unwrap_or_else(|| "/".into());
    let Ok(uri) = format!("http://{host}:{port}{path}").parse::<http::Uri>() else {
        return false;
    };
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let mut req = http::Request::get(uri).header("User-Agent", "kube-probe/1.33");
    for hd in h.http_headers.iter().flatten() {
        req = req.header(hd.name.as_str(), hd.value.as_str());
    }
    let Ok(req) = req.body(http_body_util::Empty::new()) else {
        return false;
    };
    matches!(
        tokio::time::timeout(timeout, client.request(req)).await,
        Ok(Ok(r)) if (200..400).contains(&r.status().as_u16())
    )
}

fn port_of(cs: &CSpec, p: &IntOrString) -> Option<u16> {
    match p {
        IntOrString::Int(n) => u16::try_from(*n).ok(),
        IntOrString::String(name) => cs
            .ports
            .iter()
            .flatten()
            .find(|cp| cp.name.as_deref() == Some(name.as_str()))
            .and_then(|cp| u16::try_from(cp.container_port).ok()),
    }
}

async fn probe_loop<R: PodRuntime>(
    k: Kubelet<R>,
    uid: String,
    cs: CSpec,
    run: Container,
    ip: Option<IpAddr>,
    kind: Kind,
    probe: Probe,
) -> bool {
    let secs = |v: Option<i32>, d: i32| Duration::from_secs(v.unwrap_or(d).max(0) as u64);
    let period = secs(probe.period_seconds, 10).max(Duration::from_secs(1));
    let timeout = secs(probe.timeout_seconds, 1).max(Duration::from_secs(1));
    // A startup (and liveness) probe's successThreshold must be 1 (kube validation).
    let success_needed = match kind {
        Kind::Readiness => probe.success_threshold.unwrap_or(1).max(1),
        _ => 1,
    };
    let failure_needed = probe.failure_threshold.unwrap_or(3).max(1);
    tokio::time::sleep(secs(probe.initial_delay_seconds, 0)).await;
    let (mut ok_run, mut fail_run) = (0, 0);
    loop {
        let ok = check(&k, &cs, &run, ip, &probe, timeout).await;
        k.inner.metrics.probed(
            match kind {
                Kind::Startup => "startup",
                Kind::Readiness => "readiness",
                Kind::Liveness => "liveness",
            },
            ok,
        );
        if ok {
            ok_run += 1;
            fail_run = 0;
        } else {
            fail_run += 1;
            ok_run = 0;
        }
        let mut changed = false;
        {
            let mut st = k.inner.state.lock().await;
            if let Some(c) = st
                .pods
                .get_mut(&uid)
                .and_then(|p| p.containers.get_mut(&cs.name))
                .filter(|c| c.run.as_ref().map(|r| r.attempt) == Some(run.attempt) && c.running)
            {
                match kind {
                    Kind::Startup => {
                        if ok_run >= success_needed {
                            c.startup_ok = true;
                            // Without a readiness probe, started is ready.
                            c.ready |= cs.readiness_probe.is_none();
                            drop(st);
                            k.poke();
                            return true;
                        }
                        if fail_run >= failure_needed && !c.kill_requested {
                            tracing::info!(container = %cs.name, "startup probe failed; restarting");
                            c.kill_requested = true;
                            drop(st);
                            k.poke();
                            return false;
                        }
                    }
                    Kind::Readiness => {
                        if ok_run >= success_needed && !c.ready {
                            c.ready = true;
                            changed = true;
                        } else if fail_run >= failure_needed && c.ready {
                            c.ready = false;
                            changed = true;
                        }
                    }
                    Kind::Liveness => {
                        if fail_run >= failure_needed && !c.kill_requested {
                            tracing::info!(container = %cs.name, "liveness probe failed; restarting");
                            c.kill_requested = true;
                            changed = true;
                        }
                    }
                }
            } else {
                return false;
            }
        }
        if changed {
            k.poke();
        }
        tokio::time::sleep(period).await;
    }
}

async fn check<R: PodRuntime>(
    k: &Kubelet<R>,
    cs: &CSpec,
    run: &Container,
    ip: Option<IpAddr>,
    probe: &Probe,
    timeout: Duration,
) -> bool {
    if let Some(h) = &probe.http_get {
        return http_get(cs, h, ip, timeout).await;
    }
    if let Some(t) = &probe.tcp_socket {
        let (Some(ip), Some(port)) = (ip, port_of(cs, &t.port)) else {
            return false;
        };
        return matches!(
            tokio::time::timeout(timeout, tokio::net::TcpStream::connect((ip, port))).await,
            Ok(Ok(_))
        );
    }
    if let Some(e) = &probe.exec {
        let cmd = e.command.clone().unwrap_or_default();
        if cmd.is_empty() {
            return false;
        }
        return matches!(k.inner.rt.exec(run, &cmd, timeout).await, Ok((0, _)));
    }
    // grpc probes are not supported: never succeed, so the gap is visible.
    false
}
