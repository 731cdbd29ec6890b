//! kubectl's streaming commands against the bundled API server and node runtime, in the lab
//! (the harness of `orchestrator.rs`: the API server on node 1, a node runtime per node,
//! kubectl run inside node 1's network namespace). A busybox pod runs an echo server on 9000
//! (`nc -ll -e cat`); through kubectl 1.33:
//! - `exec` separates stdout and stderr and returns the command's exit code;
//! - `exec -it` under a pseudo-terminal gets a /dev/pts terminal whose size follows kubectl's
//!   (initially and after a resize), and its exit code;
//! - `attach` streams a running container's output;
//! - `cp` carries a 10 MB random file into the pod and back, byte for byte (tar over exec);
//! - `port-forward` carries 10 MB each way on several connections at once;
//! - a missing container, a missing pod and a missing command get kube-apiserver's errors.
#![cfg(target_os = "linux")]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a panic with its location is the failure report"
)]

#[path = "support/orch.rs"]
mod orch;

use std::{
    io::{BufRead, BufReader, Read, Write},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    os::unix::process::CommandExt,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use orch::{Orch, KUBECTL};
use serde_json::json;

const MB10: usize = 10 * 1024 * 1024;

fn random(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut v)
        .unwrap();
    v
}

fn sha256(path: &std::path::Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// kubectl inside node 1's network namespace.
fn kubectl_cmd(o: &Orch, args: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &o.nodes[0].netns, KUBECTL, "--kubeconfig"])
        .arg(&o.kubeconfig)
        .args(args);
    c
}

#[test]
fn exec_cp_port_forward_through_kubectl() {
    let o = Orch::start("kstream");
    o.apply(&json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "box"},
        "spec": {"containers": [{
            "name": "main", "image": "busybox",
            "command": ["sh", "-c", "nc -ll -p 9000 -e cat & exec sleep 3600"],
        }]},
    }));
    o.apply(&json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "talker"},
        "spec": {"containers": [{
            "name": "main", "image": "busybox",
            "command": ["sh", "-c", "i=0; while true; do echo tick-$i; i=$((i+1)); sleep 0.2; done"],
        }]},
    }));
    o.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "pod/box",
        "pod/talker",
        "--timeout=60s",
    ]);

    // exec: stdout and stderr apart, the exit code through.
    let out = o.kubectl_out(&[
        "exec",
        "box",
        "--",
        "sh",
        "-c",
        "echo out; echo err >&2; exit 3",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("err\n"), "stderr: {stderr:?}");
    assert_eq!(out.status.code(), Some(3), "stderr: {stderr}");
    // stdin goes through and ends.
    let mut child = kubectl_cmd(
        &o,
        &[
            "exec",
            "-i",
            "box",
            "--",
            "sh",
            "-c",
            "wc -c; echo $HOSTNAME",
        ],
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    child.stdin.take().unwrap().write_all(b"12345").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "5\nbox\n");

    // Bad input: a clear error each, nothing crashes.
    let out = o.kubectl_out(&["exec", "box", "-c", "nope", "--", "true"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("container nope is not valid for pod box"),
        "{stderr}"
    );
    let out = o.kubectl_out(&["exec", "nopod", "--", "true"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("pods \"nopod\" not found"), "{stderr}");
    let out = o.kubectl_out(&["exec", "box", "--", "/no/such/thing"]);
    assert!(!out.status.success());
    assert_ne!(out.status.code(), Some(0));
    // exec over SPDY (kubectl's older transport) is not served: a clear error.
    let out = kubectl_cmd(&o, &["exec", "box", "--", "true"])
        .env("KUBECTL_REMOTE_COMMAND_WEBSOCKETS", "false")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("exec needs a WebSocket upgrade"),
        "{stderr}"
    );
    // Not an upgrade, no command: Status errors from the API server.
    let out = o.kubectl_out(&[
        "get",
        "--raw",
        "/api/v1/namespaces/default/pods/box/exec?command=true&stdout=true",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Upgrade request required"), "{stderr}");
    let out = o.kubectl_out(&[
        "get",
        "--raw",
        "/api/v1/namespaces/default/pods/box/exec?stdout=true",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("you must specify at least 1 command"),
        "{stderr}"
    );

    // The node runtime takes exec only from the API server (and its own node): node 2 asking
    // node 1's directly is refused.
    let url = format!(
        "http://{}:10250/exec/default/talker/main?command=id&stdout=true",
        o.nodes[0].underlay_ip
    );
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &o.nodes[1].netns,
            "busybox",
            "wget",
            "-qO-",
            &url,
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("403"), "{stderr}");

    // attach: the container's output as it comes.
    let mut at = kubectl_cmd(&o, &["attach", "talker"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(at.stdout.take().unwrap()).lines();
    let first = lines.next().expect("kubectl attach ended").unwrap();
    assert!(first.starts_with("tick-"), "{first}");
    let next = lines.next().expect("kubectl attach ended").unwrap();
    assert!(next.starts_with("tick-") && next != first, "{next}");
    // SAFETY: signalling our own child.
    unsafe { libc::kill(at.id() as i32, libc::SIGTERM) };
    let _ = at.wait();

    tty(&o);
    cp(&o);
    port_forward(&o, true);
    // kubectl's SPDY path (what it falls back to when a server refuses the WebSocket).
    port_forward(&o, false);

    // Still serving after all that.
    assert_eq!(o.kubectl(&["exec", "box", "--", "echo", "ok"]), "ok");
}

/// `kubectl exec -it` with kubectl on a pseudo-terminal of ours.
fn tty(o: &Orch) {
    let (mut m, mut s) = (-1, -1);
    let ws = libc::winsize {
        ws_row: 40,
        ws_col: 100,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: out-pointers to ints, a valid winsize.
    assert_eq!(
        unsafe { libc::openpty(&mut m, &mut s, std::ptr::null_mut(), std::ptr::null(), &ws) },
        0
    );
    // SAFETY: fresh fds from openpty.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(m), OwnedFd::from_raw_fd(s)) };
    let mut cmd = kubectl_cmd(o, &["exec", "-it", "box", "--", "sh"]);
    cmd.stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave.try_clone().unwrap()));
    // SAFETY: async-signal-safe calls only.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            libc::ioctl(0, libc::TIOCSCTTY, 0);
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    drop(cmd);
    drop(slave);
    let seen = Arc::new(Mutex::new(String::new()));
    let mut reader = std::fs::File::from(master.try_clone().unwrap());
    {
        let seen = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
    }
    let mut writer = std::fs::File::from(master.try_clone().unwrap());
    let wait_for = |what: &str| {
        let t = Instant::now();
        while !seen.lock().unwrap().contains(what) {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "no {what:?} on the terminal: {:?}",
                seen.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    writer
        .write_all(b"tty; stty size; echo mark-$((6*7))\n")
        .unwrap();
    wait_for("mark-42");
    let text = seen.lock().unwrap().clone();
    assert!(text.contains("/dev/pts/"), "{text:?}");
    assert!(text.contains("40 100"), "initial size: {text:?}");
    // A resize of kubectl's terminal reaches the pod's.
    let ws = libc::winsize {
        ws_row: 50,
        ws_col: 120,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ on our pty master.
    unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    let t = Instant::now();
    loop {
        writer
            .write_all(b"echo size-$(stty size | tr ' ' x)\n")
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        if seen.lock().unwrap().contains("size-50x120") {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "resize not seen: {:?}",
            seen.lock().unwrap()
        );
    }
    writer.write_all(b"exit 7\n").unwrap();
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "kubectl exec -it did not end"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(7), "{:?}", seen.lock().unwrap());
}

/// `kubectl cp` both ways with a 10 MB random file.
fn cp(o: &Orch) {
    let dir = o.lab.dir();
    let src = dir.join("big.bin");
    std::fs::write(&src, random(MB10)).unwrap();
    let want = sha256(&src);
    let t = Instant::now();
    o.kubectl(&["cp", src.to_str().unwrap(), "box:/tmp/big.bin"]);
    let inside = o.kubectl(&["exec", "box", "--", "sha256sum", "/tmp/big.bin"]);
    assert!(inside.starts_with(&want), "{inside} vs {want}");
    let back = dir.join("back.bin");
    o.kubectl(&["cp", "box:/tmp/big.bin", back.to_str().unwrap()]);
    assert_eq!(sha256(&back), want);
    eprintln!("kubectl cp 10 MB both ways: {:?}", t.elapsed());
}

/// `kubectl port-forward` to the echo server: several connections at once, 10 MB each way;
/// over kubectl's WebSocket tunnel, or (`websockets` false) SPDY after `Upgrade: SPDY/3.1`.
fn port_forward(o: &Orch, websockets: bool) {
    let mut pf = kubectl_cmd(
        o,
        &[
            "port-forward",
            "-v=6",
            "pod/box",
            "19000:9000",
            "19001:9001",
        ],
    )
    .env(
        "KUBECTL_PORT_FORWARD_WEBSOCKETS",
        if websockets { "true" } else { "false" },
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(pf.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let l = lines.next().expect("kubectl port-forward ended").unwrap();
        if l.starts_with("Forwarding from 127.0.0.1:") {
            seen.push(l);
        }
    }
    let netns = format!("/run/netns/{}", o.nodes[0].netns);
    let t = Instant::now();
    // One thread in node 1's namespace; the connection threads it starts are there too.
    let results = std::thread::spawn(move || {
        let f = std::fs::File::open(&netns).unwrap();
        // SAFETY: setns of this thread into a namespace fd we hold.
        assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        let conns: Vec<_> = (0..3)
            .map(|_| {
                std::thread::spawn(|| {
                    let data = random(MB10);
                    let s = std::net::TcpStream::connect("127.0.0.1:19000").unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                    let mut w = s.try_clone().unwrap();
                    let sent = data.clone();
                    let writer = std::thread::spawn(move || {
                        w.write_all(&sent).unwrap();
                        w.shutdown(std::net::Shutdown::Write).unwrap();
                    });
                    let mut got = Vec::with_capacity(MB10);
                    (&s).read_to_end(&mut got).unwrap();
                    writer.join().unwrap();
                    got == data
                })
            })
            .collect();
        conns
            .into_iter()
            .map(|c| c.join().unwrap())
            .collect::<Vec<bool>>()
    })
    .join()
    .unwrap();
    assert_eq!(results, vec![true; 3], "echoed bytes differ");
    eprintln!(
        "port-forward 3 × 10 MB each way (websockets: {websockets}): {:?}",
        t.elapsed()
    );
    assert!(
        pf.try_wait().unwrap().is_none(),
        "kubectl port-forward ended"
    );
    // Nothing listens on 9001 in the pod: the connection ends without data, and the node's
    // error reaches kubectl (which, since 1.29 or so, then stops, as with a kubelet).
    let netns = format!("/run/netns/{}", o.nodes[0].netns);
    std::thread::spawn(move || {
        let f = std::fs::File::open(&netns).unwrap();
        // SAFETY: setns of this thread into a namespace fd we hold.
        assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        let mut dead = std::net::TcpStream::connect("127.0.0.1:19001").unwrap();
        dead.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut got = Vec::new();
        let _ = dead.read_to_end(&mut got);
        assert!(got.is_empty());
    })
    .join()
    .unwrap();
    let mut err = String::new();
    let mut stderr = pf.stderr.take().unwrap();
    let t = Instant::now();
    // SAFETY: signalling our own child, in case it keeps running.
    let killer = std::thread::spawn({
        let pid = pf.id() as i32;
        move || {
            std::thread::sleep(Duration::from_secs(20));
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    });
    let _ = stderr.read_to_string(&mut err);
    let _ = pf.wait();
    drop(killer);
    // The transport kubectl used: GET + WebSocket, or POST + SPDY.
    let verb = if websockets { "GET" } else { "POST" };
    assert!(
        err.lines()
            .any(|l| l.contains(&format!("verb=\"{verb}\"")) && l.contains("/portforward")),
        "kubectl did not {verb} portforward: {err}"
    );
    assert!(
        err.contains("error forwarding port 9001"),
        "kubectl port-forward stderr ({:?}): {err}",
        t.elapsed()
    );
}
