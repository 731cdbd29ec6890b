//! What a peer or an app controls in the headers and framing the proxy reads itself: the
//! transport header a peer sends first, `traceparent`, the hop-by-hop list `Connection` names,
//! and the tap's query. None may panic; what the proxy passes on must be well formed.
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use meshwork_proxy::{http::strip_hop_by_hop, trace, transport_header::TransportHeader};

fuzz_target!(|data: &[u8]| {
    let first = data
        .get(..meshwork_proxy::transport_header::LEN)
        .and_then(|s| <&[u8; meshwork_proxy::transport_header::LEN]>::try_from(s).ok());
    if let Some(bytes) = first {
        if let Ok(h) = TransportHeader::decode(bytes) {
            // What decodes encodes back to the same bytes.
            assert_eq!(&h.encode(), bytes);
        }
    }
    let text = String::from_utf8_lossy(data);
    if let Some(t) = trace::TraceParent::parse(&text) {
        assert_eq!(trace::TraceParent::parse(&t.to_header()), Some(t));
    }
    let _ = meshwork_proxy::tap::Filter::from_query(Some(&text));
    // Split the input into header lines `name: value` and run them through what the stacks do.
    let mut headers = HeaderMap::new();
    for line in data.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else { continue };
        let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(&line[colon + 1..]),
        ) else {
            continue;
        };
        headers.append(n, v);
    }
    let _ = trace::trace_id(&headers);
    strip_hop_by_hop(&mut headers);
    assert!(headers.get(http::header::CONNECTION).is_none());
    assert!(headers.get(http::header::TRANSFER_ENCODING).is_none());
});
