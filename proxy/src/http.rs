//! What both stacks do to an HTTP message in passing: one body type, the hop-by-hop headers
//! a proxy must not forward (RFC 9110 §7.6.1), the client identity header, and error answers.

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};

/// Every body the proxy passes on or makes.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// How a response body ended, for what waits on its trailers (a gRPC status).
pub enum End<'a> {
    Trailers(&'a HeaderMap),
    /// It ended with no trailers, or broke.
    Without,
    /// It was dropped before its end (the client went away).
    Dropped,
}

/// `inner`, telling `f` how it ended, once: what a gRPC answer's status, sent in its
/// trailers after its messages, is read by (the breaker, the request metrics).
pub fn on_end(inner: Body, f: impl FnOnce(End<'_>) + Send + Sync + 'static) -> Body {
    // Nothing to read: hyper will not poll it.
    if hyper::body::Body::is_end_stream(&inner) {
        f(End::Without);
        return inner;
    }
    OnEnd {
        inner,
        f: Some(Box::new(f)),
    }
    .boxed()
}

type EndFn = Box<dyn FnOnce(End<'_>) + Send + Sync>;

struct OnEnd {
    inner: Body,
    f: Option<EndFn>,
}

impl OnEnd {
    fn end(&mut self, how: End<'_>) {
        if let Some(f) = self.f.take() {
            f(how);
        }
    }
}

impl hyper::body::Body for OnEnd {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            std::task::Poll::Ready(Some(Ok(frame))) => {
                if let Some(t) = frame.trailers_ref() {
                    self.end(End::Trailers(t));
                } else if self.inner.is_end_stream() {
                    // Its last data (h2's END_STREAM on DATA): hyper polls no further, so
                    // the end without trailers is seen here or not at all.
                    self.end(End::Without);
                }
            }
            std::task::Poll::Ready(Some(Err(_)) | None) => self.end(End::Without),
            std::task::Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for OnEnd {
    fn drop(&mut self) {
        self.end(End::Dropped);
    }
}

/// The `grpc_status` label of a response: empty when it is not gRPC, its code ("0".."16",
/// or "other") when its headers carry it (a trailers-only answer), None when it is still to
/// come in its trailers: a 200 of gRPC's content type (`application/grpc`, `+proto`...;
/// not gRPC-Web's, whose status is in its body). A gRPC server answers 200; another status
/// without `grpc-status` is an HTTP answer, from a proxy or a gateway.
pub fn grpc_status_now(status: StatusCode, h: &HeaderMap) -> Option<&'static str> {
    if let Some(s) = h.get("grpc-status") {
        return Some(grpc_code(s));
    }
    let grpc = status == StatusCode::OK
        && h.get(header::CONTENT_TYPE).is_some_and(|c| {
            let c = c.as_bytes();
            c == b"application/grpc"
                || c.starts_with(b"application/grpc+")
                || c.starts_with(b"application/grpc;")
        });
    (!grpc).then_some("")
}

/// A `grpc-status` value as a label: one of the 17 codes, else "other".
pub fn grpc_code(v: &http::HeaderValue) -> &'static str {
    const CODES: [&str; 17] = [
        "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
    ];
    std::str::from_utf8(v.as_bytes())
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .and_then(|n| CODES.get(n).copied())
        .unwrap_or("other")
}

/// The verified SPIFFE ID of the calling workload, set by the inbound proxy on requests it
/// received over mTLS and removed from every other request (Linkerd's `l5d-client-id`).
pub const CLIENT_ID: HeaderName = HeaderName::from_static("meshwork-client-id");

/// Removes [`CLIENT_ID`] and any spelling of it with underscores (`meshwork_client_id`): CGI,
/// WSGI and Rack map both to `HTTP_MESHWORK_CLIENT_ID`, so a client could otherwise bring its
/// own identity to such an app under the other spelling.
pub fn remove_client_id(h: &mut http::HeaderMap) {
    h.remove(CLIENT_ID);
    let spelt_otherwise = |n: &HeaderName| {
        let n = n.as_str().as_bytes();
        let want = b"meshwork-client-id";
        n.len() == want.len()
            && n.contains(&b'_')
            && n.iter()
                .zip(want)
                .all(|(a, b)| a == b || (*a == b'_' && *b == b'-'))
    };
    if h.keys().any(spelt_otherwise) {
        let names: Vec<HeaderName> = h.keys().filter(|n| spelt_otherwise(n)).cloned().collect();
        for n in names {
            h.remove(n);
        }
    }
}

/// On a request that travels the mesh session as HTTP/2 but came from the app as HTTP/1.1
/// (Linkerd's `l5d-orig-proto`): the inbound proxy speaks HTTP/1.1 to its app then, and
/// HTTP/2 to it otherwise (gRPC).
pub const ORIG_PROTO: HeaderName = HeaderName::from_static("meshwork-orig-proto");

/// Which proxy answered an error (so a client can tell a proxy's 502 from its app's).
pub const PROXY_ERROR: HeaderName = HeaderName::from_static("meshwork-proxy-error");

/// On an error response the proxy made for a request that never reached the app: over
/// HTTP/2 the inbound stack sends a REFUSED_STREAM reset instead, which tells the client's
/// proxy (or an HTTP/2 client) that the request may go elsewhere whatever its method.
#[derive(Clone, Copy, Debug)]
pub struct Unsent;

/// Whether an HTTP/2 peer said it did not process the stream: a REFUSED_STREAM reset, or a
/// stream past its GOAWAY's last one (RFC 9113 §8.7: either may be retried, whatever the
/// method).
pub fn unprocessed(e: &hyper::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(h2) = c.downcast_ref::<h2::Error>() {
            return h2.is_remote()
                && (h2.is_go_away() || h2.reason() == Some(h2::Reason::REFUSED_STREAM));
        }
        cause = c.source();
    }
    false
}

/// The authority a request names: its target's (absolute form, HTTP/2), else its Host header.
pub fn named_authority<'a>(uri: &'a http::Uri, headers: &'a HeaderMap) -> Option<&'a str> {
    uri.authority()
        .map(|a| a.as_str())
        .or_else(|| headers.get(header::HOST).and_then(|h| h.to_str().ok()))
}

/// Why a request's authority must not be passed on, if so: userinfo in its target or Host,
/// which a recipient treats as an error (RFC 9110 §4.2.4; it would go on to the next hop and
/// into the metrics and the tap), or more than one Host (RFC 9112 §3.2 asks for a 400: an app
/// reading the last one would serve another host than the one routed and counted).
pub fn bad_authority(uri: &http::Uri, headers: &HeaderMap) -> Option<&'static str> {
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Some("userinfo in the request target");
    }
    let mut hosts = headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (_, Some(_)) => Some("more than one Host header"),
        (Some(h), None) if h.as_bytes().contains(&b'@') => Some("userinfo in Host"),
        _ => None,
    }
}

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).map_err(|never| match never {}).boxed()
}

/// A response the proxy makes itself, with the reason in a header and the body.
pub fn error(status: StatusCode, why: &str) -> Response<Body> {
    let mut r = Response::new(full(format!("{why}\n")));
    *r.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(why) {
        r.headers_mut().insert(PROXY_ERROR, v);
    }
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain"),
    );
    r
}

/// Removes the hop-by-hop headers: the fixed list and whatever `Connection` names, except
/// `te: trailers`, which HTTP/2 allows end to end and gRPC sends. `Trailer` stays: it is end
/// to end (RFC 9110 §6.6.2), and hyper writes an HTTP/1 message's trailers only when it
/// announces them.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Most requests carry none of them, and most responses only `Connection`: a pass over
    // the names present instead of a hashed removal of every listed one (this runs four
    // times per request across the pair).
    if !h.keys().any(is_hop_by_hop) {
        return;
    }
    let te_trailers = h
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    let mut gone: Vec<HeaderName> = h.keys().filter(|n| is_hop_by_hop(n)).cloned().collect();
    gone.extend(
        h.get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok()),
    );
    for n in gone {
        h.remove(n);
    }
    if te_trailers {
        h.insert(header::TE, header::HeaderValue::from_static("trailers"));
    }
}

/// The names `strip_hop_by_hop` removes whatever `Connection` says.
fn is_hop_by_hop(n: &HeaderName) -> bool {
    [
        header::CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TE,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ]
    .contains(n)
        || n == "keep-alive"
        || n == "proxy-connection"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities_with_userinfo_or_two_hosts_are_refused() {
        let bad = |uri: &str, hosts: &[&str]| {
            let mut h = HeaderMap::new();
            for v in hosts {
                h.append(header::HOST, v.parse().unwrap());
            }
            bad_authority(&uri.parse().unwrap(), &h)
        };
        assert_eq!(bad("/", &["web"]), None);
        assert_eq!(bad("http://web:80/", &["other"]), None);
        assert_eq!(bad("/", &[]), None);
        assert!(bad("http://alice:s3cret@web/", &["web"]).is_some());
        assert!(bad("/", &["alice@web"]).is_some());
        assert!(bad("/", &["web", "admin"]).is_some());
        assert!(bad("/", &["web", "web"]).is_some());
    }

    #[test]
    fn hop_by_hop_headers_go_and_end_to_end_ones_stay() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, x-secret".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        h.insert("x-request-id", "abc".parse().unwrap());
        h.insert(header::CONTENT_LENGTH, "3".parse().unwrap());
        strip_hop_by_hop(&mut h);
        // (The order of different names carries no meaning, RFC 9110 §5.3.)
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["content-length", "x-request-id"]);
        // Each name alone is found (the fast path must not skip one).
        for n in [
            "connection",
            "proxy-authenticate",
            "proxy-authorization",
            "te",
            "transfer-encoding",
            "upgrade",
            "keep-alive",
            "proxy-connection",
        ] {
            let mut h = HeaderMap::new();
            h.insert(HeaderName::from_static(n), "x".parse().unwrap());
            h.insert("x-request-id", "abc".parse().unwrap());
            strip_hop_by_hop(&mut h);
            assert_eq!(h.len(), 1, "{n} stayed");
        }
    }
}
