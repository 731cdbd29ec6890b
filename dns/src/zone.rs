//! The cluster zone as an immutable snapshot, built by a pure function from Services and
//! EndpointSlices (the Kubernetes DNS-Based Service Discovery specification 1.1.0):
//!
//! - ClusterIP service: A/AAAA `<svc>.<ns>.svc.<zone>`, SRV `_<port>._<proto>.<svc>...` per
//!   named port, PTR for each ClusterIP;
//! - headless service: A/AAAA per ready endpoint at the service name and at
//!   `<hostname>.<svc>...` (endpoints without a hostname get a dashed-IP name, as CoreDNS does),
//!   SRV per named port × endpoint, PTR per endpoint;
//! - ExternalName: CNAME; `dns-version` TXT; SOA and NS at the apex.
//!
//! Every name that exists (including empty non-terminals such as `<ns>.svc.<zone>`) is in the
//! map, so NODATA and NXDOMAIN are told apart by one lookup.

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
    str::FromStr,
};

use hickory_proto::rr::{
    rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT},
    LowerName, Name, RData, Record, RecordType,
};
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use meshwork_service_model as model;

#[derive(Clone, Debug)]
pub struct ZoneConfig {
    pub origin: Name,
    pub ttl: u32,
    /// The cluster DNS Service address (A of `ns.dns.<zone>`), if known.
    pub dns_ip: Option<IpAddr>,
}

impl ZoneConfig {
    pub fn new(origin: &str, ttl: u32) -> Result<Self, String> {
        let mut origin = Name::from_str(origin).map_err(|e| format!("zone {origin}: {e}"))?;
        origin.set_fqdn(true);
        Ok(ZoneConfig {
            origin,
            ttl,
            dns_ip: None,
        })
    }
}

/// One service as the zone needs it (converted from the API objects before building).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceView {
    pub namespace: String,
    pub name: String,
    pub kind: ServiceKind,
    /// Named ports: (name, protocol lowercased, service port).
    pub ports: Vec<(String, String, u16)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceKind {
    ClusterIp(Vec<IpAddr>),
    /// Ready endpoints of a headless service.
    Headless(Vec<EndpointView>),
    ExternalName(String),
    /// No address yet (ClusterIP not allocated): the name exists, with no records.
    Pending,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct EndpointView {
    pub addresses: Vec<IpAddr>,
    pub hostname: Option<String>,
    /// Named endpoint ports from its slice: (name, protocol lowercased, port).
    pub ports: Vec<(String, String, u16)>,
}

/// Converts the watched objects (not-ready endpoints are left out here, per the spec).
pub fn views(services: &[&Service], slices: &[&EndpointSlice]) -> Vec<ServiceView> {
    let eps = model::endpoints(slices.iter().copied());
    let named = |name: &str, p: model::Protocol, port: u16| {
        (!name.is_empty()).then(|| (name.to_string(), p.lower().to_string(), port))
    };
    let mut out = Vec::new();
    for svc in services {
        let Some(key) = model::service_key(svc) else {
            continue;
        };
        let spec = svc.spec.clone().unwrap_or_default();
        let ports = model::ports(&spec)
            .into_iter()
            .filter_map(|p| named(&p.name, p.protocol, p.port))
            .collect();
        let kind = match model::kind(svc) {
            None => continue,
            Some(model::Kind::ExternalName(n)) => ServiceKind::ExternalName(n),
            Some(model::Kind::ClusterIp(ips)) => ServiceKind::ClusterIp(ips),
            Some(model::Kind::Pending) => ServiceKind::Pending,
            Some(model::Kind::Headless) => {
                // Ready endpoints only (publishNotReadyAddresses is the controller's: it marks
                // such endpoints ready).
                let set: BTreeSet<EndpointView> = eps
                    .get(&key)
                    .into_iter()
                    .flatten()
                    .filter(|e| e.conditions.ready)
                    .map(|e| EndpointView {
                        addresses: e.addresses.clone(),
                        hostname: e.hostname.clone(),
                        ports: e
                            .ports
                            .iter()
                            .filter_map(|p| named(&p.name, p.protocol, p.port))
                            .collect(),
                    })
                    .collect();
                ServiceKind::Headless(set.into_iter().collect())
            }
        };
        out.push(ServiceView {
            namespace: key.0,
            name: key.1,
            kind,
            ports,
        });
    }
    out
}

/// The records of one owner name.
#[derive(Clone, Debug, Default)]
pub struct Node {
    pub records: Vec<Record>,
}

/// An immutable snapshot of the cluster zone.
#[derive(Clone, Debug)]
pub struct Zone {
    pub cfg: ZoneConfig,
    origin: LowerName,
    names: HashMap<LowerName, Node>,
    /// Reverse names (in-addr.arpa / ip6.arpa) with PTR records.
    reverse: HashMap<LowerName, Node>,
    soa: Record,
}

fn child(parent: &Name, label: &str) -> Option<Name> {
    Name::from_ascii(label).ok()?.append_domain(parent).ok()
}

/// `10-244-1-5` / `fd00--1`: the name CoreDNS gives an endpoint without a hostname.
fn dashed(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        IpAddr::V6(v6) => v6.to_string().replace(':', "-"),
    }
}

fn address(name: &Name, ip: &IpAddr, ttl: u32) -> Record {
    let rdata = match ip {
        IpAddr::V4(v4) => RData::A(A(*v4)),
        IpAddr::V6(v6) => RData::AAAA(AAAA(*v6)),
    };
    Record::from_rdata(name.clone(), ttl, rdata)
}

/// The PTR owner of an address: `d.c.b.a.in-addr.arpa.` or the full ip6.arpa nibble form.
pub fn reverse_name(ip: &IpAddr) -> Name {
    let text = match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa.", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut s = String::with_capacity(73);
            for b in v6.octets().iter().rev() {
                s.push_str(&format!("{:x}.{:x}.", b & 0xf, b >> 4));
            }
            s.push_str("ip6.arpa.");
            s
        }
    };
    Name::from_ascii(&text).unwrap_or_else(|_| Name::root())
}

impl Zone {
    pub fn build(cfg: ZoneConfig, services: &[ServiceView], serial: u32) -> Zone {
        let origin = cfg.origin.clone();
        let ttl = cfg.ttl;
        let mut z = Zone {
            origin: LowerName::from(&origin),
            names: HashMap::new(),
            reverse: HashMap::new(),
            soa: Record::from_rdata(
                origin.clone(),
                ttl,
                RData::SOA(SOA::new(
                    child(&origin, "ns.dns").unwrap_or_else(|| origin.clone()),
                    child(&origin, "hostmaster").unwrap_or_else(|| origin.clone()),
                    serial,
                    7200,
                    1800,
                    86400,
                    ttl,
                )),
            ),
            cfg,
        };
        z.add(z.soa.clone());
        let ns_name = child(&origin, "ns.dns").unwrap_or_else(|| origin.clone());
        z.add(Record::from_rdata(
            origin.clone(),
            ttl,
            RData::NS(NS(ns_name.clone())),
        ));
        if let Some(ip) = z.cfg.dns_ip {
            z.add(address(&ns_name, &ip, ttl));
        }
        if let Some(v) = child(&origin, "dns-version") {
            z.add(Record::from_rdata(
                v,
                ttl,
                RData::TXT(TXT::new(vec!["1.1.0".into()])),
            ));
        }
        // `svc` and `pod` exist even in an empty cluster.
        for l in ["svc", "pod"] {
            if let Some(n) = child(&origin, l) {
                z.touch(&n);
            }
        }
        for s in services {
            z.add_service(s);
        }
        z
    }

    fn service_name(&self, s: &ServiceView) -> Option<Name> {
        child(&self.cfg.origin, &format!("{}.{}.svc", s.name, s.namespace))
    }

    fn add_service(&mut self, s: &ServiceView) {
        let ttl = self.cfg.ttl;
        let Some(name) = self.service_name(s) else {
            return;
        };
        self.touch(&name);
        let srv = |port_name: &str, proto: &str| child(&name, &format!("_{port_name}._{proto}"));
        match &s.kind {
            ServiceKind::Pending => {}
            ServiceKind::ExternalName(target) => {
                if let Ok(mut t) = Name::from_str(target) {
                    t.set_fqdn(true);
                    self.add(Record::from_rdata(
                        name.clone(),
                        ttl,
                        RData::CNAME(CNAME(t)),
                    ));
                }
            }
            ServiceKind::ClusterIp(ips) => {
                for ip in ips {
                    self.add(address(&name, ip, ttl));
                    self.add_ptr(ip, &name);
                }
                for (port_name, proto, port) in &s.ports {
                    if let Some(owner) = srv(port_name, proto) {
                        let rd = SRV::new(0, 100, *port, name.clone());
                        self.add(Record::from_rdata(owner, ttl, RData::SRV(rd)));
                    }
                }
            }
            ServiceKind::Headless(eps) => {
                let weight = u16::try_from(100 / eps.len().max(1)).unwrap_or(100);
                for e in eps {
                    let label = e
                        .hostname
                        .clone()
                        .unwrap_or_else(|| dashed(&e.addresses[0]));
                    let Some(ep_name) = child(&name, &label) else {
                        continue;
                    };
                    for ip in &e.addresses {
                        self.add(address(&name, ip, ttl));
                        self.add(address(&ep_name, ip, ttl));
                        self.add_ptr(ip, &ep_name);
                    }
                    for (port_name, proto, port) in &e.ports {
                        if let Some(owner) = srv(port_name, proto) {
                            let rd = SRV::new(0, weight, *port, ep_name.clone());
                            self.add(Record::from_rdata(owner, ttl, RData::SRV(rd)));
                        }
                    }
                }
            }
        }
    }

    fn add_ptr(&mut self, ip: &IpAddr, target: &Name) {
        let owner = reverse_name(ip);
        let r = Record::from_rdata(owner.clone(), self.cfg.ttl, RData::PTR(PTR(target.clone())));
        let node = self.reverse.entry(LowerName::from(&owner)).or_default();
        if !node.records.contains(&r) {
            node.records.push(r);
        }
    }

    /// Marks `name` and its ancestors up to the origin as existing.
    fn touch(&mut self, name: &Name) {
        let mut n = name.clone();
        while n.num_labels() >= self.cfg.origin.num_labels() {
            let key = LowerName::from(&n);
            if self.names.contains_key(&key) {
                break;
            }
            self.names.insert(key, Node::default());
            n = n.base_name();
        }
    }

    fn add(&mut self, r: Record) {
        self.touch(r.name());
        let node = self.names.entry(LowerName::from(r.name())).or_default();
        if !node.records.contains(&r) {
            node.records.push(r);
        }
    }

    pub fn origin(&self) -> &LowerName {
        &self.origin
    }

    pub fn soa(&self) -> &Record {
        &self.soa
    }

    /// Whether `name` is this zone's to answer (under the origin).
    pub fn contains(&self, name: &LowerName) -> bool {
        self.origin.zone_of(name)
    }

    pub fn node(&self, name: &LowerName) -> Option<&Node> {
        self.names.get(name)
    }

    pub fn reverse(&self, name: &LowerName) -> Option<&Node> {
        self.reverse.get(name)
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// `<ns>.pod.<zone>`: the parent of pod names (exists whatever the namespace).
    pub fn is_pod_namespace(&self, name: &LowerName) -> bool {
        let n = Name::from(name);
        let depth = self.cfg.origin.num_labels() as usize;
        n.num_labels() as usize == depth + 2
            && n.iter()
                .nth(1)
                .is_some_and(|l| l.eq_ignore_ascii_case(b"pod"))
    }

    /// `a-b-c-d.<ns>.pod.<zone>` → the address (CoreDNS `pods insecure`: the shape is enough).
    pub fn pod_address(&self, name: &LowerName) -> Option<IpAddr> {
        let n = Name::from(name);
        let labels: Vec<String> = n
            .iter()
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect();
        let depth = self.cfg.origin.num_labels() as usize;
        if labels.len() != depth + 3 || labels[2] != "pod" {
            return None;
        }
        let first = &labels[0];
        if let Ok(v4) = first.replace('-', ".").parse::<std::net::Ipv4Addr>() {
            return Some(IpAddr::V4(v4));
        }
        first
            .replace('-', ":")
            .parse::<std::net::Ipv6Addr>()
            .ok()
            .map(IpAddr::V6)
    }

    /// The records of `rtype` at `name` (for tests and the answer path).
    pub fn records(&self, name: &LowerName, rtype: RecordType) -> Vec<&Record> {
        self.node(name)
            .or_else(|| self.reverse(name))
            .map(|n| {
                n.records
                    .iter()
                    .filter(|r| r.record_type() == rtype)
                    .collect()
            })
            .unwrap_or_default()
    }
}
