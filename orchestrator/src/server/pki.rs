//! The cluster CA and the API server's serving certificate, generated once per data dir.
//! Files (PEM): `pki/ca.crt`, `pki/ca.key`, `pki/apiserver.crt`, `pki/apiserver.key`.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use super::{write_private, Error};

const CA_CN: &str = "meshwork-ca";

pub struct Pki {
    pub dir: PathBuf,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

fn ca_params() -> Result<CertificateParams, Error> {
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(Error::Pki)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_CN);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_after = rcgen::date_time_ymd(2036, 1, 1);
    Ok(p)
}

fn read(path: &Path) -> Result<Option<String>, Error> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::Io(path.to_path_buf(), e)),
    }
}

/// The names in-cluster clients use for the API server (the `kubernetes` Service), as
/// kube-apiserver's serving certificate carries them.
const DNS_NAMES: [&str; 5] = [
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
];

impl Pki {
    /// Loads the CA and serving certificate from `<data>/pki`, creating what is missing. The
    /// serving certificate names localhost, 127.0.0.1, ::1 and every `extra` address.
    pub fn ensure(data: &Path, extra: &[IpAddr]) -> Result<Pki, Error> {
        let dir = data.join("pki");
        std::fs::create_dir_all(&dir).map_err(|e| Error::Io(dir.clone(), e))?;
        let (ca_crt, ca_key) = (dir.join("ca.crt"), dir.join("ca.key"));
        let (crt, key) = (dir.join("apiserver.crt"), dir.join("apiserver.key"));
        let params = ca_params()?;
        let (ca_pem, ca_key_pair) = match (read(&ca_crt)?, read(&ca_key)?) {
            (Some(c), Some(k)) => (c, KeyPair::from_pem(&k).map_err(Error::Pki)?),
            _ => {
                let k = KeyPair::generate().map_err(Error::Pki)?;
                let c = params.self_signed(&k).map_err(Error::Pki)?.pem();
                write_private(&ca_key, k.serialize_pem().as_bytes())?;
                write_private(&ca_crt, c.as_bytes())?;
                // A new CA invalidates any old serving certificate.
                let _ = std::fs::remove_file(&crt);
                (c, k)
            }
        };
        let mut ips: Vec<IpAddr> =
            vec![[127, 0, 0, 1].into(), std::net::Ipv6Addr::LOCALHOST.into()];
        ips.extend(extra.iter().filter(|ip| !ip.is_unspecified()));
        // The serving certificate is kept while it names every address asked for; a new
        // --listen/--advertise-address gets a new one from the same CA.
        let sans_file = dir.join("apiserver.sans");
        let names: Vec<String> = DNS_NAMES
            .iter()
            .map(|n| n.to_string())
            .chain(ips.iter().map(IpAddr::to_string))
            .collect();
        let covered = read(&sans_file)?.is_some_and(|have| {
            let have: Vec<&str> = have.lines().collect();
            names.iter().all(|n| have.contains(&n.as_str()))
        });
        if let (true, Some(cert_pem), Some(key_pem)) = (covered, read(&crt)?, read(&key)?) {
            return Ok(Pki {
                dir,
                ca_pem,
                cert_pem,
                key_pem,
            });
        }
        let issuer = Issuer::new(params, ca_key_pair);
        let dns: Vec<String> = DNS_NAMES.iter().map(|n| n.to_string()).collect();
        let mut p = CertificateParams::new(dns).map_err(Error::Pki)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "meshwork-apiserver");
        p.distinguished_name = dn;
        for ip in ips.iter().copied() {
            p.subject_alt_names.push(SanType::IpAddress(ip));
        }
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.not_after = rcgen::date_time_ymd(2036, 1, 1);
        let k = KeyPair::generate().map_err(Error::Pki)?;
        let cert_pem = p.signed_by(&k, &issuer).map_err(Error::Pki)?.pem();
        let key_pem = k.serialize_pem();
        write_private(&key, key_pem.as_bytes())?;
        write_private(&crt, cert_pem.as_bytes())?;
        write_private(&sans_file, names.join("\n").as_bytes())?;
        Ok(Pki {
            dir,
            ca_pem,
            cert_pem,
            key_pem,
        })
    }

    pub fn tls_config(&self) -> Result<rustls::ServerConfig, Error> {
        use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::Tls(e.to_string()))?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| Error::Tls(e.to_string()))?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| Error::Tls(e.to_string()))?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(cfg)
    }
}
