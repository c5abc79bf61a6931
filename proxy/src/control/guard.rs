//! The live guard: what it watches (a canary since its start, a switched
//! release through its bake window), what it pulled back and blocks, and its
//! verdict. The verdict is a pure function of the routing snapshot, the
//! traffic windows, the configuration and the clock; the controller applies
//! it. `rule` judges a window of user outcomes; `block` refuses a release the
//! guard pulled back until an operator overrides.

mod block;
mod rule;

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::config::GuardCfg;
use crate::http::routing::{Canary, Snapshot};
use crate::http::traffic::{Traffic, WindowStats};
use crate::slot::Slot;

pub use block::{Deployment, Override};

/// The current second counts in a window (`Traffic::window` is in whole
/// seconds, the current one included): a canary started 0.3 s ago is judged
/// over 1 s, not 0.
const CURRENT_SECOND: Duration = Duration::from_secs(1);

/// The user outcomes the guard judges: the last `span` of one slot. The
/// live `Traffic` in production; any other source of counts (a test, or the
/// outcomes fed as requests end) judges the same way.
pub trait Windows {
    fn window(&self, slot: Slot, span: Duration) -> WindowStats;
}

impl Windows for Traffic {
    fn window(&self, slot: Slot, span: Duration) -> WindowStats {
        Traffic::window(self, slot, span)
    }
}

/// What the guard decided in one evaluation.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Nothing watched breaches the limits (or nothing is watched).
    Fine,
    /// The canary fails its users: send all traffic back to the stable slot.
    AbortCanary { canary: Canary, breach: Breach },
    /// The release switched to fails its users during its bake: roll back
    /// to the previous slot.
    RollBack { slot: Slot, breach: Breach },
}

/// Why a release breaches the limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Breach {
    /// For the operator: the counts and the limit they crossed.
    pub reason: String,
    /// Failed user requests in the window judged.
    pub failed: u64,
}

/// How traffic moved to a new active slot: what the guard watches next and
/// what it keeps on record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cutover {
    /// An operator's switch: the new release is baked.
    Switch,
    /// An operator's promotion of the canary: baked like a switch.
    Promote,
    /// An operator's rollback to the release that served before: no bake.
    Rollback,
    /// The guard's own rollback: no bake, and its pull stays on record.
    GuardRollback,
}

impl Cutover {
    /// A release users have not all seen yet: watched through a bake.
    pub fn bakes(self) -> bool {
        matches!(self, Cutover::Switch | Cutover::Promote)
    }

    /// An operator's move to a release: it passed the gate, and past a
    /// block only with the override, so it lifts the block on that slot.
    fn lifts_block(self) -> bool {
        matches!(self, Cutover::Switch | Cutover::Promote)
    }
}

/// A change of the canary's share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CanaryChange {
    /// The slot starts taking a share: it is judged from now on.
    Start,
    /// The share of a running canary changes: its window goes on.
    Resize,
}

/// What the guard watches now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Watching {
    Canary,
    Bake,
}

/// What the guard watches and what it last did, for the status.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GuardView {
    /// The guard pulled a release back, and no operator change has happened since.
    pub aborted: bool,
    pub reason: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub at: Option<OffsetDateTime>,
    pub slot: Option<Slot>,
    pub watching: Option<Watching>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub bake_until: Option<OffsetDateTime>,
    pub blocked: Option<Deployment>,
}

/// The guard's state. Written only through the transitions below, by the
/// controller as it applies changes; read by `evaluate` and `view`.
#[derive(Debug, Default)]
pub struct Guard {
    /// When the current canary started taking traffic. `None` while there
    /// is no canary, and in the moment between a canary's snapshot and its
    /// `canary_set`: then the whole configured window is judged.
    canary_since: Option<Instant>,
    /// The slot being baked, and when the bake started and ends. Stays
    /// after the end (it is then inert) until the next switch replaces it.
    bake: Option<Bake>,
    /// The guard pulled a release back and no operator change has happened
    /// since.
    aborted: bool,
    /// Why the guard last pulled a release back, until a canary starts.
    reason: Option<String>,
    /// When and which slot the guard last pulled back.
    at: Option<OffsetDateTime>,
    slot: Option<Slot>,
    /// The release the guard last pulled back, refused until an operator
    /// overrides (or a new release runs on that slot).
    blocked: Option<Deployment>,
}

/// What the guard keeps across a restart or a takeover, on the wall clock
/// (an `Instant` does not outlive its process). The traffic windows start
/// over in a new process, so a restored canary or bake is judged from then.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GuardRecord {
    /// The slot being baked and when its bake ends.
    pub bake: Option<BakeRecord>,
    pub aborted: bool,
    pub reason: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub at: Option<OffsetDateTime>,
    pub slot: Option<Slot>,
    pub blocked: Option<Deployment>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BakeRecord {
    pub slot: Slot,
    #[serde(with = "time::serde::rfc3339")]
    pub until: OffsetDateTime,
}

#[derive(Debug, Clone, Copy)]
struct Bake {
    slot: Slot,
    started: Instant,
    until: Instant,
    /// `until` on the wall clock, for the status.
    until_utc: OffsetDateTime,
}

impl Guard {
    /// The guard as `record` left it, at `now` (`now_utc` on the wall
    /// clock); `canary` when the restored routing has one, judged from now.
    pub fn restore(
        record: GuardRecord,
        canary: bool,
        now: Instant,
        now_utc: OffsetDateTime,
    ) -> Guard {
        let GuardRecord {
            bake,
            aborted,
            reason,
            at,
            slot,
            blocked,
        } = record;
        let bake = bake.and_then(|b| {
            let left = Duration::try_from(b.until - now_utc).ok()?;
            Some(Bake {
                slot: b.slot,
                started: now,
                until: now + left,
                until_utc: b.until,
            })
        });
        Guard {
            canary_since: canary.then_some(now),
            bake,
            aborted,
            reason,
            at,
            slot,
            blocked,
        }
    }

    /// What `restore` needs to bring this guard back, at `now`.
    pub fn record(&self, now: Instant) -> GuardRecord {
        GuardRecord {
            bake: self.bake.filter(|b| now < b.until).map(|b| BakeRecord {
                slot: b.slot,
                until: b.until_utc,
            }),
            aborted: self.aborted,
            reason: self.reason.clone(),
            at: self.at,
            slot: self.slot,
            blocked: self.blocked.clone(),
        }
    }

    /// One evaluation: a canary is judged over the time since it started
    /// (at most the window) against the stable release; otherwise a slot in
    /// its bake window is judged alone, while it is still the active one.
    pub fn evaluate(
        &self,
        snap: &Snapshot,
        traffic: &impl Windows,
        cfg: &GuardCfg,
        now: Instant,
    ) -> Verdict {
        if let Some(canary) = snap.canary {
            let since = self.canary_since.map_or(cfg.window, |t| {
                now.saturating_duration_since(t) + CURRENT_SECOND
            });
            let canary_stats = traffic.window(canary.slot, cfg.window.min(since));
            let stable_stats = traffic.window(snap.serving(), cfg.window);
            return match rule::judge(canary_stats, Some(stable_stats), cfg) {
                Some(reason) => Verdict::AbortCanary {
                    canary,
                    breach: Breach {
                        reason,
                        failed: canary_stats.failures(),
                    },
                },
                None => Verdict::Fine,
            };
        }
        let Some(bake) = self.bake else {
            return Verdict::Fine;
        };
        if now >= bake.until || snap.active != bake.slot {
            return Verdict::Fine;
        }
        let since = now.saturating_duration_since(bake.started) + CURRENT_SECOND;
        let stats = traffic.window(bake.slot, cfg.window.min(since));
        match rule::judge(stats, None, cfg) {
            Some(reason) => Verdict::RollBack {
                slot: bake.slot,
                breach: Breach {
                    reason,
                    failed: stats.failures(),
                },
            },
            None => Verdict::Fine,
        }
    }

    /// The status: the record of the last pull, and what is watched now.
    pub fn view(&self, snap: &Snapshot, now: Instant) -> GuardView {
        let baking = self.bake.filter(|b| now < b.until);
        let watching = if snap.canary.is_some() {
            Some(Watching::Canary)
        } else if baking.is_some() {
            Some(Watching::Bake)
        } else {
            None
        };
        GuardView {
            aborted: self.aborted,
            reason: self.reason.clone(),
            at: self.at,
            slot: self.slot,
            watching,
            bake_until: baking
                .filter(|_| watching == Some(Watching::Bake))
                .map(|b| b.until_utc),
            blocked: self.blocked.clone(),
        }
    }

    /// Why the guard last pulled a release back, for refusals.
    pub fn reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }

    /// Whether `candidate` may take traffic: not if it is the release the
    /// guard pulled back, unless the operator overrides.
    pub fn admits(&self, candidate: &Deployment, over: Override) -> Result<(), String> {
        match &self.blocked {
            Some(blocked) => block::check(blocked, self.reason(), candidate, over),
            None => Ok(()),
        }
    }

    /// A canary's share was set. A start is a new release to judge from
    /// now, and an operator's fresh attempt: the last pull is no longer
    /// news. The override lifts the block.
    pub fn canary_set(&mut self, change: CanaryChange, over: Override, now: Instant) {
        if change == CanaryChange::Start {
            self.canary_since = Some(now);
            self.aborted = false;
            self.reason = None;
        }
        if over.guard {
            self.blocked = None;
        }
    }

    /// The canary is gone (aborted by an operator or the guard).
    pub fn canary_ended(&mut self) {
        self.canary_since = None;
    }

    /// The guard aborted the canary on `pulled`'s slot: it is blocked.
    pub fn canary_pulled(&mut self, pulled: Deployment, reason: String, at: OffsetDateTime) {
        self.canary_since = None;
        self.record_pull(pulled, reason, at);
    }

    /// The guard is rolling `pulled` back: the bake ends and the release is
    /// blocked. `false` (and nothing changes) when the guard no longer
    /// bakes that slot: another verdict already acted, or a switch
    /// replaced the bake, so this verdict is stale.
    pub fn bake_pulled(&mut self, pulled: Deployment, reason: String, at: OffsetDateTime) -> bool {
        if self.bake.is_none_or(|b| b.slot != pulled.slot) {
            return false;
        }
        self.bake = None;
        self.record_pull(pulled, reason, at);
        true
    }

    fn record_pull(&mut self, pulled: Deployment, reason: String, at: OffsetDateTime) {
        self.aborted = true;
        self.reason = Some(reason);
        self.at = Some(at);
        self.slot = Some(pulled.slot);
        self.blocked = Some(pulled);
    }

    /// All traffic moved to `to`. A switch or promotion is baked for
    /// `bake_for` from `now` (`now_utc` on the wall clock); any move ends
    /// the canary and the previous bake.
    pub fn switched(
        &mut self,
        to: Slot,
        cutover: Cutover,
        bake_for: Duration,
        now: Instant,
        now_utc: OffsetDateTime,
    ) {
        self.canary_since = None;
        self.bake = (cutover.bakes() && !bake_for.is_zero()).then(|| Bake {
            slot: to,
            started: now,
            until: now + bake_for,
            until_utc: now_utc + bake_for,
        });
        if cutover != Cutover::GuardRollback {
            self.aborted = false;
        }
        if cutover.lifts_block() && self.blocked.as_ref().is_some_and(|b| b.slot == to) {
            self.blocked = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::rule::tests::{cfg, stats};
    use super::*;
    use crate::config::Config;
    use crate::http::pool::Pool;
    use std::cell::RefCell;
    use std::collections::HashMap;
    use std::net::SocketAddr;
    use std::sync::Arc;

    /// Fixed windows per slot; records the spans the guard asked for.
    #[derive(Default)]
    struct Fake {
        stats: HashMap<Slot, WindowStats>,
        asked: RefCell<Vec<(Slot, Duration)>>,
    }

    impl Fake {
        fn with(mut self, slot: Slot, count: u64, failures: u64) -> Fake {
            self.stats.insert(slot, stats(count, failures));
            self
        }
    }

    impl Windows for Fake {
        fn window(&self, slot: Slot, span: Duration) -> WindowStats {
            self.asked.borrow_mut().push((slot, span));
            self.stats.get(&slot).copied().unwrap_or_default()
        }
    }

    /// `active` serves, both slots healthy and vetted, with `canary` if given.
    fn snapshot(active: Slot, canary: Option<Canary>) -> Snapshot {
        let config = Config::parse("").expect("defaults");
        let pools = Slot::ALL.map(|s| {
            Arc::new(
                Pool::new(s, &config.slot_addrs[s.index()], &config.timeouts, None).all_healthy(),
            )
        });
        Snapshot {
            active,
            previous: Some(active.other()),
            pools,
            vetted: [true, true],
            last_switch: None,
            canary,
            policy: Arc::new(crate::http::routing::Policy::from_config(&config)),
        }
    }

    const CANARY: Canary = Canary {
        slot: Slot::Green,
        percent: 20,
    };

    fn green_v2() -> Deployment {
        Deployment {
            slot: Slot::Green,
            addr: SocketAddr::from(([127, 0, 0, 1], 9002)),
            release: Some("v2".into()),
        }
    }

    /// A guard watching the canary since `t0`, and `t0`.
    fn watching_canary() -> (Guard, Instant) {
        let t0 = Instant::now();
        let mut guard = Guard::default();
        guard.canary_set(CanaryChange::Start, Override::default(), t0);
        (guard, t0)
    }

    /// A guard baking green (switched at `t0`, 60 s bake), and `t0`.
    fn baking_green() -> (Guard, Instant) {
        let t0 = Instant::now();
        let mut guard = Guard::default();
        guard.switched(
            Slot::Green,
            Cutover::Switch,
            cfg().bake,
            t0,
            OffsetDateTime::UNIX_EPOCH,
        );
        (guard, t0)
    }

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_restored_guard_keeps_the_bake_s_end_and_the_block_and_judges_from_now() {
        // Arrange: baking green for 60 s from t0, and green v2 blocked.
        let (mut guard, t0) = baking_green();
        guard.canary_pulled(
            green_v2(),
            "3 of 20 failed".into(),
            OffsetDateTime::UNIX_EPOCH,
        );
        let record = guard.record(t0 + secs(10));

        // Act: a new process 10 s later on the wall clock.
        let later = Instant::now();
        let restored = Guard::restore(
            record.clone(),
            false,
            later,
            OffsetDateTime::UNIX_EPOCH + secs(10),
        );

        // Assert
        assert_eq!(restored.record(later), record);
        let bake = restored.bake.expect("still baking");
        assert_eq!((bake.slot, bake.started), (Slot::Green, later));
        assert_eq!(bake.until, later + secs(50), "what was left of it");
        assert!(restored.blocked.is_some() && restored.canary_since.is_none());
        // A bake that ended while nothing ran is not restored.
        let ended = Guard::restore(record, true, later, OffsetDateTime::UNIX_EPOCH + secs(61));
        assert!(ended.bake.is_none());
        assert_eq!(
            ended.canary_since,
            Some(later),
            "a restored canary is judged from now"
        );
    }

    #[test]
    fn a_canary_over_the_failure_ratio_is_aborted() {
        // Arrange: the stable release fails 5%, so the margin cannot trip:
        // only the ratio rule can.
        let (guard, t0) = watching_canary();
        let snap = snapshot(Slot::Blue, Some(CANARY));
        let at_limit = Fake::default()
            .with(Slot::Green, 100, 2)
            .with(Slot::Blue, 1000, 50);
        let over = Fake::default()
            .with(Slot::Green, 100, 3)
            .with(Slot::Blue, 1000, 50);

        // Act
        let fine = guard.evaluate(&snap, &at_limit, &cfg(), t0 + secs(5));
        let verdict = guard.evaluate(&snap, &over, &cfg(), t0 + secs(5));

        // Assert
        assert_eq!(fine, Verdict::Fine);
        let Verdict::AbortCanary { canary, breach } = verdict else {
            panic!("3% is over the 2% limit: {verdict:?}");
        };
        assert_eq!(canary, CANARY);
        assert_eq!(breach.failed, 3);
        assert!(breach.reason.contains("3 of 100"), "{}", breach.reason);
    }

    #[test]
    fn a_canary_worse_than_the_stable_release_by_the_margin_is_aborted() {
        let (guard, t0) = watching_canary();
        let snap = snapshot(Slot::Blue, Some(CANARY));
        // 1.5% is under the 2% limit; the stable release fails none.
        let worse = Fake::default()
            .with(Slot::Green, 200, 3)
            .with(Slot::Blue, 1000, 0);
        // The same 1.5% within the margin of a stable release at 1%.
        let as_bad = Fake::default()
            .with(Slot::Green, 200, 3)
            .with(Slot::Blue, 1000, 10);

        let verdict = guard.evaluate(&snap, &worse, &cfg(), t0 + secs(5));
        let fine = guard.evaluate(&snap, &as_bad, &cfg(), t0 + secs(5));

        assert!(
            matches!(&verdict, Verdict::AbortCanary { breach, .. } if breach.reason.contains("stable release")),
            "{verdict:?}"
        );
        assert_eq!(fine, Verdict::Fine);
    }

    #[test]
    fn a_canary_is_not_judged_before_its_minimum_sample() {
        let (guard, t0) = watching_canary();
        let snap = snapshot(Slot::Blue, Some(CANARY));
        let early = Fake::default()
            .with(Slot::Green, 19, 19)
            .with(Slot::Blue, 1000, 0);
        let enough = Fake::default()
            .with(Slot::Green, 20, 20)
            .with(Slot::Blue, 1000, 0);

        assert_eq!(
            guard.evaluate(&snap, &early, &cfg(), t0 + secs(5)),
            Verdict::Fine
        );
        assert!(matches!(
            guard.evaluate(&snap, &enough, &cfg(), t0 + secs(5)),
            Verdict::AbortCanary { .. }
        ));
    }

    #[test]
    fn the_margin_needs_the_stable_release_s_minimum_sample_too() {
        let (guard, t0) = watching_canary();
        let snap = snapshot(Slot::Blue, Some(CANARY));
        let traffic = Fake::default()
            .with(Slot::Green, 200, 3)
            .with(Slot::Blue, 19, 0);

        assert_eq!(
            guard.evaluate(&snap, &traffic, &cfg(), t0 + secs(5)),
            Verdict::Fine
        );
    }

    #[test]
    fn a_canary_is_judged_only_on_what_it_served_since_it_started() {
        // Arrange: green has served for 3 s; older outcomes on green are an
        // earlier release's.
        let (guard, t0) = watching_canary();
        let snap = snapshot(Slot::Blue, Some(CANARY));
        let traffic = Fake::default();

        // Act
        let _ = guard.evaluate(&snap, &traffic, &cfg(), t0 + secs(3));

        // Assert: 3 s and the current second, not the 30 s window; the
        // stable release over the whole window.
        assert_eq!(
            *traffic.asked.borrow(),
            [(Slot::Green, secs(4)), (Slot::Blue, cfg().window)]
        );
    }

    #[test]
    fn a_canary_whose_start_is_not_recorded_yet_is_judged_over_the_window() {
        let guard = Guard::default();
        let snap = snapshot(Slot::Blue, Some(CANARY));
        let traffic = Fake::default();

        let _ = guard.evaluate(&snap, &traffic, &cfg(), Instant::now());

        assert_eq!(traffic.asked.borrow()[0], (Slot::Green, cfg().window));
    }

    #[test]
    fn a_release_failing_in_its_bake_is_rolled_back() {
        let (guard, t0) = baking_green();
        let snap = snapshot(Slot::Green, None);
        let failing = Fake::default().with(Slot::Green, 100, 3);
        let fine = Fake::default().with(Slot::Green, 100, 2);

        let verdict = guard.evaluate(&snap, &failing, &cfg(), t0 + secs(10));

        assert_eq!(
            guard.evaluate(&snap, &fine, &cfg(), t0 + secs(10)),
            Verdict::Fine
        );
        let Verdict::RollBack { slot, breach } = verdict else {
            panic!("3% is over the 2% limit: {verdict:?}");
        };
        assert_eq!(slot, Slot::Green);
        assert_eq!(breach.failed, 3);
        // Judged on what it served since the switch: 10 s and the current one.
        assert_eq!(failing.asked.borrow()[0], (Slot::Green, secs(11)));
    }

    #[test]
    fn a_baking_release_is_not_judged_before_its_minimum_sample() {
        let (guard, t0) = baking_green();
        let snap = snapshot(Slot::Green, None);
        let early = Fake::default().with(Slot::Green, 19, 19);

        assert_eq!(
            guard.evaluate(&snap, &early, &cfg(), t0 + secs(10)),
            Verdict::Fine
        );
    }

    #[test]
    fn the_bake_window_ends() {
        // Arrange: a 60 s bake; green fails every request.
        let (guard, t0) = baking_green();
        let snap = snapshot(Slot::Green, None);
        let failing = Fake::default().with(Slot::Green, 100, 100);

        // Act / Assert: watched until the end, not after.
        let last = t0 + secs(60) - Duration::from_millis(1);
        assert!(matches!(
            guard.evaluate(&snap, &failing, &cfg(), last),
            Verdict::RollBack { .. }
        ));
        assert_eq!(guard.view(&snap, last).watching, Some(Watching::Bake));
        assert_eq!(
            guard.view(&snap, last).bake_until,
            Some(OffsetDateTime::UNIX_EPOCH + secs(60))
        );
        let end = t0 + secs(60);
        assert_eq!(guard.evaluate(&snap, &failing, &cfg(), end), Verdict::Fine);
        let view = guard.view(&snap, end);
        assert_eq!(view.watching, None);
        assert_eq!(view.bake_until, None);
    }

    #[test]
    fn a_bake_ends_when_traffic_leaves_the_slot() {
        let (guard, t0) = baking_green();
        let moved_back = snapshot(Slot::Blue, None);
        let failing = Fake::default().with(Slot::Green, 100, 100);

        assert_eq!(
            guard.evaluate(&moved_back, &failing, &cfg(), t0 + secs(10)),
            Verdict::Fine
        );
    }

    #[test]
    fn only_a_switch_or_a_promotion_is_baked() {
        let t0 = Instant::now();
        let snap = snapshot(Slot::Green, None);
        let failing = Fake::default().with(Slot::Green, 100, 100);
        for (cutover, bake_for, baked) in [
            (Cutover::Switch, secs(60), true),
            (Cutover::Promote, secs(60), true),
            (Cutover::Rollback, secs(60), false),
            (Cutover::GuardRollback, secs(60), false),
            (Cutover::Switch, Duration::ZERO, false),
        ] {
            let mut guard = Guard::default();
            guard.switched(
                Slot::Green,
                cutover,
                bake_for,
                t0,
                OffsetDateTime::UNIX_EPOCH,
            );
            let verdict = guard.evaluate(&snap, &failing, &cfg(), t0 + secs(1));
            assert_eq!(
                matches!(verdict, Verdict::RollBack { .. }),
                baked,
                "{cutover:?} with a {bake_for:?} bake: {verdict:?}"
            );
        }
    }

    #[test]
    fn a_canary_during_a_bake_is_judged_first() {
        // Green baked; an operator then runs a canary of blue.
        let (mut guard, t0) = baking_green();
        guard.canary_set(CanaryChange::Start, Override::default(), t0);
        let canary = Canary {
            slot: Slot::Blue,
            percent: 10,
        };
        let snap = snapshot(Slot::Green, Some(canary));
        let traffic = Fake::default()
            .with(Slot::Blue, 100, 50)
            .with(Slot::Green, 100, 50);

        let verdict = guard.evaluate(&snap, &traffic, &cfg(), t0 + secs(1));

        assert!(
            matches!(verdict, Verdict::AbortCanary { canary: c, .. } if c == canary),
            "{verdict:?}"
        );
        assert_eq!(
            guard.view(&snap, t0 + secs(1)).watching,
            Some(Watching::Canary)
        );
    }

    #[test]
    fn a_pulled_canary_is_blocked_until_the_operator_overrides() {
        // Arrange: the guard pulled green v2 back.
        let (mut guard, t0) = watching_canary();
        guard.canary_pulled(
            green_v2(),
            "3 of 100 failed".into(),
            OffsetDateTime::UNIX_EPOCH,
        );
        let snap = snapshot(Slot::Blue, None);

        // Assert: recorded and refused ...
        let view = guard.view(&snap, t0);
        assert!(view.aborted);
        assert_eq!(view.slot, Some(Slot::Green));
        assert_eq!(view.blocked, Some(green_v2()));
        let refusal = guard
            .admits(&green_v2(), Override::default())
            .expect_err("blocked");
        assert!(refusal.contains("3 of 100 failed"), "{refusal}");

        // ... until a canary started with the override lifts the block.
        let over = Override { guard: true };
        assert_eq!(guard.admits(&green_v2(), over), Ok(()));
        guard.canary_set(CanaryChange::Start, over, t0);
        let view = guard.view(&snap, t0);
        assert_eq!(view.blocked, None);
        assert!(!view.aborted);
        assert_eq!(view.reason, None);
        assert_eq!(guard.admits(&green_v2(), Override::default()), Ok(()));
    }

    #[test]
    fn a_canary_started_without_the_override_keeps_the_block() {
        let (mut guard, t0) = watching_canary();
        guard.canary_pulled(green_v2(), "breach".into(), OffsetDateTime::UNIX_EPOCH);

        // A canary of another release on green (not blocked) starts.
        guard.canary_set(CanaryChange::Start, Override::default(), t0);

        assert_eq!(
            guard.view(&snapshot(Slot::Blue, None), t0).blocked,
            Some(green_v2())
        );
    }

    #[test]
    fn a_switch_to_the_blocked_slot_lifts_the_block_and_a_rollback_does_not() {
        let t0 = Instant::now();
        for (cutover, lifted) in [
            (Cutover::Switch, true),
            (Cutover::Promote, true),
            (Cutover::Rollback, false),
            (Cutover::GuardRollback, false),
        ] {
            let mut guard = Guard::default();
            guard.canary_pulled(green_v2(), "breach".into(), OffsetDateTime::UNIX_EPOCH);
            guard.switched(
                Slot::Green,
                cutover,
                secs(60),
                t0,
                OffsetDateTime::UNIX_EPOCH,
            );
            let blocked = guard.view(&snapshot(Slot::Green, None), t0).blocked;
            assert_eq!(blocked.is_none(), lifted, "{cutover:?}");
        }
    }

    #[test]
    fn the_guard_s_own_rollback_stays_on_record_and_an_operator_s_move_clears_it() {
        // Arrange: the guard pulls baking green back, then switches to blue.
        let (mut guard, t0) = baking_green();
        let now = OffsetDateTime::UNIX_EPOCH;
        assert!(guard.bake_pulled(green_v2(), "breach".into(), now));
        guard.switched(Slot::Blue, Cutover::GuardRollback, secs(60), t0, now);
        let snap = snapshot(Slot::Blue, None);

        // Assert: still aborted and blocked, nothing watched.
        let view = guard.view(&snap, t0);
        assert!(view.aborted);
        assert_eq!(view.watching, None);
        assert_eq!(view.blocked, Some(green_v2()));

        // An operator's switch back to blue: no longer news, reason kept.
        guard.switched(Slot::Blue, Cutover::Switch, secs(60), t0, now);
        let view = guard.view(&snap, t0);
        assert!(!view.aborted);
        assert_eq!(view.reason.as_deref(), Some("breach"));
    }

    #[test]
    fn a_stale_rollback_verdict_is_refused() {
        // A verdict about green's bake, applied once ...
        let (mut guard, _) = baking_green();
        let now = OffsetDateTime::UNIX_EPOCH;
        assert!(guard.bake_pulled(green_v2(), "first".into(), now));

        // ... and not again, nor for a slot not baked.
        assert!(!guard.bake_pulled(green_v2(), "second".into(), now));
        assert_eq!(guard.reason(), Some("first"));
        let blue = Deployment {
            slot: Slot::Blue,
            ..green_v2()
        };
        let (mut baking, _) = baking_green();
        assert!(!baking.bake_pulled(blue, "wrong slot".into(), now));
        assert_eq!(baking.reason(), None);
    }

    #[test]
    fn nothing_watched_is_fine() {
        let guard = Guard::default();
        let failing = Fake::default()
            .with(Slot::Green, 100, 100)
            .with(Slot::Blue, 100, 100);

        assert_eq!(
            guard.evaluate(
                &snapshot(Slot::Blue, None),
                &failing,
                &cfg(),
                Instant::now()
            ),
            Verdict::Fine
        );
        assert!(failing.asked.borrow().is_empty());
    }
}
