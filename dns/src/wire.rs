//! The few wire-format facts the UDP fast path needs without a full decode: is this an
//! ordinary one-question query, and what identifies its answer (lowercased question, EDNS
//! payload class). Anything unusual returns None and takes the full (hickory) path.

/// A plain query, recognised from its bytes.
#[derive(Debug, PartialEq, Eq)]
pub struct Quick {
    /// End of the question section (header + qname + qtype + qclass).
    pub question_end: usize,
    /// Cache key: lowercased question, then the response size class and the DO bit.
    pub key: Vec<u8>,
}

/// The largest UDP response for a query: 512 without EDNS, else the client's payload capped
/// by ours.
pub fn udp_limit(edns_payload: Option<u16>, ours: u16) -> usize {
    match edns_payload {
        None => 512,
        Some(p) => usize::from(p.clamp(512, ours)),
    }
}

pub fn quick(pkt: &[u8], ours: u16) -> Option<Quick> {
    if pkt.len() < 17 {
        return None;
    }
    let flags = u16::from_be_bytes([pkt[2], pkt[3]]);
    // QR=0, opcode QUERY, no TC.
    if flags & 0xfa00 != 0 {
        return None;
    }
    let count = |i: usize| u16::from_be_bytes([pkt[i], pkt[i + 1]]);
    let (qd, an, ns, ar) = (count(4), count(6), count(8), count(10));
    if qd != 1 || an != 0 || ns != 0 || ar > 1 {
        return None;
    }
    let mut key = Vec::with_capacity(64);
    let mut i = 12;
    loop {
        let len = usize::from(*pkt.get(i)?);
        if len == 0 {
            key.push(0);
            i += 1;
            break;
        }
        // A compression pointer or reserved label type in a question: full path.
        if len > 63 || i + 1 + len > pkt.len() || key.len() + len + 1 > 255 {
            return None;
        }
        key.push(len as u8);
        key.extend(pkt[i + 1..i + 1 + len].iter().map(u8::to_ascii_lowercase));
        i += 1 + len;
    }
    key.extend_from_slice(pkt.get(i..i + 4)?);
    let question_end = i + 4;
    let mut edns = None;
    let mut dnssec_ok = false;
    if ar == 1 {
        // OPT: root name, type 41, class = payload size, ttl = ext-rcode/version/flags.
        let opt = pkt.get(question_end..question_end + 11)?;
        if opt[0] != 0 || u16::from_be_bytes([opt[1], opt[2]]) != 41 || opt[6] != 0 {
            return None;
        }
        edns = Some(u16::from_be_bytes([opt[3], opt[4]]));
        dnssec_ok = opt[7] & 0x80 != 0;
        let rdlen = usize::from(u16::from_be_bytes([opt[9], opt[10]]));
        if question_end + 11 + rdlen != pkt.len() {
            return None;
        }
    } else if question_end != pkt.len() {
        return None;
    }
    let limit = udp_limit(edns, ours) as u16;
    key.extend_from_slice(&limit.to_be_bytes());
    key.push(u8::from(edns.is_some()) | (u8::from(dnssec_ok) << 1));
    Some(Quick { question_end, key })
}

/// A cached response made the reply to `pkt`: its id, its RD and CD bits, its question bytes
/// (same length by construction: the key covers the lowercased question).
pub fn stamp(template: &[u8], pkt: &[u8], question_end: usize, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(template);
    out[0] = pkt[0];
    out[1] = pkt[1];
    out[2] = (out[2] & !0x01) | (pkt[2] & 0x01);
    out[3] = (out[3] & !0x10) | (pkt[3] & 0x10);
    out[12..question_end].copy_from_slice(&pkt[12..question_end]);
}

/// FORMERR for a packet we cannot parse, if it at least has a header; None: drop it.
pub fn formerr(pkt: &[u8]) -> Option<Vec<u8>> {
    if pkt.len() < 12 || pkt[2] & 0x80 != 0 {
        return None;
    }
    let mut out = vec![0u8; 12];
    out[0] = pkt[0];
    out[1] = pkt[1];
    // QR=1, same opcode, RD copied; rcode FORMERR (1).
    out[2] = 0x80 | (pkt[2] & 0x79);
    out[3] = 0x01;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &[&str], edns: Option<u16>) -> Vec<u8> {
        let mut p = vec![
            0x12,
            0x34,
            0x01,
            0x00,
            0,
            1,
            0,
            0,
            0,
            0,
            0,
            u8::from(edns.is_some()),
        ];
        for l in name {
            p.push(l.len() as u8);
            p.extend_from_slice(l.as_bytes());
        }
        p.extend_from_slice(&[0, 0, 1, 0, 1]);
        if let Some(size) = edns {
            p.extend_from_slice(&[0, 0, 41]);
            p.extend_from_slice(&size.to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        }
        p
    }

    #[test]
    fn keys_ignore_case_and_id_but_not_size_class() {
        let a = quick(
            &query(&["Web", "default", "svc", "cluster", "local"], None),
            1232,
        )
        .unwrap();
        let mut b_pkt = query(&["web", "DEFAULT", "svc", "cluster", "local"], None);
        b_pkt[0] = 9;
        let b = quick(&b_pkt, 1232).unwrap();
        assert_eq!(a.key, b.key);
        let c = quick(
            &query(&["web", "default", "svc", "cluster", "local"], Some(4096)),
            1232,
        )
        .unwrap();
        assert_ne!(a.key, c.key);
        assert_eq!(c.question_end, a.question_end);
    }

    #[test]
    fn unusual_packets_take_the_full_path() {
        let mut p = query(&["a"], None);
        p[2] |= 0x80; // a response
        assert!(quick(&p, 1232).is_none());
        let mut p = query(&["a"], None);
        p.push(0); // trailing garbage
        assert!(quick(&p, 1232).is_none());
        let mut p = query(&["a"], None);
        p[12] = 0xc0; // compression pointer in the question
        assert!(quick(&p, 1232).is_none());
        assert!(quick(&[0u8; 5], 1232).is_none());
        assert_eq!(
            formerr(&[1, 2, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap()[3],
            1
        );
        assert!(formerr(&[1, 2]).is_none());
    }

    #[test]
    fn stamping_keeps_the_querys_id_case_and_flags() {
        let template = {
            let mut t = query(&["web"], None);
            t[2] = 0x84; // QR, AA
            t
        };
        let mut pkt = query(&["WeB"], None);
        pkt[0] = 0xab;
        pkt[2] = 0x01;
        let q = quick(&pkt, 1232).unwrap();
        let mut out = Vec::new();
        stamp(&template, &pkt, q.question_end, &mut out);
        assert_eq!(out[0], 0xab);
        assert_eq!(out[2], 0x85);
        assert_eq!(&out[13..16], b"WeB");
    }
}
