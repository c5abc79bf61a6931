//! The TLS keys: `listen.public_tls` and the `[tls]` section (`[[tls.certificate]]`,
//! `redirect_http`, `hsts_max_age`) as written and validated, and `read_files`, which reads
//! and checks every file the configuration names (the certificates and keys, the webhooks'
//! and the TLS slots' CA files, and the system's roots for a TLS slot without one): the
//! only I/O of a configuration besides its own text, run by `Config::load` after the pure
//! parse, so that `check-config`, the start and a reload all refuse a broken file with its
//! key, its line and the reason.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;

use super::{Config, Problem};
use crate::slot::Slot;
use crate::tls::certs::{Certificate, Certificates, Part};
use crate::tls::client::{self, Trust};

#[derive(Debug, Default, Deserialize)]
pub struct RawTls {
    redirect_http: Option<bool>,
    hsts_max_age: Option<u64>,
    #[serde(default)]
    certificate: Vec<RawCertificate>,
}

#[derive(Debug, Deserialize)]
struct RawCertificate {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
}

/// The certificates of the TLS listener, and what HTTPS changes for plain requests.
#[derive(Debug, Clone, Default)]
pub struct TlsCfg {
    /// In order: the first is served when no other matches the client's SNI.
    pub certificates: Vec<CertificateFiles>,
    /// Plain requests are answered `308` to the same URL on the TLS listener (but those with
    /// the preview header and those from `forwarding.trusted_hops`).
    pub redirect_http: bool,
    /// Seconds of `Strict-Transport-Security` on answers over TLS; none when unset.
    pub hsts_max_age: Option<u64>,
    /// What `certificates` hold, read and checked by `Config::load`; `None` after
    /// `Config::parse`, which reads no file, and when there is no certificate.
    pub loaded: Option<Arc<Certificates>>,
}

/// One `[[tls.certificate]]`: PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFiles {
    /// The certificate, then the intermediates of its chain.
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn problem(key: impl Into<String>, message: impl Into<String>) -> Problem {
    Problem {
        key: key.into(),
        line: None,
        message: message.into(),
    }
}

impl RawTls {
    /// Validates the section together with `listen.public_tls` (as written), which it needs
    /// and which needs it; `public` is the plain listener's address.
    pub fn validate(
        self,
        public_tls: Option<&str>,
        public: SocketAddr,
        problems: &mut Vec<Problem>,
    ) -> (Option<SocketAddr>, TlsCfg) {
        let listen = public_tls.and_then(|text| match text.parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                problems.push(problem(
                    "listen.public_tls",
                    format!("{text:?} is not an IP address with a port, like \"127.0.0.1:8443\""),
                ));
                None
            }
        });
        if let Some(addr) = listen
            && addr == public
            && addr.port() != 0
        {
            problems.push(problem(
                "listen.public_tls",
                "must differ from listen.public",
            ));
        }
        let mut certificates = Vec::with_capacity(self.certificate.len());
        for (i, raw) in self.certificate.into_iter().enumerate() {
            let mut file = |name: &str, value: Option<PathBuf>| {
                value.filter(|p| !p.as_os_str().is_empty()).or_else(|| {
                    problems.push(problem(
                        format!("tls.certificate[{i}].{name}"),
                        "required: a PEM file",
                    ));
                    None
                })
            };
            let (cert, key) = (file("cert", raw.cert), file("key", raw.key));
            if let (Some(cert), Some(key)) = (cert, key) {
                certificates.push(CertificateFiles { cert, key });
            }
        }
        let configured = public_tls.is_some();
        if configured
            && certificates.is_empty()
            && !problems
                .iter()
                .any(|p| p.key.starts_with("tls.certificate"))
        {
            problems.push(problem(
                "listen.public_tls",
                "needs at least one [[tls.certificate]] with cert and key",
            ));
        }
        if !configured {
            let unused = [
                ("tls.certificate", !certificates.is_empty()),
                ("tls.redirect_http", self.redirect_http == Some(true)),
                ("tls.hsts_max_age", self.hsts_max_age.is_some()),
            ];
            for (key, set) in unused {
                if set {
                    problems.push(problem(key, "has no effect without listen.public_tls"));
                }
            }
        }
        let tls = TlsCfg {
            certificates,
            redirect_http: self.redirect_http.unwrap_or(false),
            hsts_max_age: self.hsts_max_age,
            loaded: None,
        };
        (listen, tls)
    }
}

/// Reads and checks every file `config` names: each certificate with its key (kept in
/// `config.tls.loaded`), each webhook's CA file, each TLS slot's trust (its CA file, else the
/// system's roots), made into its client configuration (`SlotTls::client`). Every problem
/// names the key of the file, the file and what is wrong with it.
pub fn read_files(config: &mut Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut loaded = Vec::with_capacity(config.tls.certificates.len());
    for (i, files) in config.tls.certificates.iter().enumerate() {
        match Certificate::load(&files.cert, &files.key) {
            Ok(certificate) => loaded.push(certificate),
            Err(e) => {
                let (part, path) = match e.part {
                    Part::Cert => ("cert", &files.cert),
                    Part::Key => ("key", &files.key),
                };
                problems.push(problem(
                    format!("tls.certificate[{i}].{part}"),
                    format!("{}: {}", path.display(), e.reason),
                ));
            }
        }
    }
    if problems.is_empty() && !loaded.is_empty() {
        config.tls.loaded = Some(Arc::new(Certificates::new(loaded)));
    }
    for (i, hook) in config.notify.webhooks.iter().enumerate() {
        if let Some(ca) = &hook.ca
            && let Err(why) = crate::tls::client::read_ca(ca)
        {
            problems.push(problem(
                format!("notify.webhook[{i}].ca"),
                format!("{}: {why}", ca.display()),
            ));
        }
    }
    let mut system = None;
    for slot in Slot::ALL {
        let Some(tls) = config.slot_tls[slot.index()].as_mut() else {
            continue;
        };
        let roots = match &tls.ca {
            Some(ca) => client::read_ca(ca)
                .and_then(|certs| client::roots(&Trust::Ca(certs)))
                .map_err(|why| {
                    (
                        format!("slots.{slot}.ca"),
                        format!("{}: {why}", ca.display()),
                    )
                }),
            None => system
                .get_or_insert_with(|| client::roots(&Trust::System))
                .clone()
                .map_err(|why| (format!("slots.{slot}.tls"), why)),
        };
        match roots {
            Ok(roots) => tls.client = Some(Arc::new(client::config(roots, &[b"http/1.1"]))),
            Err((key, why)) => problems.push(problem(key, why)),
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(text: &str) -> Vec<String> {
        Config::parse(text)
            .expect_err("invalid")
            .into_iter()
            .map(|p| p.key)
            .collect()
    }

    #[test]
    fn a_tls_listener_needs_a_certificate_with_both_files() {
        assert_eq!(
            keys("[listen]\npublic_tls = \"127.0.0.1:8443\"\n"),
            ["listen.public_tls"]
        );
        assert_eq!(
            keys(
                "[listen]\npublic_tls = \"127.0.0.1:8443\"\n[[tls.certificate]]\ncert = \"a.pem\"\n"
            ),
            ["tls.certificate[0].key"]
        );
        assert_eq!(
            keys(
                "[listen]\npublic_tls = \"8443\"\n[[tls.certificate]]\ncert = \"a\"\nkey = \"b\"\n"
            ),
            ["listen.public_tls"]
        );
        assert_eq!(
            keys(
                "[listen]\npublic = \"127.0.0.1:8443\"\npublic_tls = \"127.0.0.1:8443\"\n[[tls.certificate]]\ncert = \"a\"\nkey = \"b\"\n"
            ),
            ["listen.public_tls"]
        );
    }

    #[test]
    fn tls_keys_without_a_tls_listener_are_refused() {
        assert_eq!(
            keys(
                "[tls]\nredirect_http = true\nhsts_max_age = 60\n[[tls.certificate]]\ncert = \"a\"\nkey = \"b\"\n"
            ),
            ["tls.certificate", "tls.redirect_http", "tls.hsts_max_age"]
        );
    }

    #[test]
    fn a_valid_section_parses_without_reading_its_files() {
        let config = Config::parse(
            "[listen]\npublic_tls = \"127.0.0.1:0\"\n[tls]\nredirect_http = true\nhsts_max_age = 300\n[[tls.certificate]]\ncert = \"a.pem\"\nkey = \"a.key\"\n[[tls.certificate]]\ncert = \"b.pem\"\nkey = \"b.key\"\n",
        )
        .expect("valid");
        assert_eq!(
            config.public_tls,
            Some("127.0.0.1:0".parse().expect("addr"))
        );
        assert_eq!(config.tls.certificates.len(), 2);
        assert_eq!(config.tls.certificates[1].key, PathBuf::from("b.key"));
        assert!(config.tls.redirect_http);
        assert_eq!(config.tls.hsts_max_age, Some(300));
        assert!(config.tls.loaded.is_none());
    }

    #[test]
    fn a_slots_tls_keys_need_its_tls_and_a_name_must_be_one() {
        assert_eq!(
            keys(
                "[slots.blue]\nserver_name = \"b.test\"\n[slots.green]\ntls = false\nca = \"ca.pem\"\n"
            ),
            ["slots.blue.server_name", "slots.green.ca"]
        );
        assert_eq!(
            keys("[slots.blue]\ntls = true\nserver_name = \"not a name\"\nca = \"\"\n"),
            ["slots.blue.server_name", "slots.blue.ca"]
        );
        let config = Config::parse("[slots.green]\ntls = true\n").expect("valid");
        let green = config.slot_tls[Slot::Green.index()]
            .as_ref()
            .expect("green is TLS");
        assert!(green.server_name.is_none() && green.ca.is_none() && green.client.is_none());
        assert!(config.slot_tls[Slot::Blue.index()].is_none());
    }

    #[test]
    fn a_tls_slot_trusts_its_ca_file_and_a_broken_one_is_blamed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (cert, key) = crate::tls::certs::tests::pem(&["up.test"]);
        std::fs::write(dir.path().join("ca.pem"), &cert).expect("write");
        std::fs::write(dir.path().join("key.pem"), &key).expect("write");
        let text = |ca: &str| {
            format!(
                "[slots.blue]\ntls = true\nserver_name = \"up.test\"\nca = {:?}\n",
                dir.path().join(ca)
            )
        };

        let mut good = Config::parse(&text("ca.pem")).expect("valid");
        assert_eq!(read_files(&mut good), []);
        let blue = good.slot_tls[0].as_ref().expect("blue is TLS");
        let client = blue.client.as_ref().expect("a client configuration");
        assert_eq!(client.alpn_protocols, [b"http/1.1".to_vec()]);

        let mut broken = Config::parse(&text("key.pem")).expect("valid");
        let problems = read_files(&mut broken);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].key, "slots.blue.ca");
        assert!(
            problems[0].message.contains("key.pem: no certificate"),
            "{problems:?}"
        );
        assert!(
            broken.slot_tls[0]
                .as_ref()
                .is_some_and(|t| t.client.is_none())
        );
    }

    #[test]
    fn read_files_blames_the_file_at_fault_and_keeps_what_it_read() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (cert, key) = crate::tls::certs::tests::pem(&["a.test"]);
        let (_, other_key) = crate::tls::certs::tests::pem(&["a.test"]);
        for (name, text) in [("a.pem", &cert), ("a.key", &key), ("other.key", &other_key)] {
            std::fs::write(dir.path().join(name), text).expect("write");
        }
        let text = |key: &str| {
            format!(
                "[listen]\npublic_tls = \"127.0.0.1:0\"\n[[tls.certificate]]\ncert = {:?}\nkey = {:?}\n",
                dir.path().join("a.pem"),
                dir.path().join(key)
            )
        };

        let mut good = Config::parse(&text("a.key")).expect("valid");
        assert!(read_files(&mut good).is_empty());
        let loaded = good.tls.loaded.expect("loaded");
        assert_eq!(loaded.list()[0].names, ["a.test"]);

        let mut mismatched = Config::parse(&text("other.key")).expect("valid");
        let problems = read_files(&mut mismatched);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].key, "tls.certificate[0].key");
        assert!(
            problems[0].message.contains("other.key: does not belong"),
            "{problems:?}"
        );
        assert!(mismatched.tls.loaded.is_none());
    }
}
