//! `[limits]`: what a client may send to the public listener, and for how long.

use serde::Deserialize;

use super::problems::Problems;
use crate::config::{Limits, defaults as d};

#[derive(Debug, Default, Deserialize)]
pub(super) struct RawLimits {
    header_read_timeout_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    body_timeout_ms: Option<u64>,
    max_header_bytes: Option<usize>,
    max_body_bytes: Option<u64>,
    max_connections: Option<usize>,
    tls_handshake_timeout_ms: Option<u64>,
}

impl RawLimits {
    pub(super) fn validate(self, p: &mut Problems) -> Limits {
        let limits = Limits {
            header_read_timeout: p.millis(
                "limits.header_read_timeout_ms",
                self.header_read_timeout_ms,
                d::HEADER_READ_TIMEOUT_MS,
            ),
            idle_timeout: p.millis(
                "limits.idle_timeout_ms",
                self.idle_timeout_ms,
                d::IDLE_TIMEOUT_MS,
            ),
            body_timeout: p.millis(
                "limits.body_timeout_ms",
                self.body_timeout_ms,
                d::BODY_TIMEOUT_MS,
            ),
            max_header_bytes: self.max_header_bytes.unwrap_or(d::MAX_HEADER_BYTES),
            max_body_bytes: self.max_body_bytes.unwrap_or(d::MAX_BODY_BYTES),
            max_connections: p.at_least_one(
                "limits.max_connections",
                self.max_connections,
                d::MAX_CONNECTIONS,
            ),
            tls_handshake_timeout: p.millis(
                "limits.tls_handshake_timeout_ms",
                self.tls_handshake_timeout_ms,
                d::TLS_HANDSHAKE_TIMEOUT_MS,
            ),
        };
        if limits.max_header_bytes < 1024 {
            p.push("limits.max_header_bytes", "must be at least 1024");
        }
        // The connection permits are a semaphore, which cannot hold more.
        if limits.max_connections > tokio::sync::Semaphore::MAX_PERMITS {
            p.push(
                "limits.max_connections",
                format!("at most {}", tokio::sync::Semaphore::MAX_PERMITS),
            );
        }
        limits
    }
}
