//! W3C Trace Context (`traceparent`, https://www.w3.org/TR/trace-context/#traceparent-header):
//! the proxy reads a request's trace id into its span and tap line. Without a trace collector
//! it passes the header on untouched; with one (`otlp.rs`, as Linkerd does only with a
//! collector configured) a sampled request gets a span of the proxy's, which becomes the
//! parent the next hop sees — never without, since a parent id no collector receives would
//! leave the app's spans pointing at a span that does not exist. A request without one is not
//! given one: starting traces is the app's or the ingress's decision.

use std::fmt::Write;

use http::{HeaderMap, HeaderName};

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub flags: u8,
}

fn hex_to<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Lower-case hex, as the header and OTLP's JSON write ids.
pub(crate) fn hex(b: &[u8]) -> String {
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}

impl TraceParent {
    /// Version 00's `00-<32 hex>-<16 hex>-<2 hex>`; a later version is read by its first four
    /// fields, as the spec asks. All-zero ids and version ff are invalid.
    pub fn parse(v: &str) -> Option<TraceParent> {
        let mut parts = v.trim().split('-');
        let version = parts.next()?;
        let (trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?);
        let version = hex_to::<1>(version)?[0];
        if version == 0xff || (version == 0 && parts.next().is_some()) {
            return None;
        }
        let t = TraceParent {
            trace_id: hex_to(trace)?,
            parent_id: hex_to(parent)?,
            flags: hex_to::<1>(flags)?[0],
        };
        (t.trace_id != [0; 16] && t.parent_id != [0; 8]).then_some(t)
    }

    pub fn trace_id(&self) -> String {
        hex(&self.trace_id)
    }

    /// The same trace with a new span of this proxy's as the parent. Of the flags only the
    /// two defined ones go on (sampled, and Level 2's random trace id): Trace Context says
    /// a vendor sets the ones it does not know to zero.
    pub fn child(&self) -> TraceParent {
        let mut parent_id: [u8; 8] = rand::random();
        if parent_id == [0; 8] {
            parent_id[7] = 1;
        }
        TraceParent {
            parent_id,
            flags: self.flags & 0x03,
            ..*self
        }
    }

    pub fn to_header(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&self.parent_id),
            self.flags
        )
    }
}

/// The request's trace id (empty: no valid trace context); the header is left as it came.
pub fn trace_id(headers: &HeaderMap) -> String {
    headers
        .get(TRACEPARENT)
        .and_then(|v| v.to_str().ok())
        .and_then(TraceParent::parse)
        .map(|t| t.trace_id())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]
    use super::*;
    use http::HeaderValue;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    /// Sampled and random go on; flags no version defines are set to zero.
    #[test]
    fn a_child_keeps_only_the_defined_flags() {
        let t =
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff").unwrap();
        assert!(t.child().to_header().ends_with("-03"));
        let t = TraceParent::parse(EXAMPLE).unwrap();
        assert!(t.child().to_header().ends_with("-01"));
    }

    #[test]
    fn the_specs_example_parses_and_a_child_keeps_the_trace() {
        let t = TraceParent::parse(EXAMPLE).unwrap();
        assert_eq!(t.to_header(), EXAMPLE);
        assert_eq!(t.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let c = t.child();
        assert_eq!((c.trace_id, c.flags), (t.trace_id, t.flags));
        assert_ne!(c.parent_id, t.parent_id);
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_static(EXAMPLE));
        assert_eq!(trace_id(&h), t.trace_id());
    }

    #[test]
    fn invalid_ones_are_refused() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad}");
        }
        // A later version may carry more fields.
        assert!(
            TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more")
                .is_some()
        );
    }
}
