//! Where a request's one outcome is counted: the guard's windows and the
//! totals (`traffic`) and the metrics, from one call so they cannot disagree.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::http::outcome::Outcome;
use crate::http::traffic::Traffic;
use crate::metrics::Metrics;
use crate::slot::Slot;

/// Counts each request's outcome in both places.
pub struct Tally {
    pub traffic: Arc<Traffic>,
    pub metrics: Arc<Metrics>,
}

impl Tally {
    /// Counts a request's outcome on `slot`; `latency` is the time to the
    /// response head (zero without one), `at` when the outcome was known.
    pub fn request(&self, slot: Slot, outcome: Outcome, latency: Duration, at: Instant) {
        if self.traffic.record(slot, outcome, latency, at) {
            self.metrics.watched_failure();
        }
        self.metrics.record(slot, outcome, latency.as_secs_f64());
    }
}
