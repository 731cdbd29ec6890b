//! The DNS transports.
//!
//! UDP runs on plain threads, one socket each (SO_REUSEPORT), because the per-query cost is the
//! product here (the goal is knot's CPU per query): a query whose wire form is ordinary is
//! answered from a per-thread cache of encoded responses for the current zone snapshot (id,
//! flags and question case stamped in), anything else is decoded with hickory-proto and
//! answered by `answer::answer`; names outside the zone go to the async forwarder. TCP is
//! tokio, length-prefixed, through the same decode/answer path. hickory-server's request
//! pipeline is not used: it decodes every request before a handler sees it, so the cache of
//! encoded answers could not sit in front of the decode (README.md, "Why hickory-proto and not
//! hickory-server").

use std::{
    collections::HashMap,
    net::{SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use hickory_proto::{op::Message, serialize::binary::BinDecodable};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    sync::Semaphore,
};

use crate::{
    answer::{self, Outcome, EDNS_PAYLOAD},
    forward::{Forwarder, Source},
    metrics::{CacheKind, CacheLabels, Metrics, Proto, QType, QueryLabels, Rcode, RcodeLabels},
    wire,
    zone::Zone,
};

/// The zone snapshot and its generation (cached answers are valid for one generation).
pub struct Snapshot {
    pub zone: Zone,
    pub generation: u64,
}

pub struct Shared {
    pub zone: ArcSwap<Snapshot>,
    pub forwarder: Forwarder,
    pub metrics: Arc<Metrics>,
    pub stop: AtomicBool,
    /// Forwarded queries in flight (beyond it: SERVFAIL at once, not unbounded tasks).
    pub forwards: Arc<Semaphore>,
    /// Open TCP connections.
    pub tcp_conns: Arc<Semaphore>,
}

/// Limits of `Shared::forwards` and `Shared::tcp_conns`.
pub const MAX_FORWARDS: usize = 1024;
pub const MAX_TCP: usize = 1024;

/// Entries per worker cache before it starts over (bounds memory under random names).
const CACHE_LIMIT: usize = 100_000;

impl Shared {
    fn count(&self, proto: Proto, qtype: u16, resp: &[u8], started: Instant) {
        let m = &self.metrics;
        m.requests
            .get_or_create(&QueryLabels {
                proto,
                qtype: QType::from_u16(qtype),
            })
            .inc();
        let rcode = resp.get(3).map_or(Rcode::Other, |b| Rcode::from_u8(*b));
        m.responses.get_or_create(&RcodeLabels { rcode }).inc();
        m.duration.observe(started.elapsed().as_secs_f64());
    }

    fn cache_event(&self, cache: CacheKind, hit: bool) {
        let labels = CacheLabels { cache };
        if hit {
            self.metrics.cache_hits.get_or_create(&labels).inc();
        } else {
            self.metrics.cache_misses.get_or_create(&labels).inc();
        }
    }
}

/// Encodes `msg`, truncating (TC, no records) when it exceeds `limit`.
pub fn encode(mut msg: Message, limit: usize) -> Vec<u8> {
    let bytes = msg.to_vec().unwrap_or_default();
    if bytes.len() <= limit {
        return bytes;
    }
    msg.set_truncated(true);
    msg.take_answers();
    msg.take_name_servers();
    msg.take_additionals();
    msg.to_vec().unwrap_or_default()
}

fn qtype_of(msg: &Message) -> u16 {
    msg.queries()
        .first()
        .map_or(0, |q| u16::from(q.query_type()))
}

/// What the full path decided for one query.
pub enum Decided {
    /// The encoded response; `true` when it is a zone answer (cacheable for the generation).
    Reply(Vec<u8>, bool),
    /// For the forwarder, with the response size limit.
    Forward(Message, usize),
    /// A CNAME answer whose out-of-zone target the forwarder resolves.
    Chase(Box<Chase>),
    Drop,
}

/// The parts of a CNAME chase: the query, the answer so far, the target, the size limit.
pub struct Chase {
    pub msg: Message,
    pub partial: Message,
    pub target: hickory_proto::rr::Name,
    pub limit: usize,
}

/// Decodes and answers one query packet from `zone` (pure: the fuzz target drives this).
/// `limit`: the response size cap; None derives it from the query's EDNS (UDP).
pub fn decide_in(zone: &Zone, pkt: &[u8], limit: Option<usize>) -> Decided {
    let msg = match Message::from_bytes(pkt) {
        Ok(m) => m,
        Err(_) => return wire::formerr(pkt).map_or(Decided::Drop, |r| Decided::Reply(r, false)),
    };
    if msg.message_type() == hickory_proto::op::MessageType::Response {
        return Decided::Drop;
    }
    let limit =
        limit.unwrap_or_else(|| edns_limit(msg.extensions().as_ref().map(|e| e.max_payload())));
    match answer::answer(zone, &msg) {
        Outcome::Answer(resp) => {
            let bytes = encode(resp, limit);
            // An encoding that failed is never sent or cached.
            if bytes.len() < 12 {
                return Decided::Drop;
            }
            Decided::Reply(bytes, true)
        }
        Outcome::Forward => Decided::Forward(msg, limit),
        Outcome::Chase(partial, target) => Decided::Chase(Box::new(Chase {
            msg,
            partial,
            target,
            limit,
        })),
    }
}

fn decide(shared: &Shared, pkt: &[u8], limit: Option<usize>) -> Decided {
    decide_in(&shared.zone.load().zone, pkt, limit)
}

fn edns_limit(msg_limit: Option<u16>) -> usize {
    wire::udp_limit(msg_limit, EDNS_PAYLOAD)
}

/// One UDP worker: blocking receive, answer, send; stops when `shared.stop` is set.
pub fn udp_worker(sock: UdpSocket, shared: Arc<Shared>, rt: tokio::runtime::Handle) {
    let sock = Arc::new(sock);
    let mut buf = vec![0u8; 65535];
    let mut out = Vec::with_capacity(1500);
    let mut cache: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    let mut generation = u64::MAX;
    while !shared.stop.load(Ordering::Relaxed) {
        let (n, peer) = match sock.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => continue,
        };
        let started = Instant::now();
        let pkt = &buf[..n];
        let snap_gen = shared.zone.load().generation;
        if snap_gen != generation {
            cache.clear();
            generation = snap_gen;
        }
        if let Some(q) = wire::quick(pkt, EDNS_PAYLOAD) {
            if let Some(template) = cache.get(&q.key) {
                wire::stamp(template, pkt, q.question_end, &mut out);
                let _ = sock.send_to(&out, peer);
                shared.cache_event(CacheKind::Zone, true);
                let qtype = u16::from_be_bytes([pkt[q.question_end - 4], pkt[q.question_end - 3]]);
                shared.count(Proto::Udp, qtype, &out, started);
                continue;
            }
            let limit = edns_limit(edns_payload(pkt, q.question_end));
            match decide(&shared, pkt, Some(limit)) {
                Decided::Reply(resp, cacheable) => {
                    let _ = sock.send_to(&resp, peer);
                    let qtype =
                        u16::from_be_bytes([pkt[q.question_end - 4], pkt[q.question_end - 3]]);
                    shared.count(Proto::Udp, qtype, &resp, started);
                    if cacheable && resp.len() >= q.question_end {
                        shared.cache_event(CacheKind::Zone, false);
                        if cache.len() >= CACHE_LIMIT {
                            cache.clear();
                        }
                        cache.insert(q.key, resp);
                    }
                }
                other => spawn_forward(&shared, &sock, peer, other, started, &rt),
            }
            continue;
        }
        // Unusual packet: the full decode decides (FORMERR, NOTIMP, ...), nothing is cached.
        match decide(&shared, pkt, None) {
            Decided::Reply(resp, _) => {
                let _ = sock.send_to(&resp, peer);
                shared.count(Proto::Udp, 0, &resp, started);
            }
            other => spawn_forward(&shared, &sock, peer, other, started, &rt),
        }
    }
}

/// The EDNS payload size of a query already checked by `wire::quick`.
fn edns_payload(pkt: &[u8], question_end: usize) -> Option<u16> {
    let opt = pkt.get(question_end..question_end + 5)?;
    Some(u16::from_be_bytes([opt[3], opt[4]]))
}

/// Runs a forward or CNAME chase on the runtime and sends its answer from the worker's socket.
fn spawn_forward(
    shared: &Arc<Shared>,
    sock: &Arc<UdpSocket>,
    peer: SocketAddr,
    decided: Decided,
    started: Instant,
    rt: &tokio::runtime::Handle,
) {
    let (msg, limit) = match &decided {
        Decided::Forward(m, l) => (m.clone(), *l),
        Decided::Chase(c) => (c.msg.clone(), c.limit),
        Decided::Reply(..) | Decided::Drop => return,
    };
    let Ok(permit) = shared.forwards.clone().try_acquire_owned() else {
        let bytes = encode(
            answer::response_to(&msg, hickory_proto::op::ResponseCode::ServFail),
            limit,
        );
        let _ = sock.send_to(&bytes, peer);
        shared.count(Proto::Udp, qtype_of(&msg), &bytes, started);
        return;
    };
    let (shared, sock) = (shared.clone(), sock.clone());
    rt.spawn(async move {
        let _permit = permit;
        let resp = resolve(&shared, decided).await;
        let bytes = encode(resp, limit);
        let _ = sock.send_to(&bytes, peer);
        shared.count(Proto::Udp, qtype_of(&msg), &bytes, started);
    });
}

/// The forwarder's part of a query (a forward, or the upstream half of a CNAME chase).
async fn resolve(shared: &Shared, decided: Decided) -> Message {
    match decided {
        Decided::Forward(msg, _) => {
            let (resp, source) = shared.forwarder.forward(&msg).await;
            shared.metrics.forwarded.inc();
            if source != Source::Failed {
                shared.cache_event(CacheKind::Forward, source == Source::Cache);
            }
            resp
        }
        Decided::Chase(c) => {
            shared.metrics.forwarded.inc();
            shared.forwarder.chase(&c.msg, c.partial, c.target).await
        }
        Decided::Reply(..) | Decided::Drop => Message::new(),
    }
}

/// Binds `workers` UDP sockets on `addr` (the first picks the port when it is 0).
pub fn bind_udp(addr: SocketAddr, workers: usize) -> std::io::Result<Vec<UdpSocket>> {
    use socket2::{Domain, Protocol, Socket, Type};
    let mut out: Vec<UdpSocket> = Vec::new();
    let mut addr = addr;
    for _ in 0..workers.max(1) {
        let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        s.set_reuse_port(true)?;
        if addr.is_ipv6() {
            s.set_only_v6(true)?;
        }
        s.bind(&addr.into())?;
        // The stop flag is checked between reads.
        s.set_read_timeout(Some(Duration::from_millis(200)))?;
        let s: UdpSocket = s.into();
        addr = s.local_addr()?;
        out.push(s);
    }
    Ok(out)
}

/// TCP: length-prefixed queries on one connection, answered in order; idle connections close
/// after 10 s (CoreDNS's default).
pub async fn serve_tcp(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => tcp,
            Err(_) => {
                // Out of descriptors or the like: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = shared.tcp_conns.clone().try_acquire_owned() else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut tcp = tcp;
            let mut buf = Vec::new();
            let idle = Duration::from_secs(10);
            loop {
                let n = match tokio::time::timeout(idle, tcp.read_u16()).await {
                    Ok(Ok(n)) => usize::from(n),
                    _ => return,
                };
                buf.resize(n, 0);
                // A client that sends a length and stalls is cut off like an idle one.
                if !matches!(
                    tokio::time::timeout(idle, tcp.read_exact(&mut buf)).await,
                    Ok(Ok(_))
                ) {
                    return;
                }
                let started = Instant::now();
                let resp = match decide(&shared, &buf, Some(usize::from(u16::MAX))) {
                    Decided::Reply(r, _) => r,
                    Decided::Drop => return,
                    other => encode(resolve(&shared, other).await, usize::from(u16::MAX)),
                };
                let qtype = Message::from_bytes(&buf).map(|m| qtype_of(&m)).unwrap_or(0);
                shared.count(Proto::Tcp, qtype, &resp, started);
                let Ok(len) = u16::try_from(resp.len()) else {
                    return;
                };
                if tcp.write_all(&len.to_be_bytes()).await.is_err()
                    || tcp.write_all(&resp).await.is_err()
                {
                    return;
                }
            }
        });
    }
}
