//! `[gate]`: how a slot is probed before it takes traffic.

use serde::Deserialize;

use super::problems::Problems;
use crate::config::{Gate, defaults as d};

#[derive(Debug, Default, Deserialize)]
pub(super) struct RawGate {
    passes: Option<u32>,
    deadline_ms: Option<u64>,
    request_timeout_ms: Option<u64>,
}

impl RawGate {
    pub(super) fn validate(self, p: &mut Problems) -> Gate {
        Gate {
            passes: p.at_least_one("gate.passes", self.passes, d::GATE_PASSES),
            deadline: p.millis("gate.deadline_ms", self.deadline_ms, d::GATE_DEADLINE_MS),
            request_timeout: p.millis(
                "gate.request_timeout_ms",
                self.request_timeout_ms,
                d::PROBE_REQUEST_TIMEOUT_MS,
            ),
        }
    }
}
