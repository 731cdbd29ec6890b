//! The node's overlay from Node objects, in its own loop: Node heartbeats change Node objects
//! every few seconds, and none of that is Service work. The loop recomputes the remote nodes
//! (pure, `nodes.rs`) on each Node change and touches the kernel only when they differ from
//! what it last applied, plus a periodic resync that repairs drift (kube-proxy's syncPeriod
//! habit).

use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::runtime::reflector::Store;
use meshwork_overlay::{Overlay, RemoteNode};
use tokio::sync::watch;

use crate::{app::Error, config::Config, metrics::Metrics};

/// A failed sync is retried after this.
const RETRY: Duration = Duration::from_millis(500);
/// Applied again after this even without a Node change (routes or FDB entries removed by hand
/// come back).
const RESYNC: Duration = Duration::from_secs(60);

/// The VXLAN device this agent programs from Node objects, if it owns the overlay.
pub async fn open(cfg: &Config) -> Result<Option<Overlay>, Error> {
    let Some(uplink) = &cfg.overlay_uplink else {
        return Ok(None);
    };
    let ip = cfg
        .overlay_ip
        .ok_or_else(|| Error::Config("--overlay-uplink needs --overlay-ip".into()))?;
    if cfg.pod_cidrs.is_empty() {
        return Err(Error::Config("--overlay-uplink needs --pod-cidr".into()));
    }
    let oc = meshwork_overlay::OverlayConfig::new(uplink, ip, cfg.pod_cidrs.clone());
    let nl = meshwork_netlink::Netlink::connect()?;
    Ok(Some(Overlay::ensure(nl, &oc).await?))
}

/// Follows `nodes` until the channel closes.
pub async fn follow(
    ov: Overlay,
    me: String,
    nodes: Store<Node>,
    mut changed: watch::Receiver<u64>,
    metrics: std::sync::Arc<Metrics>,
) {
    let _ = nodes.wait_until_ready().await;
    let mut applied: Option<Vec<RemoteNode>> = None;
    let mut due = tokio::time::Instant::now() + RESYNC;
    loop {
        let state = nodes.state();
        let want =
            crate::nodes::remotes(&me, &state.iter().map(|n| n.as_ref()).collect::<Vec<_>>());
        let resync = tokio::time::Instant::now() >= due;
        if resync || applied.as_ref() != Some(&want) {
            match ov.sync(&want).await {
                Ok(ops) => {
                    if !ops.is_empty() {
                        tracing::info!(changes = ops.len(), remotes = want.len(), "overlay synced");
                    }
                    metrics.overlay_syncs.inc();
                    applied = Some(want);
                    due = tokio::time::Instant::now() + RESYNC;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "overlay sync");
                    metrics.sync_errors.inc();
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            }
        }
        tokio::select! {
            r = changed.changed() => if r.is_err() { return },
            _ = tokio::time::sleep_until(due) => {}
        }
    }
}
