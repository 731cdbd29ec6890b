//! `mesh-ctl up`: the two-node pod network end to end, then the control plane on it: the
//! bundled API server, a control agent per node and cluster DNS, with a Service reached by
//! name from a pod.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::{bail, Context, Result};
use mesh_ctl::{
    cluster::{LabCluster, Pod},
    stack::{start_agent, start_dns, LabApi},
};
use meshwork_lab::Lab;
use serde_json::json;

/// The cluster DNS Service address (kubeadm's default) and the demo Service's.
const DNS_VIP: &str = "10.96.0.10";
const WEB_VIP: &str = "10.96.0.20";

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

    let api = LabApi::start(&c, 0).await?;
    let _agents = (0..c.nodes.len())
        .map(|i| start_agent(&c, i, &api.kubeconfig))
        .collect::<Result<Vec<_>>>()?;
    let _dns = start_dns(&c, 0, &api.kubeconfig, DNS_VIP)?;
    let _web = c
        .lab
        .identity_server(&b.ns.netns, SocketAddr::new(b.ip(), 8080), "b");
    let (dns_ip, b_ip) = (c.nodes[0].node.underlay_ip.to_string(), b.ip().to_string());
    // kube-rs calls run on their own thread inside node 1; the runtime keeps serving the API.
    tokio::task::block_in_place(|| {
        api.kube(&c, move |k| Box::pin(create_objects(k, dns_ip, b_ip)))
    })??;
    println!("control plane:");
    println!(
        "  API server {} on n1 (kubeconfig {})",
        api.url,
        api.kubeconfig.display()
    );
    println!("  meshwork-control on n1 and n2, meshwork-dns on n1 behind kube-dns {DNS_VIP}");
    let (name, reply) = service_by_name(&c, &a).await?;
    println!("  pod a: web.default.svc.cluster.local → {name} (via {DNS_VIP}, eBPF socket LB); {WEB_VIP}:80 answered by {reply}");

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

/// The demo objects: kube-dns (its endpoint is the host-network DNS on n1) and `web`
/// (pod b's port 8080). EndpointSlices are written here until the orchestrator's controller
/// writes them.
async fn create_objects(k: kube::Client, dns_ip: String, b_ip: String) -> Result<()> {
    use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
    use kube::api::{Api, PostParams};
    let pp = PostParams::default();
    let objs = [
        (
            "kube-system",
            "kube-dns",
            DNS_VIP,
            json!([{"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]),
            dns_ip,
            "n1",
        ),
        (
            "default",
            "web",
            WEB_VIP,
            json!([{"name": "http", "port": 8080, "protocol": "TCP"}]),
            b_ip,
            "n2",
        ),
    ];
    for (ns, name, vip, ports, ep, node) in objs {
        let svc_ports: Vec<_> = ports
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| json!({"name": p["name"], "protocol": p["protocol"], "port": if name == "web" { json!(80) } else { p["port"].clone() }, "targetPort": p["name"]}))
            .collect();
        let svc: Service = serde_json::from_value(
            json!({"metadata": {"name": name}, "spec": {"clusterIP": vip, "ports": svc_ports}}),
        )?;
        Api::<Service>::namespaced(k.clone(), ns)
            .create(&pp, &svc)
            .await?;
        let slice: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": format!("{name}-1"), "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4", "ports": ports,
            "endpoints": [{"addresses": [ep], "nodeName": node, "conditions": {"ready": true}}]}))?;
        Api::<EndpointSlice>::namespaced(k.clone(), ns)
            .create(&pp, &slice)
            .await?;
    }
    Ok(())
}

/// Resolves `web` through the DNS VIP from pod a and connects to the answer (both through
/// node 1's eBPF socket LB, programmed by its agent); waits up to 20 s for the agents.
async fn service_by_name(c: &LabCluster, a: &Pod) -> Result<(String, String)> {
    let n1 = &c.nodes[0].node;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let dig = c.lab.run_in_node(
            n1,
            &a.ns.netns,
            "/usr/bin/dig",
            &[
                &format!("@{DNS_VIP}"),
                "+short",
                "+time=1",
                "+tries=1",
                "web.default.svc.cluster.local",
            ],
        );
        let name = String::from_utf8_lossy(&dig.stdout).trim().to_string();
        if name == WEB_VIP {
            let out = c.lab.run_in_node(
                n1,
                &a.ns.netns,
                "mwlab-client",
                &["tcp", &format!("{WEB_VIP}:80"), "1"],
            );
            let reply = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if reply.starts_with('b') {
                return Ok((name, reply));
            }
        }
        if std::time::Instant::now() > deadline {
            bail!("pod a could not reach web by name through {DNS_VIP} (dig said {name:?})");
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
