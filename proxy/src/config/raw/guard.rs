//! `[guard]`: when a release's user traffic is bad enough to pull it back.

use std::time::Duration;

use serde::Deserialize;

use super::problems::Problems;
use crate::config::{GuardCfg, defaults as d};
use crate::http::traffic::MAX_WINDOW_SECS;

#[derive(Debug, Default, Deserialize)]
pub(super) struct RawGuard {
    window_ms: Option<u64>,
    interval_ms: Option<u64>,
    max_failure_ratio: Option<f64>,
    margin: Option<f64>,
    min_requests: Option<u64>,
    bake_ms: Option<u64>,
    answer_from_stable: Option<bool>,
}

impl RawGuard {
    pub(super) fn validate(self, p: &mut Problems) -> GuardCfg {
        let guard = GuardCfg {
            window: p.millis("guard.window_ms", self.window_ms, d::GUARD_WINDOW_MS),
            interval: p.millis("guard.interval_ms", self.interval_ms, d::GUARD_INTERVAL_MS),
            max_failure_ratio: p.ratio(
                "guard.max_failure_ratio",
                self.max_failure_ratio,
                d::GUARD_MAX_FAILURE_RATIO,
            ),
            margin: p.ratio("guard.margin", self.margin, d::GUARD_MARGIN),
            min_requests: p.at_least_one(
                "guard.min_requests",
                self.min_requests,
                d::GUARD_MIN_REQUESTS,
            ),
            bake: Duration::from_millis(self.bake_ms.unwrap_or(d::GUARD_BAKE_MS)),
            answer_from_stable: self
                .answer_from_stable
                .unwrap_or(d::GUARD_ANSWER_FROM_STABLE),
        };
        // The traffic windows keep no more seconds than this.
        if guard.window > Duration::from_secs(MAX_WINDOW_SECS) {
            p.push(
                "guard.window_ms",
                format!("at most {MAX_WINDOW_SECS} seconds"),
            );
        }
        guard
    }
}
