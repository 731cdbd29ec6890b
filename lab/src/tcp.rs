//! Real sockets inside lab namespaces, created on a thread that joined the namespace (sockets
//! stay in the namespace they were created in, so the test thread never moves).

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::Lab;

/// Bounded so a black-holed path (wrong MTU, missing route) fails the test instead of hanging.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A deterministic payload (xorshift), so a corrupted or reordered byte is caught.
pub fn payload(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[derive(Debug)]
pub struct Transfer {
    pub bytes: usize,
    pub intact: bool,
    pub elapsed: Duration,
    /// What the server saw as the peer address.
    pub peer: SocketAddr,
}

impl Transfer {
    pub fn mbit_per_s(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.elapsed.as_secs_f64() / 1e6
    }
}

impl Lab {
    pub fn tcp_listen(&self, netns: &str, addr: SocketAddr) -> TcpListener {
        self.open(netns)
            .run(|| TcpListener::bind(addr))
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("binding {addr} in {netns}: {e}"))
    }

    pub fn tcp_connect(&self, netns: &str, addr: SocketAddr) -> std::io::Result<TcpStream> {
        self.open(netns)
            .run(|| TcpStream::connect_timeout(&addr, IO_TIMEOUT))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Sends `len` bytes from namespace `from` to a server bound at `to_addr` in `to`, and checks
    /// every byte arrived in order.
    pub fn transfer(&self, from: &str, to: &str, to_addr: SocketAddr, len: usize) -> Transfer {
        let listener = self.tcp_listen(to, to_addr);
        let server: JoinHandle<std::io::Result<(Vec<u8>, SocketAddr)>> =
            std::thread::spawn(move || {
                let (mut s, peer) = listener.accept()?;
                s.set_read_timeout(Some(IO_TIMEOUT))?;
                let mut buf = Vec::with_capacity(len);
                s.read_to_end(&mut buf)?;
                s.write_all(b"ok")?;
                Ok((buf, peer))
            });
        let data = payload(len, len as u64);
        let start = Instant::now();
        let mut c = self
            .tcp_connect(from, to_addr)
            .unwrap_or_else(|e| panic!("connecting {from} → {to_addr}: {e}"));
        c.set_write_timeout(Some(IO_TIMEOUT)).ok();
        c.set_read_timeout(Some(IO_TIMEOUT)).ok();
        c.write_all(&data)
            .unwrap_or_else(|e| panic!("sending to {to_addr}: {e}"));
        c.shutdown(std::net::Shutdown::Write).ok();
        let mut ack = Vec::new();
        c.read_to_end(&mut ack).ok();
        let elapsed = start.elapsed();
        let (got, peer) = server
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
            .unwrap_or_else(|e| panic!("server in {to}: {e}"));
        Transfer {
            bytes: got.len(),
            intact: got == data && ack == b"ok",
            elapsed,
            peer,
        }
    }
}
