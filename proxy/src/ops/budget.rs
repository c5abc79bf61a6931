//! The SLA's error budget: which minutes were bad (too many failed user
//! requests, or no healthy upstream to serve them), counted per calendar
//! year (UTC), with hourly aggregates of the last 30 days for availability.
//! Persisted in `<data_dir>/budget.json`, so a restart keeps the count.
//!
//! The accounting is pure (`Meter`, `Ledger`) over explicit times and
//! cumulative totals, so tests drive it with their own clock; `run` is the
//! only part that reads the wall clock.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::config::SlaCfg;
use crate::error::ProxyError;
use crate::http::routing::Router;
use crate::http::traffic::{Totals, Traffic};
use crate::metrics::Metrics;
use crate::persist;
use crate::slot::Slot;
use crate::ticker::Ticker;

/// How often the traffic counters and the routing health are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// Hourly aggregates older than this are dropped.
pub const HISTORY_DAYS: i64 = 30;
/// How often the heartbeat (the last time the proxy served) is saved
/// between minutes: a crash loses at most this much of it.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(10);
/// Years of bad-minute counts kept (the current one and a few before it).
const YEARS_KEPT: usize = 5;
const VERSION: u32 = 1;
const MINUTE: i64 = 60;
const HOUR: i64 = 3600;

/// Start (unix seconds) of the UTC minute holding `at`.
pub fn minute_start(at: OffsetDateTime) -> i64 {
    let t = at.unix_timestamp();
    t - t.rem_euclid(MINUTE)
}

fn hour_start(minute: i64) -> i64 {
    minute - minute.rem_euclid(HOUR)
}

fn year_of(unix: i64) -> i32 {
    OffsetDateTime::from_unix_timestamp(unix)
        .map(|t| t.year())
        .unwrap_or(1970)
}

/// What happened to user requests during one minute (or the observed part
/// of it).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MinuteCounts {
    pub requests: u64,
    pub failures: u64,
    /// At some sample during the minute the slot serving users was down
    /// (and so was the other one, or traffic would have moved).
    pub no_healthy_upstream: bool,
}

impl MinuteCounts {
    /// The SLA's definition of a bad minute.
    pub fn is_bad(&self, bad_minute_ratio: f64) -> bool {
        self.no_healthy_upstream
            || (self.requests > 0
                && self.failures as f64 >= bad_minute_ratio * self.requests as f64)
    }

    fn merge(&mut self, other: MinuteCounts) {
        self.requests += other.requests;
        self.failures += other.failures;
        self.no_healthy_upstream |= other.no_healthy_upstream;
    }
}

/// A minute that has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClosedMinute {
    /// Unix seconds of its start.
    pub start: i64,
    pub counts: MinuteCounts,
}

/// The minute being observed: turns samples of cumulative totals into
/// per-minute counts.
#[derive(Debug, Clone)]
pub struct Meter {
    open: ClosedMinute,
    /// The totals at the last sample; `None` before the first.
    last: Option<Totals>,
}

impl Meter {
    pub fn new(now: OffsetDateTime) -> Meter {
        Meter {
            open: ClosedMinute {
                start: minute_start(now),
                counts: MinuteCounts::default(),
            },
            last: None,
        }
    }

    /// Takes one sample. Requests since the last sample count in the minute
    /// that was open (they happened before `now`); the health seen at `now`
    /// counts in the minute holding `now`. Returns the minute that ended.
    pub fn sample(
        &mut self,
        now: OffsetDateTime,
        totals: Totals,
        serving_healthy: bool,
    ) -> Option<ClosedMinute> {
        let delta = match self.last {
            // Totals only grow within a process; smaller means a new counter.
            Some(last) if totals.requests >= last.requests => Totals {
                requests: totals.requests - last.requests,
                failures: totals.failures.saturating_sub(last.failures),
            },
            Some(_) => totals,
            // Counts from before the meter existed are not this minute's.
            None => Totals::default(),
        };
        self.last = Some(totals);
        self.open.counts.requests += delta.requests;
        self.open.counts.failures += delta.failures;
        let minute = minute_start(now);
        // A clock stepping back keeps the open minute rather than reopen an old one.
        let closed = (minute > self.open.start).then(|| {
            std::mem::replace(
                &mut self.open,
                ClosedMinute {
                    start: minute,
                    counts: MinuteCounts::default(),
                },
            )
        });
        if !serving_healthy {
            self.open.counts.no_healthy_upstream = true;
        }
        closed
    }

    /// Ends the open minute early (at shutdown); the next process's meter
    /// merges the rest of it through `Ledger::fold`.
    pub fn flush(&mut self) -> ClosedMinute {
        let start = self.open.start;
        std::mem::replace(
            &mut self.open,
            ClosedMinute {
                start,
                counts: MinuteCounts::default(),
            },
        )
    }
}

/// Sums of one hour's closed minutes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HourCounts {
    /// Minutes the proxy was running and watching.
    pub observed: u32,
    pub bad: u32,
    pub requests: u64,
    pub failures: u64,
}

/// The persisted accounting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ledger {
    pub version: u32,
    /// Bad minutes per calendar year (UTC).
    pub used_by_year: BTreeMap<i32, u64>,
    /// Hour start (unix seconds) -> its closed minutes, last `HISTORY_DAYS`.
    pub hours: BTreeMap<i64, HourCounts>,
    /// The last minute folded in, so that the rest of a minute split by a
    /// restart merges into it instead of counting twice.
    pub last_minute: Option<(i64, MinuteCounts)>,
    /// The last time (unix seconds) a proxy was serving: written with every
    /// save, so the next start knows how long nothing served.
    #[serde(default)]
    pub heartbeat: Option<i64>,
}

/// A gap in which no proxy served, found at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Downtime {
    pub from: OffsetDateTime,
    pub to: OffsetDateTime,
    /// Minutes of the gap that newly count against the budget.
    pub bad_minutes: u64,
}

impl Default for Ledger {
    fn default() -> Self {
        Ledger {
            version: VERSION,
            used_by_year: BTreeMap::new(),
            hours: BTreeMap::new(),
            last_minute: None,
            heartbeat: None,
        }
    }
}

impl Ledger {
    /// Adds a closed minute; returns whether it newly became bad.
    pub fn fold(&mut self, minute: ClosedMinute, bad_minute_ratio: f64) -> bool {
        let hour = self.hours.entry(hour_start(minute.start)).or_default();
        hour.requests += minute.counts.requests;
        hour.failures += minute.counts.failures;
        let (was_bad, merged) = match self.last_minute {
            Some((start, mut counts)) if start == minute.start => {
                let was_bad = counts.is_bad(bad_minute_ratio);
                counts.merge(minute.counts);
                (was_bad, counts)
            }
            _ => {
                hour.observed += 1;
                (false, minute.counts)
            }
        };
        let newly_bad = !was_bad && merged.is_bad(bad_minute_ratio);
        if newly_bad {
            hour.bad += 1;
            *self.used_by_year.entry(year_of(minute.start)).or_default() += 1;
        }
        if self
            .last_minute
            .is_none_or(|(start, _)| start <= minute.start)
        {
            self.last_minute = Some((minute.start, merged));
        }
        newly_bad
    }

    /// Counts the gap since the last heartbeat as bad: every minute it
    /// touches, the one the proxy stopped in and the one it starts in too.
    /// `None` without a heartbeat (a first start) or without a gap.
    pub fn count_downtime(&mut self, now: OffsetDateTime) -> Option<Downtime> {
        let from = self.heartbeat.filter(|h| *h < now.unix_timestamp())?;
        let down = MinuteCounts {
            no_healthy_upstream: true,
            ..MinuteCounts::default()
        };
        let mut bad_minutes = 0;
        let mut minute = from - from.rem_euclid(MINUTE);
        while minute <= minute_start(now) {
            // The ratio does not matter: a minute with no healthy upstream is bad.
            if self.fold(
                ClosedMinute {
                    start: minute,
                    counts: down,
                },
                1.0,
            ) {
                bad_minutes += 1;
            }
            minute += MINUTE;
        }
        self.heartbeat = Some(now.unix_timestamp());
        Some(Downtime {
            from: OffsetDateTime::from_unix_timestamp(from).ok()?,
            to: now,
            bad_minutes,
        })
    }

    /// Drops what is older than the history and the years kept.
    pub fn prune(&mut self, now: OffsetDateTime) {
        let oldest = hour_start(minute_start(now)) - HISTORY_DAYS * 24 * HOUR;
        self.hours = self.hours.split_off(&oldest);
        while self.used_by_year.len() > YEARS_KEPT {
            self.used_by_year.pop_first();
        }
    }

    /// The budget as of `now`.
    pub fn view(&self, now: OffsetDateTime, cfg: &SlaCfg) -> BudgetView {
        let year = now.year();
        let used = self.used_by_year.get(&year).copied().unwrap_or(0);
        let allowed = cfg.allowed_downtime.as_secs_f64() / 60.0;
        let this_hour = hour_start(minute_start(now));
        BudgetView {
            year,
            allowed_minutes: allowed,
            used_minutes: used,
            left_minutes: (allowed - used as f64).max(0.0),
            exhausted: used as f64 >= allowed,
            bad_minute_ratio: cfg.bad_minute_ratio,
            last_24h: self.availability(this_hour - 23 * HOUR),
            last_30d: self.availability(this_hour - (HISTORY_DAYS * 24 - 1) * HOUR),
        }
    }

    fn availability(&self, from_hour: i64) -> AvailabilityView {
        let mut sum = HourCounts::default();
        for counts in self.hours.range(from_hour..).map(|(_, c)| c) {
            sum.observed += counts.observed;
            sum.bad += counts.bad;
            sum.requests += counts.requests;
            sum.failures += counts.failures;
        }
        let percent = |part: u64, whole: u64| {
            (whole > 0).then(|| (part as f64 * 100.0 / whole as f64 * 1000.0).round() / 1000.0)
        };
        AvailabilityView {
            observed_minutes: u64::from(sum.observed),
            bad_minutes: u64::from(sum.bad),
            good_minutes_percent: percent(
                u64::from(sum.observed.saturating_sub(sum.bad)),
                u64::from(sum.observed),
            ),
            requests: sum.requests,
            failed_requests: sum.failures,
            successful_requests_percent: percent(
                sum.requests.saturating_sub(sum.failures),
                sum.requests,
            ),
        }
    }
}

/// The budget for `GET /status`, the status page and the metrics.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BudgetView {
    /// The calendar year (UTC) counted.
    pub year: i32,
    /// The SLA's allowed downtime per year.
    pub allowed_minutes: f64,
    /// Bad minutes counted this year (closed minutes only).
    pub used_minutes: u64,
    pub left_minutes: f64,
    pub exhausted: bool,
    pub bad_minute_ratio: f64,
    pub last_24h: AvailabilityView,
    pub last_30d: AvailabilityView,
}

/// Availability over a window, by minutes and by requests.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AvailabilityView {
    /// Closed minutes the proxy was running for.
    pub observed_minutes: u64,
    pub bad_minutes: u64,
    /// Good minutes as a share of observed minutes; `None` before the first
    /// minute closed.
    pub good_minutes_percent: Option<f64>,
    pub requests: u64,
    pub failed_requests: u64,
    pub successful_requests_percent: Option<f64>,
}

struct Inner {
    ledger: Ledger,
    meter: Meter,
}

/// The budget, shared by its sampler and its readers.
pub struct Budget {
    path: PathBuf,
    cfg: SlaCfg,
    /// A std mutex: held for a fold or a copy, never across an await (the
    /// file is written from a copy).
    inner: Mutex<Inner>,
}

impl Budget {
    /// Loads `path` (or starts empty). A file that cannot be read or parsed
    /// stops the start: silently starting over would hide downtime.
    pub async fn open(path: &Path, cfg: SlaCfg, now: OffsetDateTime) -> Result<Budget, ProxyError> {
        let ledger = persist::load(
            path,
            VERSION,
            "fix it, or move it away to start the budget over",
        )
        .await?;
        Ok(Budget {
            path: path.to_path_buf(),
            cfg,
            inner: Mutex::new(Inner {
                ledger: ledger.unwrap_or_default(),
                meter: Meter::new(now),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .expect("budget lock is never poisoned: no panics under it")
    }

    /// One sample; returns the minute that ended, already folded in.
    pub fn sample(
        &self,
        now: OffsetDateTime,
        totals: Totals,
        serving_healthy: bool,
    ) -> Option<ClosedMinute> {
        let mut inner = self.lock();
        let closed = inner.meter.sample(now, totals, serving_healthy)?;
        let newly_bad = inner.ledger.fold(closed, self.cfg.bad_minute_ratio);
        inner.ledger.prune(now);
        if newly_bad {
            tracing::warn!(
                minute = closed.start,
                requests = closed.counts.requests,
                failures = closed.counts.failures,
                no_healthy_upstream = closed.counts.no_healthy_upstream,
                "a bad minute counts against the error budget"
            );
        }
        Some(closed)
    }

    /// Folds the part of the open minute seen so far (at shutdown).
    pub fn flush(&self) {
        let mut inner = self.lock();
        let partial = inner.meter.flush();
        inner.ledger.fold(partial, self.cfg.bad_minute_ratio);
    }

    /// The proxy serves at `now`; the next save writes it.
    pub fn beat(&self, now: OffsetDateTime) {
        self.lock().ledger.heartbeat = Some(now.unix_timestamp());
    }

    /// At start after a crash or a stop (not after a takeover): the gap
    /// since the last heartbeat counts against the budget.
    pub fn count_downtime(&self, now: OffsetDateTime) -> Option<Downtime> {
        let downtime = self.lock().ledger.count_downtime(now)?;
        tracing::warn!(
            from = %downtime.from,
            secs = (downtime.to - downtime.from).whole_seconds(),
            bad_minutes = downtime.bad_minutes,
            "nothing served since the last heartbeat: the gap counts against the error budget"
        );
        Some(downtime)
    }

    pub fn view_at(&self, now: OffsetDateTime) -> BudgetView {
        self.lock().ledger.view(now, &self.cfg)
    }

    pub fn view(&self) -> BudgetView {
        self.view_at(OffsetDateTime::now_utc())
    }

    /// Writes the ledger atomically, off the runtime.
    pub async fn save(&self) -> Result<(), ProxyError> {
        // A copy: the lock is never held across the write.
        let ledger = self.lock().ledger.clone();
        persist::save(&self.path, &ledger).await
    }

    fn publish(&self, metrics: &Metrics) {
        let view = self.view();
        metrics.budget_used_minutes.set(view.used_minutes as f64);
        metrics.budget_left_minutes.set(view.left_minutes);
    }
}

/// Samples the traffic totals and the routing health every second, folds
/// each minute that ends, and saves the ledger; until `shutdown` changes,
/// when the partial minute is folded and saved too.
pub async fn run(
    budget: Arc<Budget>,
    router: Arc<Router>,
    traffic: Arc<Traffic>,
    metrics: Arc<Metrics>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    budget.publish(&metrics);
    let mut ticker = Ticker::new(SAMPLE_EVERY, shutdown);
    let mut last_save = tokio::time::Instant::now();
    while ticker.tick().await {
        let serving_healthy = {
            let snap = router.load();
            snap.is_healthy(snap.serving())
        };
        let totals = sum_totals(&traffic);
        let now = OffsetDateTime::now_utc();
        budget.beat(now);
        let closed = budget.sample(now, totals, serving_healthy).is_some();
        if closed {
            // The gauges first: they must never lag the status behind a slow disk.
            budget.publish(&metrics);
        }
        if closed || last_save.elapsed() >= HEARTBEAT_EVERY {
            last_save = tokio::time::Instant::now();
            if let Err(e) = budget.save().await {
                tracing::error!(error = %e, "could not save the error budget");
            }
        }
    }
    // The totals since the last tick belong to the partial minute.
    let serving_healthy = {
        let snap = router.load();
        snap.is_healthy(snap.serving())
    };
    let now = OffsetDateTime::now_utc();
    budget.beat(now);
    budget.sample(now, sum_totals(&traffic), serving_healthy);
    budget.flush();
    if let Err(e) = budget.save().await {
        tracing::error!(error = %e, "could not save the error budget at shutdown");
    }
}

fn sum_totals(traffic: &Traffic) -> Totals {
    Slot::ALL.iter().fold(Totals::default(), |sum, slot| {
        let t = traffic.totals(*slot);
        Totals {
            requests: sum.requests + t.requests,
            failures: sum.failures + t.failures,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATIO: f64 = 0.05;

    fn at(unix: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(unix).expect("valid time")
    }

    fn totals(requests: u64, failures: u64) -> Totals {
        Totals { requests, failures }
    }

    fn cfg() -> SlaCfg {
        SlaCfg {
            allowed_downtime: Duration::from_secs(20 * 60),
            bad_minute_ratio: RATIO,
        }
    }

    /// 2024-06-01T00:00:00Z, a minute and an hour boundary.
    const T0: i64 = 1_717_200_000;

    #[test]
    fn a_gap_since_the_heartbeat_counts_every_minute_it_touches_once() {
        // Arrange: the last process served T0+30 s, folded its part of that
        // minute (a good one), and left the heartbeat.
        let mut ledger = Ledger::default();
        let served = ClosedMinute {
            start: T0,
            counts: MinuteCounts {
                requests: 100,
                failures: 0,
                no_healthy_upstream: false,
            },
        };
        ledger.fold(served, RATIO);
        ledger.heartbeat = Some(T0 + 30);

        // Act: the next start, at T0+200 s.
        let gap = ledger.count_downtime(at(T0 + 200));

        // Assert: T0, T0+60, T0+120 and the minute it starts in, T0+180.
        assert_eq!(
            gap,
            Some(Downtime {
                from: at(T0 + 30),
                to: at(T0 + 200),
                bad_minutes: 4,
            })
        );
        assert_eq!(ledger.used_by_year.get(&2024), Some(&4));
        assert_eq!(ledger.hours[&T0].observed, 4, "the split minute once");
        assert_eq!(ledger.heartbeat, Some(T0 + 200));
        assert_eq!(
            ledger.count_downtime(at(T0 + 200)),
            None,
            "no gap since the heartbeat"
        );
        // The rest of the minute it starts in merges, without counting again.
        assert!(!ledger.fold(
            ClosedMinute {
                start: T0 + 180,
                counts: MinuteCounts::default(),
            },
            RATIO
        ));
        assert_eq!(ledger.used_by_year.get(&2024), Some(&4));
    }

    #[test]
    fn a_first_start_has_no_gap_and_an_older_file_loads_without_a_heartbeat() {
        let mut ledger: Ledger = serde_json::from_str(
            r#"{"version":1,"used_by_year":{},"hours":{},"last_minute":null}"#,
        )
        .expect("a file from before the heartbeat");
        assert_eq!(ledger.count_downtime(at(T0)), None);
        assert!(ledger.used_by_year.is_empty());
    }

    #[test]
    fn a_minute_is_bad_at_the_ratio_or_without_a_healthy_upstream() {
        let counts = |requests, failures, down| MinuteCounts {
            requests,
            failures,
            no_healthy_upstream: down,
        };
        assert!(!counts(0, 0, false).is_bad(RATIO), "an idle minute is good");
        assert!(!counts(100, 4, false).is_bad(RATIO));
        assert!(
            counts(100, 5, false).is_bad(RATIO),
            "the ratio itself is bad"
        );
        assert!(
            counts(0, 0, true).is_bad(RATIO),
            "down with no traffic is still bad"
        );
    }

    #[test]
    fn samples_split_into_minutes_at_the_boundary() {
        // Arrange: counters that already ran before the meter started.
        let mut meter = Meter::new(at(T0 + 10));
        assert_eq!(meter.sample(at(T0 + 10), totals(50, 50), true), None);

        // Act
        assert_eq!(meter.sample(at(T0 + 30), totals(60, 51), true), None);
        let closed = meter.sample(at(T0 + 60), totals(70, 51), false);
        let next = meter.sample(at(T0 + 121), totals(71, 52), true);

        // Assert
        assert_eq!(
            closed,
            Some(ClosedMinute {
                start: T0,
                counts: MinuteCounts {
                    requests: 20,
                    failures: 1,
                    no_healthy_upstream: false
                },
            }),
            "counts from before the first sample are not counted; the last delta is the old minute's"
        );
        assert_eq!(
            next,
            Some(ClosedMinute {
                start: T0 + 60,
                counts: MinuteCounts {
                    requests: 1,
                    failures: 1,
                    no_healthy_upstream: true
                },
            }),
            "the health seen at the boundary belongs to the new minute"
        );
    }

    #[test]
    fn bad_minutes_count_per_year_and_show_in_availability() {
        // Arrange
        let mut ledger = Ledger::default();
        let minute = |start, requests, failures, down| ClosedMinute {
            start,
            counts: MinuteCounts {
                requests,
                failures,
                no_healthy_upstream: down,
            },
        };

        // Act
        assert!(!ledger.fold(minute(T0, 100, 1, false), RATIO));
        assert!(ledger.fold(minute(T0 + 60, 100, 50, false), RATIO));
        assert!(ledger.fold(minute(T0 + 120, 0, 0, true), RATIO));
        assert!(!ledger.fold(minute(T0 + 180, 0, 0, false), RATIO));
        let view = ledger.view(at(T0 + 200), &cfg());

        // Assert
        assert_eq!(view.year, 2024);
        assert_eq!(view.used_minutes, 2);
        assert_eq!(view.left_minutes, 18.0);
        assert!(!view.exhausted);
        assert_eq!(view.last_24h.observed_minutes, 4);
        assert_eq!(view.last_24h.bad_minutes, 2);
        assert_eq!(view.last_24h.good_minutes_percent, Some(50.0));
        assert_eq!(view.last_24h.requests, 200);
        assert_eq!(view.last_24h.failed_requests, 51);
        assert_eq!(view.last_24h.successful_requests_percent, Some(74.5));
        let later = ledger.view(at(T0 + 29 * 24 * 3600), &cfg());
        assert_eq!(later.last_24h.observed_minutes, 0);
        assert_eq!(later.last_30d.observed_minutes, 4);
        assert_eq!(later.last_30d.bad_minutes, 2);
        let next_year = ledger.view(at(T0 + 366 * 24 * 3600), &cfg());
        assert_eq!(next_year.used_minutes, 0, "a new year starts a new budget");
        ledger.prune(at(T0 + 31 * 24 * 3600));
        assert!(
            ledger.hours.is_empty(),
            "history older than 30 days is dropped"
        );
        assert_eq!(ledger.view(at(T0 + 31 * 24 * 3600), &cfg()).used_minutes, 2);
    }

    #[test]
    fn a_minute_split_by_a_restart_counts_once() {
        // Arrange: the first process saw 10 good requests, then stopped.
        let mut ledger = Ledger::default();
        let first = ClosedMinute {
            start: T0,
            counts: MinuteCounts {
                requests: 10,
                failures: 0,
                no_healthy_upstream: false,
            },
        };
        assert!(!ledger.fold(first, RATIO));

        // Act: the second process sees the rest of the same minute fail.
        let rest = ClosedMinute {
            start: T0,
            counts: MinuteCounts {
                requests: 10,
                failures: 10,
                no_healthy_upstream: false,
            },
        };
        let newly_bad = ledger.fold(rest, RATIO);
        let again = ledger.fold(rest, RATIO);

        // Assert
        assert!(newly_bad);
        assert!(!again, "an already bad minute is not counted again");
        let view = ledger.view(at(T0 + 60), &cfg());
        assert_eq!(view.used_minutes, 1);
        assert_eq!(view.last_24h.observed_minutes, 1);
        assert_eq!(view.last_24h.requests, 30);
    }

    #[tokio::test]
    async fn the_budget_survives_a_reopen() {
        // Arrange
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("budget.json");
        let budget = Budget::open(&path, cfg(), at(T0)).await.expect("open");
        budget.sample(at(T0), totals(0, 0), true);
        budget.sample(at(T0 + 30), totals(10, 10), true);
        assert!(budget.sample(at(T0 + 60), totals(10, 10), true).is_some());

        // Act
        budget.save().await.expect("save");
        drop(budget);
        let reopened = Budget::open(&path, cfg(), at(T0 + 90))
            .await
            .expect("reopen");

        // Assert
        assert_eq!(reopened.view_at(at(T0 + 90)).used_minutes, 1);
        std::fs::write(&path, "{\"version\": 1, \"used_by").expect("write");
        let err = Budget::open(&path, cfg(), at(T0))
            .await
            .err()
            .expect("corrupt");
        assert!(err.to_string().contains("budget.json"), "{err}");
    }
}
