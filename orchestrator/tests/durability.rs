//! kill -9 of the API server binary (SQLite, the default store) under a write load: every
//! create it acknowledged is there after a restart on the same data dir.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: panics are the report"
)]

mod common;

use std::sync::{Arc, Mutex};

use common::ServerProc;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    api::{ListParams, PostParams},
    Api, ResourceExt,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_loses_no_acknowledged_write() {
    let dir = tempfile::Builder::new()
        .prefix("mwapi-kill-")
        .tempdir()
        .unwrap();
    let data = dir.path().join("data");
    let mut server = ServerProc::start(&data, &[]);
    let client = kube::Client::try_from(common::client_config(&server.kubeconfig).await).unwrap();
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let acked: Arc<Mutex<Vec<(String, i64)>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..4 {
        let (api, acked) = (api.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let cm: ConfigMap = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": format!("w{w}-{i}")}, "data": {"i": i.to_string()}}))
                .unwrap();
                match api.create(&PostParams::default(), &cm).await {
                    Ok(o) => acked
                        .lock()
                        .unwrap()
                        .push((o.name_any(), o.resource_version().unwrap().parse().unwrap())),
                    // The server died under us: whatever was not acknowledged may be lost.
                    Err(_) => return,
                }
            }
        }));
    }
    assert_eventually!(
        acked.lock().unwrap().len() >= 300,
        "300 acknowledged creates"
    );
    server.kill9();
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();

    let server = ServerProc::start(&data, &[]);
    let client = kube::Client::try_from(common::client_config(&server.kubeconfig).await).unwrap();
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    let list = api.list(&ListParams::default()).await.unwrap();
    let have: std::collections::HashMap<String, i64> = list
        .items
        .iter()
        .map(|o| (o.name_any(), o.resource_version().unwrap().parse().unwrap()))
        .collect();
    for (name, rv) in &acked {
        assert_eq!(
            have.get(name),
            Some(rv),
            "acknowledged {name} at {rv} survives kill -9"
        );
    }
    let max = acked.iter().map(|a| a.1).max().unwrap();
    let list_rv: i64 = list.metadata.resource_version.unwrap().parse().unwrap();
    assert!(list_rv >= max, "revision {list_rv} continues past {max}");
}
