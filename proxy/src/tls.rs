//! TLS, both ways, on one crypto provider (ring): the proxy's own certificates (`certs`: read
//! from PEM files, checked, chosen per handshake by SNI through `resolver`) with the server
//! configuration that serves them, and the client configurations that reach a TLS peer
//! (`client`: the webhooks now, upstreams later).

pub mod certs;
pub mod client;
mod resolver;

use std::sync::Arc;

use rustls::crypto::CryptoProvider;

pub use certs::Certificates;

/// The one provider every configuration is built on; explicit, so that no other crate's
/// choice of process-wide default can change ours.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
