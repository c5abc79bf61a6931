//! `[incidents]`: when failed user requests open an incident and when a
//! quiet period closes it.

use serde::Deserialize;

use super::problems::Problems;
use crate::config::{IncidentsCfg, defaults as d};

#[derive(Debug, Default, Deserialize)]
pub(super) struct RawIncidents {
    failure_threshold: Option<u64>,
    quiet_ms: Option<u64>,
}

impl RawIncidents {
    pub(super) fn validate(self, p: &mut Problems) -> IncidentsCfg {
        IncidentsCfg {
            failure_threshold: p.at_least_one(
                "incidents.failure_threshold",
                self.failure_threshold,
                d::INCIDENT_FAILURES,
            ),
            quiet: p.millis("incidents.quiet_ms", self.quiet_ms, d::INCIDENT_QUIET_MS),
        }
    }
}
