//! A packet capture on one link of a lab namespace (AF_PACKET, what tcpdump uses underneath),
//! for tests that assert what is on the wire: TCP segments over IPv4 with their payloads, and
//! a TLS reader for the ServerHello's negotiated version.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
};

use crate::Lab;

/// One TCP segment with data.
#[derive(Clone, Debug)]
pub struct Segment {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub payload: Vec<u8>,
}

pub struct Capture {
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<Vec<Segment>>>,
}

impl Lab {
    /// Starts capturing on `dev` in `netns`; `Capture::stop` returns what was seen.
    pub fn capture(&self, netns: &str, dev: &str) -> Capture {
        let dev = std::ffi::CString::new(dev).unwrap_or_default();
        let fd = self
            .open(netns)
            .run(move || -> std::io::Result<OwnedFd> {
                let proto = (libc::ETH_P_ALL as u16).to_be();
                // SAFETY: plain socket(2); the fd is owned right after.
                let raw =
                    unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
                if raw < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // SAFETY: raw is a fresh, valid descriptor no one else owns.
                let fd = unsafe { OwnedFd::from_raw_fd(raw) };
                // SAFETY: dev is a valid C string; if_nametoindex reads it only.
                let index = unsafe { libc::if_nametoindex(dev.as_ptr()) };
                if index == 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // SAFETY: zeroed sockaddr_ll is valid; the fields set are plain integers.
                let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                sll.sll_family = libc::AF_PACKET as u16;
                sll.sll_protocol = proto;
                sll.sll_ifindex = i32::try_from(index).unwrap_or(0);
                // SAFETY: sll outlives the call and its size is passed.
                let rc = unsafe {
                    libc::bind(
                        fd.as_raw_fd(),
                        std::ptr::addr_of!(sll).cast(),
                        std::mem::size_of::<libc::sockaddr_ll>() as u32,
                    )
                };
                if rc != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Reads wake every 100 ms to see whether to stop.
                let tv = libc::timeval {
                    tv_sec: 0,
                    tv_usec: 100_000,
                };
                // SAFETY: tv outlives the call and its size is passed.
                unsafe {
                    libc::setsockopt(
                        fd.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_RCVTIMEO,
                        std::ptr::addr_of!(tv).cast(),
                        std::mem::size_of::<libc::timeval>() as u32,
                    )
                };
                Ok(fd)
            })
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("capture on {netns}: {e}"));
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let reader = std::thread::spawn(move || {
            let mut out = Vec::new();
            let mut buf = vec![0u8; 65_536];
            while !stop2.load(Ordering::Relaxed) {
                // SAFETY: buf is valid for its length for the duration of the call.
                let n =
                    unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                let Ok(n) = usize::try_from(n) else { continue };
                if let Some(s) = parse(&buf[..n]) {
                    out.push(s);
                }
            }
            out
        });
        Capture {
            stop,
            reader: Some(reader),
        }
    }
}

impl Capture {
    pub fn stop(mut self) -> Vec<Segment> {
        self.stop.store(true, Ordering::Relaxed);
        self.reader
            .take()
            .and_then(|r| r.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Ethernet → IPv4 → TCP with a payload.
fn parse(frame: &[u8]) -> Option<Segment> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    if ethertype != 0x0800 {
        return None;
    }
    let ip = frame.get(14..)?;
    let ihl = usize::from(ip.first()? & 0x0f) * 4;
    if *ip.get(9)? != 6 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
    let src = Ipv4Addr::new(*ip.get(12)?, ip[13], ip[14], ip[15]);
    let dst = Ipv4Addr::new(*ip.get(16)?, ip[17], ip[18], ip[19]);
    let tcp = ip.get(ihl..total.min(ip.len()))?;
    let sport = u16::from_be_bytes([*tcp.first()?, *tcp.get(1)?]);
    let dport = u16::from_be_bytes([*tcp.get(2)?, *tcp.get(3)?]);
    let off = usize::from(tcp.get(12)? >> 4) * 4;
    let payload = tcp.get(off..)?;
    if payload.is_empty() {
        return None;
    }
    Some(Segment {
        src: SocketAddr::V4(SocketAddrV4::new(src, sport)),
        dst: SocketAddr::V4(SocketAddrV4::new(dst, dport)),
        payload: payload.to_vec(),
    })
}

/// The version a TLS ServerHello (at the start of `stream`, the server's bytes in order)
/// negotiated: its supported_versions extension (TLS 1.3: 0x0304), else its legacy version.
pub fn server_hello_version(stream: &[u8]) -> Option<u16> {
    // Record: type 22 (handshake), version, length; then handshake type 2 (ServerHello).
    if *stream.first()? != 22 || *stream.get(5)? != 2 {
        return None;
    }
    let body = stream.get(9..)?;
    let legacy = u16::from_be_bytes([*body.first()?, *body.get(1)?]);
    let mut i = 2 + 32;
    let sid = usize::from(*body.get(i)?);
    i += 1 + sid + 2 + 1;
    let ext_len = usize::from(u16::from_be_bytes([*body.get(i)?, *body.get(i + 1)?]));
    i += 2;
    let end = (i + ext_len).min(body.len());
    while i + 4 <= end {
        let ty = u16::from_be_bytes([body[i], body[i + 1]]);
        let len = usize::from(u16::from_be_bytes([body[i + 2], body[i + 3]]));
        if ty == 0x002b && len == 2 {
            return Some(u16::from_be_bytes([*body.get(i + 4)?, *body.get(i + 5)?]));
        }
        i += 4 + len;
    }
    Some(legacy)
}
