//! `[forwarding]`: whose `X-Forwarded-For` is trusted, and when a request is
//! retried on the other slot.

use serde::Deserialize;

use super::problems::Problems;
use crate::config::{Forwarding, defaults as d};

#[derive(Debug, Default, Deserialize)]
pub(super) struct RawForwarding {
    trusted_hops: Option<Vec<String>>,
    retry: Option<bool>,
    retry_writes: Option<bool>,
}

impl RawForwarding {
    pub(super) fn validate(self, p: &mut Problems) -> Forwarding {
        let hops = self
            .trusted_hops
            .unwrap_or_else(|| d::TRUSTED_HOPS.iter().map(|s| s.to_string()).collect());
        let mut trusted_hops = Vec::with_capacity(hops.len());
        for (i, hop) in hops.iter().enumerate() {
            match hop.parse::<std::net::IpAddr>() {
                Ok(ip) => trusted_hops.push(ip),
                Err(_) => p.push(
                    format!("forwarding.trusted_hops[{i}]"),
                    format!("{hop:?} is not an IP address"),
                ),
            }
        }
        Forwarding {
            trusted_hops,
            retry: self.retry.unwrap_or(d::RETRY),
            retry_writes: self.retry_writes.unwrap_or(d::RETRY_WRITES),
        }
    }
}
