//! `kubectl exec` on the node: the kubelet's `/exec/<ns>/<pod>/<container>`, over the WebSocket
//! remotecommand protocol (`v5.channel.k8s.io`, `v4.channel.k8s.io`) that kube-apiserver
//! proxies unchanged.
//!
//! Every binary message is one channel byte and data: 0 stdin, 1 stdout, 2 stderr, 3 error (a
//! metav1.Status once the command ended: Success, or Failure/NonZeroExitCode with the exit
//! code as the ExitCode cause), 4 resize (`{"Width":W,"Height":H}`), and in v5 255 close (the
//! client half-closes the channel in the next byte: stdin EOF).
//!
//! The command runs through the shim's `--enter` mode, the mechanism exec probes use: it joins
//! the running container's cgroup, network, UTS and mount namespaces and root, then execs the
//! command with the environment of the container's main process. With `tty=true` it gets a
//! pseudo-terminal (openpty) as its controlling terminal, and resize messages set its size.

use std::{
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    process::Stdio,
};

use bytes::{BufMut, Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio::{
    io::{unix::AsyncFd, AsyncRead, AsyncReadExt, AsyncWriteExt},
    sync::mpsc,
};
use tokio_tungstenite::{tungstenite::Message, WebSocketStream};

use super::runtime::{start_ticks, Container, Sandbox};

/// The subprotocols served, most preferred first.
pub const PROTOCOLS: &[&str] = &["v5.channel.k8s.io", "v4.channel.k8s.io"];

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
const CLOSE: u8 = 255;

/// What `/exec` was asked (kubectl's query parameters).
#[derive(Clone, Debug, Default)]
pub struct ExecRequest {
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl ExecRequest {
    pub fn from_query(q: &[(String, String)]) -> Self {
        let flag = |k: &str| {
            q.iter()
                .any(|(n, v)| n == k && matches!(v.as_str(), "true" | "1"))
        };
        ExecRequest {
            command: q
                .iter()
                .filter(|(n, _)| n == "command")
                .map(|(_, v)| v.clone())
                .collect(),
            stdin: flag("stdin"),
            stdout: flag("stdout"),
            stderr: flag("stderr"),
            tty: flag("tty"),
        }
    }
}

/// A running container as the node runtime recorded it, and its pod's sandbox.
pub struct Target {
    pub container: Container,
    pub sandbox: Sandbox,
}

/// Finds the current run of a container from its dir (`<pod dir>/containers/<name>`), checking
/// that its process is still the one recorded.
pub fn find(container_dir: &Path) -> Result<Target, String> {
    let read =
        |p: PathBuf| std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()));
    let container: Container = serde_json::from_str(&read(container_dir.join("state.json"))?)
        .map_err(|e| e.to_string())?;
    let pod_dir = container_dir
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| "no pod dir".to_string())?;
    let sandbox: Sandbox =
        serde_json::from_str(&read(pod_dir.join("sandbox.json"))?).map_err(|e| e.to_string())?;
    if start_ticks(container.pid) != Some(container.start_ticks) {
        return Err(format!("container {} is not running", container.name));
    }
    Ok(Target { container, sandbox })
}

/// The environment of the container's main process (the shim's child), as an exec gets it;
/// a plain PATH when it cannot be read.
fn container_env(shim_pid: i32) -> Vec<(String, String)> {
    let child = std::fs::read_to_string(format!("/proc/{shim_pid}/task/{shim_pid}/children"))
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|p| p.parse::<i32>().ok())
        });
    let raw = child
        .and_then(|c| std::fs::read(format!("/proc/{c}/environ")).ok())
        .unwrap_or_default();
    let mut env: Vec<(String, String)> = raw
        .split(|b| *b == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push((
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ));
    }
    env
}

/// The shim command that runs `argv` inside the container.
fn shim_command(shim: &Path, t: &Target, req: &ExecRequest) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(shim);
    cmd.arg("shim")
        .arg("--enter")
        .arg(t.container.pid.to_string())
        .arg("--cgroup")
        .arg(&t.container.cgroup)
        .arg("--")
        .args(&req.command)
        .env_clear()
        .envs(container_env(t.container.pid))
        .kill_on_drop(true);
    if req.tty && !req.command.is_empty() {
        cmd.env("TERM", "xterm");
    }
    cmd
}

/// metav1.Status for the error channel.
pub fn status(code: Option<i32>, failure: Option<&str>) -> Value {
    match (code, failure) {
        (_, Some(msg)) => json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": msg, "reason": "InternalError", "code": 500,
        }),
        (Some(0), None) | (None, None) => {
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"})
        }
        (Some(n), None) => json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: error executing command, exit code {n}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": n.to_string()}]},
        }),
    }
}

use serde_json::Value;

fn frame(ch: u8, data: &[u8]) -> Message {
    let mut b = BytesMut::with_capacity(data.len() + 1);
    b.put_u8(ch);
    b.put_slice(data);
    Message::Binary(b.freeze())
}

/// A pty master, non-blocking, for tokio.
struct Pty(AsyncFd<OwnedFd>);

impl Pty {
    async fn read(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let mut g = self.0.readable().await?;
            // SAFETY: reading into a live buffer from an open fd.
            match g.try_io(|fd| {
                let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            }) {
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(r) => return r,
                Err(_) => continue,
            }
        }
    }
    async fn write_all(&self, mut data: &[u8]) -> std::io::Result<()> {
        while !data.is_empty() {
            let mut g = self.0.writable().await?;
            // SAFETY: writing from a live buffer to an open fd.
            match g.try_io(|fd| {
                let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
                if n < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            }) {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) => return Err(e),
                Err(_) => continue,
            }
        }
        Ok(())
    }
    fn resize(&self, width: u16, height: u16) {
        let ws = libc::winsize {
            ws_row: height,
            ws_col: width,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ with a valid winsize on an open pty fd.
        unsafe { libc::ioctl(self.0.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    }
}

/// openpty: (master, slave).
fn openpty() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let (mut m, mut s) = (-1, -1);
    // SAFETY: out-pointers to two ints; null name, termios and winsize.
    let rc = unsafe {
        libc::openpty(
            &mut m,
            &mut s,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: openpty returned two fresh fds we now own.
    let (m, s) = unsafe { (OwnedFd::from_raw_fd(m), OwnedFd::from_raw_fd(s)) };
    // SAFETY: fcntl on an fd we own.
    unsafe {
        let fl = libc::fcntl(m.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(m.as_raw_fd(), libc::F_SETFL, fl | libc::O_NONBLOCK);
        libc::fcntl(m.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC);
    }
    Ok((m, s))
}

enum Input {
    Stdin(Bytes),
    StdinEof,
    Resize(u16, u16),
}

/// Reads the client's messages: stdin, resize, close.
async fn client_reader<S>(
    mut rx: futures::stream::SplitStream<WebSocketStream<S>>,
    tx: mpsc::Sender<Input>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Some(Ok(msg)) = rx.next().await {
        let data = match msg {
            Message::Binary(b) => b,
            Message::Text(t) => Bytes::copy_from_slice(t.as_bytes()),
            Message::Close(_) => break,
            _ => continue,
        };
        let Some((&ch, rest)) = data.split_first() else {
            continue;
        };
        let input = match ch {
            STDIN if !rest.is_empty() => Input::Stdin(data.slice(1..)),
            RESIZE => {
                #[derive(serde::Deserialize)]
                #[serde(rename_all = "PascalCase")]
                struct Size {
                    width: u16,
                    height: u16,
                }
                match serde_json::from_slice::<Size>(rest) {
                    Ok(s) => Input::Resize(s.width, s.height),
                    Err(_) => continue,
                }
            }
            CLOSE if rest.first() == Some(&STDIN) => Input::StdinEof,
            _ => continue,
        };
        if tx.send(input).await.is_err() {
            return;
        }
    }
    let _ = tx.send(Input::StdinEof).await;
}

async fn pump_out<R: AsyncRead + Unpin>(mut r: R, ch: u8, out: mpsc::Sender<Message>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if out.send(frame(ch, &buf[..n])).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Serves one exec session on an upgraded WebSocket until the command ends.
pub async fn serve<S>(ws: WebSocketStream<S>, shim: PathBuf, target: Target, req: ExecRequest)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, stream) = ws.split();
    let (out_tx, mut out_rx) = mpsc::channel::<Message>(32);
    let writer = tokio::spawn(async move {
        while let Some(m) = out_rx.recv().await {
            let close = matches!(m, Message::Close(_));
            if sink.send(m).await.is_err() {
                return;
            }
            if close {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let (in_tx, mut in_rx) = mpsc::channel::<Input>(32);
    let reader = tokio::spawn(client_reader(stream, in_tx));

    let result = if req.tty {
        run_tty(&shim, &target, &req, &mut in_rx, &out_tx).await
    } else {
        run_pipes(&shim, &target, &req, &mut in_rx, &out_tx).await
    };
    let st = match result {
        Ok(code) => status(Some(code), None),
        Err(e) => status(None, Some(&e)),
    };
    let _ = out_tx
        .send(frame(ERROR, &serde_json::to_vec(&st).unwrap_or_default()))
        .await;
    let _ = out_tx.send(Message::Close(Some(normal_close()))).await;
    drop(out_tx);
    let _ = writer.await;
    reader.abort();
}

/// `kubectl attach` (the kubelet's `/attach`): the container's output as it is written, until
/// the run ends or the client goes. Containers run with stdin closed and without a terminal
/// (stdout and stderr share one log), so everything comes on stdout and input is dropped.
pub async fn serve_attach<S>(ws: WebSocketStream<S>, target: Target)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use tokio::io::AsyncSeekExt;
    let (mut sink, stream) = ws.split();
    let (in_tx, mut in_rx) = mpsc::channel::<Input>(32);
    let reader = tokio::spawn(client_reader(stream, in_tx));
    let c = target.container;
    let alive = || start_ticks(c.pid) == Some(c.start_ticks);
    let follow = async {
        let mut f = tokio::fs::File::open(&c.log).await.ok()?;
        f.seek(std::io::SeekFrom::End(0)).await.ok()?;
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            match f.read(&mut buf).await {
                Ok(0) if !alive() => return Some(()),
                Ok(0) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
                Ok(n) => sink.send(frame(STDOUT, &buf[..n])).await.ok()?,
                Err(_) => return None,
            }
        }
    };
    let client_gone = async {
        while let Some(i) = in_rx.recv().await {
            // Input has nowhere to go; the end of the client's stdin is not the end.
            let _ = i;
        }
    };
    let ended = tokio::select! {
        r = follow => r.is_some(),
        _ = client_gone => false,
    };
    if ended {
        let st = serde_json::to_vec(&status(Some(0), None)).unwrap_or_default();
        let _ = sink.send(frame(ERROR, &st)).await;
        let _ = sink.send(Message::Close(Some(normal_close()))).await;
    }
    let _ = sink.close().await;
    reader.abort();
}

async fn run_pipes(
    shim: &Path,
    t: &Target,
    req: &ExecRequest,
    input: &mut mpsc::Receiver<Input>,
    out: &mpsc::Sender<Message>,
) -> Result<i32, String> {
    let mut cmd = shim_command(shim, t, req);
    cmd.stdin(if req.stdin {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(if req.stdout {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stderr(if req.stderr {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd.spawn().map_err(|e| format!("starting exec: {e}"))?;
    let mut stdin = child.stdin.take();
    let outs = {
        let o = child
            .stdout
            .take()
            .map(|r| tokio::spawn(pump_out(r, STDOUT, out.clone())));
        let e = child
            .stderr
            .take()
            .map(|r| tokio::spawn(pump_out(r, STDERR, out.clone())));
        [o, e]
    };
    let status = loop {
        tokio::select! {
            s = child.wait() => break s.map_err(|e| format!("waiting for exec: {e}"))?,
            i = input.recv(), if stdin.is_some() => match i {
                Some(Input::Stdin(b)) => {
                    if let Some(w) = stdin.as_mut() {
                        if w.write_all(&b).await.is_err() {
                            stdin = None;
                        }
                    }
                }
                Some(Input::StdinEof) | None => stdin = None,
                Some(Input::Resize(..)) => {}
            },
        }
    };
    drop(stdin);
    for h in outs.into_iter().flatten() {
        let _ = h.await;
    }
    Ok(exit_code(status))
}

fn exit_code(s: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))
}

async fn run_tty(
    shim: &Path,
    t: &Target,
    req: &ExecRequest,
    input: &mut mpsc::Receiver<Input>,
    out: &mpsc::Sender<Message>,
) -> Result<i32, String> {
    let (master, slave) = openpty().map_err(|e| format!("openpty: {e}"))?;
    let mut cmd = shim_command(shim, t, req);
    let dup = |fd: &OwnedFd| fd.try_clone().map_err(|e| format!("pty: {e}"));
    cmd.stdin(Stdio::from(dup(&slave)?))
        .stdout(Stdio::from(dup(&slave)?))
        .stderr(Stdio::from(dup(&slave)?));
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| format!("starting exec: {e}"))?;
    drop(cmd);
    drop(slave);
    // SAFETY: `master` is an open pty fd this AsyncFd owns from now on.
    let afd = unsafe { AsyncFd::register(master) }.map_err(|e| format!("pty: {e:?}"))?;
    let pty = std::sync::Arc::new(Pty(afd));
    let reader = {
        let (pty, out) = (pty.clone(), out.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match pty.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if out.send(frame(STDOUT, &buf[..n])).await.is_err() {
                            return;
                        }
                    }
                }
            }
        })
    };
    let mut open = true;
    let status = loop {
        tokio::select! {
            s = child.wait() => break s.map_err(|e| format!("waiting for exec: {e}"))?,
            i = input.recv(), if open => match i {
                Some(Input::Stdin(b)) if req.stdin => { let _ = pty.write_all(&b).await; }
                Some(Input::Stdin(_)) => {}
                Some(Input::Resize(w, h)) => pty.resize(w, h),
                Some(Input::StdinEof) | None => {
                    // EOF on a terminal: ^D.
                    if req.stdin { let _ = pty.write_all(&[4]).await; }
                    open = false;
                }
            },
        }
    };
    // Output still buffered in the pty (the slave is closed once the process is gone).
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), reader).await;
    Ok(exit_code(status))
}

/// A normal closure (1000): what gorilla/websocket, kubectl's, takes as the end of the streams.
pub(crate) fn normal_close() -> tokio_tungstenite::tungstenite::protocol::CloseFrame {
    tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
        reason: "".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_from_kubectl_query() {
        let q: Vec<(String, String)> = form_urlencoded::parse(
            b"command=sh&command=-c&command=echo+a+b&container=main&stdin=true&stdout=true&tty=true",
        )
        .into_owned()
        .collect();
        let r = ExecRequest::from_query(&q);
        assert_eq!(r.command, ["sh", "-c", "echo a b"]);
        assert!(r.stdin && r.stdout && !r.stderr && r.tty);
    }

    #[test]
    fn error_channel_status() {
        assert_eq!(status(Some(0), None)["status"], "Success");
        let s = status(Some(3), None);
        assert_eq!(s["status"], "Failure");
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(
            s["details"]["causes"],
            json!([{"reason": "ExitCode", "message": "3"}])
        );
        let s = status(None, Some("boom"));
        assert_eq!(
            (s["status"].clone(), s["message"].clone()),
            (json!("Failure"), json!("boom"))
        );
    }
}
