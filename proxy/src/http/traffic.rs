//! What user requests did, per slot: a sliding window of per-second buckets
//! (count, 5xx answers, upstream failures, latency) for the guard, and
//! cumulative totals that the incident and budget accounting sample. Lock
//! free: the request path does a few atomic adds. Probe requests never pass
//! through here (they go straight to the upstreams), nor do requests that
//! failed by the client's doing or the proxy's (`Outcome::counts`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::http::outcome::Outcome;
use crate::slot::Slot;

/// Seconds of history kept; the guard's window may not be longer.
pub const MAX_WINDOW_SECS: u64 = 600;
const BUCKETS: usize = MAX_WINDOW_SECS as usize + 1;

#[derive(Default)]
struct Bucket {
    /// The second (since `Traffic` was made) these counts belong to.
    second: AtomicU64,
    count: AtomicU64,
    server_errors: AtomicU64,
    upstream_failures: AtomicU64,
    latency_us: AtomicU64,
}

/// Sums over a window of one slot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WindowStats {
    pub count: u64,
    pub server_errors: u64,
    pub upstream_failures: u64,
    pub latency_us: u64,
}

impl WindowStats {
    pub fn failures(&self) -> u64 {
        self.server_errors + self.upstream_failures
    }

    pub fn failure_ratio(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.failures() as f64 / self.count as f64
        }
    }
}

/// Cumulative counts since start, for samplers that diff them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub requests: u64,
    pub failures: u64,
}

struct SlotTraffic {
    buckets: Box<[Bucket]>,
    requests: AtomicU64,
    failures: AtomicU64,
}

pub struct Traffic {
    started: Instant,
    slots: [SlotTraffic; 2],
}

impl Default for Traffic {
    fn default() -> Self {
        Traffic::new()
    }
}

impl Traffic {
    pub fn new() -> Traffic {
        let slot = || SlotTraffic {
            buckets: (0..BUCKETS).map(|_| Bucket::default()).collect(),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        };
        Traffic {
            started: Instant::now(),
            slots: [slot(), slot()],
        }
    }

    fn now_second(&self) -> u64 {
        self.second_of(Instant::now())
    }

    fn second_of(&self, at: Instant) -> u64 {
        // +1 so that second 0 never matches a fresh bucket's zero.
        at.saturating_duration_since(self.started).as_secs() + 1
    }

    /// Records one user request's outcome, which came `at` (the caller's
    /// reading of the clock for the latency: one read fewer per request).
    /// Outcomes that do not judge the slot are not recorded.
    pub fn record(&self, slot: Slot, outcome: Outcome, latency: Duration, at: Instant) {
        if !outcome.counts() {
            return;
        }
        let s = &self.slots[slot.index()];
        s.requests.fetch_add(1, Ordering::Relaxed);
        if outcome.is_failure() {
            s.failures.fetch_add(1, Ordering::Relaxed);
        }
        let now = self.second_of(at);
        let bucket = &s.buckets[(now % BUCKETS as u64) as usize];
        let seen = bucket.second.load(Ordering::Acquire);
        if seen > now {
            // A request whose body outlived the whole history (its outcome
            // is recorded for the second of its head): its bucket holds a
            // later second now, and the window has long moved past it.
            return;
        }
        if seen != now
            && bucket
                .second
                .compare_exchange(seen, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // This request opened a new second: the bucket's old counts are
            // a window ago. A racing request may land in the old counts and
            // be lost; one request in a second-boundary race is acceptable.
            bucket.count.store(0, Ordering::Relaxed);
            bucket.server_errors.store(0, Ordering::Relaxed);
            bucket.upstream_failures.store(0, Ordering::Relaxed);
            bucket.latency_us.store(0, Ordering::Relaxed);
        }
        bucket.count.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Outcome::Answered(status) if status >= 500 => {
                bucket.server_errors.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Failed(_) => {
                bucket.upstream_failures.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Answered(_) => {}
        }
        bucket.latency_us.fetch_add(
            latency.as_micros().min(u64::MAX as u128) as u64,
            Ordering::Relaxed,
        );
    }

    /// The last `window` (whole seconds, the current one included) of `slot`.
    pub fn window(&self, slot: Slot, window: Duration) -> WindowStats {
        let secs = window.as_secs().clamp(1, MAX_WINDOW_SECS);
        let now = self.now_second();
        let oldest = now.saturating_sub(secs - 1);
        let mut stats = WindowStats::default();
        for bucket in self.slots[slot.index()].buckets.iter() {
            let second = bucket.second.load(Ordering::Acquire);
            if second >= oldest && second <= now {
                stats.count += bucket.count.load(Ordering::Relaxed);
                stats.server_errors += bucket.server_errors.load(Ordering::Relaxed);
                stats.upstream_failures += bucket.upstream_failures.load(Ordering::Relaxed);
                stats.latency_us += bucket.latency_us.load(Ordering::Relaxed);
            }
        }
        stats
    }

    pub fn totals(&self, slot: Slot) -> Totals {
        let s = &self.slots[slot.index()];
        Totals {
            requests: s.requests.load(Ordering::Relaxed),
            failures: s.failures.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::outcome::FailureKind;

    #[test]
    fn counts_outcomes_per_slot_in_the_window() {
        let t = Traffic::new();
        for _ in 0..8 {
            t.record(
                Slot::Green,
                Outcome::Answered(200),
                Duration::from_millis(2),
                Instant::now(),
            );
        }
        t.record(
            Slot::Green,
            Outcome::Answered(503),
            Duration::from_millis(2),
            Instant::now(),
        );
        t.record(
            Slot::Green,
            Outcome::Failed(FailureKind::Connect),
            Duration::ZERO,
            Instant::now(),
        );
        t.record(
            Slot::Blue,
            Outcome::Answered(404),
            Duration::ZERO,
            Instant::now(),
        );
        let green = t.window(Slot::Green, Duration::from_secs(30));
        assert_eq!(green.count, 10);
        assert_eq!(green.server_errors, 1);
        assert_eq!(green.upstream_failures, 1);
        assert!((green.failure_ratio() - 0.2).abs() < 1e-9);
        assert_eq!(t.window(Slot::Blue, Duration::from_secs(30)).failures(), 0);
        assert_eq!(
            t.totals(Slot::Green),
            Totals {
                requests: 10,
                failures: 2
            }
        );
    }

    #[test]
    fn the_clients_faults_and_the_proxys_are_not_the_slots() {
        let t = Traffic::new();
        for kind in [
            FailureKind::ClientTimeout,
            FailureKind::TooLarge,
            FailureKind::ClientBody,
            FailureKind::ShuttingDown,
        ] {
            t.record(
                Slot::Blue,
                Outcome::Failed(kind),
                Duration::ZERO,
                Instant::now(),
            );
        }
        t.record(
            Slot::Blue,
            Outcome::Failed(FailureKind::Body),
            Duration::ZERO,
            Instant::now(),
        );
        let blue = t.window(Slot::Blue, Duration::from_secs(30));
        assert_eq!((blue.count, blue.upstream_failures), (1, 1));
        assert_eq!(
            t.totals(Slot::Blue),
            Totals {
                requests: 1,
                failures: 1
            }
        );
    }
}
