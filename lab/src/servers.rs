//! Backend servers for load-balancing tests: each answers with its identity, so a client can
//! tell which backend it reached. They run on threads in the test process, with sockets bound
//! inside a lab namespace, and stop when dropped.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::Lab;

pub struct IdentityServer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Drop for IdentityServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Reads the client's first line, answers with the identity, then echoes until EOF.
fn serve_tcp(mut c: std::net::TcpStream, identity: &str, stop: &AtomicBool) {
    c.set_nonblocking(false).ok();
    c.set_read_timeout(Some(Duration::from_millis(100))).ok();
    let mut first = Vec::new();
    let mut b = [0u8; 64];
    // Wait for the first line (or EOF) before answering.
    while !first.contains(&b'\n') && !stop.load(Ordering::Relaxed) {
        match c.read(&mut b) {
            Ok(0) => break,
            Ok(n) => first.extend_from_slice(&b[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return,
        }
    }
    if c.write_all(format!("{identity}\n").as_bytes()).is_err() {
        return;
    }
    while !stop.load(Ordering::Relaxed) {
        match c.read(&mut b) {
            Ok(0) => return,
            Ok(n) => {
                if c.write_all(&b[..n]).is_err() {
                    return;
                }
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return,
        }
    }
}

impl Lab {
    /// Serves `identity` on TCP and UDP at `addr` inside `netns`.
    pub fn identity_server(&self, netns: &str, addr: SocketAddr, identity: &str) -> IdentityServer {
        let ns = self.open(netns);
        let (tcp, udp) = ns
            .run(|| (TcpListener::bind(addr), UdpSocket::bind(addr)))
            .unwrap_or_else(|e| panic!("{e}"));
        let tcp = tcp.unwrap_or_else(|e| panic!("binding tcp {addr} in {netns}: {e}"));
        let udp = udp.unwrap_or_else(|e| panic!("binding udp {addr} in {netns}: {e}"));
        // Polled with a short timeout so Drop can stop the threads.
        tcp.set_nonblocking(true).ok();
        udp.set_read_timeout(Some(Duration::from_millis(20))).ok();
        let stop = Arc::new(AtomicBool::new(false));
        let id_tcp = identity.to_string();
        let id_udp = identity.to_string();
        let (s1, s2) = (stop.clone(), stop.clone());
        let t1 = std::thread::spawn(move || {
            while !s1.load(Ordering::Relaxed) {
                match tcp.accept() {
                    Ok((c, _)) => {
                        // One thread per connection: held connections must not block others.
                        let id = id_tcp.clone();
                        let stop = s1.clone();
                        std::thread::spawn(move || serve_tcp(c, &id, &stop));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        let t2 = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !s2.load(Ordering::Relaxed) {
                if let Ok((_, from)) = udp.recv_from(&mut buf) {
                    let _ = udp.send_to(id_udp.as_bytes(), from);
                }
            }
        });
        IdentityServer {
            stop,
            threads: vec![t1, t2],
        }
    }
}

/// Accepts and drops connections as fast as the kernel hands them over (for connect()
/// latency benchmarks, where a full accept queue would turn into SYN retransmits).
pub struct SinkServer {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    wake: Box<dyn Fn() + Send>,
}

impl Drop for SinkServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        (self.wake)();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Lab {
    pub fn sink_server(&self, netns: &str, addr: SocketAddr) -> SinkServer {
        let ns = self.open(netns);
        let l = ns
            .run(|| TcpListener::bind(addr))
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("binding {addr} in {netns}: {e}"));
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let _ = l.accept();
            }
        });
        let wake_ns = self.open(netns);
        SinkServer {
            stop,
            thread: Some(thread),
            // Unblocks accept() so the thread sees the stop flag.
            wake: Box::new(move || {
                let _ = wake_ns
                    .run(|| std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)));
            }),
        }
    }
}
