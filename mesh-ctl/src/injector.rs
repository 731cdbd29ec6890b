//! The proxy injector's serving certificate for a local cluster: a CA of its own and a leaf
//! for `meshwork-injector.meshwork-system.svc` (the name the API server dials a webhook
//! Service by), made on first start and kept in the state dir (`injector/`: ca.crt, tls.crt,
//! tls.key), put into the cluster as deploy/addons/meshwork-injector.yaml expects: the Secret
//! meshwork-injector-tls; the CA goes into the webhook configuration's caBundle.

use std::{collections::BTreeMap, path::Path, time::Duration};

use anyhow::Result;
use k8s_openapi::{api::core::v1::Secret, ByteString};
use kube::{api::ObjectMeta, Api, Client};
use meshwork_inject::pki::ServingPki;

use crate::identity::NAMESPACE;

pub const SECRET: &str = "meshwork-injector-tls";
const NAMES: [&str; 2] = [
    "meshwork-injector.meshwork-system.svc",
    "meshwork-injector.meshwork-system.svc.cluster.local",
];
const LIFE: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The CA, chain and key in `dir`, made when missing.
pub fn ensure_pki(dir: &Path) -> Result<ServingPki> {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
    if let (Some(ca), Some(cert), Some(key)) = (read("ca.crt"), read("tls.crt"), read("tls.key")) {
        return Ok(ServingPki { ca, cert, key });
    }
    let p = meshwork_inject::pki::serving_pki(&NAMES, &[], LIFE)?;
    std::fs::create_dir_all(dir)?;
    // Each file whole, the key last: a crash on the way leaves a set the check above finds
    // incomplete, and the next start makes a new one.
    meshwork_daemon::write_private(&dir.join("ca.crt"), p.ca.as_bytes())?;
    meshwork_daemon::write_private(&dir.join("tls.crt"), p.cert.as_bytes())?;
    meshwork_daemon::write_private(&dir.join("tls.key"), p.key.as_bytes())?;
    Ok(p)
}

/// Creates or replaces the Secret meshwork-injector-tls.
pub async fn install(client: &Client, p: &ServingPki) -> Result<()> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NAMESPACE);
    let b = |s: &str| ByteString(s.as_bytes().to_vec());
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(SECRET.into()),
            namespace: Some(NAMESPACE.into()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(BTreeMap::from([
            ("ca.crt".to_string(), b(&p.ca)),
            ("tls.crt".to_string(), b(&p.cert)),
            ("tls.key".to_string(), b(&p.key)),
        ])),
        ..Default::default()
    };
    crate::identity::upsert(&secrets, SECRET, secret).await
}
