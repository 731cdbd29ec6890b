//! The mesh CA of a local cluster: a trust anchor and an issuer made on first start and kept
//! in the state dir (`identity/`: ca.crt, ca.key, tls.crt, tls.key), put into the cluster as
//! the identity service expects them (deploy/addons/meshwork-identity.yaml): the Secret
//! meshwork-identity-issuer (ca.crt, tls.crt, tls.key — the anchor's key stays on the host,
//! as Linkerd's docs ask) and the ConfigMap meshwork-identity-trust-roots (ca-bundle.crt).

use std::{collections::BTreeMap, path::Path, time::Duration};

use anyhow::Result;
use k8s_openapi::{
    api::core::v1::{ConfigMap, Namespace, Secret},
    ByteString,
};
use kube::{
    api::{ObjectMeta, PostParams},
    Api, Client,
};

pub const NAMESPACE: &str = "meshwork-system";
pub const ISSUER_SECRET: &str = "meshwork-identity-issuer";
pub const TRUST_ROOTS: &str = "meshwork-identity-trust-roots";
pub const TRUST_DOMAIN: &str = meshwork_identity::DEFAULT_TRUST_DOMAIN;
/// The anchor outlives any local cluster; the issuer is rotated by hand or by a new `up`.
const ANCHOR_LIFE: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
const ISSUER_LIFE: Duration = Duration::from_secs(365 * 24 * 3600);

/// The CA files in `dir`, made when missing; (anchors, issuer cert, issuer key) PEM.
pub fn ensure_ca(dir: &Path) -> Result<(String, String, String)> {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
    if let (Some(a), Some(c), Some(k)) = (read("ca.crt"), read("tls.crt"), read("tls.key")) {
        return Ok((a, c, k));
    }
    let (anchor, issuer) =
        meshwork_identity::ca::write_new_ca(dir, TRUST_DOMAIN, ANCHOR_LIFE, ISSUER_LIFE)?;
    Ok((anchor.cert_pem, issuer.cert_pem, issuer.key_pem))
}

/// Creates (or brings back) the namespace, the issuer Secret and the trust roots ConfigMap.
pub async fn install(client: &Client, anchors: &str, cert: &str, key: &str) -> Result<()> {
    let meta = |name: &str| ObjectMeta {
        name: Some(name.into()),
        namespace: Some(NAMESPACE.into()),
        ..Default::default()
    };
    let nss: Api<Namespace> = Api::all(client.clone());
    if nss.get_opt(NAMESPACE).await?.is_none() {
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(NAMESPACE.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        nss.create(&PostParams::default(), &ns).await?;
    }
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    let secret = Secret {
        metadata: meta(ISSUER_SECRET),
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            (
                "ca.crt".to_string(),
                ByteString(anchors.as_bytes().to_vec()),
            ),
            ("tls.crt".to_string(), ByteString(cert.as_bytes().to_vec())),
            ("tls.key".to_string(), ByteString(key.as_bytes().to_vec())),
        ])),
        ..Default::default()
    };
    upsert(&secrets, ISSUER_SECRET, secret).await?;
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), NAMESPACE);
    let roots = ConfigMap {
        metadata: meta(TRUST_ROOTS),
        data: Some(BTreeMap::from([(
            "ca-bundle.crt".to_string(),
            anchors.to_string(),
        )])),
        ..Default::default()
    };
    upsert(&maps, TRUST_ROOTS, roots).await
}

pub async fn upsert<K>(api: &Api<K>, name: &str, mut obj: K) -> Result<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    match api.get_opt(name).await? {
        None => {
            api.create(&PostParams::default(), &obj).await?;
        }
        Some(cur) => {
            obj.meta_mut().resource_version = cur.meta().resource_version.clone();
            api.replace(name, &PostParams::default(), &obj).await?;
        }
    }
    Ok(())
}
