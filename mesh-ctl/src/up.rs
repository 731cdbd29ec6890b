//! `mesh-ctl up`: today, the two-node pod network end to end.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::{bail, Context, Result};
use mesh_ctl::cluster::LabCluster;
use meshwork_lab::Lab;

#[derive(clap::Args)]
pub struct Args {
    /// The CNI plugin binary to wire pods with.
    #[arg(
        long,
        env = "MESHWORK_CNI_BIN",
        default_value = "/opt/cni/bin/meshwork"
    )]
    cni_plugin: PathBuf,
    /// Keep the cluster until Ctrl-C (inspect it with `ip netns`).
    #[arg(long)]
    keep: bool,
    /// Bytes for the TCP transfer between the pods.
    #[arg(long, default_value_t = 10 * 1024 * 1024)]
    bytes: usize,
}

/// Runs `up` until done or until SIGINT/SIGTERM; either way the lab is torn down (the cluster
/// is dropped with the work future), so a signal never leaves namespaces behind.
pub async fn run(args: Args) -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = work(args) => r,
                // The work future (and with it the cluster) is already dropped here: torn down.
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted; the lab cluster was torn down"),
        _ = term.recv() => anyhow::bail!("terminated; the lab cluster was torn down"),
    }
}

async fn work(args: Args) -> Result<()> {
    if !args.cni_plugin.is_file() {
        bail!(
            "CNI plugin {} not found: run scripts/up.sh (it builds and installs it)",
            args.cni_plugin.display()
        );
    }
    let lab = Lab::with_plugin("mesh_ctl_up", &args.cni_plugin);
    let c = LabCluster::new(lab, 2)
        .await
        .context("bringing up the lab cluster")?;
    println!("nodes (network namespaces on an isolated underlay bridge, VXLAN overlay):");
    for n in &c.nodes {
        println!(
            "  {:<4} underlay {:<12} pod CIDRs {}  overlay mw.vxlan mtu {}",
            n.node.name,
            n.node.underlay_ip,
            n.pod_cidrs
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            n.overlay.mtu
        );
    }
    let a = c.add_pod(0, "a")?;
    let b = c.add_pod(1, "b")?;
    println!("pods (wired by {} via CNI ADD):", args.cni_plugin.display());
    for p in [&a, &b] {
        println!(
            "  {:<2} on {}  {} {}  mtu {}",
            p.ns.name,
            c.nodes[p.node].node.name,
            p.ip(),
            p.ip6().map(|i| i.to_string()).unwrap_or_default(),
            p.result.interfaces[2].mtu.unwrap_or_default()
        );
    }

    let ping = c.lab.exec_out(
        &a.ns.netns,
        &[
            "ping",
            "-c",
            "3",
            "-i",
            "0.2",
            "-W",
            "2",
            &b.ip().to_string(),
        ],
    );
    let summary = String::from_utf8_lossy(&ping.stdout);
    println!("ping a → b:");
    for line in summary
        .lines()
        .filter(|l| l.contains("transmitted") || l.contains("rtt"))
    {
        println!("  {line}");
    }
    if !ping.status.success() {
        bail!("pod a cannot ping pod b across the overlay");
    }

    for (family, dst) in [("IPv4", Some(b.ip())), ("IPv6", b.ip6())] {
        let Some(dst) = dst else { continue };
        let t = c.lab.transfer(
            &a.ns.netns,
            &b.ns.netns,
            SocketAddr::new(dst, 8080),
            args.bytes,
        );
        println!(
            "TCP a → b over {family}: {} bytes {} in {:.0} ms ({:.0} Mbit/s), b saw peer {}",
            t.bytes,
            if t.intact { "intact" } else { "CORRUPTED" },
            t.elapsed.as_secs_f64() * 1e3,
            t.mbit_per_s(),
            t.peer.ip()
        );
        if !t.intact {
            bail!("transfer over {family} arrived damaged");
        }
    }

    if args.keep {
        println!(
            "cluster kept; namespaces start with {}. Ctrl-C to tear down.",
            c.lab.prefix()
        );
        // Until a signal ends `run`, which drops this future and with it the cluster.
        std::future::pending::<()>().await;
    }
    c.del_pod(&a)?;
    c.del_pod(&b)?;
    drop(c);
    println!("torn down: pods deleted through CNI DEL, lab namespaces removed.");
    Ok(())
}
