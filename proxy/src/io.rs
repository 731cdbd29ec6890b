//! Reading a connection's prefix for detection and handing the connection on with that prefix
//! replayed first (linkerd2-proxy's `PrefixedIo`): the layers after detection see the stream
//! from its first byte.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

use crate::detect::{detect, Detect, Protocol, MAX_PREFIX};

/// A connection of any kind (plaintext, TLS, a tunnel's stream).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// TCP keep-alive on a connection the proxy holds for someone (accepted, or to an app or an
/// endpoint): a peer that vanished without a FIN (its node gone) is found within about 40 s
/// (10 s idle, then 3 probes 10 s apart; Linkerd's accept keep-alive is 10 s too), instead of
/// a relay holding its task and both descriptors for good. Best effort: a socket that refuses
/// it is still served.
pub fn keepalive<S: std::os::fd::AsRawFd>(s: &S) {
    let fd = s.as_raw_fd();
    for (level, name, value) in [
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1),
        (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 10),
        (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 10),
        (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 3),
    ] {
        let v: libc::c_int = value;
        // SAFETY: setsockopt reads `v` (an int, its size given) on `s`'s own descriptor,
        // which `s` keeps open for the call.
        unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                std::ptr::from_ref(&v).cast(),
                std::mem::size_of_val(&v) as libc::socklen_t,
            );
        }
    }
}

/// What the HTTP servers and clients run on: one copy of hyper's and h2's connection code
/// for every transport instead of one per type. Those copies were most of the proxy's
/// machine code, and its code pages most of its resident memory (BENCHMARKS.md, "The proxy
/// pair"); the price is a virtual call per read and write.
pub type BoxedIo = Box<dyn Io>;

/// An accepted connection whose bytes count for the proxy's `tcp_read_bytes` and
/// `tcp_write_bytes` (Linkerd's transport metrics): what the client sent and what it was sent,
/// whatever the stack then does with it (HTTP, a tunnel, a relay, TLS) — counted once, at the
/// socket, as each read and write completes, so long-lived connections report as they go.
/// Its drop counts the connection's close (`tcp_close`): the socket may outlive the task that
/// accepted it (an upgrade's splice), so the close is counted where the socket goes.
pub struct Counted<I> {
    io: I,
    read: prometheus_client::metrics::counter::Counter,
    written: prometheus_client::metrics::counter::Counter,
    closed: prometheus_client::metrics::counter::Counter,
}

impl<I> Counted<I> {
    pub fn new(
        io: I,
        metrics: &crate::metrics::Metrics,
        direction: crate::metrics::Direction,
    ) -> Self {
        let d = crate::metrics::DirectionLabels { direction };
        Counted {
            io,
            read: metrics.bytes_read.get_or_create(&d).clone(),
            written: metrics.bytes_written.get_or_create(&d).clone(),
            closed: metrics.tcp_close.get_or_create(&d).clone(),
        }
    }

    pub fn get_ref(&self) -> &I {
        &self.io
    }
}

impl<I> Drop for Counted<I> {
    fn drop(&mut self) {
        self.closed.inc();
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Counted<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            self.read.inc_by((buf.filled().len() - before) as u64);
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Counted<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.written.inc_by(n as u64);
        }
        r
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            self.written.inc_by(n as u64);
        }
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// `io` with `prefix` read from it already; reads return the prefix first.
#[derive(Debug)]
pub struct PrefixedIo<I> {
    prefix: BytesMut,
    io: I,
}

impl<I> PrefixedIo<I> {
    pub fn new(prefix: BytesMut, io: I) -> Self {
        PrefixedIo { prefix, io }
    }
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }
    pub fn get_ref(&self) -> &I {
        &self.io
    }
    pub fn into_parts(self) -> (BytesMut, I) {
        (self.prefix, self.io)
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for PrefixedIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for PrefixedIo<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// How detection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Detected {
    Found(Protocol),
    /// The client sent nothing within the timeout: relayed opaque, as server-speaks-first
    /// protocols on ports not marked opaque would be (Linkerd's fallback).
    TimedOut,
    /// The client sent the start of something (an HTTP request line, a TLS record) and then
    /// nothing more within the timeout. Not relayed: the rest would pass unexamined (an HTTP
    /// request finished late would skip the proxy's header handling).
    Partial,
}

impl Detected {
    pub fn protocol(&self) -> Protocol {
        match self {
            Detected::Found(p) => p.clone(),
            Detected::TimedOut | Detected::Partial => Protocol::Opaque,
        }
    }
}

/// Reads from `io` until its prefix decides the protocol, the client closes its side, or
/// `timeout` passes; returns the verdict and the connection with the prefix to replay. An I/O
/// error while reading is returned as is (the connection is dead).
pub async fn detect_io<I: AsyncRead + Unpin>(
    io: I,
    timeout: Duration,
) -> io::Result<(Detected, PrefixedIo<I>)> {
    detect_more(BytesMut::with_capacity(1024), io, timeout).await
}

/// [`detect_io`] for a connection whose first bytes `buf` were already read from `io`.
pub async fn detect_more<I: AsyncRead + Unpin>(
    mut buf: BytesMut,
    mut io: I,
    timeout: Duration,
) -> io::Result<(Detected, PrefixedIo<I>)> {
    if let Detect::Found(p) = detect(&buf, buf.len() >= MAX_PREFIX) {
        return Ok((Detected::Found(p), PrefixedIo::new(buf, io)));
    }
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if buf.capacity() == buf.len() {
            buf.reserve(buf.len().max(1024));
        }
        let read = tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await;
        let verdict = match read {
            Err(_) if buf.is_empty() => return Ok((Detected::TimedOut, PrefixedIo::new(buf, io))),
            Err(_) => return Ok((Detected::Partial, PrefixedIo::new(buf, io))),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(0)) => detect(&buf, true),
            Ok(Ok(_)) => detect(&buf, buf.len() >= MAX_PREFIX),
        };
        if let Detect::Found(p) = verdict {
            return Ok((Detected::Found(p), PrefixedIo::new(buf, io)));
        }
        if buf.len() >= MAX_PREFIX {
            // detect() never asks for more past MAX_PREFIX; kept as a guard for a future edit.
            return Ok((Detected::Found(Protocol::Opaque), PrefixedIo::new(buf, io)));
        }
    }
}

/// Once `on_upgrade` yields the client's side of a CONNECT or an upgrade, relays bytes both
/// ways between it and `far` until both are done (the bytes count where the client's
/// connection was accepted, [`Counted`]). The tunnel holds `drain` meanwhile, so a drain
/// waits for it (up to its grace).
pub fn splice<F>(
    on_upgrade: hyper::upgrade::OnUpgrade,
    mut far: F,
    direction: crate::metrics::Direction,
    drain: Option<crate::drain::Watch>,
) where
    F: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let _hold = drain;
        let Ok(near) = on_upgrade.await else { return };
        let mut near = hyper_util::rt::TokioIo::new(near);
        if let Err(e) = tokio::io::copy_bidirectional(&mut near, &mut far).await {
            tracing::debug!(?direction, error = %e, "tunnel ended");
        }
    });
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncWriteExt, DuplexStream};

    use super::*;

    async fn pair() -> (DuplexStream, DuplexStream) {
        tokio::io::duplex(64 * 1024)
    }

    #[tokio::test]
    async fn detects_across_reads_and_replays_the_prefix() {
        let (mut client, server) = pair().await;
        let t = tokio::spawn(async move {
            client.write_all(b"GET / HT").await.unwrap();
            tokio::task::yield_now().await;
            client
                .write_all(b"TP/1.1\r\nHost: a\r\n\r\n")
                .await
                .unwrap();
            client
        });
        let (d, mut io) = detect_io(server, Duration::from_secs(5)).await.unwrap();
        assert_eq!(d, Detected::Found(Protocol::Http1));
        let _client = t.await.unwrap();
        let mut got = vec![0u8; 27];
        io.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_client_times_out_to_opaque() {
        let (_client, server) = pair().await;
        let (d, io) = detect_io(server, Duration::from_secs(10)).await.unwrap();
        assert_eq!(d, Detected::TimedOut);
        assert_eq!(d.protocol(), Protocol::Opaque);
        assert!(io.prefix().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_line_that_stops_short_is_partial() {
        let (mut client, server) = pair().await;
        client.write_all(b"GET / HT").await.unwrap();
        let (d, _) = detect_io(server, Duration::from_secs(10)).await.unwrap();
        assert_eq!(d, Detected::Partial);
        drop(client);
    }

    #[tokio::test]
    async fn a_client_that_closes_early_is_opaque_with_its_bytes() {
        let (mut client, server) = pair().await;
        client.write_all(b"GE").await.unwrap();
        client.shutdown().await.unwrap();
        drop(client);
        let (d, io) = detect_io(server, Duration::from_secs(5)).await.unwrap();
        assert_eq!(d, Detected::Found(Protocol::Opaque));
        assert_eq!(io.prefix(), b"GE");
    }
}
