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

/// Whether `req` asks to switch protocols (HTTP/1.1 only: HTTP/2 has no such upgrade). An
/// offer of `h2c` alone is not taken up: the proxies speak HTTP/2 between themselves anyway,
/// and the request goes on as HTTP/1.1 without it (a server may always ignore an Upgrade).
pub fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == http::Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && !h2c_only(req)
}

/// Whether every protocol `req` offers to upgrade to is `h2c` (curl's `--http2` on `http:`).
pub fn h2c_only<B>(req: &Request<B>) -> bool {
    req.headers()
        .get_all(header::UPGRADE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .all(|p| p.trim_ascii().eq_ignore_ascii_case(b"h2c"))
}

/// Removes a request's hop-by-hop headers but its `Upgrade`, which goes on with `Connection:
/// upgrade` (and nothing else named). Strips as much again when called twice.
pub fn strip_keeping_upgrade(h: &mut http::HeaderMap) {
    let protocol = h.get(header::UPGRADE).cloned();
    strip_hop_by_hop(h);
    if let Some(p) = protocol {
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
