//! The client side of TLS: configurations that verify a peer against the system's trust
//! roots (Debian's ca-certificates, with what the operator added to it) or against a CA file
//! of the operator's. The webhooks use it; an upstream reached over TLS would too, with its
//! own ALPN.

use std::path::Path;

use rustls::RootCertStore;
use rustls::client::ClientConfig;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use crate::tls::provider;

/// The peers a client trusts.
#[derive(Debug, Clone)]
pub enum Trust {
    /// The system's roots (read once per call of `roots`).
    System,
    /// Only these certificates, from the operator's CA file.
    Ca(Vec<CertificateDer<'static>>),
}

/// The CA certificates of a PEM file (blocking file I/O): at least one.
pub fn read_ca(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM certificate file: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate in it (a PEM block \"BEGIN CERTIFICATE\")".into());
    }
    Ok(certs)
}

/// The root store for `trust`. `Trust::System` reads the system's certificate files
/// (blocking): call it off the runtime's worker threads (`spawn_blocking`). A system
/// certificate rustls cannot use is skipped, as every TLS client does; none at all is an error.
pub fn roots(trust: &Trust) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    match trust {
        Trust::System => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _ignored) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default();
                return Err(format!(
                    "no trusted root certificate on this system (apt-get install ca-certificates){why}"
                ));
            }
        }
        Trust::Ca(certs) => {
            for cert in certs {
                store
                    .add(cert.clone())
                    .map_err(|e| format!("a CA certificate rustls cannot use: {e}"))?;
            }
        }
    }
    Ok(store)
}

/// A client configuration (TLS 1.3 and 1.2, no client certificate) that trusts `roots` and
/// offers `alpn`, in order of preference (none: the peer picks HTTP/1.1).
pub fn config(roots: RootCertStore, alpn: &[&[u8]]) -> ClientConfig {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.3 and 1.2")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_needs_a_certificate() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (cert, key) = crate::tls::certs::tests::pem(&["ca.test"]);
        let good = dir.path().join("ca.pem");
        std::fs::write(&good, &cert).expect("write");
        let only_key = dir.path().join("key.pem");
        std::fs::write(&only_key, &key).expect("write");

        let certs = read_ca(&good).expect("a CA file");
        assert_eq!(certs.len(), 1);
        assert!(roots(&Trust::Ca(certs)).is_ok());
        let e = read_ca(&only_key).expect_err("no certificate");
        assert!(e.contains("no certificate"), "{e}");
        let e = read_ca(&dir.path().join("none.pem")).expect_err("missing");
        assert!(e.starts_with("cannot read"), "{e}");
    }
}
