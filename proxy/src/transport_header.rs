//! The header a proxy sends first on each mTLS connection to a peer proxy, before any
//! application bytes (linkerd2-proxy's "transport header" for opaque traffic): which port of
//! the peer's pod the connection is for, and whether HTTP (carried as HTTP/2 streams) or opaque
//! bytes follow. The inbound side needs the port because the connection arrived at its own
//! listener, not at the app's port. Pools are keyed by (endpoint, port), so one header serves
//! every request on the connection.

/// Fixed size: magic (4), version (1), port (2, big-endian), protocol (1).
pub const LEN: usize = 8;
const MAGIC: &[u8; 4] = b"MWTH";
const VERSION: u8 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionProtocol {
    /// HTTP requests, as HTTP/2 streams.
    Http2,
    /// Bytes relayed untouched.
    Opaque,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransportHeader {
    pub port: u16,
    pub protocol: SessionProtocol,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("not a Meshwork transport header")]
    Magic,
    #[error("transport header version {0} (this proxy speaks {VERSION})")]
    Version(u8),
    #[error("transport header names port 0")]
    Port,
    #[error("transport header protocol {0} is unknown")]
    Protocol(u8),
}

impl TransportHeader {
    pub fn encode(&self) -> [u8; LEN] {
        let p = self.port.to_be_bytes();
        let proto = match self.protocol {
            SessionProtocol::Http2 => 0,
            SessionProtocol::Opaque => 1,
        };
        [
            MAGIC[0], MAGIC[1], MAGIC[2], MAGIC[3], VERSION, p[0], p[1], proto,
        ]
    }

    pub fn decode(b: &[u8; LEN]) -> Result<Self, HeaderError> {
        if &b[..4] != MAGIC {
            return Err(HeaderError::Magic);
        }
        if b[4] != VERSION {
            return Err(HeaderError::Version(b[4]));
        }
        let port = u16::from_be_bytes([b[5], b[6]]);
        if port == 0 {
            return Err(HeaderError::Port);
        }
        let protocol = match b[7] {
            0 => SessionProtocol::Http2,
            1 => SessionProtocol::Opaque,
            x => return Err(HeaderError::Protocol(x)),
        };
        Ok(TransportHeader { port, protocol })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_the_rest() {
        for h in [
            TransportHeader {
                port: 8080,
                protocol: SessionProtocol::Http2,
            },
            TransportHeader {
                port: 65535,
                protocol: SessionProtocol::Opaque,
            },
        ] {
            assert_eq!(TransportHeader::decode(&h.encode()), Ok(h));
        }
        let good = TransportHeader {
            port: 80,
            protocol: SessionProtocol::Http2,
        }
        .encode();
        let mut b = good;
        b[0] = b'G';
        assert_eq!(TransportHeader::decode(&b), Err(HeaderError::Magic));
        let mut b = good;
        b[4] = 2;
        assert_eq!(TransportHeader::decode(&b), Err(HeaderError::Version(2)));
        let mut b = good;
        b[5] = 0;
        b[6] = 0;
        assert_eq!(TransportHeader::decode(&b), Err(HeaderError::Port));
        let mut b = good;
        b[7] = 9;
        assert_eq!(TransportHeader::decode(&b), Err(HeaderError::Protocol(9)));
    }
}
