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
    let running = server::start(server_config(&a)).await?;
    println!("API server listening on {}", running.url);
    println!("admin kubeconfig: {}", running.admin_kubeconfig.display());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| server::Error::Config(format!("signal handler: {e}")))?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    running.shutdown().await;
    Ok(())
}

pub fn run_kubeconfig(a: KubeconfigArgs) -> Result<(), server::Error> {
    server::issue_kubeconfig(&a.data_dir, &a.server, &a.user, &a.groups, &a.out)?;
    println!("wrote {} for {}", a.out.display(), a.user);
    Ok(())
}
