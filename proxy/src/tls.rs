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

/// Why a handshake did not complete: the `reason` label of `tls_handshake_failures`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// Not done within the timeout: a client that connected and sent nothing, or too little.
    Timeout,
    /// The first byte was not a TLS handshake record (plain HTTP, answered 400).
    NotTls,
    /// The client closed the connection before the end.
    Closed,
    /// TLS refused: no protocol version or cipher in common, a malformed message, the
    /// client refused the certificate.
    Failed,
}

impl HandshakeFailure {
    /// In the order of their discriminants (`metrics` indexes by them).
    pub const ALL: [HandshakeFailure; 4] = [
        HandshakeFailure::Timeout,
        HandshakeFailure::NotTls,
        HandshakeFailure::Closed,
        HandshakeFailure::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::NotTls => "not_tls",
            HandshakeFailure::Closed => "closed",
            HandshakeFailure::Failed => "failed",
        }
    }
}
