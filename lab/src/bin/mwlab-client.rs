//! A client for lab tests that must run as a separate process (inside a node's cgroup, where
//! the socket load balancer's hooks apply). Prints one line per attempt.
//!
//!   mwlab-client tcp ADDR COUNT        "<reply> <getpeername>" or "ERR <error>"
//!   mwlab-client tcp-loop ADDR MILLIS  connects back to back for MILLIS, prints "ok=N fail=M"
//!   mwlab-client udp ADDR COUNT        sendto/recvfrom on one unconnected socket: "<reply> <from>"
//!   mwlab-client udp-connected ADDR COUNT

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream, UdpSocket},
    time::{Duration, Instant},
};

const TIMEOUT: Duration = Duration::from_secs(3);

fn tcp_once(addr: SocketAddr) -> Result<String, String> {
    let mut s = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(TIMEOUT))
        .map_err(|e| e.to_string())?;
    let peer = s.peer_addr().map_err(|e| e.to_string())?;
    let _ = s.write_all(b"hi\n");
    let mut reply = String::new();
    s.read_to_string(&mut reply).map_err(|e| e.to_string())?;
    Ok(format!("{} {peer}", reply.trim()))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: mwlab-client tcp|tcp-loop|udp|udp-connected ADDR N");
        std::process::exit(64);
    }
    let Ok(addr) = args[2].parse::<SocketAddr>() else {
        eprintln!("bad address {}", args[2]);
        std::process::exit(64);
    };
    let n: u64 = args[3].parse().unwrap_or(1);
    match args[1].as_str() {
        "tcp" => {
            for _ in 0..n {
                match tcp_once(addr) {
                    Ok(line) => println!("{line}"),
                    Err(e) => println!("ERR {e}"),
                }
            }
        }
        "tcp-loop" => {
            let (mut ok, mut fail) = (0u64, 0u64);
            let end = Instant::now() + Duration::from_millis(n);
            while Instant::now() < end {
                match tcp_once(addr) {
                    Ok(_) => ok += 1,
                    Err(e) => {
                        fail += 1;
                        eprintln!("fail: {e}");
                    }
                }
            }
            println!("ok={ok} fail={fail}");
        }
        mode @ ("udp" | "udp-connected") => {
            let Ok(sock) = UdpSocket::bind("0.0.0.0:0") else {
                println!("ERR bind");
                return;
            };
            let _ = sock.set_read_timeout(Some(TIMEOUT));
            if mode == "udp-connected" {
                if let Err(e) = sock.connect(addr) {
                    println!("ERR {e}");
                    return;
                }
            }
            let mut buf = [0u8; 512];
            for _ in 0..n {
                let sent = if mode == "udp" {
                    sock.send_to(b"hi", addr)
                } else {
                    sock.send(b"hi")
                };
                if let Err(e) = sent {
                    println!("ERR {e}");
                    continue;
                }
                match sock.recv_from(&mut buf) {
                    Ok((len, from)) => {
                        println!("{} {from}", String::from_utf8_lossy(&buf[..len]).trim())
                    }
                    Err(e) => println!("ERR {e}"),
                }
            }
        }
        other => {
            eprintln!("unknown mode {other}");
            std::process::exit(64);
        }
    }
}
