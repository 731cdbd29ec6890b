//! Forwarding of names outside the cluster zone (CoreDNS `forward` + `cache`): stub domains
//! first (longest suffix), then the default upstreams in order; a positive and a negative
//! cache; every upstream failing (refused, timed out, garbage) is a SERVFAIL within `timeout`.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Message, ResponseCode},
    rr::{DNSClass, LowerName, RData, RecordType},
    serialize::binary::{BinDecodable, BinEncodable},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, UdpSocket},
};

use crate::answer::response_to;

#[derive(Clone, Debug)]
pub struct ForwardConfig {
    pub upstreams: Vec<SocketAddr>,
    /// (zone, upstreams): names under the zone go there instead.
    pub stubs: Vec<(LowerName, Vec<SocketAddr>)>,
    /// Total time for one forwarded query across its upstreams.
    pub timeout: Duration,
    pub max_success_ttl: u32,
    pub max_denial_ttl: u32,
    pub cache_entries: usize,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        ForwardConfig {
            upstreams: Vec::new(),
            stubs: Vec::new(),
            timeout: Duration::from_secs(2),
            max_success_ttl: 3600,
            max_denial_ttl: 1800,
            cache_entries: 10_000,
        }
    }
}

/// Answers differ by the DNSSEC bits and by EDNS presence, so they are part of the key.
#[derive(Clone, PartialEq, Eq, Hash)]
struct Key {
    name: LowerName,
    rtype: RecordType,
    class: DNSClass,
    dnssec_ok: bool,
    checking_disabled: bool,
    edns: bool,
}

struct Entry {
    msg: Message,
    stored: Instant,
    expires: Instant,
}

pub struct Forwarder {
    cfg: ForwardConfig,
    cache: Mutex<HashMap<Key, Entry>>,
}

/// Whether a forwarded answer came from the cache (for metrics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Cache,
    Upstream,
    Failed,
}

impl Forwarder {
    pub fn new(cfg: ForwardConfig) -> Self {
        Forwarder {
            cfg,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn upstreams_for(&self, name: &LowerName) -> &[SocketAddr] {
        self.cfg
            .stubs
            .iter()
            .filter(|(zone, _)| zone.zone_of(name))
            .max_by_key(|(zone, _)| zone.num_labels())
            .map_or(&self.cfg.upstreams[..], |(_, u)| &u[..])
    }

    /// Resolves `target` (an ExternalName's CNAME target) for `req`'s type and appends the
    /// answers to `partial`; the target's failure leaves the CNAME alone, as CoreDNS does.
    pub async fn chase(
        &self,
        req: &Message,
        mut partial: Message,
        target: hickory_proto::rr::Name,
    ) -> Message {
        let Some(q) = req.queries().first() else {
            return partial;
        };
        let mut sub = req.clone();
        sub.take_queries();
        sub.add_query(hickory_proto::op::Query::query(target, q.query_type()));
        let (resp, _) = self.forward(&sub).await;
        if resp.response_code() == ResponseCode::NoError {
            partial.add_answers(resp.answers().iter().cloned());
        }
        partial
    }

    /// The response to `req` (its id, its question), from the cache or an upstream.
    pub async fn forward(&self, req: &Message) -> (Message, Source) {
        let Some(q) = req.queries().first() else {
            return (response_to(req, ResponseCode::FormErr), Source::Failed);
        };
        let key = Key {
            name: LowerName::from(q.name()),
            rtype: q.query_type(),
            class: q.query_class(),
            dnssec_ok: req
                .extensions()
                .as_ref()
                .is_some_and(|e| e.flags().dnssec_ok),
            checking_disabled: req.checking_disabled(),
            edns: req.extensions().is_some(),
        };
        if let Some(m) = self.cached(&key) {
            return (fit(m, req), Source::Cache);
        }
        let upstreams = self.upstreams_for(&key.name);
        if upstreams.is_empty() {
            return (response_to(req, ResponseCode::ServFail), Source::Failed);
        }
        let deadline = Instant::now() + self.cfg.timeout;
        let per_try = self.cfg.timeout / u32::try_from(upstreams.len()).unwrap_or(1).max(1);
        for up in upstreams {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match tokio::time::timeout(per_try.min(left), exchange(*up, req)).await {
                Ok(Ok(resp)) => {
                    let resp = self.store(key, resp);
                    return (fit(resp, req), Source::Upstream);
                }
                Ok(Err(e)) => tracing::debug!(upstream = %up, error = %e, "forward"),
                Err(_) => tracing::debug!(upstream = %up, "forward timed out"),
            }
        }
        (response_to(req, ResponseCode::ServFail), Source::Failed)
    }

    fn cached(&self, key: &Key) -> Option<Message> {
        let mut cache = self.cache.lock().ok()?;
        let e = cache.get(key)?;
        let now = Instant::now();
        if now >= e.expires {
            cache.remove(key);
            return None;
        }
        let age = u32::try_from(now.duration_since(e.stored).as_secs()).unwrap_or(u32::MAX);
        let left = u32::try_from(e.expires.duration_since(now).as_secs()).unwrap_or(u32::MAX);
        let mut m = e.msg.clone();
        // Remaining TTLs, as CoreDNS's cache serves them.
        for r in m.answers_mut().iter_mut() {
            r.set_ttl(r.ttl().saturating_sub(age).min(left));
        }
        for r in m.name_servers_mut().iter_mut() {
            r.set_ttl(r.ttl().saturating_sub(age).min(left));
        }
        Some(m)
    }

    /// Caches `resp` (TTLs capped to the cache's limits) and returns it as cached.
    fn store(&self, key: Key, mut resp: Message) -> Message {
        let ttl = match resp.response_code() {
            ResponseCode::NoError if !resp.answers().is_empty() => resp
                .answers()
                .iter()
                .map(|r| r.ttl())
                .min()
                .unwrap_or(0)
                .min(self.cfg.max_success_ttl),
            ResponseCode::NoError | ResponseCode::NXDomain => resp
                .name_servers()
                .iter()
                .find_map(|r| match r.data() {
                    RData::SOA(soa) => Some(r.ttl().min(soa.minimum())),
                    _ => None,
                })
                .unwrap_or(0)
                .min(self.cfg.max_denial_ttl),
            _ => 0,
        };
        if ttl == 0 || resp.truncated() {
            return resp;
        }
        for r in resp.answers_mut().iter_mut() {
            r.set_ttl(r.ttl().min(ttl));
        }
        for r in resp.name_servers_mut().iter_mut() {
            r.set_ttl(r.ttl().min(ttl));
        }
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= self.cfg.cache_entries {
                let now = Instant::now();
                cache.retain(|_, e| e.expires > now);
                // Still full of live entries: the one closest to expiry makes room.
                if cache.len() >= self.cfg.cache_entries {
                    if let Some(k) = cache
                        .iter()
                        .min_by_key(|(_, e)| e.expires)
                        .map(|(k, _)| k.clone())
                    {
                        cache.remove(&k);
                    }
                }
            }
            let now = Instant::now();
            cache.insert(
                key,
                Entry {
                    msg: resp.clone(),
                    stored: now,
                    expires: now + Duration::from_secs(u64::from(ttl)),
                },
            );
        }
        resp
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("bad response: {0}")]
    Proto(#[from] hickory_proto::ProtoError),
    #[error("response does not match the query")]
    Mismatch,
}

/// One query to one upstream over UDP (a connected socket, so ICMP refusals fail at once),
/// then over TCP if the answer was truncated.
async fn exchange(up: SocketAddr, req: &Message) -> Result<Message, ExchangeError> {
    let mut q = req.clone();
    let id: u16 = rand_id();
    q.set_id(id);
    let bytes = q.to_bytes()?;
    let bind: SocketAddr = if up.is_ipv4() {
        "0.0.0.0:0".parse().unwrap_or(up)
    } else {
        "[::]:0".parse().unwrap_or(up)
    };
    let sock = UdpSocket::bind(bind).await?;
    sock.connect(up).await?;
    sock.send(&bytes).await?;
    let mut buf = vec![0u8; 65535];
    let resp = loop {
        let n = sock.recv(&mut buf).await?;
        let m = Message::from_bytes(&buf[..n])?;
        // Stray or spoofed datagrams are ignored, not taken as the answer.
        if m.id() == id && m.queries() == q.queries() {
            break m;
        }
    };
    if !resp.truncated() {
        return Ok(resp);
    }
    let mut tcp = TcpStream::connect(up).await?;
    let len = u16::try_from(bytes.len()).map_err(|_| ExchangeError::Mismatch)?;
    tcp.write_all(&len.to_be_bytes()).await?;
    tcp.write_all(&bytes).await?;
    let n = tcp.read_u16().await?;
    let mut body = vec![0u8; usize::from(n)];
    tcp.read_exact(&mut body).await?;
    let m = Message::from_bytes(&body)?;
    if m.id() != id || m.queries() != q.queries() {
        return Err(ExchangeError::Mismatch);
    }
    Ok(m)
}

/// An upstream or cached answer made the reply to `req`: its id, question (with the client's
/// letter case), RD/CD bits, and an OPT record only if the client sent one.
fn fit(mut m: Message, req: &Message) -> Message {
    m.set_id(req.id());
    m.set_recursion_desired(req.recursion_desired());
    m.set_checking_disabled(req.checking_disabled());
    m.take_queries();
    m.add_queries(req.queries().iter().cloned());
    let edns = req.extensions().as_ref().map(|q| {
        let mut e = hickory_proto::op::Edns::new();
        e.set_max_payload(crate::answer::EDNS_PAYLOAD);
        e.set_dnssec_ok(q.flags().dnssec_ok);
        e
    });
    *m.extensions_mut() = edns;
    m
}

fn rand_id() -> u16 {
    let mut b = [0u8; 2];
    // A failed getrandom leaves 0: still answered, only easier to spoof.
    let _ = getrandom::fill(&mut b);
    u16::from_be_bytes(b)
}
