//! Query → response for the cluster zone: a pure function of the zone snapshot and the query
//! (NXDOMAIN vs NODATA with the SOA, CNAME for ExternalName, SRV targets in the additional
//! section, pod A records, PTR with fallthrough for addresses the zone does not know).

use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, ResponseCode},
    rr::{DNSClass, LowerName, Name, RData, Record, RecordType},
};

use crate::zone::Zone;

/// Our advertised EDNS UDP payload (the DNS flag day 2020 value).
pub const EDNS_PAYLOAD: u16 = 1232;

pub enum Outcome {
    /// The response to send (AA for zone answers).
    Answer(Message),
    /// Not the cluster zone's: forward upstream.
    Forward,
    /// An ExternalName CNAME to a name outside the zone: the response so far, and the target
    /// to resolve upstream and append (CoreDNS follows it; stub resolvers do not).
    Chase(Message, Name),
}

/// CNAME hops followed inside the zone before giving up (a loop guard).
const MAX_CHAIN: usize = 8;

/// A response skeleton: same id, opcode, question and RD/CD bits; EDNS if the query had it.
pub fn response_to(req: &Message, rcode: ResponseCode) -> Message {
    let mut m = Message::new();
    m.set_id(req.id())
        .set_message_type(MessageType::Response)
        .set_op_code(req.op_code())
        .set_recursion_desired(req.recursion_desired())
        .set_recursion_available(true)
        .set_checking_disabled(req.checking_disabled())
        .set_response_code(rcode);
    m.add_queries(req.queries().iter().cloned());
    if let Some(q) = req.extensions() {
        let mut e = Edns::new();
        e.set_max_payload(EDNS_PAYLOAD);
        e.set_version(0);
        // RFC 3225: the DO bit is copied into the response.
        e.set_dnssec_ok(q.flags().dnssec_ok);
        m.set_edns(e);
    }
    m
}

/// The SOA a negative answer under a reverse tree carries: that tree's apex, not the cluster
/// zone's (an out-of-zone SOA makes resolvers discard the negative answer).
fn reverse_soa(zone: &Zone, name: &LowerName) -> Record {
    let apex = ["in-addr.arpa.", "ip6.arpa."]
        .into_iter()
        .filter_map(|a| Name::from_ascii(a).ok())
        .find(|a| LowerName::from(a).zone_of(name))
        .unwrap_or_else(Name::root);
    let mut soa = zone.soa().clone();
    soa.set_name(apex);
    soa
}

fn renamed(r: &Record, owner: &hickory_proto::rr::Name) -> Record {
    let mut r = r.clone();
    r.set_name(owner.clone());
    r
}

pub fn answer(zone: &Zone, req: &Message) -> Outcome {
    if req.message_type() != MessageType::Query || req.op_code() != OpCode::Query {
        return Outcome::Answer(response_to(req, ResponseCode::NotImp));
    }
    if req.queries().len() != 1 {
        return Outcome::Answer(response_to(req, ResponseCode::FormErr));
    }
    if let Some(e) = req.extensions() {
        if e.version() != 0 {
            return Outcome::Answer(response_to(req, ResponseCode::BADVERS));
        }
    }
    let q = &req.queries()[0];
    let name = LowerName::from(q.name());
    let qtype = q.query_type();
    if !zone.contains(&name) {
        // Reverse lookups of cluster addresses are ours; others fall through (CoreDNS
        // `fallthrough in-addr.arpa ip6.arpa`).
        return match zone.reverse(&name) {
            Some(node) if q.query_class() == DNSClass::IN => {
                let mut m = response_to(req, ResponseCode::NoError);
                m.set_authoritative(true);
                let want = |r: &&Record| qtype == RecordType::ANY || r.record_type() == qtype;
                let hits: Vec<Record> = node
                    .records
                    .iter()
                    .filter(want)
                    .map(|r| renamed(r, q.name()))
                    .collect();
                if hits.is_empty() {
                    m.add_name_server(reverse_soa(zone, &name));
                }
                m.add_answers(hits);
                Outcome::Answer(m)
            }
            _ => Outcome::Forward,
        };
    }
    if q.query_class() != DNSClass::IN {
        return Outcome::Answer(response_to(req, ResponseCode::Refused));
    }
    let mut m = response_to(req, ResponseCode::NoError);
    m.set_authoritative(true);
    if let Some(ip) = zone.pod_address(&name) {
        let rec = match (ip, qtype) {
            (std::net::IpAddr::V4(v4), RecordType::A | RecordType::ANY) => {
                Some(RData::A(v4.into()))
            }
            (std::net::IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => {
                Some(RData::AAAA(v6.into()))
            }
            _ => None,
        };
        match rec {
            Some(rd) => {
                m.add_answer(Record::from_rdata(q.name().clone(), zone.cfg.ttl, rd));
            }
            None => {
                m.add_name_server(zone.soa().clone());
            }
        }
        return Outcome::Answer(m);
    }
    let Some(node) = zone.node(&name) else {
        // `<ns>.pod.<zone>` has pod names below it: an empty non-terminal, not NXDOMAIN.
        if !zone.is_pod_namespace(&name) {
            m.set_response_code(ResponseCode::NXDomain);
        }
        m.add_name_server(zone.soa().clone());
        return Outcome::Answer(m);
    };
    let hits: Vec<Record> = node
        .records
        .iter()
        .filter(|r| qtype == RecordType::ANY || r.record_type() == qtype)
        .map(|r| renamed(r, q.name()))
        .collect();
    if hits.is_empty() && qtype != RecordType::CNAME {
        if let Some(cname) = node
            .records
            .iter()
            .find(|r| r.record_type() == RecordType::CNAME)
        {
            return chase(zone, m, renamed(cname, q.name()), qtype);
        }
    }
    if hits.is_empty() {
        m.add_name_server(zone.soa().clone());
        return Outcome::Answer(m);
    }
    // SRV targets' addresses, as CoreDNS adds them.
    let mut extra = Vec::new();
    for r in &hits {
        if let RData::SRV(srv) = r.data() {
            let target = LowerName::from(srv.target());
            for t in [RecordType::A, RecordType::AAAA] {
                extra.extend(zone.records(&target, t).into_iter().cloned());
            }
        }
    }
    m.add_answers(hits);
    m.add_additionals(extra);
    Outcome::Answer(m)
}

/// Follows a CNAME: inside the zone from the zone's records (up to `MAX_CHAIN` hops), outside
/// it by asking the server to resolve the target upstream.
fn chase(zone: &Zone, mut m: Message, first: Record, qtype: RecordType) -> Outcome {
    let mut cname = first;
    for _ in 0..MAX_CHAIN {
        let RData::CNAME(target) = cname.data().clone() else {
            break;
        };
        m.add_answer(cname);
        let t = LowerName::from(&target.0);
        if !zone.contains(&t) {
            return if matches!(qtype, RecordType::A | RecordType::AAAA | RecordType::TXT) {
                Outcome::Chase(m, target.0)
            } else {
                Outcome::Answer(m)
            };
        }
        let Some(node) = zone.node(&t) else {
            return Outcome::Answer(m);
        };
        let hits: Vec<Record> = node
            .records
            .iter()
            .filter(|r| r.record_type() == qtype)
            .cloned()
            .collect();
        if !hits.is_empty() {
            m.add_answers(hits);
            return Outcome::Answer(m);
        }
        match node
            .records
            .iter()
            .find(|r| r.record_type() == RecordType::CNAME)
        {
            Some(next) => cname = next.clone(),
            None => return Outcome::Answer(m),
        }
    }
    Outcome::Answer(m)
}
