//! The inbound proxy's connections to its app: on the address the client came to (the
//! pod's), from [`APP_SOURCE`], within the connect timeout.

use std::{
    future::Future,
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The source address of the proxy's connections to its app. The app is reached on the
/// address the client came to (the pod's), not on 127.0.0.1, so that a port the app binds on
/// loopback only stays out of reach from outside the pod (Linkerd since 2.11, Istio since
/// 1.10); the kernel's inbound steering (`ebpf/bpf/mesh_redirect.c`, `MW_PROXY_APP_SOURCE`)
/// lets connections from this address through to the app instead of handing them back to
/// the proxy. A loopback address: nothing outside the pod can send from it.
pub const APP_SOURCE: std::net::Ipv4Addr = std::net::Ipv4Addr::new(127, 0, 0, 6);

/// A connection to the app at `app` (an IPv4 one, IPv4-mapped included, from [`APP_SOURCE`]),
/// within `timeout`.
pub(crate) async fn connect_app(app: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let app = SocketAddr::new(app.ip().to_canonical(), app.port());
    let connect = async {
        match app.ip() {
            IpAddr::V4(_) => {
                let s = tokio::net::TcpSocket::new_v4()?;
                // The port is chosen at connect, not at bind: a port bound first must be free
                // of every socket on the address, TIME_WAIT ones included, and a proxy closing
                // hundreds of connections a second would run out of them.
                let one: libc::c_int = 1;
                // SAFETY: setsockopt reads `one` (an int, its size given) on the socket's own
                // descriptor, which `s` keeps open for the call.
                let r = unsafe {
                    libc::setsockopt(
                        s.as_raw_fd(),
                        libc::IPPROTO_IP,
                        libc::IP_BIND_ADDRESS_NO_PORT,
                        std::ptr::from_ref(&one).cast(),
                        std::mem::size_of_val(&one) as libc::socklen_t,
                    )
                };
                if r != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                s.bind(SocketAddr::from((APP_SOURCE, 0)))?;
                s.connect(app).await
            }
            IpAddr::V6(_) => TcpStream::connect(app).await,
        }
    };
    let t = tokio::time::timeout(timeout, connect).await.map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("connecting to the app at {app}"),
        )
    })??;
    let _ = t.set_nodelay(true);
    crate::io::keepalive(&t);
    Ok(t)
}

/// The connector of the HTTP/1 client to the app (hyper's pooled client): [`connect_app`] to
/// the address of the request's target (always the app's own, `Session::app_authority`).
#[derive(Clone)]
pub(crate) struct Connector {
    pub timeout: Duration,
}

impl tower::Service<http::Uri> for Connector {
    type Response = TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let timeout = self.timeout;
        Box::pin(async move {
            let addr: SocketAddr = uri
                .authority()
                .and_then(|a| a.as_str().parse().ok())
                .ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        format!("not an app address: {uri}"),
                    )
                })?;
            connect_app(addr, timeout).await.map(TokioIo::new)
        })
    }
}
