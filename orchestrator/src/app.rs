//! Wiring for the binary: config → server.

use crate::{
    config::{ApiserverArgs, KubeconfigArgs, StoreKind, SyncMode},
    server::{self, ServerConfig, StoreChoice},
};
use meshwork_orchestrator_store::SqliteSync;

pub fn server_config(a: &ApiserverArgs) -> ServerConfig {
    let mut cfg = ServerConfig::new(a.data_dir.clone());
    cfg.listen = a.listen;
    cfg.advertise = a.advertise.clone();
    cfg.history = a.history;
    cfg.api.services.cidr6 = None;
    for net in &a.service_cluster_ip_range {
        match net {
            ipnet::IpNet::V4(v4) => cfg.api.services.cidr = *v4,
            ipnet::IpNet::V6(v6) => cfg.api.services.cidr6 = Some(*v6),
        }
    }
    cfg.api.services.dns_ip = a.cluster_dns;
    cfg.sa_issuer = a.service_account_issuer.clone();
    cfg.sa_jwks_uri = a.service_account_jwks_uri.clone();
    cfg.sa_max_expiration = Some(a.service_account_max_token_expiration).filter(|d| !d.is_zero());
    cfg.store = match a.store {
        StoreKind::Sqlite => StoreChoice::Sqlite {
            sync: match a.sqlite_sync {
                SyncMode::Full => SqliteSync::Full,
                SyncMode::Normal => SqliteSync::Normal,
            },
        },
        StoreKind::Etcd => StoreChoice::Etcd {
            endpoints: a.etcd_endpoints.clone(),
        },
    };
    cfg
}

/// Serves until SIGINT/SIGTERM.
pub async fn run_apiserver(a: ApiserverArgs) -> Result<(), server::Error> {
    // Flags are checked before anything starts.
    let mut ctl = a
        .ctl
        .config()
        .map_err(|e| server::Error::Config(format!("{e:#}")))?;
    let running = server::start(server_config(&a)).await?;
    println!("API server listening on {}", running.url);
    println!("admin kubeconfig: {}", running.admin_kubeconfig.display());
    let mut tasks = Vec::new();
    if a.controllers {
        let client = meshwork_kube_watch::client(Some(&running.admin_kubeconfig))
            .await
            .map_err(|e| server::Error::Config(format!("controller client: {e}")))?;
        ctl.root_ca.get_or_insert_with(|| running.ca_pem.clone());
        let cfg = ctl;
        tasks.push(tokio::spawn(async move {
            let inner = crate::controllers::start(client, cfg).await;
            futures::future::join_all(inner).await;
        }));
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| server::Error::Config(format!("signal handler: {e}")))?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    for t in tasks {
        t.abort();
    }
    running.shutdown().await;
    Ok(())
}

pub fn run_kubeconfig(a: KubeconfigArgs) -> Result<(), server::Error> {
    server::issue_kubeconfig(&a.data_dir, &a.server, &a.user, &a.groups, &a.out)?;
    println!("wrote {} for {}", a.out.display(), a.user);
    Ok(())
}

/// The controllers and scheduler against any API server, until SIGINT/SIGTERM.
pub async fn run_controllers(a: crate::config::ControllersArgs) -> anyhow::Result<()> {
    let client = meshwork_kube_watch::client(a.kubeconfig.as_deref()).await?;
    let mut cfg = a.flags.config()?;
    if cfg.root_ca.is_none() {
        // kube-controller-manager publishes its client's CA when given no --root-ca-file.
        cfg.root_ca = client_ca(a.kubeconfig.as_deref()).await;
    }
    let tasks = crate::controllers::start(client, cfg).await;
    meshwork_daemon::shutdown_signal().await?;
    for t in tasks {
        t.abort();
    }
    Ok(())
}

/// The CA the controllers' own client trusts (kubeconfig or in-cluster), as PEM.
async fn client_ca(kubeconfig: Option<&std::path::Path>) -> Option<String> {
    use base64::Engine;
    let conf = match kubeconfig {
        Some(p) => {
            let kc = kube::config::Kubeconfig::read_from(p).ok()?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .ok()?
        }
        None => kube::Config::infer().await.ok()?,
    };
    let certs = conf.root_cert?;
    let mut pem = String::new();
    for der in certs {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        pem.push_str("-----BEGIN CERTIFICATE-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(chunk));
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
    }
    (!pem.is_empty()).then_some(pem)
}
