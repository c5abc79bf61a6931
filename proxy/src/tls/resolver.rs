//! Chooses the certificate of a handshake from the name the client asked for (SNI): a
//! certificate naming it exactly, else one with a wildcard for it, else the first
//! certificate, which also serves clients that send no name (an address, not a name).

use std::collections::HashMap;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

#[derive(Debug)]
pub struct SniResolver {
    /// In configuration order; the first is the default.
    keys: Vec<Arc<CertifiedKey>>,
    /// Lowercased names (`shop.example`, `*.example`) to their index in `keys`; a name two
    /// certificates share goes to the first.
    by_name: HashMap<String, usize>,
}

impl SniResolver {
    /// Each certificate with the names it serves, in configuration order.
    pub fn new(entries: impl IntoIterator<Item = (Vec<String>, Arc<CertifiedKey>)>) -> SniResolver {
        let mut keys = Vec::new();
        let mut by_name = HashMap::new();
        for (index, (names, key)) in entries.into_iter().enumerate() {
            keys.push(key);
            for name in names {
                by_name.entry(name.to_ascii_lowercase()).or_insert(index);
            }
        }
        SniResolver { keys, by_name }
    }

    /// The index of the certificate for `server_name`; `None` only when there is none at all.
    pub fn choose(&self, server_name: Option<&str>) -> Option<usize> {
        let chosen = server_name.and_then(|name| {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            self.by_name.get(&name).copied().or_else(|| {
                // A wildcard covers one label: `*.example` serves `shop.example`, not
                // `example` nor `a.shop.example` (RFC 6125 section 6.4.3).
                let (_, parent) = name.split_once('.')?;
                self.by_name.get(&format!("*.{parent}")).copied()
            })
        });
        chosen.or((!self.keys.is_empty()).then_some(0))
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let index = self.choose(client_hello.server_name())?;
        Some(Arc::clone(&self.keys[index]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys are never used by `choose`: any placeholder will do.
    fn resolver(names: &[&[&str]]) -> SniResolver {
        let key = crate::tls::certs::tests::self_signed(&["placeholder.test"]).key;
        SniResolver::new(
            names
                .iter()
                .map(|ns| (ns.iter().map(|n| n.to_string()).collect(), Arc::clone(&key))),
        )
    }

    #[test]
    fn an_exact_name_wins_then_a_wildcard_then_the_first() {
        let r = resolver(&[
            &["default.test"],
            &["*.shop.test"],
            &["www.shop.test", "API.test"],
        ]);
        assert_eq!(r.choose(Some("www.shop.test")), Some(2));
        assert_eq!(r.choose(Some("api.TEST")), Some(2), "names ignore case");
        assert_eq!(r.choose(Some("cart.shop.test")), Some(1));
        assert_eq!(
            r.choose(Some("cart.shop.test.")),
            Some(1),
            "a root dot is no difference"
        );
        assert_eq!(
            r.choose(Some("a.cart.shop.test")),
            Some(0),
            "a wildcard covers one label"
        );
        assert_eq!(r.choose(Some("shop.test")), Some(0));
        assert_eq!(r.choose(Some("unknown.test")), Some(0));
        assert_eq!(r.choose(None), Some(0), "no SNI: the default");
    }

    #[test]
    fn a_name_two_certificates_share_goes_to_the_first() {
        let r = resolver(&[&["a.test"], &["b.test", "shared.test"], &["shared.test"]]);
        assert_eq!(r.choose(Some("shared.test")), Some(1));
    }

    #[test]
    fn no_certificate_chooses_none() {
        assert_eq!(resolver(&[]).choose(Some("a.test")), None);
    }
}
