//! What user requests did, per slot: a sliding window of per-second buckets
//! (count, 5xx answers, upstream failures, latency) for the guard, and
//! cumulative totals that the incident and budget accounting sample, and the
//! guard's tripwire on the slot it watches. Lock free: the request path does
//! a few atomic adds. Probe requests never pass through here (they go
//! straight to the upstreams), nor do requests that failed by the client's
//! doing or the proxy's (`Outcome::counts`).

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

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
    tripwire: Tripwire,
}

/// No slot is watched (`Tripwire::watched`).
const UNWATCHED: u8 = 0;

/// The guard's limit, checked as each outcome of the slot it watches comes
/// in, so that the guard acts on the request that crosses it rather than on
/// its next tick. Armed by the controller when a canary starts or a bake
/// begins; counts from then on. The periodic evaluation stays the judge
/// (it slides the window and compares with the stable release): the
/// tripwire only wakes it.
struct Tripwire {
    /// `UNWATCHED`, or 1 + the index of the watched slot. Stored last when
    /// armed (Release), so a request that sees the slot sees the limits.
    watched: AtomicU8,
    count: AtomicU64,
    failures: AtomicU64,
    min_requests: AtomicU64,
    /// `max_failure_ratio` as `f64` bits.
    max_ratio: AtomicU64,
    /// Of `failures`, those the stable release answered for (the user got
    /// its answer instead).
    answered_by_stable: AtomicU64,
    /// Set by the request that crossed the limit, so that one wake is sent
    /// per crossing; cleared by the guard when it found nothing to act on.
    tripped: AtomicBool,
    /// Wakes the guard's loop; a wake sent while it is busy is kept.
    wake: Notify,
}

impl Tripwire {
    fn new() -> Tripwire {
        Tripwire {
            watched: AtomicU8::new(UNWATCHED),
            count: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            answered_by_stable: AtomicU64::new(0),
            min_requests: AtomicU64::new(u64::MAX),
            max_ratio: AtomicU64::new(f64::INFINITY.to_bits()),
            tripped: AtomicBool::new(false),
            wake: Notify::new(),
        }
    }

    /// One outcome of `slot`: counted if `slot` is watched; the request
    /// that crosses the limit wakes the guard. `true` for a failure of the
    /// watched slot.
    fn record(&self, slot: Slot, failed: bool) -> bool {
        // The one check every request pays while nothing is watched.
        if self.watched.load(Ordering::Acquire) != slot.index() as u8 + 1 {
            return false;
        }
        let count = self.count.fetch_add(1, Ordering::AcqRel) + 1;
        let failures = if failed {
            self.failures.fetch_add(1, Ordering::AcqRel) + 1
        } else {
            self.failures.load(Ordering::Acquire)
        };
        if count >= self.min_requests.load(Ordering::Relaxed)
            && failures as f64 / count as f64
                > f64::from_bits(self.max_ratio.load(Ordering::Relaxed))
            && !self.tripped.swap(true, Ordering::AcqRel)
        {
            self.wake.notify_one();
        }
        failed
    }
}

/// What the watched slot did since the watch began, for the guard's event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct WatchCounts {
    pub requests: u64,
    pub failures: u64,
    /// Failures the stable release answered for.
    pub answered_by_stable: u64,
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
            tripwire: Tripwire::new(),
        }
    }

    /// Watches `slot` from now: its outcomes are counted from zero, and the
    /// first one that brings at least `min_requests` over
    /// `max_failure_ratio` wakes `tripped`.
    pub fn watch(&self, slot: Slot, min_requests: u64, max_failure_ratio: f64) {
        let t = &self.tripwire;
        t.watched.store(UNWATCHED, Ordering::Release);
        t.count.store(0, Ordering::Relaxed);
        t.failures.store(0, Ordering::Relaxed);
        t.answered_by_stable.store(0, Ordering::Relaxed);
        self.watch_limits(min_requests, max_failure_ratio);
        t.tripped.store(false, Ordering::Relaxed);
        t.watched.store(slot.index() as u8 + 1, Ordering::Release);
    }

    /// New limits for the slot watched (a reload changed them); its counts go on.
    pub fn watch_limits(&self, min_requests: u64, max_failure_ratio: f64) {
        let t = &self.tripwire;
        t.min_requests.store(min_requests, Ordering::Relaxed);
        t.max_ratio
            .store(max_failure_ratio.to_bits(), Ordering::Relaxed);
    }

    /// Nothing is watched: requests pay one atomic load.
    pub fn unwatch(&self) {
        self.tripwire.watched.store(UNWATCHED, Ordering::Release);
    }

    /// The slot watched, if any.
    pub fn watched(&self) -> Option<Slot> {
        match self.tripwire.watched.load(Ordering::Acquire) {
            UNWATCHED => None,
            n => Slot::ALL.get(usize::from(n - 1)).copied(),
        }
    }

    /// The counts of the current (or last) watch.
    pub fn watch_counts(&self) -> WatchCounts {
        let t = &self.tripwire;
        WatchCounts {
            requests: t.count.load(Ordering::Acquire),
            failures: t.failures.load(Ordering::Acquire),
            answered_by_stable: t.answered_by_stable.load(Ordering::Acquire),
        }
    }

    /// The stable release answered for a failed request of `watched`.
    pub fn answered_by_stable(&self, watched: Slot) {
        let t = &self.tripwire;
        if t.watched.load(Ordering::Acquire) == watched.index() as u8 + 1 {
            t.answered_by_stable.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Waits until a request crosses the watched slot's limit (at once if
    /// one did since the last wait). Cancel-safe.
    pub async fn tripped(&self) {
        self.tripwire.wake.notified().await;
    }

    /// The guard looked and found nothing to act on: the next request over
    /// the limit wakes it again.
    pub fn rearm(&self) {
        self.tripwire.tripped.store(false, Ordering::Release);
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
    /// Outcomes that do not judge the slot are not recorded; one that does
    /// not judge the release (a failed TLS handshake) is counted in the
    /// totals of what users saw, not in the guard's window. `true` for a
    /// failure of the slot the guard watches.
    pub fn record(&self, slot: Slot, outcome: Outcome, latency: Duration, at: Instant) -> bool {
        if !outcome.counts() {
            return false;
        }
        let s = &self.slots[slot.index()];
        s.requests.fetch_add(1, Ordering::Relaxed);
        if outcome.is_failure() {
            s.failures.fetch_add(1, Ordering::Relaxed);
        }
        outcome.judges_release() && self.judge(slot, outcome, latency, at)
    }

    /// Charges `slot` with an attempt whose failure the user did not see
    /// (another slot answered): the guard judges it, the totals of what
    /// users saw (incidents, budget) do not count it. A client's fault or
    /// the proxy's is not charged, nor what does not judge the release
    /// (`Outcome::judges_release`).
    pub fn charge(&self, slot: Slot, outcome: Outcome, latency: Duration, at: Instant) -> bool {
        if !outcome.judges_release() {
            return false;
        }
        self.judge(slot, outcome, latency, at)
    }

    /// The window and the tripwire: what the guard judges.
    fn judge(&self, slot: Slot, outcome: Outcome, latency: Duration, at: Instant) -> bool {
        let s = &self.slots[slot.index()];
        let now = self.second_of(at);
        let bucket = &s.buckets[(now % BUCKETS as u64) as usize];
        let seen = bucket.second.load(Ordering::Acquire);
        if seen > now {
            // A request whose body outlived the whole history (its outcome
            // is recorded for the second of its head): its bucket holds a
            // later second now, and the window has long moved past it.
            return false;
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
        // Last: the window holds this outcome when the guard wakes to it.
        self.tripwire.record(slot, outcome.is_failure())
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

    #[test]
    fn a_failed_handshake_is_what_users_saw_but_not_the_releases_doing() {
        // Arrange
        let t = Traffic::new();
        let handshake = Outcome::Failed(FailureKind::Handshake);

        // Act
        let recorded = t.record(Slot::Green, handshake, Duration::ZERO, Instant::now());
        let charged = t.charge(Slot::Green, handshake, Duration::ZERO, Instant::now());

        // Assert
        assert!(!recorded && !charged);
        assert_eq!(
            t.window(Slot::Green, Duration::from_secs(30)),
            WindowStats::default(),
            "the guard's window holds nothing"
        );
        assert_eq!(
            t.totals(Slot::Green),
            Totals {
                requests: 1,
                failures: 1
            },
            "the user's failed request is counted"
        );
    }

    fn fail(t: &Traffic, slot: Slot) {
        t.record(slot, Outcome::Answered(500), Duration::ZERO, Instant::now());
    }

    fn succeed(t: &Traffic, slot: Slot) {
        t.record(slot, Outcome::Answered(200), Duration::ZERO, Instant::now());
    }

    /// Whether the guard was woken (the wake is then taken). Paused time:
    /// the millisecond passes at once when nothing wakes.
    async fn woken(t: &Traffic) -> bool {
        tokio::time::timeout(Duration::from_millis(1), t.tripped())
            .await
            .is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn the_request_that_crosses_the_limit_wakes_the_guard_once() {
        // Arrange: 20 requests to judge, 2% limit.
        let t = Traffic::new();
        t.watch(Slot::Green, 20, 0.02);

        // Act / Assert: 19 failures are not enough to judge ...
        for _ in 0..19 {
            fail(&t, Slot::Green);
        }
        assert!(!woken(&t).await);
        // ... the 20th crosses the line, and wakes the guard once.
        fail(&t, Slot::Green);
        assert!(woken(&t).await);
        fail(&t, Slot::Green);
        assert!(!woken(&t).await);
        // Re-armed (the guard found nothing to act on): the next one wakes it.
        t.rearm();
        fail(&t, Slot::Green);
        assert!(woken(&t).await);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_at_the_limit_do_not_wake_the_guard_and_one_more_does() {
        let t = Traffic::new();
        t.watch(Slot::Green, 20, 0.02);
        for _ in 0..98 {
            succeed(&t, Slot::Green);
        }
        fail(&t, Slot::Green);
        fail(&t, Slot::Green);
        assert!(!woken(&t).await, "2 of 100 is at the 2% limit, not over");

        fail(&t, Slot::Green);

        assert!(woken(&t).await, "3 of 101 is over it");
    }

    #[tokio::test(start_paused = true)]
    async fn only_the_watched_slot_counts_and_only_while_watched() {
        let t = Traffic::new();
        for _ in 0..50 {
            fail(&t, Slot::Green);
        }
        assert!(!woken(&t).await, "nothing watched");
        assert_eq!(t.watched(), None);

        t.watch(Slot::Green, 20, 0.02);
        for _ in 0..50 {
            fail(&t, Slot::Blue);
        }
        assert!(!woken(&t).await, "the stable slot is not watched");
        assert_eq!(t.watched(), Some(Slot::Green));

        t.unwatch();
        for _ in 0..50 {
            fail(&t, Slot::Green);
        }
        assert!(!woken(&t).await, "no longer watched");
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_watch_counts_from_zero() {
        // Green's earlier release failed 19 times; a new canary starts on it.
        let t = Traffic::new();
        t.watch(Slot::Green, 20, 0.02);
        for _ in 0..19 {
            fail(&t, Slot::Green);
        }

        t.watch(Slot::Green, 20, 0.02);
        fail(&t, Slot::Green);

        assert!(!woken(&t).await, "1 of 1 since the watch began");
    }

    #[tokio::test(start_paused = true)]
    async fn a_clients_fault_is_never_charged_to_the_watched_slot() {
        // Arrange: green is watched, one request enough to judge.
        let t = Traffic::new();
        t.watch(Slot::Green, 1, 0.02);

        // Act
        let watched = t.charge(
            Slot::Green,
            Outcome::Failed(FailureKind::ClientTimeout),
            Duration::ZERO,
            Instant::now(),
        );

        // Assert: neither the window nor the tripwire saw it.
        assert!(!watched);
        assert_eq!(t.window(Slot::Green, Duration::from_secs(30)).count, 0);
        assert_eq!(t.watch_counts(), WatchCounts::default());
        assert!(!woken(&t).await);
    }

    #[tokio::test(start_paused = true)]
    async fn a_charged_attempt_is_judged_but_not_counted_as_what_users_saw() {
        // Arrange: green is watched; blue answered for its failure.
        let t = Traffic::new();
        t.watch(Slot::Green, 1, 0.02);

        // Act
        let watched = t.charge(
            Slot::Green,
            Outcome::Answered(500),
            Duration::ZERO,
            Instant::now(),
        );
        t.answered_by_stable(Slot::Green);
        t.answered_by_stable(Slot::Blue);

        // Assert: the guard sees it (window, tripwire), incidents and budget do not.
        assert!(watched);
        assert_eq!(t.window(Slot::Green, Duration::from_secs(30)).failures(), 1);
        assert_eq!(t.totals(Slot::Green), Totals::default());
        assert!(woken(&t).await);
        assert_eq!(
            t.watch_counts(),
            WatchCounts {
                requests: 1,
                failures: 1,
                answered_by_stable: 1
            }
        );
    }
}
