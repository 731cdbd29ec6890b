//! A client for lab tests that must run as a separate process (inside a node's cgroup, where
//! the socket load balancer's hooks apply). Prints one line per attempt.
//!
//!   mwlab-client tcp ADDR COUNT        "<reply> <getpeername>" or "ERR <error>"
//!   mwlab-client tcp-loop ADDR MILLIS [--progress]
//!                                      connects back to back for MILLIS, prints "ok=N fail=M";
//!                                      with --progress, "first ok" once the first one worked
//!   mwlab-client udp ADDR COUNT        sendto/recvfrom on one unconnected socket: "<reply> <from>"
//!   mwlab-client udp-connected ADDR COUNT
//!   mwlab-client tcp-lat ADDR COUNT    connect() latency only: "p50_us p90_us p99_us mean_us"
//!   mwlab-client tcp-req ADDR COUNT    per request a new connection, 1 KiB echoed, closed
//!   mwlab-client tcp-rtt ADDR COUNT    1 KiB echoed COUNT times on one connection (both:
//!                                      "p50_us p90_us p99_us mean_us")
//!   mwlab-client tcp-hold ADDR MILLIS  one connection kept open, a byte echoed every 20 ms:
//!                                      "<identity> ok=N fail=M"

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
    // EOF tells the server we are done; it answers with its identity and closes.
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut reply = String::new();
    s.read_to_string(&mut reply).map_err(|e| e.to_string())?;
    Ok(format!("{} {peer}", reply.trim()))
}

/// Closes with RST (SO_LINGER 0): thousands of back-to-back connects would otherwise leave
/// TIME_WAIT sockets that exhaust ephemeral ports and slow connect() itself.
fn abort_close(s: TcpStream) {
    use std::os::fd::AsRawFd;
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a live socket with a correctly sized struct.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if !(4..=5).contains(&args.len()) {
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
        "tcp-lat" => {
            let mut lat: Vec<f64> = Vec::with_capacity(n as usize);
            let mut fails = 0;
            let mut first_err = String::new();
            for _ in 0..n {
                let t = Instant::now();
                match TcpStream::connect_timeout(&addr, TIMEOUT) {
                    Ok(s) => {
                        lat.push(t.elapsed().as_secs_f64() * 1e6);
                        abort_close(s);
                    }
                    Err(e) => {
                        fails += 1;
                        if first_err.is_empty() {
                            first_err = e.to_string();
                        }
                    }
                }
            }
            if lat.is_empty() || fails > 0 {
                println!("ERR {fails} failed connects, first: {first_err}");
                return;
            }
            lat.sort_by(f64::total_cmp);
            let p = |q: f64| lat[((lat.len() - 1) as f64 * q).round() as usize];
            let mean = lat.iter().sum::<f64>() / lat.len() as f64;
            println!("{:.1} {:.1} {:.1} {:.1}", p(0.5), p(0.9), p(0.99), mean);
        }
        // One connection per request (`tcp-req`), or one for all (`tcp-rtt`): 1 KiB written,
        // 1 KiB read back (an echo server), the time of each.
        "tcp-req" | "tcp-rtt" => {
            let per_conn = args[1] == "tcp-req";
            let buf = [7u8; 1024];
            let mut back = [0u8; 1024];
            let mut lat: Vec<f64> = Vec::with_capacity(n as usize);
            let connect = || -> std::io::Result<TcpStream> {
                let s = TcpStream::connect_timeout(&addr, TIMEOUT)?;
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(TIMEOUT))?;
                Ok(s)
            };
            let mut kept = None;
            for _ in 0..n {
                let t = Instant::now();
                let res = (|| -> std::io::Result<()> {
                    let s = match (&mut kept, per_conn) {
                        (Some(s), false) => s,
                        _ => kept.insert(connect()?),
                    };
                    s.write_all(&buf)?;
                    s.read_exact(&mut back)?;
                    Ok(())
                })();
                if let Err(e) = res {
                    println!("ERR {e}");
                    return;
                }
                lat.push(t.elapsed().as_secs_f64() * 1e6);
                if per_conn {
                    if let Some(s) = kept.take() {
                        abort_close(s);
                    }
                }
            }
            lat.sort_by(f64::total_cmp);
            let p = |q: f64| lat[((lat.len() - 1) as f64 * q).round() as usize];
            let mean = lat.iter().sum::<f64>() / lat.len() as f64;
            println!("{:.1} {:.1} {:.1} {:.1}", p(0.5), p(0.9), p(0.99), mean);
        }
        "tcp-hold" => {
            use std::io::{BufRead, BufReader};
            let s = match TcpStream::connect_timeout(&addr, TIMEOUT) {
                Ok(s) => s,
                Err(e) => {
                    println!("ERR {e}");
                    return;
                }
            };
            let _ = s.set_read_timeout(Some(TIMEOUT));
            let mut w = match s.try_clone() {
                Ok(w) => w,
                Err(e) => {
                    println!("ERR {e}");
                    return;
                }
            };
            let _ = w.write_all(b"hold\n");
            let mut r = BufReader::new(s);
            let mut identity = String::new();
            let _ = r.read_line(&mut identity);
            let (mut ok, mut fail) = (0u64, 0u64);
            let end = Instant::now() + Duration::from_millis(n);
            let mut b = [0u8; 1];
            while Instant::now() < end {
                let echoed =
                    w.write_all(b"x").is_ok() && r.read_exact(&mut b).is_ok() && b == *b"x";
                if echoed {
                    ok += 1
                } else {
                    fail += 1
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            println!("{} ok={ok} fail={fail}", identity.trim());
        }
        "tcp-loop" => {
            let (mut ok, mut fail) = (0u64, 0u64);
            let progress = args.get(4).map(String::as_str) == Some("--progress");
            let end = Instant::now() + Duration::from_millis(n);
            while Instant::now() < end {
                match tcp_once(addr) {
                    Ok(_) => {
                        ok += 1;
                        if progress && ok == 1 {
                            // A signal for the test to act on while the loop runs.
                            println!("first ok");
                            let _ = std::io::stdout().flush();
                        }
                    }
                    Err(e) => {
                        fail += 1;
                        eprintln!("fail: {e}");
                    }
                }
            }
            println!("ok={ok} fail={fail}");
        }
        mode @ ("udp" | "udp-connected") => {
            let any = if addr.is_ipv6() {
                "[::]:0"
            } else {
                "0.0.0.0:0"
            };
            let Ok(sock) = UdpSocket::bind(any) else {
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
