//! Test harness: an API server (in-process) on SQLite or a real etcd, and kube-rs clients
//! built from the admin kubeconfig it writes, exactly as a user's client would be.
#![allow(
    dead_code,
    reason = "each test file uses a different part of the harness"
)]

pub mod kubectl;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use kube::config::{KubeConfigOptions, Kubeconfig};
use meshwork_orchestrator::{
    api::ApiConfig,
    server::{self, Running, ServerConfig},
};
use meshwork_orchestrator_store::{testing::Etcd, AnyStore, SqliteStore, SqliteSync};
use serde_json::Value;

pub struct Cluster {
    pub running: Running,
    pub client: kube::Client,
    pub config: kube::Config,
    pub dir: tempfile::TempDir,
    _etcd: Option<Etcd>,
}

#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Sqlite,
    Etcd,
}

pub fn api_config() -> ApiConfig {
    ApiConfig {
        bookmark_every: Duration::from_millis(300),
        ..ApiConfig::default()
    }
}

impl Cluster {
    pub async fn start(backend: Backend) -> Cluster {
        Self::start_with(backend, meshwork_orchestrator_store::DEFAULT_HISTORY).await
    }

    pub async fn start_with(backend: Backend, history: i64) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("mwapi-")
            .tempdir()
            .expect("temp dir");
        let (store, etcd) = match backend {
            Backend::Sqlite => {
                let s = SqliteStore::open_with_history(
                    &dir.path().join("state.db"),
                    SqliteSync::Normal,
                    history,
                )
                .expect("sqlite");
                (AnyStore::Sqlite(s), None)
            }
            Backend::Etcd => {
                let (s, e) = Etcd::start(history).await;
                (AnyStore::Etcd(Box::new(s)), Some(e))
            }
        };
        let mut cfg = ServerConfig::new(dir.path().to_path_buf());
        cfg.listen = "127.0.0.1:0".parse().expect("addr");
        cfg.history = history;
        cfg.api = api_config();
        let running = server::start_with(cfg, store).await.expect("server starts");
        let config = client_config(&running.admin_kubeconfig).await;
        let client = kube::Client::try_from(config.clone()).expect("client");
        Cluster {
            running,
            client,
            config,
            dir,
            _etcd: etcd,
        }
    }

    /// A raw request through the authenticated client: status, Warning headers, JSON body.
    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        content_type: &str,
        body: impl Into<Vec<u8>>,
    ) -> (u16, Vec<String>, Value) {
        raw_with(&self.client, method, path, content_type, body.into()).await
    }

    pub async fn raw_lines(&self, path: &str) -> (u16, Vec<Value>) {
        let req = http::Request::builder()
            .method("GET")
            .uri(path)
            .body(kube::client::Body::from(Vec::new()))
            .expect("request");
        let resp = self.client.send(req).await.expect("response");
        let status = resp.status().as_u16();
        let body = tokio::time::timeout(Duration::from_secs(20), resp.into_body().collect())
            .await
            .expect("stream ends within 20 s")
            .expect("body")
            .to_bytes();
        let lines = split_lines(&body);
        (status, lines)
    }
}

pub fn split_lines(body: &Bytes) -> Vec<Value> {
    body.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).expect("each line is JSON"))
        .collect()
}

pub async fn client_config(kubeconfig: &std::path::Path) -> kube::Config {
    let kc = Kubeconfig::read_from(kubeconfig).expect("kubeconfig parses");
    kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .expect("kubeconfig usable")
}

pub async fn raw_with(
    client: &kube::Client,
    method: &str,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (u16, Vec<String>, Value) {
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", content_type)
        .body(kube::client::Body::from(body))
        .expect("request");
    let resp = client.send(req).await.expect("response");
    let status = resp.status().as_u16();
    let warnings = resp
        .headers()
        .get_all("warning")
        .iter()
        .map(|v| v.to_str().unwrap_or_default().to_string())
        .collect();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    let v = serde_json::from_slice(&body)
        .unwrap_or(Value::String(String::from_utf8_lossy(&body).into_owned()));
    (status, warnings, v)
}

/// Bounded polling, the only kind allowed: a test waits on a condition, never on a bare sleep.
#[macro_export]
macro_rules! assert_eventually {
    ($cond:expr, $what:expr) => {{
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if $cond {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "not within 10 s: {}",
                $what
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }};
}

/// The `meshwork-orchestrator apiserver` binary as a child process (killed on drop, also on
/// panic): what the README tells users to run.
pub struct ServerProc {
    pub child: std::process::Child,
    pub url: String,
    pub kubeconfig: std::path::PathBuf,
}

impl ServerProc {
    pub fn start(data_dir: &std::path::Path, extra: &[&str]) -> ServerProc {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_meshwork-orchestrator"))
            .arg("apiserver")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("meshwork-orchestrator runs");
        let stdout = child.stdout.take().expect("stdout");
        // The first line names the URL; a thread keeps draining the pipe.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        let mut proc = ServerProc {
            child,
            url: String::new(),
            kubeconfig: data_dir.join("admin.kubeconfig"),
        };
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the server prints its URL within 30 s");
        proc.url = line
            .strip_prefix("API server listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {line}"))
            .to_string();
        proc
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        self.kill9();
    }
}
