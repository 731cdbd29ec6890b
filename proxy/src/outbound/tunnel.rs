//! Opaque TCP through the outbound proxy: the app's `CONNECT host:port` (until interception
//! hands the proxy the original destination, issue 15) picks an endpoint like a request does;
//! a meshed one gets an HTTP/2 CONNECT stream to the pod's port on the pooled mTLS session
//! (one handshake serves every tunnel, as ztunnel's HBONE does), and one outside the mesh a
//! plain TCP connection. Bytes pass untouched both ways.

use http::{Request, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::Outbound;
use crate::{
    http::{error, Body},
    metrics::Direction,
};

impl Outbound {
    pub(super) async fn tunnel(
        &self,
        mut req: Request<Incoming>,
        authority: &str,
        peer: &mut String,
    ) -> http::Response<Body> {
        let eps = match self.endpoints(authority).await {
            Ok(e) => e,
            Err(resp) => return resp,
        };
        let Some(picked) = self.pick(authority, &eps, &[]) else {
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("no endpoint of {authority} is available (ejected or reconnecting)"),
            );
        };
        let far = self.connect_far(authority, &picked, peer).await;
        let far = match far {
            Ok(f) => f,
            Err(why) => return error(StatusCode::BAD_GATEWAY, &why),
        };
        crate::io::splice(
            hyper::upgrade::on(&mut req),
            far,
            self.metrics.clone(),
            Direction::Outbound,
            self.drain.get().cloned(),
        );
        http::Response::new(crate::http::full(bytes::Bytes::new()))
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
                        Ok(Box::new(tcp) as crate::io::BoxedIo)
                    }
                    Ok(Err(e)) => Err(format!("connecting to {}: {e}", ep.addr)),
                    Err(_) => Err(format!("connecting to {}: timed out", ep.addr)),
                }
            }
        };
        flight.finish(far.is_ok());
        if let Err(why) = &far {
            tracing::info!(%authority, endpoint = %ep.addr, error = %why, "tunnel failed");
        }
        far
    }
}
