//! The commands. Each returns the JSON to print on success or a CNI error.

use std::net::IpAddr;

use ipnet::IpNet;
use meshwork_cni_spec::{
    code, CniError, CniResult, Interface, IpConfig, RouteEntry, VersionInfo, CURRENT_VERSION,
    SUPPORTED_VERSIONS,
};
use meshwork_netlink::{fmt_mac, Netlink, Netns};
use serde_json::Value;

use crate::{
    config::{Command, Env, NetConf, Validated, ENV_CRASH_AT},
    ipam::{IpamError, Lease, Owner, Store},
    net,
};

pub async fn run(env: &Env, stdin: &[u8], crash_at: Option<String>) -> Result<Value, CniError> {
    if env.command == Command::Version {
        return Ok(version(stdin));
    }
    let conf = NetConf::parse(stdin)?;
    let version = conf.cni_version.clone();
    let res = match env.command {
        Command::Add => add(env, conf.validate()?, crash_at.as_deref()).await,
        Command::Del => del(env, conf).await.map(|()| Value::Null),
        Command::Check => check(env, conf.validate()?).await.map(|()| Value::Null),
        Command::Status => status(conf.validate()?).map(|()| Value::Null),
        Command::Gc => gc(conf).await.map(|()| Value::Null),
        Command::Version => unreachable!("handled above"),
    };
    res.map_err(|mut e| {
        e.cni_version = version;
        e
    })
}

fn version(stdin: &[u8]) -> Value {
    // VERSION answers with the caller's version when it is one we speak.
    let asked = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| CURRENT_VERSION.to_string());
    serde_json::to_value(VersionInfo {
        cni_version: asked,
        supported_versions: SUPPORTED_VERSIONS.iter().map(|s| s.to_string()).collect(),
    })
    .unwrap_or(Value::Null)
}

fn internal(e: impl std::fmt::Display) -> CniError {
    CniError::new(code::INTERNAL, e.to_string())
}

fn ipam_err(e: IpamError) -> CniError {
    match e {
        IpamError::Exhausted { .. } => CniError::new(code::RANGE_EXHAUSTED, e.to_string()),
        IpamError::Io { .. } => CniError::new(code::IO, e.to_string()),
    }
}

fn open_netns(path: &str) -> Result<Netns, CniError> {
    Netns::open(path).map_err(|e| CniError::new(code::INVALID_ENV, format!("CNI_NETNS: {e}")))
}

fn crash_if(crash_at: Option<&str>, point: &str) {
    if crash_at == Some(point) {
        eprintln!("{ENV_CRASH_AT}={point}: aborting");
        std::process::abort();
    }
}

/// Undoes a partial ADD unless disarmed. It frees only what this ADD created: a lease the
/// owner already held, or a host veth that already existed, belongs to a live attachment.
struct Rollback<'a> {
    host: &'a Netlink,
    store_dir: (&'a std::path::Path, &'a str),
    owner: Owner,
    fresh: Vec<IpAddr>,
    veth: Option<String>,
    armed: bool,
}

impl Rollback<'_> {
    async fn run(self) {
        if !self.armed {
            return;
        }
        if let Some(v) = &self.veth {
            if let Err(e) = net::delete_veth(self.host, v).await {
                tracing::warn!(veth = %v, error = %e, "rollback: deleting veth");
            }
        }
        if self.fresh.is_empty() {
            return;
        }
        match Store::lock(self.store_dir.0, self.store_dir.1) {
            Ok(s) => {
                if let Err(e) = s.release_ips(&self.owner, &self.fresh) {
                    tracing::warn!(error = %e, "rollback: releasing lease");
                }
            }
            Err(e) => tracing::warn!(error = %e, "rollback: locking lease store"),
        }
    }
}

/// Leases one address per configured family; on failure frees what this call leased.
fn lease(v: &Validated, owner: &Owner) -> Result<Vec<(Lease, u8)>, CniError> {
    let store = Store::lock(&v.conf.data_dir, &v.conf.name).map_err(ipam_err)?;
    let mut leases = Vec::new();
    for r in &v.ranges {
        match store.allocate(r, owner) {
            Ok(l) => leases.push((l, r.subnet.prefix_len())),
            Err(e) => {
                let fresh: Vec<IpAddr> = leases
                    .iter()
                    .filter(|(l, _)| l.fresh)
                    .map(|(l, _)| l.ip)
                    .collect();
                let _ = store.release_ips(owner, &fresh);
                return Err(ipam_err(e));
            }
        }
    }
    Ok(leases)
}

async fn add(env: &Env, v: Validated, crash_at: Option<&str>) -> Result<Value, CniError> {
    let conf = &v.conf;
    // A plugin earlier in the chain: its interfaces and addresses stay in the result.
    let prev = match &conf.prev_result {
        Some(p) => Some(
            CniResult::from_value(p.clone())
                .map_err(|e| CniError::new(code::DECODE, format!("prevResult: {e}")))?,
        ),
        None => None,
    };
    let netns = open_netns(&env.netns)?;
    let host = Netlink::connect().map_err(internal)?;
    let pod = Netlink::connect_in(&netns).map_err(internal)?;
    if pod
        .link_by_name(&env.ifname)
        .await
        .map_err(internal)?
        .is_some()
    {
        return Err(CniError::new(
            code::INTERFACE_EXISTS,
            format!("interface {} already exists in {}", env.ifname, env.netns),
        ));
    }
    let owner = Owner {
        container_id: env.container_id.clone(),
        ifname: env.ifname.clone(),
    };
    let leases = lease(&v, &owner)?;
    crash_if(crash_at, "after-lease");
    let addrs: Vec<IpNet> = leases
        .iter()
        .map(|(l, len)| IpNet::new(l.ip, *len).map_err(internal))
        .collect::<Result<_, _>>()?;
    let mut rb = Rollback {
        host: &host,
        store_dir: (&conf.data_dir, &conf.name),
        owner,
        fresh: leases
            .iter()
            .filter(|(l, _)| l.fresh)
            .map(|(l, _)| l.ip)
            .collect(),
        veth: None,
        armed: true,
    };
    let res = wire(env, &v, &host, &pod, &netns, &addrs, &mut rb, crash_at).await;
    if res.is_ok() {
        rb.armed = false;
    }
    rb.run().await;
    res.map(|w| build_result(env, &v, prev, w, &addrs))
}

/// What `wire` made, for the result.
struct Wired {
    bridge: meshwork_netlink::Link,
    host_veth: meshwork_netlink::Link,
    pod_link: meshwork_netlink::Link,
    mtu: u32,
}

#[expect(
    clippy::too_many_arguments,
    reason = "one call site; a struct would only rename them"
)]
async fn wire(
    env: &Env,
    v: &Validated,
    host: &Netlink,
    pod: &Netlink,
    netns: &Netns,
    addrs: &[IpNet],
    rb: &mut Rollback<'_>,
    crash_at: Option<&str>,
) -> Result<Wired, CniError> {
    let conf = &v.conf;
    let mtu = net::pod_mtu(host, conf.mtu, conf.uplink.as_deref(), &conf.vxlan_device)
        .await
        .map_err(|e| CniError::new(code::INVALID_CONFIG, e.to_string()))?;
    let bridge = net::ensure_bridge(host, &conf.bridge, mtu, &v.ranges)
        .await
        .map_err(internal)?;
    let host_name = net::host_veth_name(&env.container_id, &env.ifname);
    let alias = net::veth_alias(&conf.name, &env.container_id, &env.ifname);
    let host_veth = net::create_veth(
        host,
        &host_name,
        &env.ifname,
        netns,
        mtu,
        &alias,
        bridge.index,
    )
    .await
    .map_err(|e| {
        if e.is_exists() {
            CniError::new(
                code::INTERFACE_EXISTS,
                format!("host interface {host_name} already exists"),
            )
        } else {
            internal(e)
        }
    })?;
    // Only now is the veth ours to roll back: an existing one belongs to a live attachment.
    rb.veth = Some(host_name);
    crash_if(crash_at, "after-veth");
    let pod_link = net::configure_container(
        pod,
        netns,
        &net::ContainerSide {
            ifname: &env.ifname,
            addrs,
            routes: &v.routes,
            ranges: &v.ranges,
        },
    )
    .await
    .map_err(internal)?;
    Ok(Wired {
        bridge,
        host_veth,
        pod_link,
        mtu,
    })
}

/// The ADD result: `prev`'s interfaces, addresses and routes first, ours appended.
fn build_result(
    env: &Env,
    v: &Validated,
    prev: Option<CniResult>,
    w: Wired,
    addrs: &[IpNet],
) -> Value {
    let conf = &v.conf;
    let mac = |m: Option<[u8; 6]>| m.map(|m| fmt_mac(&m)).unwrap_or_default();
    let mut result = prev.unwrap_or_default();
    let pod_index = result.interfaces.len() + 2;
    result.interfaces.extend([
        Interface {
            name: w.bridge.name,
            mac: mac(w.bridge.mac),
            ..Default::default()
        },
        Interface {
            name: w.host_veth.name,
            mac: mac(w.host_veth.mac),
            ..Default::default()
        },
        Interface {
            name: env.ifname.clone(),
            mac: mac(w.pod_link.mac),
            mtu: Some(w.mtu),
            sandbox: env.netns.clone(),
        },
    ]);
    result.ips.extend(addrs.iter().map(|a| IpConfig {
        address: *a,
        gateway: net::gateway_for(&v.ranges, a.addr()),
        interface: Some(pod_index),
    }));
    result.routes.extend(v.routes.iter().map(|r| RouteEntry {
        dst: r.dst,
        gw: r.gw.or_else(|| net::gateway_for(&v.ranges, r.dst.addr())),
        mtu: None,
        advmss: None,
        priority: None,
        table: None,
        scope: None,
    }));
    if !conf.dns.is_empty() {
        result.dns = conf.dns.clone();
    }
    result.to_json(&conf.cni_version)
}

/// DEL is best effort and idempotent: missing netns, veth or lease are all fine. The veth goes
/// first so an address is never free while an interface still carries it.
async fn del(env: &Env, conf: NetConf) -> Result<(), CniError> {
    let host = Netlink::connect().map_err(internal)?;
    let host_name = net::host_veth_name(&env.container_id, &env.ifname);
    net::delete_veth(&host, &host_name)
        .await
        .map_err(internal)?;
    // The veth name does not depend on the network name, so it goes even when the name is
    // unusable as a state directory; the leases then cannot be named and that is an error.
    crate::config::validate_name(&conf.name)?;
    // A network that never leased anything has nothing to free (and gets no state dir).
    if let Some(store) = Store::lock_existing(&conf.data_dir, &conf.name).map_err(ipam_err)? {
        store
            .release(&Owner {
                container_id: env.container_id.clone(),
                ifname: env.ifname.clone(),
            })
            .map_err(ipam_err)?;
    }
    Ok(())
}

async fn check(env: &Env, v: Validated) -> Result<(), CniError> {
    let fail = |msg: String| CniError::new(code::CHECK_FAILED, msg);
    let prev = v
        .conf
        .prev_result
        .clone()
        .ok_or_else(|| CniError::new(code::INVALID_CONFIG, "CHECK needs prevResult"))?;
    let prev = CniResult::from_value(prev)
        .map_err(|e| CniError::new(code::DECODE, format!("prevResult: {e}")))?;
    let netns = open_netns(&env.netns)?;
    let pod = Netlink::connect_in(&netns).map_err(internal)?;
    let host = Netlink::connect().map_err(internal)?;

    let (idx, want_if) = prev.sandbox_interface(&env.ifname).ok_or_else(|| {
        fail(format!(
            "prevResult has no sandbox interface {}",
            env.ifname
        ))
    })?;
    let link = pod
        .link_by_name(&env.ifname)
        .await
        .map_err(internal)?
        .ok_or_else(|| fail(format!("{} does not exist in {}", env.ifname, env.netns)))?;
    let have_mac = link.mac.map(|m| fmt_mac(&m)).unwrap_or_default();
    if !want_if.mac.is_empty() && !want_if.mac.eq_ignore_ascii_case(&have_mac) {
        return Err(fail(format!(
            "{} has MAC {have_mac}, prevResult says {}",
            env.ifname, want_if.mac
        )));
    }
    let have_addrs = pod.addresses(Some(link.index)).await.map_err(internal)?;
    let store = Store::lock_existing(&v.conf.data_dir, &v.conf.name).map_err(ipam_err)?;
    let leases = match &store {
        Some(s) => s.leases().map_err(ipam_err)?,
        None => Vec::new(),
    };
    for ip in prev.ips.iter().filter(|i| i.interface == Some(idx)) {
        if !have_addrs.iter().any(|(_, a)| *a == ip.address) {
            return Err(fail(format!(
                "{} is missing address {}",
                env.ifname, ip.address
            )));
        }
        let owner_ok = leases.iter().any(|(l, o)| {
            *l == ip.address.addr()
                && o.as_ref()
                    .is_some_and(|o| o.container_id == env.container_id && o.ifname == env.ifname)
        });
        if !owner_ok {
            return Err(fail(format!(
                "no lease for {} held by this attachment",
                ip.address
            )));
        }
    }
    drop(store);
    for r in &prev.routes {
        let routes = pod
            .routes(r.dst.addr().is_ipv6(), 254)
            .await
            .map_err(internal)?;
        let found = routes
            .iter()
            .any(|h| h.dst == r.dst && (r.gw.is_none() || h.gateway == r.gw));
        if !found {
            return Err(fail(format!("route {} via {:?} is missing", r.dst, r.gw)));
        }
    }
    let host_name = net::host_veth_name(&env.container_id, &env.ifname);
    let hv = host
        .link_by_name(&host_name)
        .await
        .map_err(internal)?
        .ok_or_else(|| fail(format!("host veth {host_name} is missing")))?;
    let bridge = host
        .link_by_name(&v.conf.bridge)
        .await
        .map_err(internal)?
        .ok_or_else(|| fail(format!("bridge {} is missing", v.conf.bridge)))?;
    if hv.master != Some(bridge.index) || !hv.up {
        return Err(fail(format!(
            "host veth {host_name} is not up on {}",
            v.conf.bridge
        )));
    }
    Ok(())
}

/// STATUS: ready unless the lease store is unusable or every range is full.
fn status(v: Validated) -> Result<(), CniError> {
    require_1_1(&v.conf, "STATUS")?;
    let store = Store::lock(&v.conf.data_dir, &v.conf.name)
        .map_err(|e| CniError::new(code::STATUS_NOT_READY, format!("lease store unusable: {e}")))?;
    for r in &v.ranges {
        let free = store.free_in(r).map_err(|e| {
            CniError::new(code::STATUS_NOT_READY, format!("lease store unusable: {e}"))
        })?;
        if free == 0 {
            return Err(CniError::new(
                code::STATUS_NOT_READY,
                format!(
                    "no free address in {}-{}: new pods cannot be added",
                    r.start, r.end
                ),
            ));
        }
    }
    Ok(())
}

/// STATUS and GC exist from cniVersion 1.1.0 on (libcni never sends them for older lists).
fn require_1_1(conf: &NetConf, what: &str) -> Result<(), CniError> {
    if meshwork_cni_spec::version_cmp(&conf.cni_version, "1.1.0").is_lt() {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "{what} needs cniVersion 1.1.0, the config says {}",
                conf.cni_version
            ),
        ));
    }
    Ok(())
}

/// GC: frees leases and deletes host veths of this network whose attachment the runtime no
/// longer lists.
async fn gc(conf: NetConf) -> Result<(), CniError> {
    require_1_1(&conf, "GC")?;
    crate::config::validate_name(&conf.name)?;
    // Without the list every attachment would look stale: refuse rather than wipe the node.
    if conf.valid_attachments.is_none() && conf.attachments.is_none() {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            "GC needs cni.dev/valid-attachments (or cni.dev/attachments)",
        ));
    }
    let valid: std::collections::HashSet<(String, String)> = conf
        .valid_attachments
        .iter()
        .chain(conf.attachments.iter())
        .flatten()
        .map(|a| (a.container_id.clone(), a.ifname.clone()))
        .collect();
    let host = Netlink::connect().map_err(internal)?;
    for link in host.links().await.map_err(internal)? {
        let Some(alias) = &link.alias else { continue };
        let Some((cid, ifname)) = net::parse_alias(&conf.name, alias) else {
            continue;
        };
        if !valid.contains(&(cid.to_string(), ifname.to_string())) {
            tracing::info!(veth = %link.name, %cid, %ifname, "gc: deleting stale veth");
            match host.delete_link(link.index).await {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(internal(e)),
            }
        }
    }
    if let Some(store) = Store::lock_existing(&conf.data_dir, &conf.name).map_err(ipam_err)? {
        let freed = store
            .release_where(|o| !valid.contains(&(o.container_id.clone(), o.ifname.clone())))
            .map_err(ipam_err)?;
        if !freed.is_empty() {
            tracing::info!(?freed, "gc: released stale leases");
        }
    }
    Ok(())
}
