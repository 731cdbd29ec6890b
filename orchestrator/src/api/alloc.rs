//! ClusterIP and NodePort allocation, done by the API server at Service create/update the way
//! kube-apiserver's service registry does: a Service without a clusterIP gets a free one from
//! the service CIDR (never the network address, the first host — the `kubernetes` Service's —
//! or the address reserved for cluster DNS, which only a Service asking for it gets); NodePort
//! and LoadBalancer ports without a nodePort get a free one from the node-port range.
//!
//! What is in use is kept in memory, filled from the store on first use. Deletes do not release
//! eagerly: a request for a taken address or an exhausted random search re-reads the store, so
//! freed values come back then.

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr},
    ops::RangeInclusive,
    sync::Mutex,
};

use ipnet::{Ipv4Net, Ipv6Net};
use k8s_openapi::api::core::v1::Service;

use super::error::Cause;

/// Where Services get their addresses and node ports.
#[derive(Clone, Debug)]
pub struct ServiceRanges {
    pub cidr: Ipv4Net,
    /// The IPv6 service range (dual-stack and IPv6 Services), if any.
    pub cidr6: Option<Ipv6Net>,
    /// Reserved for cluster DNS: allocated only on request.
    pub dns_ip: Ipv4Addr,
    pub node_ports: RangeInclusive<u16>,
}

impl Default for ServiceRanges {
    fn default() -> Self {
        ServiceRanges {
            cidr: "10.96.0.0/12".parse().unwrap_or_else(|_| unreachable!()),
            cidr6: Some("fd00::/108".parse().unwrap_or_else(|_| unreachable!())),
            dns_ip: Ipv4Addr::new(10, 96, 0, 10),
            node_ports: 30000..=32767,
        }
    }
}

impl ServiceRanges {
    /// Why `ip` cannot be a clusterIP here (None: it can).
    fn outside(&self, ip: IpAddr) -> Option<String> {
        let (inside, range) = match ip {
            IpAddr::V4(v4) => (
                self.cidr.contains(&v4) && v4 != self.cidr.network(),
                self.cidr.to_string(),
            ),
            IpAddr::V6(v6) => match self.cidr6 {
                Some(n) => (n.contains(&v6) && v6 != n.network(), n.to_string()),
                None => return Some("IPv6 is not configured on this cluster".into()),
            },
        };
        (!inside).then(|| {
            format!("provided IP is not in the valid range. The range of valid IPs is {range}")
        })
    }
}

#[derive(Default)]
struct Used {
    loaded: bool,
    ips: HashSet<IpAddr>,
    ports: HashSet<(u16, String)>,
}

pub struct Allocator {
    ranges: ServiceRanges,
    used: Mutex<Used>,
}

const RANDOM_TRIES: usize = 64;

fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    let _ = getrandom::fill(&mut b);
    u32::from_le_bytes(b)
}

fn invalid(field: &str, value: &str, why: String) -> Cause {
    Cause::invalid(field, value, &why)
}

impl Allocator {
    pub fn new(ranges: ServiceRanges) -> Self {
        Allocator {
            ranges,
            used: Mutex::new(Used::default()),
        }
    }

    pub fn ranges(&self) -> &ServiceRanges {
        &self.ranges
    }

    pub fn loaded(&self) -> bool {
        self.lock().loaded
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Used> {
        self.used.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces what is in use with what `services` hold (the store's current list).
    pub fn reload<'a>(&self, services: impl IntoIterator<Item = &'a Service>) {
        let mut u = Used {
            loaded: true,
            ..Used::default()
        };
        for s in services {
            let (ips, ports) = held(s);
            u.ips.extend(ips);
            u.ports.extend(ports);
        }
        *self.lock() = u;
    }

    /// Fills in (and records) the clusterIP and node ports `svc` needs; `old` is the stored
    /// Service on update, whose values carry over when the update omits them. `Err(None)`
    /// means the in-memory view may be stale: reload and call again.
    ///
    /// `fresh`: the in-memory view was just re-read from the store, so a conflict is real.
    pub fn assign(
        &self,
        svc: &mut Service,
        old: Option<&Service>,
        fresh: bool,
    ) -> Result<(), Option<Cause>> {
        let mut used = self.lock();
        let old_held = old.map(held).unwrap_or_default();
        let spec = svc.spec.get_or_insert_with(Default::default);
        let ty = spec.type_.clone().unwrap_or_else(|| "ClusterIP".into());
        if ty == "ExternalName" {
            return Ok(());
        }
        // Carry over what the update left out.
        if let Some(o) = old.and_then(|o| o.spec.as_ref()) {
            if spec.cluster_ip.as_deref().is_none_or(str::is_empty) {
                spec.cluster_ip = o.cluster_ip.clone();
                spec.cluster_ips = o.cluster_ips.clone();
            }
            for p in spec.ports.iter_mut().flatten() {
                if p.node_port.is_none() && ty != "ClusterIP" {
                    p.node_port = o
                        .ports
                        .iter()
                        .flatten()
                        .find(|q| q.port == p.port && q.protocol == p.protocol)
                        .and_then(|q| q.node_port);
                }
            }
        }
        let requested: Vec<String> = spec
            .cluster_ips
            .clone()
            .filter(|v| !v.is_empty())
            .or_else(|| {
                spec.cluster_ip
                    .clone()
                    .filter(|ip| !ip.is_empty())
                    .map(|ip| vec![ip])
            })
            .unwrap_or_default();
        if requested.first().map(String::as_str) == Some("None") {
            spec.cluster_ip = Some("None".into());
            spec.cluster_ips = Some(vec!["None".into()]);
        } else {
            let mut ips: Vec<IpAddr> = Vec::new();
            for (i, text) in requested.iter().enumerate() {
                let field = format!("spec.clusterIPs[{i}]");
                let ip: IpAddr = text.parse().map_err(|_| {
                    Some(invalid(&field, text, "must be a valid IP address".into()))
                })?;
                if let Some(why) = self.ranges.outside(ip) {
                    return Err(Some(invalid(
                        &field,
                        text,
                        format!("failed to allocate IP {text}: {why}"),
                    )));
                }
                if ips.iter().any(|x| x.is_ipv4() == ip.is_ipv4()) {
                    return Err(Some(invalid(
                        &field,
                        text,
                        "may not have more than one IP of each family".into(),
                    )));
                }
                if used.ips.contains(&ip) && !old_held.0.contains(&ip) {
                    return Err(if fresh {
                        Some(invalid(
                            &field,
                            text,
                            format!(
                                "failed to allocate IP {text}: provided IP is already allocated"
                            ),
                        ))
                    } else {
                        None
                    });
                }
                ips.push(ip);
            }
            if ips.is_empty() {
                let v6_first = spec
                    .ip_families
                    .as_ref()
                    .and_then(|f| f.first())
                    .is_some_and(|f| f == "IPv6");
                if v6_first && self.ranges.cidr6.is_none() {
                    return Err(Some(invalid(
                        "spec.ipFamilies[0]",
                        "IPv6",
                        "not configured on this cluster (no IPv6 service range)".into(),
                    )));
                }
                ips.push(self.free_ip(&used, !v6_first, fresh).ok_or(None)?);
            }
            let dual = matches!(
                spec.ip_family_policy.as_deref(),
                Some("RequireDualStack" | "PreferDualStack")
            );
            if dual && ips.len() == 1 {
                let want_v4 = !ips[0].is_ipv4();
                let have_range = if want_v4 {
                    true
                } else {
                    self.ranges.cidr6.is_some()
                };
                if have_range {
                    ips.push(self.free_ip(&used, want_v4, fresh).ok_or(None)?);
                } else if spec.ip_family_policy.as_deref() == Some("RequireDualStack") {
                    return Err(Some(invalid(
                        "spec.ipFamilyPolicy",
                        "RequireDualStack",
                        "this cluster is not configured for dual-stack services".into(),
                    )));
                }
            }
            used.ips.extend(ips.iter().copied());
            spec.cluster_ip = Some(ips[0].to_string());
            spec.cluster_ips = Some(ips.iter().map(IpAddr::to_string).collect());
            spec.ip_families = Some(
                ips.iter()
                    .map(|ip| if ip.is_ipv4() { "IPv4" } else { "IPv6" }.to_string())
                    .collect(),
            );
            spec.ip_family_policy
                .get_or_insert_with(|| "SingleStack".into());
        }
        if ty == "NodePort" || ty == "LoadBalancer" {
            let mut taken_here = HashSet::new();
            for (i, p) in spec.ports.iter_mut().flatten().enumerate() {
                let proto = p.protocol.clone().unwrap_or_else(|| "TCP".into());
                let port = match p.node_port {
                    Some(np) => {
                        let key = (np as u16, proto.clone());
                        if !self.ranges.node_ports.contains(&(np as u16)) {
                            return Err(Some(invalid(
                                &format!("spec.ports[{i}].nodePort"),
                                &np.to_string(),
                                format!(
                                    "provided port is not in the valid range. The range of valid ports is {}-{}",
                                    self.ranges.node_ports.start(),
                                    self.ranges.node_ports.end()
                                ),
                            )));
                        }
                        if (used.ports.contains(&key) && !old_held.1.contains(&key))
                            || taken_here.contains(&key)
                        {
                            return Err(if fresh {
                                Some(invalid(
                                    &format!("spec.ports[{i}].nodePort"),
                                    &np.to_string(),
                                    "provided port is already allocated".into(),
                                ))
                            } else {
                                None
                            });
                        }
                        key.0
                    }
                    None => self
                        .free_port(&used, &taken_here, &proto, fresh)
                        .ok_or(None)?,
                };
                taken_here.insert((port, proto));
                p.node_port = Some(port.into());
            }
            used.ports.extend(taken_here);
        }
        Ok(())
    }

    fn free_ip(&self, used: &Used, v4: bool, fresh: bool) -> Option<IpAddr> {
        // Offsets into the range; the network address, the first host (the `kubernetes`
        // Service's) and the DNS address are never handed out.
        let (base, size, reserved): (u128, u128, Vec<IpAddr>) = if v4 {
            let n = self.ranges.cidr;
            (
                u32::from(n.network()) as u128,
                1u128 << (32 - n.prefix_len()),
                vec![IpAddr::V4(n.broadcast()), IpAddr::V4(self.ranges.dns_ip)],
            )
        } else {
            let n = self.ranges.cidr6?;
            (
                u128::from(n.network()),
                1u128 << (128 - n.prefix_len()).min(64),
                vec![],
            )
        };
        let at = |off: u128| -> IpAddr {
            if v4 {
                IpAddr::V4(Ipv4Addr::from((base + off) as u32))
            } else {
                IpAddr::V6(std::net::Ipv6Addr::from(base + off))
            }
        };
        let ok =
            |off: u128| off >= 2 && !reserved.contains(&at(off)) && !used.ips.contains(&at(off));
        (0..RANDOM_TRIES)
            .map(|_| (u128::from(random_u32()) << 32 | u128::from(random_u32())) % size)
            .find(|o| ok(*o))
            .or_else(|| {
                if fresh {
                    (0..size.min(1 << 24)).find(|o| ok(*o))
                } else {
                    None
                }
            })
            .map(at)
    }

    fn free_port(
        &self,
        used: &Used,
        here: &HashSet<(u16, String)>,
        proto: &str,
        fresh: bool,
    ) -> Option<u16> {
        let r = &self.ranges.node_ports;
        let size = (*r.end() - *r.start()) as u32 + 1;
        let free = |p: u16| {
            let k = (p, proto.to_string());
            !used.ports.contains(&k) && !here.contains(&k)
        };
        (0..RANDOM_TRIES)
            .map(|_| *r.start() + (random_u32() % size) as u16)
            .find(|p| free(*p))
            .or_else(|| {
                if fresh {
                    r.clone().find(|p| free(*p))
                } else {
                    None
                }
            })
    }
}

/// The clusterIP and node ports a stored Service holds.
fn held(s: &Service) -> (HashSet<IpAddr>, HashSet<(u16, String)>) {
    let mut ips = HashSet::new();
    let mut ports = HashSet::new();
    if let Some(spec) = &s.spec {
        ips.extend(meshwork_ips(spec));
        for p in spec.ports.iter().flatten() {
            if let Some(np) = p.node_port {
                ports.insert((
                    np as u16,
                    p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                ));
            }
        }
    }
    (ips, ports)
}

fn meshwork_ips(spec: &k8s_openapi::api::core::v1::ServiceSpec) -> Vec<IpAddr> {
    spec.cluster_ips
        .iter()
        .flatten()
        .chain(spec.cluster_ip.iter())
        .filter_map(|ip| ip.parse().ok())
        .collect()
}
