//! The one netlink layer: a namespace-bound rtnetlink handle with typed operations.
//!
//! Every operation is a single request; idempotency decisions (is `EEXIST` fine here?) are left to
//! callers, which get the errno back through [`Error::errno`].

mod error;
mod netns;
mod ops;

pub use error::Error;
pub use netns::Netns;
pub use ops::{Fdb, Link, LinkKind, Neighbour, Netlink, Route, VethSpec, VxlanSpec};

/// Formats a MAC address the way `ip link` prints it.
pub fn fmt_mac(mac: &[u8]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in out.iter_mut() {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip() {
        let mac = [0x02, 0x6d, 0x0a, 0x00, 0xff, 0x01];
        assert_eq!(fmt_mac(&mac), "02:6d:0a:00:ff:01");
        assert_eq!(parse_mac("02:6d:0a:00:ff:01"), Some(mac));
        assert_eq!(parse_mac("02:6d:0a:00:ff"), None);
        assert_eq!(parse_mac("02:6d:0a:00:ff:01:02"), None);
        assert_eq!(parse_mac("zz:6d:0a:00:ff:01"), None);
    }
}
