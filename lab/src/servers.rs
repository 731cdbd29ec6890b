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
                    Ok((mut c, _)) => {
                        c.set_nonblocking(false).ok();
                        c.set_read_timeout(Some(Duration::from_millis(200))).ok();
                        let mut b = [0u8; 16];
                        let _ = c.read(&mut b);
                        let _ = c.write_all(format!("{id_tcp}\n").as_bytes());
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
