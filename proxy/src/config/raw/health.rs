//! `[health]`: the background liveness checks and the passive marking down.

use serde::Deserialize;

use super::problems::Problems;
use crate::config::{Health, defaults as d};

#[derive(Debug, Default, Deserialize)]
pub(super) struct RawHealth {
    passive_fall: Option<u32>,
    path: Option<String>,
    interval_ms: Option<u64>,
    timeout_ms: Option<u64>,
    fall: Option<u32>,
    rise: Option<u32>,
}

impl RawHealth {
    pub(super) fn validate(self, p: &mut Problems) -> Health {
        let path = self.path.unwrap_or_else(|| d::HEALTH_PATH.into());
        if !path.starts_with('/') {
            p.push("health.path", "must start with \"/\"");
        }
        Health {
            path,
            interval: p.millis(
                "health.interval_ms",
                self.interval_ms,
                d::HEALTH_INTERVAL_MS,
            ),
            timeout: p.millis("health.timeout_ms", self.timeout_ms, d::HEALTH_TIMEOUT_MS),
            fall: p.at_least_one("health.fall", self.fall, d::HEALTH_FALL),
            rise: p.at_least_one("health.rise", self.rise, d::HEALTH_RISE),
            passive_fall: p.at_least_one("health.passive_fall", self.passive_fall, d::PASSIVE_FALL),
        }
    }
}
