//! The proxy's certificates: each a chain and its private key read from PEM files and checked
//! against each other, with the names it serves and when it expires; the set of them in
//! configuration order, and the rustls server configuration that serves them (TLS 1.3 and
//! 1.2, ALPN `h2` and `http/1.1`, the certificate chosen by SNI).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::ServerConfig;
use rustls::sign::CertifiedKey;
use serde::Serialize;
use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;

use crate::tls::provider;
use crate::tls::resolver::SniResolver;

/// A certificate this close to its end is a warning in the log, in `GET /status` and an event.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 86_400);

/// ALPN, in the server's order of preference: browsers get HTTP/2.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Session tickets sent after each TLS 1.3 handshake.
const TLS13_TICKETS: usize = 1;

/// One certificate as it is served.
#[derive(Debug)]
pub struct Certificate {
    /// The chain's file: names the certificate in the status and the log.
    pub file: PathBuf,
    /// The DNS names it serves: its subjectAltName entries, or its common name when it has
    /// none. A name may be a wildcard (`*.shop.example`).
    pub names: Vec<String>,
    pub not_after: OffsetDateTime,
    /// The chain and the signing key, checked to belong together.
    pub key: Arc<CertifiedKey>,
}

/// Which of a certificate's two files a problem is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Cert,
    Key,
}

/// Why a certificate cannot be served: the file at fault and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    pub part: Part,
    pub reason: String,
}

impl LoadError {
    fn cert(reason: impl Into<String>) -> LoadError {
        LoadError {
            part: Part::Cert,
            reason: reason.into(),
        }
    }

    fn key(reason: impl Into<String>) -> LoadError {
        LoadError {
            part: Part::Key,
            reason: reason.into(),
        }
    }
}

impl Certificate {
    /// Reads a chain and its key (blocking file I/O: at start, in `check-config` and in a
    /// reload, never on the request path) and checks them.
    pub fn load(cert: &Path, key: &Path) -> Result<Certificate, LoadError> {
        let chain =
            std::fs::read(cert).map_err(|e| LoadError::cert(format!("cannot read: {e}")))?;
        let key_pem =
            std::fs::read(key).map_err(|e| LoadError::key(format!("cannot read: {e}")))?;
        Certificate::from_pem(cert, &chain, &key_pem)
    }

    /// Checks PEM text: at least one certificate, the first the server's own (the rest its
    /// chain); a private key (PKCS#8, PKCS#1 or SEC1) that ring can sign with and whose public
    /// half is the certificate's.
    pub fn from_pem(
        file: &Path,
        chain_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<Certificate, LoadError> {
        let chain = CertificateDer::pem_slice_iter(chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| LoadError::cert(format!("not a PEM certificate chain: {e}")))?;
        let Some(leaf) = chain.first() else {
            return Err(LoadError::cert(
                "no certificate in it (a PEM block \"BEGIN CERTIFICATE\")",
            ));
        };
        let (names, not_after) = names_and_expiry(leaf).map_err(LoadError::cert)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
            LoadError::key(format!(
                "no private key in it (a PEM block \"BEGIN PRIVATE KEY\", \"BEGIN RSA PRIVATE KEY\" or \"BEGIN EC PRIVATE KEY\"): {e}"
            ))
        })?;
        let signing_key = provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| LoadError::key(format!("not a usable private key: {e}")))?;
        let key = CertifiedKey::new(chain, signing_key);
        key.keys_match().map_err(|e| {
            LoadError::key(format!(
                "does not belong to the certificate in {} ({e})",
                file.display()
            ))
        })?;
        Ok(Certificate {
            file: file.to_path_buf(),
            names,
            not_after,
            key: Arc::new(key),
        })
    }

    /// Whether it ends within `window` of `now` (or has ended).
    pub fn expires_within(&self, now: OffsetDateTime, window: Duration) -> bool {
        self.not_after <= now + window
    }

    /// A sentence for the log, the status and the event when it ends soon; `None` otherwise.
    pub fn expiry_warning(&self, now: OffsetDateTime) -> Option<String> {
        if !self.expires_within(now, EXPIRY_WARNING) {
            return None;
        }
        let when = self
            .not_after
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| self.not_after.to_string());
        let names = self.names.join(", ");
        Some(if self.not_after <= now {
            format!(
                "the certificate {} ({names}) expired at {when}",
                self.file.display()
            )
        } else {
            let days = (self.not_after - now).whole_days();
            format!(
                "the certificate {} ({names}) expires in {days} day(s), at {when}",
                self.file.display()
            )
        })
    }
}

/// The names a certificate serves and its end of validity.
fn names_and_expiry(der: &CertificateDer<'_>) -> Result<(Vec<String>, OffsetDateTime), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let mut names: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                GeneralName::DNSName(dns) => Some(dns.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(e) => return Err(format!("a malformed subjectAltName: {e}")),
    };
    if names.is_empty() {
        names.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    let not_after = OffsetDateTime::from_unix_timestamp(cert.validity().not_after.timestamp())
        .map_err(|e| format!("an unusable notAfter date: {e}"))?;
    Ok((names, not_after))
}

/// Every certificate, in configuration order (the first is the default), and the server
/// configuration built on them. A new set is a new configuration: handshakes already under
/// way keep the one they started with.
#[derive(Debug)]
pub struct Certificates {
    list: Vec<Certificate>,
    server: Arc<ServerConfig>,
}

impl Certificates {
    pub fn new(list: Vec<Certificate>) -> Certificates {
        let resolver = SniResolver::new(list.iter().map(|c| (c.names.clone(), Arc::clone(&c.key))));
        let mut server = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("ring supports TLS 1.3 and 1.2")
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(resolver));
        server.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
        // Resumption as nginx's default does it: stateless session tickets under a key of
        // this configuration's own (so resumption does not hang on a cache's size), and one
        // TLS 1.3 ticket per handshake, as OpenSSL sends on a resumed one. A second ticket
        // costs a client a session object it seldom uses: with wrk opening a connection
        // per request, one ticket is 9-11% more handshakes per second (docs/performance.md).
        server.send_tls13_tickets = TLS13_TICKETS;
        match rustls::crypto::ring::Ticketer::new() {
            Ok(ticketer) => server.ticketer = ticketer,
            // The session cache still resumes sessions, for fewer clients.
            Err(e) => {
                tracing::warn!(error = %e, "no session tickets: resumption by the session cache only")
            }
        }
        Certificates {
            list,
            server: Arc::new(server),
        }
    }

    pub fn server_config(&self) -> &Arc<ServerConfig> {
        &self.server
    }

    pub fn list(&self) -> &[Certificate] {
        &self.list
    }

    /// For `GET /status`.
    pub fn view(&self, now: OffsetDateTime) -> TlsView {
        let certificates: Vec<CertificateView> = self
            .list
            .iter()
            .map(|c| CertificateView {
                file: c.file.display().to_string(),
                names: c.names.clone(),
                not_after: c.not_after,
                days_left: (c.not_after - now).whole_days(),
                warning: c.expiry_warning(now),
            })
            .collect();
        TlsView {
            warnings: certificates
                .iter()
                .filter_map(|c| c.warning.clone())
                .collect(),
            certificates,
        }
    }
}

/// The `tls` of `GET /status`.
#[derive(Debug, Serialize)]
pub struct TlsView {
    /// In configuration order: the first is the default.
    pub certificates: Vec<CertificateView>,
    /// One for each certificate that ends within 14 days.
    pub warnings: Vec<String>,
}

/// One certificate in `GET /status`.
#[derive(Debug, Serialize)]
pub struct CertificateView {
    pub file: String,
    pub names: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// Whole days to `not_after`; negative once it has passed.
    pub days_left: i64,
    /// Set when it ends within 14 days.
    pub warning: Option<String>,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rustls::pki_types::ServerName;

    /// A self-signed ECDSA P-256 certificate for `names`, as PEM (cert, key).
    pub fn pem(names: &[&str]) -> (String, String) {
        let made = rcgen::generate_simple_self_signed(
            names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        )
        .expect("rcgen makes a certificate");
        (made.cert.pem(), made.signing_key.serialize_pem())
    }

    pub fn self_signed(names: &[&str]) -> Certificate {
        let (cert, key) = pem(names);
        Certificate::from_pem(Path::new("test.pem"), cert.as_bytes(), key.as_bytes())
            .expect("a fresh certificate loads")
    }

    #[test]
    fn a_certificate_serves_its_names_and_knows_its_end() {
        let cert = self_signed(&["Shop.Test", "*.api.test"]);
        assert_eq!(cert.names, ["shop.test", "*.api.test"]);
        let now = OffsetDateTime::now_utc();
        // rcgen's default validity runs to 4096.
        assert!(cert.not_after > now + Duration::from_secs(365 * 86_400));
        assert!(cert.expiry_warning(now).is_none());
    }

    #[test]
    fn a_key_of_another_certificate_is_refused_and_blamed() {
        let (cert, _) = pem(&["a.test"]);
        let (_, other_key) = pem(&["a.test"]);
        let e = Certificate::from_pem(Path::new("a.pem"), cert.as_bytes(), other_key.as_bytes())
            .expect_err("mismatched");
        assert_eq!(e.part, Part::Key);
        assert!(
            e.reason
                .contains("does not belong to the certificate in a.pem"),
            "{}",
            e.reason
        );
    }

    #[test]
    fn files_without_pem_blocks_are_refused_and_blamed() {
        let (cert, key) = pem(&["a.test"]);
        let no_cert = Certificate::from_pem(Path::new("a.pem"), b"hello", key.as_bytes())
            .expect_err("no certificate");
        assert_eq!(no_cert.part, Part::Cert, "{no_cert:?}");
        let no_key = Certificate::from_pem(Path::new("a.pem"), cert.as_bytes(), b"hello")
            .expect_err("no key");
        assert_eq!(no_key.part, Part::Key, "{no_key:?}");
        let swapped = Certificate::from_pem(Path::new("a.pem"), key.as_bytes(), cert.as_bytes())
            .expect_err("swapped files");
        assert_eq!(swapped.part, Part::Cert, "{swapped:?}");
    }

    #[test]
    fn a_missing_file_is_named_as_unreadable() {
        let dir = tempfile::tempdir().expect("temp dir");
        let e = Certificate::load(&dir.path().join("none.pem"), &dir.path().join("none.key"))
            .expect_err("missing");
        assert_eq!(e.part, Part::Cert);
        assert!(e.reason.starts_with("cannot read"), "{}", e.reason);
    }

    #[test]
    fn the_warning_starts_fourteen_days_before_the_end() {
        let cert = self_signed(&["a.test"]);
        let end = cert.not_after;
        let fifteen_days_before = end - Duration::from_secs(15 * 86_400);
        let ten_days_before = end - Duration::from_secs(10 * 86_400);
        assert!(cert.expiry_warning(fifteen_days_before).is_none());
        let soon = cert.expiry_warning(ten_days_before).expect("a warning");
        assert!(soon.contains("expires in 10 day(s)"), "{soon}");
        let late = cert
            .expiry_warning(end + Duration::from_secs(1))
            .expect("a warning");
        assert!(late.contains("expired"), "{late}");
    }

    #[test]
    fn a_client_resumes_on_the_one_stateless_ticket_of_each_handshake() {
        // Arrange
        let certs = Certificates::new(vec![self_signed(&["a.test"])]);
        let tickets = Arc::new(CountingStore::default());
        let client = client_config(&certs, Arc::clone(&tickets));
        let server = Arc::clone(certs.server_config());
        // Nothing kept on the server's side: a resumption must come from the ticket itself.
        let mut stateless = (*server).clone();
        stateless.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});

        // Act
        let first = handshake(&client, server);
        let after_first = tickets.count();
        let second = handshake(&client, Arc::new(stateless));

        // Assert
        assert_eq!(first, Some(rustls::HandshakeKind::Full));
        assert_eq!(after_first, 1, "one ticket per handshake");
        assert_eq!(second, Some(rustls::HandshakeKind::Resumed));
        assert_eq!(tickets.count(), 2);
    }

    /// A client's session store that counts the TLS 1.3 tickets it is given.
    #[derive(Debug)]
    struct CountingStore {
        inner: rustls::client::ClientSessionMemoryCache,
        tickets: std::sync::atomic::AtomicUsize,
    }

    impl Default for CountingStore {
        fn default() -> CountingStore {
            CountingStore {
                inner: rustls::client::ClientSessionMemoryCache::new(16),
                tickets: std::sync::atomic::AtomicUsize::new(0),
            }
        }
    }

    impl CountingStore {
        fn count(&self) -> usize {
            self.tickets.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    impl rustls::client::ClientSessionStore for CountingStore {
        fn set_kx_hint(&self, name: ServerName<'static>, group: rustls::NamedGroup) {
            self.inner.set_kx_hint(name, group);
        }

        fn kx_hint(&self, name: &ServerName<'_>) -> Option<rustls::NamedGroup> {
            self.inner.kx_hint(name)
        }

        fn set_tls12_session(
            &self,
            name: ServerName<'static>,
            value: rustls::client::Tls12ClientSessionValue,
        ) {
            self.inner.set_tls12_session(name, value);
        }

        fn tls12_session(
            &self,
            name: &ServerName<'_>,
        ) -> Option<rustls::client::Tls12ClientSessionValue> {
            self.inner.tls12_session(name)
        }

        fn remove_tls12_session(&self, name: &ServerName<'static>) {
            self.inner.remove_tls12_session(name);
        }

        fn insert_tls13_ticket(
            &self,
            name: ServerName<'static>,
            value: rustls::client::Tls13ClientSessionValue,
        ) {
            self.tickets
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.inner.insert_tls13_ticket(name, value);
        }

        fn take_tls13_ticket(
            &self,
            name: &ServerName<'static>,
        ) -> Option<rustls::client::Tls13ClientSessionValue> {
            self.inner.take_tls13_ticket(name)
        }
    }

    /// A TLS 1.3 client that trusts `certs`' first certificate and keeps its sessions in
    /// `store`.
    fn client_config(certs: &Certificates, store: Arc<CountingStore>) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        let (leaf, _) = certs.list()[0].key.cert.split_first().expect("a chain");
        roots.add(leaf.clone()).expect("a usable root");
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("ring supports TLS 1.3")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.resumption = rustls::client::Resumption::store(store);
        Arc::new(config)
    }

    /// A whole handshake in memory, and what the server then sends (its tickets) read by the
    /// client; the kind of handshake it was.
    fn handshake(
        client: &Arc<rustls::ClientConfig>,
        server: Arc<ServerConfig>,
    ) -> Option<rustls::HandshakeKind> {
        let name = ServerName::try_from("a.test").expect("a name");
        let mut client = rustls::ClientConnection::new(Arc::clone(client), name).expect("client");
        let mut server = rustls::ServerConnection::new(server).expect("server");
        // A TLS 1.3 handshake takes two flights each way; the rest are spare.
        for _ in 0..8 {
            let mut wire = Vec::new();
            while client.wants_write() {
                client.write_tls(&mut wire).expect("client writes");
            }
            let mut rest = &wire[..];
            while !rest.is_empty() {
                server.read_tls(&mut rest).expect("server reads");
                server.process_new_packets().expect("server accepts");
            }
            let mut wire = Vec::new();
            while server.wants_write() {
                server.write_tls(&mut wire).expect("server writes");
            }
            let mut rest = &wire[..];
            while !rest.is_empty() {
                client.read_tls(&mut rest).expect("client reads");
                client.process_new_packets().expect("client accepts");
            }
        }
        assert!(!client.is_handshaking() && !server.is_handshaking());
        server.handshake_kind()
    }

    #[test]
    fn the_server_offers_h2_first() {
        let certs = Certificates::new(vec![self_signed(&["a.test"])]);
        assert_eq!(
            certs.server_config().alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }
}
