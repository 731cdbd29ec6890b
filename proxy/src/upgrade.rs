//! HTTP/1.1 upgrades (RFC 9110 §7.8; WebSocket, RFC 6455 §4) through either stack: the
//! request goes on over a byte stream of its own — on the client's side a CONNECT stream on
//! the mesh session (or plain TCP outside the mesh), on the server's side a connection to the
//! app — as HTTP/1.1 with its `Upgrade` header, the only hop-by-hop header a proxy must pass
//! for it. A 101 answer hands both connections over to the protocol they switched to: bytes
//! are relayed both ways until both ends are done. Any other answer is passed on as it is.
//! (Linkerd proxies upgrades the same way: as HTTP/1.1 over a connection of their own, never
//! as HTTP/2 streams, which cannot carry them.)

use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::{
    drain::Watch,
    http::{strip_hop_by_hop, Body},
    io::BoxedIo,
    metrics::Direction,
};

/// Whether `req` asks to switch protocols (HTTP/1.1 only: HTTP/2 has no such upgrade): an
/// `Upgrade` header named in `Connection` (RFC 9110 §7.8 — without the `upgrade` option the
/// header is only this hop's, and is dropped with the others). An offer of `h2c` alone is not
/// taken up: the proxies speak HTTP/2 between themselves anyway, and the request goes on as
/// HTTP/1.1 without it (a server may always ignore an Upgrade).
pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == http::Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .any(|o| o.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
        && !h2c_only(req)
}

/// Whether every protocol `req` offers to upgrade to is `h2c` (curl's `--http2` on `http:`).
pub fn h2c_only<B>(req: &Request<B>) -> bool {
    offered(req.headers()).all(|p| p.eq_ignore_ascii_case(b"h2c"))
}

/// The protocols an `Upgrade` offers, in order.
fn offered(h: &http::HeaderMap) -> impl Iterator<Item = &[u8]> {
    h.get_all(header::UPGRADE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|p| !p.is_empty())
}

/// Removes a request's hop-by-hop headers but its `Upgrade`, which goes on with `Connection:
/// upgrade` (and nothing else named), without `h2c`: an app that took the client up on it
/// would then take HTTP/2 frames from the client through the splice, requests the proxy never
/// looked at (a forged identity header among them). Strips as much again when called twice.
pub fn strip_keeping_upgrade(h: &mut http::HeaderMap) {
    let protocols: Vec<&[u8]> = offered(h)
        .filter(|p| !p.eq_ignore_ascii_case(b"h2c"))
        .collect();
    let protocol = HeaderValue::from_bytes(&protocols.join(&b", "[..])).ok();
    strip_hop_by_hop(h);
    // Not named in `Connection` by every client: it goes with the h2c offer.
    h.remove("http2-settings");
    if let Some(p) = protocol.filter(|p| !p.is_empty()) {
        h.insert(header::UPGRADE, p);
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Sends `req` (already addressed: its headers as the far side should see them, its target
/// the path) over `far` and returns the answer; on a 101 the two connections are spliced,
/// holding `drain` until they close.
pub async fn forward(
    mut req: Request<Incoming>,
    far: BoxedIo,
    direction: Direction,
    drain: Option<Watch>,
) -> Result<Response<Body>, String> {
    let near = hyper::upgrade::on(&mut req);
    let (mut parts, body) = req.into_parts();
    strip_keeping_upgrade(&mut parts.headers);
    parts.version = http::Version::HTTP_11;
    // Origin form on the wire: the far side is the server itself (Host names it).
    if let Some(pq) = parts.uri.path_and_query().cloned() {
        parts.uri = http::Uri::from(pq);
    }
    let (mut send, conn) = hyper::client::conn::http1::handshake::<_, Incoming>(TokioIo::new(far))
        .await
        .map_err(|e| format!("upgrade: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upgrade connection ended");
        }
    });
    let mut resp = send
        .send_request(Request::from_parts(parts, body))
        .await
        .map_err(|e| format!("upgrade request: {e}"))?;
    let switched = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if switched {
        let far = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            match far.await {
                Ok(far) => crate::io::splice(near, TokioIo::new(far), direction, drain),
                Err(e) => tracing::debug!(error = %e, "the far side did not switch protocols"),
            }
        });
    }
    let (mut parts, body) = resp.into_parts();
    let protocol = parts.headers.get(header::UPGRADE).cloned();
    strip_hop_by_hop(&mut parts.headers);
    if let (true, Some(p)) = (switched, protocol) {
        parts.headers.insert(header::UPGRADE, p);
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    Ok(Response::from_parts(parts, body.boxed()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]
    use super::*;

    fn req(headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::get("/chat");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    /// RFC 9110 §7.8: an upgrade is asked for with the `upgrade` connection option; a bare
    /// `Upgrade` (an ingress that keeps its connection to the backend) is this hop's only.
    #[test]
    fn an_upgrade_is_asked_with_the_connection_option() {
        let ws = ("upgrade", "websocket");
        assert!(is_upgrade(&req(&[ws, ("connection", "Upgrade")])));
        assert!(is_upgrade(&req(&[
            ws,
            ("connection", "keep-alive, upgrade")
        ])));
        assert!(!is_upgrade(&req(&[ws, ("connection", "keep-alive")])));
        assert!(!is_upgrade(&req(&[ws])));
        assert!(!is_upgrade(&req(&[
            ("upgrade", "h2c"),
            ("connection", "upgrade")
        ])));
    }

    /// A mixed offer goes on without `h2c` (and its settings): an app taking it up would get
    /// HTTP/2 requests the proxy never saw.
    #[test]
    fn h2c_is_taken_out_of_a_mixed_offer() {
        let mut r = req(&[
            ("upgrade", "h2c, websocket"),
            ("connection", "Upgrade"),
            ("http2-settings", "AAMAAABkAAQAAP__"),
            ("keep-alive", "5"),
        ]);
        strip_keeping_upgrade(r.headers_mut());
        let h = r.headers();
        assert_eq!(h.get(header::UPGRADE).unwrap(), "websocket");
        assert_eq!(h.get(header::CONNECTION).unwrap(), "upgrade");
        assert!(h.get("http2-settings").is_none());
        assert!(h.get("keep-alive").is_none());
    }
}
