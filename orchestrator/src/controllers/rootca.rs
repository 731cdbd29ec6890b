//! The `kube-root-ca.crt` ConfigMap in every namespace, holding the cluster CA under `ca.crt`
//! (kube-controller-manager's root-ca-cert-publisher): the automounted token volume projects
//! it as `ca.crt`, so that in-cluster clients verify the API server
//! (`api/admission.rs`). Created when missing, put back when someone edits or deletes it.

use std::collections::BTreeMap;

use anyhow::Context;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::{
    api::{Api, PostParams},
    Client, ResourceExt,
};

use super::{
    runner::{keys, Event, Key, Obj, Reconcile},
    Caches,
};
use crate::api::admission::ROOT_CA_CONFIGMAP;

pub struct Controller {
    client: Client,
    caches: Caches,
    ca: String,
}

/// What each live namespace lacks: (namespace, exists-but-differs).
pub fn plan(namespaces: &[&Namespace], maps: &[&ConfigMap], ca: &str) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    for ns in namespaces {
        if ns.metadata.deletion_timestamp.is_some()
            || ns.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Terminating")
        {
            continue;
        }
        let name = ns.name_any();
        let have = maps
            .iter()
            .find(|m| m.namespace().as_deref() == Some(name.as_str()));
        match have {
            None => out.push((name, false)),
            Some(m) => {
                let data = m.data.as_ref().and_then(|d| d.get("ca.crt"));
                if data.map(String::as_str) != Some(ca) {
                    out.push((name, true));
                }
            }
        }
    }
    out.sort();
    out
}

impl Controller {
    pub fn new(client: Client, caches: Caches, ca: String) -> Self {
        Controller { client, caches, ca }
    }
}

/// Keyed by namespace.
impl Reconcile for Controller {
    type Key = Key;
    const NAME: &'static str = "root-ca-publisher";

    fn all(&self) -> Vec<Key> {
        keys(&self.caches.namespaces)
    }

    fn triggers(&self, ev: &Event, out: &mut Vec<Key>) {
        match ev.obj() {
            Some(Obj::Namespace(n)) => out.push(Key::of(n.as_ref())),
            Some(Obj::RootCa(m)) => out.push(Key::new("", m.namespace().unwrap_or_default())),
            _ => {}
        }
    }

    async fn reconcile(&mut self, key: &Key) -> anyhow::Result<Option<std::time::Duration>> {
        let Some(namespace) = key.live(&self.caches.namespaces) else {
            return Ok(None);
        };
        let maps = self.caches.root_ca_maps.state();
        let map_refs: Vec<&ConfigMap> = maps
            .iter()
            .filter(|m| m.namespace().as_deref() == Some(key.name.as_str()))
            .map(|m| m.as_ref())
            .collect();
        for (ns, exists) in plan(&[namespace.as_ref()], &map_refs, &self.ca) {
            let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &ns);
            let cm = ConfigMap {
                metadata: kube::api::ObjectMeta {
                    name: Some(ROOT_CA_CONFIGMAP.into()),
                    annotations: Some(BTreeMap::from([(
                        "kubernetes.io/description".to_string(),
                        "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters.".to_string(),
                    )])),
                    ..Default::default()
                },
                data: Some(BTreeMap::from([("ca.crt".to_string(), self.ca.clone())])),
                ..Default::default()
            };
            let r = if exists {
                let patch = serde_json::json!({"data": {"ca.crt": self.ca}});
                api.patch(
                    ROOT_CA_CONFIGMAP,
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(&patch),
                )
                .await
                .map(|_| ())
            } else {
                api.create(&PostParams::default(), &cm).await.map(|_| ())
            };
            match r {
                Ok(()) => tracing::info!(namespace = %ns, "kube-root-ca.crt published"),
                // The cache lags our own write, or the namespace is going: nothing to do.
                Err(kube::Error::Api(e)) if matches!(e.code, 403 | 404 | 409) => {}
                Err(e) => return Err(e).context(format!("publishing kube-root-ca.crt in {ns}")),
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(name: &str) -> Namespace {
        Namespace {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn cm(ns: &str, ca: &str) -> ConfigMap {
        ConfigMap {
            metadata: kube::api::ObjectMeta {
                name: Some(ROOT_CA_CONFIGMAP.into()),
                namespace: Some(ns.into()),
                ..Default::default()
            },
            data: Some(BTreeMap::from([("ca.crt".to_string(), ca.to_string())])),
            ..Default::default()
        }
    }

    #[test]
    fn creates_missing_and_repairs_edited() {
        let (a, b, c) = (ns("a"), ns("b"), ns("c"));
        let (ma, mb) = (cm("a", "CA"), cm("b", "other"));
        let got = plan(&[&a, &b, &c], &[&ma, &mb], "CA");
        assert_eq!(got, vec![("b".into(), true), ("c".into(), false)]);
    }
}
