//! The operator's changes to routing: switch, rollback, and pointing the idle
//! slot at another upstream. Each is validated (the gate, the slot rules)
//! before anything is applied; a refused change touches neither the live
//! snapshot nor the state file. Changes are serialized, and the state file is
//! written before the new snapshot is stored.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use time::OffsetDateTime;

use crate::config::{Config, Scenario, Step, StepBody, StepTarget};
use crate::error::ProxyError;
use crate::gate;
use crate::health::{self, HealthTable};
use crate::probe::{ProbeFailure, Prober, Targets};
use crate::routing::{Router, Snapshot};
use crate::slot::Slot;
use crate::state::{self, PersistedState};
use crate::upstream::Upstream;

/// The last gate run against a slot, for the status.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeReport {
    pub ok: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub failure: Option<ProbeFailure>,
}

/// Why an operator's change was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("probe failed: {0}")]
    Refused(ProbeFailure),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Persist(ProxyError),
}

pub struct Controller {
    router: Arc<Router>,
    health: Arc<HealthTable>,
    prober: Prober,
    config: Arc<Config>,
    scenarios: Vec<Scenario>,
    /// Serializes operator changes: a gate runs for seconds, and two
    /// switches must not interleave. A Tokio mutex because it is held across
    /// the gate's probes; the request path never takes it.
    ops: tokio::sync::Mutex<()>,
    /// Written by each gate run; read by the status.
    last_probe: [Mutex<Option<ProbeReport>>; 2],
}

impl Controller {
    pub fn new(
        router: Arc<Router>,
        health: Arc<HealthTable>,
        prober: Prober,
        config: Arc<Config>,
    ) -> Controller {
        let scenarios = if config.scenarios.is_empty() {
            tracing::warn!(
                "no probe scenarios configured: the gate only checks {}",
                config.health.path
            );
            vec![health_scenario(&config.health.path)]
        } else {
            config.scenarios.clone()
        };
        Controller {
            router,
            health,
            prober,
            config,
            scenarios,
            ops: tokio::sync::Mutex::new(()),
            last_probe: Default::default(),
        }
    }

    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    pub fn health(&self) -> &HealthTable {
        &self.health
    }

    pub fn last_probe(&self, slot: Slot) -> Option<ProbeReport> {
        self.last_probe[slot.index()]
            .lock()
            .expect("probe report lock is never poisoned")
            .clone()
    }

    /// Moves all user traffic to `to` after it passes the gate.
    pub async fn switch_to(&self, to: Slot) -> Result<Arc<Snapshot>, ControlError> {
        let _op = self.ops.lock().await;
        let current = self.router.load_full();
        if current.active == to {
            return Ok(current);
        }
        self.gate(to, &current).await?;
        self.commit_switch(to, "switch").await
    }

    /// Moves traffic back to the previous slot, but only if it passes the
    /// gate now: a rollback never goes to a release that is failing.
    pub async fn rollback(&self) -> Result<Arc<Snapshot>, ControlError> {
        let _op = self.ops.lock().await;
        let current = self.router.load_full();
        let Some(to) = current.previous.filter(|p| *p != current.active) else {
            return Err(ControlError::Conflict(
                "there is no previous slot to roll back to".into(),
            ));
        };
        self.gate(to, &current).await?;
        self.commit_switch(to, "rollback").await
    }

    /// Points the idle slot at another upstream address.
    pub async fn set_addr(
        &self,
        slot: Slot,
        addr: SocketAddr,
    ) -> Result<Arc<Snapshot>, ControlError> {
        let _op = self.ops.lock().await;
        let current = self.router.load_full();
        if current.active == slot {
            return Err(ControlError::Conflict(format!(
                "{slot} is the active slot; switch away from it first"
            )));
        }
        if current.upstream(slot).addr == addr {
            return Ok(current);
        }
        let mut addrs = [
            current.upstream(Slot::Blue).addr,
            current.upstream(Slot::Green).addr,
        ];
        addrs[slot.index()] = addr;
        self.persist(&PersistedState::new(
            current.active,
            current.previous,
            addrs,
            current.last_switch,
        ))?;
        let upstream = Upstream::new(slot, addr, &self.config.timeouts);
        self.health.reset(slot, addr);
        let next = self.router.update(|snap| {
            let mut next = snap.to_builder();
            next.upstreams[slot.index()] = Arc::clone(&upstream);
            // Unknown until checked: never routed to before it is.
            next.healthy[slot.index()] = false;
            next
        });
        *self.last_probe[slot.index()]
            .lock()
            .expect("probe report lock is never poisoned") = None;
        tracing::info!(%slot, %addr, "slot address changed");
        Ok(next)
    }

    async fn gate(&self, candidate: Slot, current: &Snapshot) -> Result<(), ControlError> {
        let active = current.active;
        let targets = Targets {
            candidate: current.upstream(candidate).addr,
            active: current
                .is_healthy(active)
                .then(|| current.upstream(active).addr),
        };
        let result = gate::run(&self.prober, &self.scenarios, &self.config.gate, targets).await;
        let report = ProbeReport {
            ok: result.is_ok(),
            at: OffsetDateTime::now_utc(),
            failure: result.as_ref().err().cloned(),
        };
        *self.last_probe[candidate.index()]
            .lock()
            .expect("probe report lock is never poisoned") = Some(report);
        match result {
            Ok(()) => Ok(()),
            Err(failure) => {
                tracing::warn!(%candidate, %failure, "switch refused");
                Err(ControlError::Refused(failure))
            }
        }
    }

    async fn commit_switch(
        &self,
        to: Slot,
        why: &'static str,
    ) -> Result<Arc<Snapshot>, ControlError> {
        let current = self.router.load_full();
        let from = current.active;
        let now = OffsetDateTime::now_utc();
        let addrs = [
            current.upstream(Slot::Blue).addr,
            current.upstream(Slot::Green).addr,
        ];
        self.persist(&PersistedState::new(to, Some(from), addrs, Some(now)))?;
        // The gate just exercised it; the release label is worth refreshing.
        if let Ok(release) =
            health::check(&self.prober, addrs[to.index()], &self.config.health).await
        {
            self.health.set_release(to, release);
        }
        let next = self.router.update(|snap| {
            let mut next = snap.to_builder();
            next.active = to;
            next.previous = Some(from);
            next.healthy[to.index()] = true;
            next.last_switch = Some(now);
            next
        });
        tracing::info!(%from, %to, "{why}: traffic moved");
        Ok(next)
    }

    fn persist(&self, state: &PersistedState) -> Result<(), ControlError> {
        state::save(&self.config.state_file(), state).map_err(ControlError::Persist)
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
