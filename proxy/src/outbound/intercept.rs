//! Connections the kernel redirected to the outbound port (issue 15; the node's eBPF
//! programs, `ebpf/bpf/mesh_redirect.c`): their original destination comes from
//! `SO_ORIGINAL_DST`, answered by a getsockopt program as netfilter's REDIRECT would.
//!
//! - A destination discovery knows (a Service's ClusterIP:port, or a pod's address: the
//!   control agent answers with that one pod) is routed like an explicitly addressed
//!   request: HTTP by request over the balancer, anything else (or a port opaque by default
//!   or by annotation) tunnelled to one endpoint.
//! - Anything discovery says is unknown (a node's address, the world) goes where it was
//!   sent, bytes untouched: the mesh has no identity to expect there.
//! - When discovery does not answer at all, the connection is closed: it may be a meshed
//!   pod's address, which must not get plaintext.

use std::{net::SocketAddr, sync::Arc};

use tokio::net::TcpStream;

use super::{resolve::Lookup, Outbound};
use crate::{detect::Protocol, drain::Watch, io::detect_io};

/// `SO_ORIGINAL_DST` of an accepted connection, when the kernel redirected it here; None
/// for a connection made to the proxy's own address.
pub fn original_dst(tcp: &TcpStream) -> Option<SocketAddr> {
    use std::os::fd::AsRawFd;
    const SO_ORIGINAL_DST: libc::c_int = 80;
    // SAFETY: sockaddr_in is plain old data; all zeroes is a valid value.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: getsockopt writing at most `len` bytes into `sa`, on a socket we own.
    let rc = unsafe {
        libc::getsockopt(
            tcp.as_raw_fd(),
            libc::SOL_IP,
            SO_ORIGINAL_DST,
            (&mut sa as *mut libc::sockaddr_in).cast(),
            &mut len,
        )
    };
    if rc != 0 || sa.sin_family != libc::AF_INET as libc::sa_family_t {
        return None;
    }
    let orig = SocketAddr::from((
        std::net::Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
        u16::from_be(sa.sin_port),
    ));
    (Some(orig) != tcp.local_addr().ok()).then_some(orig)
}

impl Outbound {
    pub(super) async fn intercepted(
        self: Arc<Self>,
        tcp: TcpStream,
        orig: SocketAddr,
        drain: Watch,
    ) -> std::io::Result<()> {
        let tcp = crate::io::Counted::new(tcp, &self.metrics, crate::metrics::Direction::Outbound);
        let authority = orig.to_string();
        let eps = match self.resolver.lookup(&authority).await {
            Lookup::Found(eps) => eps,
            // Outside the mesh: as the app sent it.
            Lookup::Unknown => return self.passthrough(tcp, orig).await,
            // No answer (the agent away, or this proxy following all it may): closed, not
            // passed through, since it may be a meshed pod's address that would then get
            // plaintext (what discovery's 503 does for a request).
            Lookup::Unavailable => {
                self.metrics.refuse("discovery_unavailable");
                tracing::info!(%orig, "intercepted connection closed: discovery did not answer");
                return Ok(());
            }
        };
        // An empty set says nothing of the port (a Service scaled to zero): detection decides,
        // and HTTP waits for endpoints as a request does.
        let opaque = meshwork_destination_api::DEFAULT_OPAQUE_PORTS.contains(&orig.port())
            || (!eps.is_empty() && eps.iter().all(|e| e.opaque));
        if opaque {
            return self.opaque(tcp, &authority).await;
        }
        let (detected, io) = detect_io(tcp, self.cfg.detect_timeout).await?;
        match detected.protocol() {
            p @ (Protocol::Http1 | Protocol::Http2) => {
                self.serve_http(p, io, Some(authority), drain).await
            }
            _ => self.opaque(io, &authority).await,
        }
    }

    /// Opaque bytes to one endpoint of `authority`.
    /// (An endpoint that cannot be reached is passed over, and with none the connection
    /// waits for one, as a request does: `far_for`.)
    async fn opaque<I>(&self, mut io: I, authority: &str) -> std::io::Result<()>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
    {
        let mut peer = String::new();
        let Ok(mut far) = self.far_for(authority, &mut peer).await else {
            tracing::info!(%authority, "no endpoint reachable for an intercepted connection");
            return Ok(());
        };
        self.copy(&mut io, &mut far).await;
        Ok(())
    }

    /// As sent: a plain connection to the original destination.
    async fn passthrough<I>(&self, mut tcp: I, orig: SocketAddr) -> std::io::Result<()>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let far = tokio::time::timeout(self.cfg.connect_timeout, TcpStream::connect(orig)).await;
        let mut far = match far {
            Ok(Ok(f)) => f,
            Ok(Err(e)) => {
                tracing::debug!(%orig, error = %e, "passthrough connect failed");
                return Ok(());
            }
            Err(_) => {
                tracing::debug!(%orig, "passthrough connect timed out");
                return Ok(());
            }
        };
        let _ = far.set_nodelay(true);
        crate::io::keepalive(&far);
        self.copy(&mut tcp, &mut far).await;
        Ok(())
    }

    async fn copy<A, B>(&self, a: &mut A, b: &mut B)
    where
        A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + ?Sized,
        B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + ?Sized,
    {
        // The bytes count at the accepted socket (`Counted`).
        if let Err(e) = tokio::io::copy_bidirectional(a, b).await {
            tracing::debug!(error = %e, "intercepted connection ended");
        }
    }
}
