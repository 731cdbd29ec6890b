//! The server name of a TLS ClientHello (RFC 8446 §4.1.2, RFC 6066 §3), read from the first
//! record of a connection the proxy does not terminate: the app's own TLS passes through
//! opaque, and its SNI labels the metrics. Only the first record is read (a ClientHello split
//! over records — rare, and only with very large hellos — counts as a hello without a name).

/// A TLS record's header and the most a record may carry (RFC 8446 §5.1: 2^14 bytes).
pub const MAX_RECORD: usize = 5 + (1 << 14);

#[derive(Debug, PartialEq, Eq)]
pub enum Parse {
    /// The whole hello was read: its host name, if it sent one.
    Done(Option<String>),
    /// The record is not complete yet.
    NeedMore,
    /// Not a ClientHello we can read.
    Invalid,
}

/// A cursor that fails instead of reading past its end.
struct Cur<'a>(&'a [u8]);

impl<'a> Cur<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| b[0] as usize)
    }
    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
    }
    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| ((b[0] as usize) << 16) | ((b[1] as usize) << 8) | b[2] as usize)
    }
    /// A vector with a `len_bytes`-byte length prefix.
    fn vec(&mut self, len_bytes: usize) -> Option<Cur<'a>> {
        let n = match len_bytes {
            1 => self.u8()?,
            2 => self.u16()?,
            _ => self.u24()?,
        };
        self.take(n).map(Cur)
    }
}

/// The SNI host name of the ClientHello at the start of `buf`.
pub fn server_name(buf: &[u8]) -> Parse {
    let mut rec = Cur(buf);
    let Some(header) = rec.take(5) else {
        return Parse::NeedMore;
    };
    if header[0] != 0x16 {
        return Parse::Invalid;
    }
    let len = u16::from_be_bytes([header[3], header[4]]) as usize;
    if len == 0 || len > MAX_RECORD - 5 {
        return Parse::Invalid;
    }
    let Some(body) = rec.take(len) else {
        return Parse::NeedMore;
    };
    hello(Cur(body)).map_or(Parse::Invalid, Parse::Done)
}

fn hello(mut c: Cur<'_>) -> Option<Option<String>> {
    if c.u8()? != 0x01 {
        return None; // not a ClientHello
    }
    let len = c.u24()?;
    // The hello may continue in a next record: read what this one holds.
    let mut h = Cur(c.take(len.min(c.0.len()))?);
    h.take(2)?; // legacy_version
    h.take(32)?; // random
    h.vec(1)?; // legacy_session_id
    h.vec(2)?; // cipher_suites
    h.vec(1)?; // legacy_compression_methods
    if h.0.is_empty() {
        return Some(None); // no extensions at all
    }
    let mut exts = h.vec(2)?;
    while !exts.0.is_empty() {
        let ty = exts.u16()?;
        let mut data = exts.vec(2)?;
        if ty != 0 {
            continue;
        }
        // server_name: a list of (name_type, name); host_name is type 0 (RFC 6066 §3).
        let mut list = data.vec(2)?;
        while !list.0.is_empty() {
            let kind = list.u8()?;
            let name = list.vec(2)?;
            if kind == 0 {
                let name = std::str::from_utf8(name.0).ok()?;
                let ok = !name.is_empty()
                    && name.len() <= 253
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
                return ok.then(|| Some(name.to_ascii_lowercase()));
            }
        }
        return Some(None);
    }
    Some(None)
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use super::*;

    /// The first flight of a real rustls client: a ClientHello naming `name` (an IP address
    /// instead when None, for which clients send no SNI).
    pub(crate) fn client_hello(name: Option<&str>) -> Vec<u8> {
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        let server = match name {
            Some(n) => rustls::pki_types::ServerName::try_from(n.to_string()).unwrap(),
            None => rustls::pki_types::ServerName::IpAddress(
                std::net::Ipv4Addr::new(10, 96, 0, 1).into(),
            ),
        };
        let mut conn = rustls::ClientConnection::new(Arc::new(cfg), server).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn reads_a_real_client_hello() {
        let hello = client_hello(Some("Web.Default.svc"));
        assert_eq!(
            server_name(&hello),
            Parse::Done(Some("web.default.svc".into()))
        );
        assert_eq!(server_name(&client_hello(None)), Parse::Done(None));
        // Every strict prefix waits for more.
        for n in 0..hello.len() {
            assert_eq!(server_name(&hello[..n]), Parse::NeedMore, "prefix {n}");
        }
    }

    #[test]
    fn refuses_what_is_not_a_hello() {
        let mut hello = client_hello(Some("a.example"));
        assert_eq!(server_name(b"\x17\x03\x03\x00\x01\x00"), Parse::Invalid);
        assert_eq!(server_name(b"\x16\x03\x01\x00\x00"), Parse::Invalid);
        // A ServerHello (type 2) where a ClientHello should be.
        hello[5] = 0x02;
        assert_eq!(server_name(&hello), Parse::Invalid);
        // A name with a byte no host name has.
        let mut bad = client_hello(Some("a.example"));
        let at = bad.windows(9).position(|w| w == b"a.example").unwrap();
        bad[at] = b'/';
        assert_eq!(server_name(&bad), Parse::Invalid);
    }

    #[test]
    fn lengths_past_the_end_are_invalid_not_panics() {
        let hello = client_hello(Some("a.example"));
        // Corrupt each byte after the record header in turn: never a panic.
        for i in 5..hello.len() {
            for v in [0x00, 0xff] {
                let mut h = hello.clone();
                h[i] = v;
                let _ = server_name(&h);
            }
        }
    }
}
