//! `[timeouts]`: how long the proxy waits on upstreams and on its own drain.

use serde::Deserialize;

use super::problems::Problems;
use crate::config::{Timeouts, defaults as d};

#[derive(Debug, Default, Deserialize)]
pub(super) struct RawTimeouts {
    connect_ms: Option<u64>,
    response_header_ms: Option<u64>,
    upstream_idle_ms: Option<u64>,
    upstream_read_ms: Option<u64>,
    shutdown_grace_ms: Option<u64>,
}

impl RawTimeouts {
    pub(super) fn validate(self, p: &mut Problems) -> Timeouts {
        Timeouts {
            connect: p.millis("timeouts.connect_ms", self.connect_ms, d::CONNECT_MS),
            response_header: p.millis(
                "timeouts.response_header_ms",
                self.response_header_ms,
                d::RESPONSE_HEADER_MS,
            ),
            upstream_idle: p.millis(
                "timeouts.upstream_idle_ms",
                self.upstream_idle_ms,
                d::UPSTREAM_IDLE_MS,
            ),
            upstream_read: p.millis(
                "timeouts.upstream_read_ms",
                self.upstream_read_ms,
                d::UPSTREAM_READ_MS,
            ),
            shutdown_grace: p.millis(
                "timeouts.shutdown_grace_ms",
                self.shutdown_grace_ms,
                d::SHUTDOWN_GRACE_MS,
            ),
        }
    }
}
