//! ServiceAccounts: a `default` ServiceAccount in every namespace, created when the namespace
//! appears and again if it is deleted (kube-controller-manager's serviceaccount controller,
//! whose `--service-account-names` default is just `default`). Pods that name no service
//! account run as it, and `kubectl create token default` needs it.

use std::collections::HashSet;

use anyhow::Context;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::{
    api::{Api, PostParams},
    Client, ResourceExt,
};

use super::{
    runner::{keys, Event, Key, Obj, Reconcile},
    Caches,
};

pub const DEFAULT_NAME: &str = "default";

pub struct Controller {
    client: Client,
    caches: Caches,
}

/// The namespaces that should have a `default` ServiceAccount and lack one. A namespace being
/// deleted gets none: the API refuses creates in it, and its contents are going anyway.
pub fn missing(namespaces: &[&Namespace], accounts: &[&ServiceAccount]) -> Vec<String> {
    let have: HashSet<String> = accounts
        .iter()
        .filter(|sa| sa.name_any() == DEFAULT_NAME && sa.metadata.deletion_timestamp.is_none())
        .filter_map(|sa| sa.namespace())
        .collect();
    let mut out: Vec<String> = namespaces
        .iter()
        .filter(|ns| {
            ns.metadata.deletion_timestamp.is_none()
                && ns.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Terminating")
        })
        .map(|ns| ns.name_any())
        .filter(|n| !have.contains(n))
        .collect();
    out.sort();
    out
}

impl Controller {
    pub fn new(client: Client, caches: Caches) -> Self {
        Controller { client, caches }
    }
}

/// Keyed by namespace.
impl Reconcile for Controller {
    type Key = Key;
    const NAME: &'static str = "serviceaccount";

    fn all(&self) -> Vec<Key> {
        keys(&self.caches.namespaces)
    }

    fn triggers(&self, ev: &Event, out: &mut Vec<Key>) {
        match ev.obj() {
            Some(Obj::Namespace(n)) => out.push(Key::of(n.as_ref())),
            Some(Obj::ServiceAccount(sa)) => {
                out.push(Key::new("", sa.namespace().unwrap_or_default()))
            }
            _ => {}
        }
    }

    async fn reconcile(&mut self, key: &Key) -> anyhow::Result<Option<std::time::Duration>> {
        let Some(namespace) = key.live(&self.caches.namespaces) else {
            return Ok(None);
        };
        let accounts = self.caches.serviceaccounts.state();
        let sa_refs: Vec<&ServiceAccount> = accounts
            .iter()
            .filter(|s| s.namespace().as_deref() == Some(key.name.as_str()))
            .map(|s| s.as_ref())
            .collect();
        for ns in missing(&[namespace.as_ref()], &sa_refs) {
            let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &ns);
            let sa = ServiceAccount {
                metadata: kube::api::ObjectMeta {
                    name: Some(DEFAULT_NAME.into()),
                    ..Default::default()
                },
                ..Default::default()
            };
            match api.create(&PostParams::default(), &sa).await {
                Ok(_) => tracing::info!(namespace = %ns, "default ServiceAccount created"),
                // Already there (the cache lags our own create), or the namespace went or
                // turned Terminating meanwhile: nothing to do.
                Err(kube::Error::Api(e)) if matches!(e.code, 403 | 404 | 409) => {}
                Err(e) => {
                    return Err(e).context(format!("creating the default ServiceAccount in {ns}"))
                }
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ns(name: &str, phase: &str) -> Namespace {
        serde_json::from_value(json!({"metadata": {"name": name}, "status": {"phase": phase}}))
            .unwrap()
    }

    fn sa(ns: &str, name: &str) -> ServiceAccount {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns}})).unwrap()
    }

    #[test]
    fn every_live_namespace_gets_a_default() {
        let nss = [
            ns("b", "Active"),
            ns("a", "Active"),
            ns("gone", "Terminating"),
            ns("c", "Active"),
        ];
        let sas = [sa("c", "default"), sa("a", "builder"), sa("x", "default")];
        let n: Vec<&Namespace> = nss.iter().collect();
        let s: Vec<&ServiceAccount> = sas.iter().collect();
        assert_eq!(missing(&n, &s), ["a", "b"]);
    }
}
