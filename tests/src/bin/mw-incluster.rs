//! A kube-rs client as a pod runs one: `Config::infer()` finds no kubeconfig and takes the
//! in-cluster path (KUBERNETES_SERVICE_HOST/PORT, the mounted token, ca.crt and namespace).
//! Each argument is an API path (`{ns}` stands for the pod's namespace) it GETs; it prints
//! `<path> <status code>` per line, so a test reads what RBAC allowed from the pod's log
//! (connection errors, on stderr, are retried for 20 s).

use anyhow::Context;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cfg = kube::Config::infer()
        .await
        .context("in-cluster configuration")?;
    println!("server {}", cfg.cluster_url);
    let ns = cfg.default_namespace.clone();
    let client = kube::Client::try_from(cfg)?;
    for arg in std::env::args().skip(1) {
        let path = arg.replace("{ns}", &ns);
        // A pod may start before its node's agent has programmed the Service: connection
        // errors are retried for a while, as in-cluster clients do.
        let t = std::time::Instant::now();
        let code = loop {
            let req = http::Request::get(&path).body(kube::client::Body::empty())?;
            match client.send(req).await {
                Ok(r) => break r.status().as_u16().to_string(),
                Err(e) if t.elapsed() > std::time::Duration::from_secs(20) => {
                    break format!("error: {e}")
                }
                Err(e) => {
                    eprintln!("{path}: {e}; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
            }
        };
        println!("{path} {code}");
    }
    Ok(())
}
