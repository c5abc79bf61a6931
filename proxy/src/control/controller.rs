//! The changes to routing: the operator's (switch, rollback, slot address,
//! canary, promote, abort) and the guard's verdicts (abort a canary, roll
//! back a bad release), which the `guard` decides and the controller
//! applies. Each is validated (the gate, the slot rules) before it is
//! applied; a refused change touches neither the live snapshot nor the
//! state file. Changes are serialized, the state file is written before the
//! new snapshot is stored, and every change is an event.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;
use serde::Serialize;
use time::OffsetDateTime;

use crate::cluster::{Applying, Base, Cluster, ClusterView};
use crate::config::{Config, GuardCfg, Scenario, Step, StepBody, StepTarget};
use crate::control::gate;
use crate::control::guard::{
    Breach, CanaryChange, Cutover, Deployment, Guard, GuardRecord, Verdict,
};
use crate::control::health::{self, HealthTable};
use crate::control::probe::{Endpoint, ProbeFailure, Prober};
use crate::control::state::{self, PersistedCanary, PersistedState};
use crate::error::ProxyError;
use crate::http::pool::Pool;
use crate::http::routing::{Canary, Policy, Router, Snapshot};
use crate::http::traffic::Traffic;
use crate::metrics::Metrics;
use crate::ops::events::{Event, EventKind, EventLog};
use crate::slot::Slot;
use crate::ticker::Ticker;

/// The last gate run against a slot, for the status.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeReport {
    pub ok: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub failure: Option<ProbeFailure>,
}

/// Why a change was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("probe failed: {0}")]
    Refused(ProbeFailure),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Persist(ProxyError),
    /// This process handed its listeners to a new one and is draining.
    #[error("this proxy handed over to a new process; send the request again")]
    HandedOver,
    /// The shared routing store cannot be reached (`cluster`).
    #[error("{0}")]
    Unavailable(String),
}

pub use crate::control::guard::{GuardView, Override};

/// Whether the gate asks the active release to read what the candidate
/// wrote (the cross-release steps of the scenarios).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CrossCheck {
    /// Moving forward: the active release must read the candidate's writes.
    WithActive,
    /// A rollback: the release it leaves may be the one failing, so it is
    /// not asked.
    CandidateOnly,
}

pub struct Controller {
    router: Arc<Router>,
    health: Arc<HealthTable>,
    prober: Prober,
    /// Replaced whole by a reload.
    config: ArcSwap<Config>,
    events: Arc<EventLog>,
    metrics: Arc<Metrics>,
    traffic: Arc<Traffic>,
    /// Serializes changes: a gate runs for seconds, and two switches must
    /// not interleave. A Tokio mutex because it is held across the gate's
    /// probes; the request path never takes it. In an `Arc` so that a
    /// takeover's freeze can hold it while it waits for the new process.
    ops: Arc<tokio::sync::Mutex<()>>,
    /// The hold of a takeover on `ops`, from its freeze to its thaw.
    frozen: Mutex<Option<tokio::sync::OwnedMutexGuard<()>>>,
    /// Set once this process handed over: changes waiting for `ops` give up.
    retired: tokio::sync::watch::Sender<bool>,
    /// Written by each gate run; read by the status.
    last_probe: [Mutex<Option<ProbeReport>>; 2],
    /// What the guard watches and what it pulled back. A std mutex: a few
    /// field writes, never held across an `.await`.
    guard: Mutex<Guard>,
    /// The routing state shared with other proxies; none: the state file
    /// alone decides.
    cluster: Option<Arc<Cluster>>,
}

/// The parts the controller works with.
pub struct Parts {
    pub router: Arc<Router>,
    pub health: Arc<HealthTable>,
    pub prober: Prober,
    pub config: Arc<Config>,
    pub events: Arc<EventLog>,
    pub metrics: Arc<Metrics>,
    pub traffic: Arc<Traffic>,
    /// The guard's record from the state file.
    pub guard: GuardRecord,
    pub cluster: Option<Arc<Cluster>>,
}

impl Controller {
    pub fn new(parts: Parts) -> Controller {
        if parts.config.scenarios.is_empty() {
            tracing::warn!(
                "no probe scenarios configured: the gate only checks {}",
                parts.config.health.path
            );
        }
        let snap = parts.router.load();
        parts
            .metrics
            .set_routing(snap.active, snap.canary.map_or(0, |c| c.percent));
        let guard = Guard::restore(
            parts.guard,
            snap.canary.is_some(),
            Instant::now(),
            OffsetDateTime::now_utc(),
        );
        drop(snap);
        Controller {
            router: parts.router,
            health: parts.health,
            prober: parts.prober,
            config: ArcSwap::new(parts.config),
            events: parts.events,
            metrics: parts.metrics,
            traffic: parts.traffic,
            ops: Arc::new(tokio::sync::Mutex::new(())),
            frozen: Mutex::new(None),
            retired: tokio::sync::watch::Sender::new(false),
            last_probe: Default::default(),
            guard: Mutex::new(guard),
            cluster: parts.cluster,
        }
    }

    /// Serializes changes; gives up once this process handed over.
    async fn lock_ops(&self) -> Result<tokio::sync::MutexGuard<'_, ()>, ControlError> {
        let mut retired = self.retired.subscribe();
        let op = tokio::select! {
            biased;
            _ = retired.wait_for(|r| *r) => Err(ControlError::HandedOver),
            op = self.ops.lock() => Ok(op),
        }?;
        if let Some(cluster) = &self.cluster {
            cluster.pin();
        }
        Ok(op)
    }

    /// Holds routing changes while a takeover hands the state file over.
    pub async fn freeze(&self) {
        let op = Arc::clone(&self.ops).lock_owned().await;
        *self.frozen.lock().expect("freeze lock is never poisoned") = Some(op);
    }

    /// Lets routing changes go on: the takeover was called off.
    pub fn thaw(&self) {
        self.frozen
            .lock()
            .expect("freeze lock is never poisoned")
            .take();
    }

    /// The new process serves: changes still waiting here are refused.
    pub fn retire(&self) {
        self.retired.send_replace(true);
    }

    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    pub fn health(&self) -> &HealthTable {
        &self.health
    }

    pub fn events(&self) -> &Arc<EventLog> {
        &self.events
    }

    pub fn traffic(&self) -> &Arc<Traffic> {
        &self.traffic
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    pub fn guard_config(&self) -> GuardCfg {
        self.config.load().guard
    }

    pub fn last_probe(&self, slot: Slot) -> Option<ProbeReport> {
        self.last_probe[slot.index()]
            .lock()
            .expect("probe report lock is never poisoned")
            .clone()
    }

    pub fn guard_view(&self) -> GuardView {
        let snap = self.router.load();
        self.lock_guard().view(&snap, Instant::now())
    }

    fn lock_guard(&self) -> std::sync::MutexGuard<'_, Guard> {
        self.guard.lock().expect("guard lock is never poisoned")
    }

    fn release(&self, slot: Slot) -> Option<String> {
        self.health.get(slot).release
    }

    /// Moves all user traffic to `to` after it passes the gate.
    pub async fn switch_to(&self, to: Slot, over: Override) -> Result<Arc<Snapshot>, ControlError> {
        let _op = self.lock_ops().await?;
        let current = self.router.load_full();
        if current.active == to && current.canary.is_none() {
            return Ok(current);
        }
        self.check_blocked(to, &current, over)?;
        self.gate(
            to,
            &current,
            CrossCheck::WithActive,
            EventKind::SwitchRefused,
        )
        .await?;
        let builds_on = current.canary.filter(|c| c.slot == to && !over.guard);
        self.commit_switch(
            to,
            Cutover::Switch,
            "an operator switched".into(),
            serde_json::Value::Null,
            builds_on,
        )
        .await
    }

    /// Moves traffic back to the previous slot, but only if it passes the
    /// gate now: a rollback never goes to a release that is failing.
    pub async fn rollback(&self) -> Result<Arc<Snapshot>, ControlError> {
        let _op = self.lock_ops().await?;
        let current = self.router.load_full();
        let Some(to) = current.previous.filter(|p| *p != current.active) else {
            return Err(ControlError::Conflict(
                "there is no previous slot to roll back to".into(),
            ));
        };
        self.gate(
            to,
            &current,
            CrossCheck::CandidateOnly,
            EventKind::RollbackRefused,
        )
        .await?;
        self.commit_switch(
            to,
            Cutover::Rollback,
            "an operator rolled back".into(),
            serde_json::Value::Null,
            None,
        )
        .await
    }

    /// Points the idle slot at other upstreams (one, or a pool).
    pub async fn set_addrs(
        &self,
        slot: Slot,
        addrs: Vec<SocketAddr>,
    ) -> Result<Arc<Snapshot>, ControlError> {
        let _op = self.lock_ops().await?;
        let current = self.router.load_full();
        if current.active == slot {
            return Err(ControlError::Conflict(format!(
                "{slot} is the active slot; switch away from it first"
            )));
        }
        if current.canary.is_some_and(|c| c.slot == slot) {
            return Err(ControlError::Conflict(format!(
                "{slot} has a canary share; abort it first"
            )));
        }
        if current.pool(slot).addrs() == addrs {
            return Ok(current);
        }
        let mut all = Slot::ALL.map(|s| current.pool(s).addrs());
        all[slot.index()].clone_from(&addrs);
        let mut vetted = current.vetted;
        vetted[slot.index()] = false;
        let applying = self
            .persist(
                &PersistedState::new(current.active, current.previous, all, current.last_switch)
                    .with_vetted(self.vetted_releases(vetted))
                    .with_canary(current.canary.map(persisted_canary))
                    .with_guard(self.guard_record()),
            )
            .await?;
        // Every member unknown until checked: never routed to before it is.
        let config = self.config.load();
        let pool = Arc::new(Pool::new(
            slot,
            &addrs,
            &config.timeouts,
            config.slot_tls[slot.index()].as_ref(),
        ));
        self.health.reset(slot, &addrs);
        let next = self.router.update(|snap| {
            let mut next = snap.to_builder();
            next.pools[slot.index()] = Arc::clone(&pool);
            next.vetted[slot.index()] = false;
            next
        });
        drop(applying);
        *self.last_probe[slot.index()]
            .lock()
            .expect("probe report lock is never poisoned") = None;
        let listed = addrs
            .iter()
            .map(SocketAddr::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        self.events.record(
            Event::new(
                EventKind::SlotChanged,
                format!("{slot} now points at {listed}"),
            )
            .slot_to(slot)
            .detail(serde_json::json!({ "addr": addrs[0], "addrs": addrs })),
        );
        Ok(next)
    }

    /// Gives `slot` a share of user traffic. The first share a slot gets
    /// needs the gate, like a switch.
    pub async fn canary(
        &self,
        slot: Slot,
        percent: u8,
        over: Override,
    ) -> Result<Arc<Snapshot>, ControlError> {
        if percent > 100 {
            return Err(ControlError::Conflict("percent is 0 to 100".into()));
        }
        let _op = self.lock_ops().await?;
        let current = self.router.load_full();
        if current.active == slot {
            return Err(ControlError::Conflict(format!(
                "{slot} is the active slot; a canary goes to the other one"
            )));
        }
        let change = if current.canary.is_none_or(|c| c.slot != slot) {
            CanaryChange::Start
        } else {
            CanaryChange::Resize
        };
        if change == CanaryChange::Start {
            self.check_blocked(slot, &current, over)?;
            self.gate(
                slot,
                &current,
                CrossCheck::WithActive,
                EventKind::CanaryRefused,
            )
            .await?;
        }
        let before = current.canary.map_or(0, |c| c.percent);
        let mut vetted = current.vetted;
        if change == CanaryChange::Start {
            vetted[slot.index()] = true;
        }
        let applying = self
            .persist(
                &self
                    .state_of(&current)
                    .with_vetted(self.vetted_releases(vetted))
                    .with_canary(Some(PersistedCanary { slot, percent })),
            )
            .await?;
        if change == CanaryChange::Start {
            // Armed before the first request can reach the canary.
            self.arm_tripwire(slot);
        }
        let next = self.router.update(|snap| {
            let mut next = snap.to_builder();
            next.canary = Some(Canary { slot, percent });
            if change == CanaryChange::Start {
                // Every member just passed the gate.
                next.pools[slot.index()] = Arc::new(snap.pool(slot).all_healthy());
                next.vetted[slot.index()] = true;
            }
            next
        });
        self.lock_guard().canary_set(change, over, Instant::now());
        drop(applying);
        self.save_state().await;
        self.metrics.set_routing(next.active, percent);
        let (kind, reason) = match change {
            CanaryChange::Start => (
                EventKind::CanaryStart,
                format!("{slot} takes {percent}% of user traffic"),
            ),
            CanaryChange::Resize => (
                EventKind::CanaryChange,
                format!("{slot}: {before}% -> {percent}% of user traffic"),
            ),
        };
        self.events.record(
            Event::new(kind, reason)
                .slot_from(next.active)
                .slot_to(slot)
                .releases([self.release(next.active), self.release(slot)])
                .detail(serde_json::json!({ "percent": percent, "previous_percent": before })),
        );
        Ok(next)
    }

    /// Makes the canary slot the active slot for all traffic, after a final
    /// probe.
    pub async fn promote(&self, over: Override) -> Result<Arc<Snapshot>, ControlError> {
        let _op = self.lock_ops().await?;
        let current = self.router.load_full();
        let Some(canary) = current.canary else {
            return Err(ControlError::Conflict(
                "there is no canary to promote".into(),
            ));
        };
        self.check_blocked(canary.slot, &current, over)?;
        self.gate(
            canary.slot,
            &current,
            CrossCheck::WithActive,
            EventKind::SwitchRefused,
        )
        .await?;
        let why = format!("the canary at {}% was promoted", canary.percent);
        self.commit_switch(
            canary.slot,
            Cutover::Promote,
            why,
            serde_json::Value::Null,
            (!over.guard).then_some(canary),
        )
        .await
    }

    /// Sends all traffic back to the active slot.
    pub async fn abort(&self) -> Result<Arc<Snapshot>, ControlError> {
        let _op = self.lock_ops().await?;
        let current = self.router.load_full();
        let Some(canary) = current.canary else {
            return Err(ControlError::Conflict("there is no canary to abort".into()));
        };
        let applying = self.commit_canary_end(&current, Base::Pinned).await?;
        let (next, _) = self.clear_canary(canary, Base::Pinned, applying).await;
        self.metrics.aborts.inc();
        self.events.record(
            Event::new(EventKind::CanaryAbort, "an operator aborted the canary")
                .slot_from(canary.slot)
                .slot_to(next.active)
                .releases([self.release(canary.slot)])
                .detail(serde_json::json!({ "percent": canary.percent })),
        );
        Ok(next)
    }

    /// Replaces the configuration: the request-path policy with a new
    /// snapshot (atomically), the gate's scenarios and limits for the next
    /// change. Listeners and slot addresses stay: those need a restart or
    /// `PUT /slots`.
    pub fn reload(&self, config: Config) {
        let policy = Arc::new(Policy::from_config(&config));
        self.router.update(|snap| {
            let mut next = snap.to_builder();
            next.policy = Arc::clone(&policy);
            next
        });
        self.config.store(Arc::new(config));
    }

    /// One evaluation of the guard, applied. Also ends the tripwire once the
    /// guard watches nothing (a bake ends by the clock), gives it the
    /// current limits, and re-arms it when it woke the guard for nothing to
    /// act on.
    pub async fn guard_tick(&self) {
        let cfg = self.guard_config();
        let snap = self.router.load_full();
        let now = Instant::now();
        let (verdict, watching) = {
            let guard = self.lock_guard();
            (
                match &self.cluster {
                    // Every proxy's users, not only this one's.
                    Some(cluster) => {
                        cluster.judge(&self.traffic, |all| guard.evaluate(&snap, all, &cfg, now))
                    }
                    None => guard.evaluate(&snap, &*self.traffic, &cfg, now),
                },
                guard.view(&snap, now).watching,
            )
        };
        if verdict == Verdict::Fine {
            if watching.is_none() {
                self.traffic.unwatch();
            } else {
                // The limits are live settings.
                self.traffic
                    .watch_limits(cfg.min_requests, cfg.max_failure_ratio);
            }
            self.traffic.rearm();
        }
        self.enforce(verdict).await;
    }

    /// Watches `slot`'s user outcomes from now against the guard's limit.
    fn arm_tripwire(&self, slot: Slot) {
        let cfg = self.guard_config();
        self.traffic
            .watch(slot, cfg.min_requests, cfg.max_failure_ratio);
    }

    /// Applies a verdict of the guard. A verdict about a canary or a bake
    /// that has since ended (an operator acted, or the same verdict was
    /// already applied) changes nothing.
    pub async fn enforce(&self, verdict: Verdict) {
        match verdict {
            Verdict::Fine => {}
            Verdict::AbortCanary { canary, breach } => self.guard_abort(canary, breach).await,
            Verdict::RollBack { slot, breach } => self.guard_rollback(slot, breach).await,
        }
    }

    /// Ends the canary without waiting for `ops`: users must not wait for
    /// an operator's gate to be protected.
    async fn guard_abort(&self, canary: Canary, breach: Breach) {
        let watched = self.traffic.watch_counts();
        let current = self.router.load_full();
        if !current.canary.is_some_and(|c| c.slot == canary.slot) {
            return;
        }
        let applying = match self.commit_canary_end(&current, Base::Served).await {
            Ok(applying) => applying,
            // Another proxy's change came first: this proxy reads it now,
            // and judges again what it serves then.
            Err(ControlError::Conflict(why)) => {
                tracing::info!(%why, "the guard's abort lost to a change committed meanwhile");
                return;
            }
            // Users first: the canary ends here, though the others still
            // serve it until the store is back.
            Err(e) => {
                tracing::warn!(error = %e, "the guard aborts the canary on this proxy only");
                Applying::alone()
            }
        };
        let (next, cleared) = self.clear_canary(canary, Base::Served, applying).await;
        if !cleared {
            return;
        }
        let pulled = self.deployment(canary.slot, &next);
        let Breach { reason, failed } = breach;
        self.lock_guard()
            .canary_pulled(pulled, reason.clone(), OffsetDateTime::now_utc());
        self.save_state_from(Base::Served).await;
        self.metrics.aborts.inc();
        tracing::warn!(slot = %canary.slot, %reason, "the guard aborted the canary");
        self.events.record(
            Event::new(
                EventKind::GuardAbort,
                format!("the guard aborted the canary: {reason}"),
            )
            .slot_from(canary.slot)
            .slot_to(next.active)
            .releases([self.release(canary.slot), self.release(next.active)])
            .detail(serde_json::json!({
                "percent": canary.percent,
                "failed_requests": failed,
                "since_start": watched,
            })),
        );
    }

    async fn guard_rollback(&self, bad: Slot, breach: Breach) {
        let Ok(_op) = self.lock_ops().await else {
            return;
        };
        let current = self.router.load_full();
        if current.active != bad {
            return;
        }
        let Breach { reason, failed } = breach;
        let watched = self.traffic.watch_counts();
        let pulled = self.deployment(bad, &current);
        if !self
            .lock_guard()
            .bake_pulled(pulled, reason.clone(), OffsetDateTime::now_utc())
        {
            return;
        }
        let Some(to) = current.previous.filter(|p| *p != bad) else {
            tracing::error!(%reason, "the guard found a breach but there is no previous slot to go back to");
            return;
        };
        if self
            .gate(
                to,
                &current,
                CrossCheck::CandidateOnly,
                EventKind::RollbackRefused,
            )
            .await
            .is_err()
        {
            tracing::error!(%to, "the guard found a breach but the previous slot fails its probes: staying");
            return;
        }
        let why = format!("the guard rolled back: {reason}");
        let detail = serde_json::json!({ "failed_requests": failed, "since_switch": watched });
        if let Ok(next) = self
            .commit_switch(to, Cutover::GuardRollback, why, detail, None)
            .await
        {
            tracing::warn!(from = %bad, to = %next.active, %reason, "the guard rolled back");
        }
    }

    /// Removes `canary` from routing; `true` when this call removed it
    /// (not when it was already gone).
    async fn clear_canary(
        &self,
        canary: Canary,
        base: Base,
        applying: Applying,
    ) -> (Arc<Snapshot>, bool) {
        let mut cleared = false;
        let next = self.router.update(|snap| {
            let mut next = snap.to_builder();
            // The last run of this closure is the one stored.
            cleared = snap.canary.is_some_and(|c| c.slot == canary.slot);
            if cleared {
                next.canary = None;
            }
            next
        });
        self.lock_guard().canary_ended();
        if self.traffic.watched() == Some(canary.slot) {
            self.traffic.unwatch();
        }
        drop(applying);
        self.save_state_from(base).await;
        self.metrics.set_routing(next.active, 0);
        (next, cleared)
    }

    /// What runs on `slot` in `snap`, as a block names it.
    fn deployment(&self, slot: Slot, snap: &Snapshot) -> Deployment {
        Deployment {
            slot,
            addr: snap.pool(slot).first().addr,
            release: self.release(slot),
        }
    }

    fn check_blocked(
        &self,
        slot: Slot,
        current: &Snapshot,
        over: Override,
    ) -> Result<(), ControlError> {
        let candidate = self.deployment(slot, current);
        self.lock_guard()
            .admits(&candidate, over)
            .map_err(ControlError::Conflict)
    }

    /// Runs the gate against `candidate`; a rollback does not ask the
    /// release it leaves to read the candidate's writes (it may be the one
    /// failing).
    async fn gate(
        &self,
        candidate: Slot,
        current: &Snapshot,
        cross_check: CrossCheck,
        refused: EventKind,
    ) -> Result<(), ControlError> {
        let config = self.config.load_full();
        let scenarios = if config.scenarios.is_empty() {
            vec![health_scenario(&config.health.path)]
        } else {
            config.scenarios.clone()
        };
        let active = current.active;
        let candidates = current.pool(candidate).endpoints();
        // The active release's members that are up read the candidate's
        // writes; with none up, those steps run against the candidate.
        let readers: Vec<Endpoint> = if cross_check == CrossCheck::WithActive {
            let pool = current.pool(active);
            pool.members()
                .iter()
                .enumerate()
                .filter(|(at, _)| pool.member_healthy(*at))
                .map(|(_, m)| Endpoint::of(m))
                .collect()
        } else {
            Vec::new()
        };
        let result = gate::run_members(
            &self.prober,
            &scenarios,
            &config.gate,
            &candidates,
            &readers,
        )
        .await;
        let report = ProbeReport {
            ok: result.is_ok(),
            at: OffsetDateTime::now_utc(),
            failure: result.as_ref().err().cloned(),
        };
        *self.last_probe[candidate.index()]
            .lock()
            .expect("probe report lock is never poisoned") = Some(report);
        // The gate runs the scenarios in order and stops at the first failure:
        // those before it passed, it failed, those after it never ran. A gate
        // out of time names no scenario, so none has a result to count.
        let ran = match &result {
            Ok(()) => scenarios.len(),
            Err(failure) => scenarios
                .iter()
                .position(|s| s.name == failure.scenario)
                .map_or(0, |at| at + 1),
        };
        for (at, scenario) in scenarios.iter().enumerate().take(ran) {
            let failed = result.is_err() && at + 1 == ran;
            self.metrics.probe_result(&scenario.name, !failed);
        }
        match result {
            Ok(()) => Ok(()),
            Err(failure) => {
                self.metrics.refused_switches.inc();
                self.events.record(
                    Event::new(refused, format!("{candidate} refused: {failure}"))
                        .slot_from(active)
                        .slot_to(candidate)
                        .releases([self.release(active), self.release(candidate)])
                        .detail(
                            serde_json::to_value(&failure).expect("a probe failure serializes"),
                        ),
                );
                Err(ControlError::Refused(failure))
            }
        }
    }

    /// Moves all traffic to `to`. `builds_on` is the canary an operator's
    /// change promotes: the guard does not wait for `ops` (users must not wait
    /// for a gate to be protected), so it may have pulled that canary back
    /// while the gate ran, and then its decision stands.
    async fn commit_switch(
        &self,
        to: Slot,
        cutover: Cutover,
        reason: String,
        detail: serde_json::Value,
        builds_on: Option<Canary>,
    ) -> Result<Arc<Snapshot>, ControlError> {
        let current = self.router.load_full();
        let from = current.active;
        let now = OffsetDateTime::now_utc();
        let addrs = Slot::ALL.map(|s| current.pool(s).addrs());
        self.refresh_release(to, &current.pool(to).endpoints())
            .await;
        if let Some(canary) = builds_on
            && self.router.load().canary != Some(canary)
        {
            let guard = self.lock_guard();
            return Err(ControlError::Conflict(format!(
                "the guard pulled the canary on {} back while it was probed ({}); nothing changed; to try it again, send \"override_guard\": true",
                canary.slot,
                guard.reason().unwrap_or("a breach")
            )));
        }
        let mut vetted = current.vetted;
        vetted[to.index()] = true;
        let applying = self
            .persist(
                &PersistedState::new(to, Some(from), addrs, Some(now))
                    .with_vetted(self.vetted_releases(vetted))
                    .with_guard(self.guard_record()),
            )
            .await?;
        let config = self.config.load_full();
        // Armed before the first request reaches the new active slot.
        if cutover.bakes() && !config.guard.bake.is_zero() {
            self.arm_tripwire(to);
        } else {
            self.traffic.unwatch();
        }
        let next = self.router.update(|snap| {
            let mut next = snap.to_builder();
            next.active = to;
            next.previous = Some(from);
            // Every member just passed the gate.
            next.pools[to.index()] = Arc::new(snap.pool(to).all_healthy());
            next.vetted[to.index()] = true;
            next.last_switch = Some(now);
            next.canary = None;
            next
        });
        self.lock_guard()
            .switched(to, cutover, config.guard.bake, Instant::now(), now);
        drop(applying);
        self.save_state().await;
        let kind = match cutover {
            Cutover::Switch => EventKind::Switch,
            Cutover::Promote => EventKind::Promote,
            Cutover::Rollback => EventKind::Rollback,
            Cutover::GuardRollback => EventKind::GuardRollback,
        };
        match cutover {
            Cutover::Rollback | Cutover::GuardRollback => self.metrics.rollbacks.inc(),
            Cutover::Switch | Cutover::Promote => self.metrics.switches.inc(),
        };
        self.metrics.set_routing(to, 0);
        tracing::info!(%from, %to, "traffic moved: {reason}");
        self.events.record(
            Event::new(kind, reason)
                .slot_from(from)
                .slot_to(to)
                .releases([self.release(from), self.release(to)])
                .detail(detail),
        );
        Ok(next)
    }

    /// The gate just exercised the slot: its release label is worth
    /// refreshing before it is named in events and the status.
    async fn refresh_release(&self, slot: Slot, members: &[Endpoint]) {
        let cfg = self.config.load().health.clone();
        let checks = members
            .iter()
            .map(|at| health::check(&self.prober, at, &cfg));
        let results = futures_util::future::join_all(checks).await;
        for (at, result) in members.iter().zip(results) {
            if let Ok(release) = result {
                self.health.set_release(slot, at.addr, release);
            }
        }
    }

    /// The release labels of the vetted slots, for the state file.
    fn vetted_releases(&self, vetted: [bool; 2]) -> [Option<String>; 2] {
        Slot::ALL.map(|slot| vetted[slot.index()].then(|| self.release(slot)).flatten())
    }

    fn guard_record(&self) -> GuardRecord {
        self.lock_guard().record(Instant::now())
    }

    /// The state file's contents for `snap` and the guard as they stand.
    fn state_of(&self, snap: &Snapshot) -> PersistedState {
        let addrs = Slot::ALL.map(|s| snap.pool(s).addrs());
        PersistedState::new(snap.active, snap.previous, addrs, snap.last_switch)
            .with_vetted(self.vetted_releases(snap.vetted))
            .with_canary(snap.canary.map(persisted_canary))
            .with_guard(self.guard_record())
    }

    /// Writes the routing and the guard as they stand after a change was
    /// applied (the guard's part is known only then). A failure is logged:
    /// the change itself stands, and the next one writes the file again.
    async fn save_state(&self) {
        self.save_state_from(Base::Pinned).await;
    }

    async fn save_state_from(&self, base: Base) {
        let state = self.state_of(&self.router.load());
        // Applied already: nothing to hold the turn for.
        if let Err(e) = self.persist_from(&state, base).await {
            tracing::error!(error = %e, "could not save the routing state");
        }
    }

    async fn persist(&self, state: &PersistedState) -> Result<Applying, ControlError> {
        self.persist_from(state, Base::Pinned).await
    }

    /// With a cluster, the commit to the shared store decides; the state
    /// file is then its cache, and failing to write it is only logged. The
    /// caller applies the change before it drops the `Applying`, and commits
    /// nothing else meanwhile (the cluster's turn is held).
    async fn persist_from(
        &self,
        state: &PersistedState,
        base: Base,
    ) -> Result<Applying, ControlError> {
        let path = self.config.load().state_file();
        let Some(cluster) = &self.cluster else {
            state::save(&path, state)
                .await
                .map_err(ControlError::Persist)?;
            return Ok(Applying::alone());
        };
        let applying = cluster.commit(state, base).await?;
        if let Err(e) = state::save(&path, state).await {
            tracing::error!(error = %e, "could not write the state file, the routing store's cache");
        }
        Ok(applying)
    }

    /// With a cluster, commits the end of `current`'s canary before this
    /// proxy ends it, so that a change that lost changes nothing.
    async fn commit_canary_end(
        &self,
        current: &Snapshot,
        base: Base,
    ) -> Result<Applying, ControlError> {
        let Some(cluster) = &self.cluster else {
            return Ok(Applying::alone());
        };
        let state = self.state_of(current).with_canary(None);
        cluster.commit(&state, base).await
    }

    /// The routing and the guard as they stand, as the state file holds them.
    pub fn routing_state(&self) -> PersistedState {
        self.state_of(&self.router.load())
    }

    /// The cluster part of the status; none for a proxy on its own.
    pub fn cluster_view(&self) -> Option<ClusterView> {
        self.cluster.as_ref().map(|c| c.view())
    }

    /// Serves a routing state another proxy committed to the shared store
    /// (its gate ran there); `cache_state` keeps it in the state file. A slot whose
    /// member list changed gets a new pool, every member unknown until
    /// checked, as `set_addr` leaves it; a slot whose list is the same keeps
    /// its pool and the health verdicts on its members.
    pub fn adopt(&self, state: &PersistedState) {
        let config = self.config.load_full();
        let current = self.router.load_full();
        let addrs = state.addrs();
        let canary = state
            .canary
            .filter(|c| c.slot != state.active)
            .map(|c| Canary {
                slot: c.slot,
                percent: c.percent,
            });
        let moved = Slot::ALL.map(|slot| current.pool(slot).addrs() != addrs[slot.index()]);
        let pools = Slot::ALL.map(|slot| {
            if moved[slot.index()] {
                self.health.reset(slot, &addrs[slot.index()]);
                Arc::new(Pool::new(
                    slot,
                    &addrs[slot.index()],
                    &config.timeouts,
                    config.slot_tls[slot.index()].as_ref(),
                ))
            } else {
                Arc::clone(current.pool(slot))
            }
        });
        let next = self.router.update(|snap| {
            let mut next = snap.to_builder();
            next.active = state.active;
            next.previous = state.previous;
            next.last_switch = state.last_switch;
            next.canary = canary;
            for slot in Slot::ALL {
                let i = slot.index();
                let serves = slot == state.active || canary.is_some_and(|c| c.slot == slot);
                // The proxy that committed it found the serving slot up; until
                // this proxy's own checks say otherwise, every member counts.
                let pool = if moved[i] { &pools[i] } else { &snap.pools[i] };
                next.pools[i] = if serves && !pool.is_healthy() {
                    Arc::new(pool.all_healthy())
                } else {
                    Arc::clone(pool)
                };
                next.vetted[i] = serves || (!moved[i] && state.vetted[i].is_some());
            }
            next
        });
        let now = Instant::now();
        let guard = Guard::restore(
            state.guard.clone(),
            canary.is_some(),
            now,
            OffsetDateTime::now_utc(),
        );
        let watching = guard.view(&next, now).watching;
        *self.lock_guard() = guard;
        match watching {
            Some(_) => {
                let slot = canary.map_or(next.active, |c| c.slot);
                self.arm_tripwire(slot);
            }
            None => self.traffic.unwatch(),
        }
        self.metrics
            .set_routing(next.active, canary.map_or(0, |c| c.percent));
    }

    /// Keeps `state`, adopted from the shared store, in the state file: the
    /// cache a start reads while the store is unreachable.
    pub async fn cache_state(&self, state: &PersistedState) {
        let path = self.config.load().state_file();
        if let Err(e) = state::save(&path, state).await {
            tracing::error!(error = %e, "could not write the state file, the routing store's cache");
        }
    }
}

/// Evaluates the guard every interval, and at once when a request crosses
/// the watched slot's limit, until `shutdown` changes.
pub async fn run_guard(controller: Arc<Controller>, shutdown: tokio::sync::watch::Receiver<bool>) {
    let mut ticker = Ticker::new(controller.guard_config().interval, shutdown);
    let traffic = Arc::clone(&controller.traffic);
    loop {
        tokio::select! {
            biased;
            alive = ticker.tick() => {
                if !alive {
                    return;
                }
            }
            () = traffic.tripped() => {}
        }
        controller.guard_tick().await;
    }
}

fn persisted_canary(canary: Canary) -> PersistedCanary {
    PersistedCanary {
        slot: canary.slot,
        percent: canary.percent,
    }
}

/// The gate's fallback when no scenario is configured.
fn health_scenario(path: &str) -> Scenario {
    Scenario {
        name: "health".into(),
        steps: vec![Step {
            name: "health".into(),
            target: StepTarget::Candidate,
            method: http::Method::GET,
            path: path.into(),
            headers: Vec::new(),
            body: StepBody::None,
            expect_status: http::StatusCode::OK,
            expect_headers: Vec::new(),
            expect_body: None,
            captures: Vec::new(),
        }],
    }
}
