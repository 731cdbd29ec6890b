//! The identity service's CSR check on arbitrary bytes: never panics, and whatever it accepts
//! signs into a certificate naming only the identity asked for.
#![no_main]

use std::{sync::LazyLock, time::Duration};

use libfuzzer_sys::fuzz_target;
use meshwork_identity::{ca, verify, SpiffeId};

static CA: LazyLock<ca::Ca> = LazyLock::new(|| {
    let a = ca::generate_anchor("cluster.local", Duration::from_secs(3600)).unwrap();
    let i = ca::generate_issuer("cluster.local", &a.cert_pem, &a.key_pem, Duration::from_secs(3600)).unwrap();
    ca::Ca::from_pem(&a.cert_pem, &i.cert_pem, &i.key_pem).unwrap()
});

static ID: LazyLock<SpiffeId> = LazyLock::new(|| SpiffeId::parse("spiffe://cluster.local/ns/app/sa/web").unwrap());

fuzz_target!(|data: &[u8]| {
    if let Ok(csr) = ca::check_csr(data, &ID) {
        let leaf = CA.sign_csr(csr, &ID, Duration::from_secs(60)).unwrap();
        assert_eq!(verify::peer_identity(&leaf.der).unwrap(), *ID);
    }
});
