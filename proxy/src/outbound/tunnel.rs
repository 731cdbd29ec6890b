//! Opaque TCP through the outbound proxy: the app's `CONNECT host:port` (until interception
//! hands the proxy the original destination, issue 15) picks an endpoint like a request does;
//! a meshed one gets an HTTP/2 CONNECT stream to the pod's port on the pooled mTLS session
//! (one handshake serves every tunnel, as ztunnel's HBONE does), and one outside the mesh a
//! plain TCP connection. Bytes pass untouched both ways. HTTP/1.1 upgrades (WebSocket) take
//! the same way to their endpoint and go on over it as HTTP/1.1 (`crate::upgrade`).

use http::{Request, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::Outbound;
use crate::{
    http::{error, Body, ORIG_PROTO},
    metrics::Direction,
};

impl Outbound {
    pub(super) async fn tunnel(
        &self,
        mut req: Request<Incoming>,
        authority: &str,
        peer: &mut String,
    ) -> http::Response<Body> {
        let far = match self.far_for(authority, peer).await {
            Ok(f) => f,
            Err(resp) => return resp,
        };
        crate::io::splice(
            hyper::upgrade::on(&mut req),
            far,
            Direction::Outbound,
            self.drain.get().cloned(),
        );
        http::Response::new(crate::http::full(bytes::Bytes::new()))
    }

    /// An HTTP/1.1 upgrade: to an endpoint picked as for any request, over a stream of its
    /// own (a CONNECT stream on the mesh session, which the peer's proxy serves as HTTP/1.1,
    /// identity header and all), spliced once the server switches protocols.
    pub(super) async fn upgrade(
        &self,
        mut req: Request<Incoming>,
        authority: &str,
        peer: &mut String,
    ) -> http::Response<Body> {
        // As for any request: only the peer's inbound proxy says who the client is, and Host
        // names what the app named (an absolute target's authority replaces it).
        let named = crate::http::named_authority(req.uri(), req.headers())
            .and_then(|a| http::HeaderValue::from_str(a).ok());
        let h = req.headers_mut();
        crate::http::remove_client_id(h);
        h.remove(ORIG_PROTO);
        if let Some(v) = named {
            h.insert(http::header::HOST, v);
        }
        let answer = async {
            let far = match self.far_for(authority, peer).await {
                Ok(f) => f,
                Err(resp) => return resp,
            };
            let drain = self.drain.get().cloned();
            match crate::upgrade::forward(req, far, Direction::Outbound, drain).await {
                Ok(resp) => resp,
                Err(why) => error(StatusCode::BAD_GATEWAY, &why),
            }
        };
        // The request timeout bounds the wait for an endpoint and for the server's answer
        // (its 101 or otherwise), as for any request; not the switched connection after it.
        match self.cfg.request_timeout {
            Some(t) => tokio::time::timeout(t, answer)
                .await
                .unwrap_or_else(|_| super::timed_out(authority)),
            None => answer.await,
        }
    }

    /// The far side for a tunnel or an upgrade to `authority`, from an endpoint picked as for
    /// a request. Nothing of the client's has been sent yet, so one that cannot be reached
    /// (no connection, or its proxy refused the stream) sits out its back-off and another is
    /// tried; with none available the tunnel waits as a request does (`wait_for_endpoint`).
    pub(super) async fn far_for(
        &self,
        authority: &str,
        peer: &mut String,
    ) -> Result<crate::io::BoxedIo, http::Response<Body>> {
        let Some(eps) = self.resolver.get(authority).await else {
            return Err(error(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("no endpoints for {authority}"),
            ));
        };
        let (mut tried, mut waited, mut why) = (Vec::new(), std::time::Duration::ZERO, None);
        loop {
            let Some(picked) = self.pick(authority, &eps, &tried) else {
                if self.wait_for_endpoint(authority, &mut waited, None).await {
                    continue;
                }
                return Err(self.no_endpoint(authority, why, None));
            };
            let started = tokio::time::Instant::now();
            match self.connect_far(authority, &picked, peer).await {
                Ok(far) => return Ok(far),
                Err(e) => {
                    // Waiting for an endpoint that takes it, as for a request.
                    waited += started.elapsed();
                    self.reconnect_failed(authority, &picked);
                    tried.push(picked.ep().clone());
                    why = Some(e);
                }
            }
        }
    }

    /// The far side of a tunnel to `ep`: a CONNECT stream on the pooled mTLS session to a
    /// meshed endpoint, else plain TCP. Its setup is what the endpoint is judged on.
    pub(super) async fn connect_far(
        &self,
        authority: &str,
        picked: &super::balancers::Picked,
        peer: &mut String,
    ) -> Result<crate::io::BoxedIo, String> {
        let flight = super::InFlight::new(self, authority, picked);
        let ep = picked.ep();
        let far: Result<crate::io::BoxedIo, String> = match &ep.mesh {
            Some(mesh) => {
                *peer = mesh.identity.to_string();
                self.pool
                    .tunnel(ep.addr, mesh)
                    .await
                    .map(|io| Box::new(TokioIo::new(io)) as crate::io::BoxedIo)
                    .map_err(|e| e.to_string())
            }
            None => {
                match tokio::time::timeout(self.cfg.connect_timeout, TcpStream::connect(ep.addr))
                    .await
                {
                    Ok(Ok(tcp)) => {
                        let _ = tcp.set_nodelay(true);
                        crate::io::keepalive(&tcp);
                        Ok(Box::new(tcp) as crate::io::BoxedIo)
                    }
                    Ok(Err(e)) => Err(format!("connecting to {}: {e}", ep.addr)),
                    Err(_) => Err(format!("connecting to {}: timed out", ep.addr)),
                }
            }
        };
        if far.is_ok() {
            flight.finish(true);
        } else {
            flight.failed_transport();
        }
        if let Err(why) = &far {
            tracing::info!(%authority, endpoint = %ep.addr, error = %why, "tunnel failed");
        }
        far
    }
}
