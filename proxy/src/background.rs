//! The background tasks that watch the proxy and write its data directory:
//! the health checks, the guard, the incident detector and the budget.
//! Started together and stopped together: at shutdown, and frozen while a
//! takeover hands the data directory to a new process (then routing changes
//! wait and the event log is sealed too); thawed when a takeover is called
//! off.

use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::IncidentsCfg;
use crate::control::controller::{self, Controller};
use crate::control::health::{HealthTable, Monitor};
use crate::control::probe::Prober;
use crate::http::routing::Router;
use crate::http::traffic::Traffic;
use crate::metrics::Metrics;
use crate::ops;
use crate::ops::budget::Budget;
use crate::ops::events::EventLog;
use crate::ops::incidents::IncidentStore;
use crate::ops::notify::Notifier;

/// What the tasks work with.
pub struct Parts {
    pub monitor: Arc<Monitor>,
    pub prober: Prober,
    pub controller: Arc<Controller>,
    pub incidents: Arc<IncidentStore>,
    pub incidents_cfg: IncidentsCfg,
    pub traffic: Arc<Traffic>,
    pub health: Arc<HealthTable>,
    pub events: Arc<EventLog>,
    pub notifier: Notifier,
    pub budget: Arc<Budget>,
    pub router: Arc<Router>,
    pub metrics: Arc<Metrics>,
}

enum State {
    Running {
        stop: watch::Sender<bool>,
        tasks: Vec<JoinHandle<()>>,
    },
    /// Stopped for a takeover; a thaw starts them again.
    Frozen,
    /// Stopped for good.
    Stopped,
}

/// The tasks and their parts.
pub struct Plane {
    parts: Parts,
    /// A Tokio mutex: held across the tasks' joins, so a freeze and a thaw
    /// never interleave.
    state: tokio::sync::Mutex<State>,
}

impl Plane {
    pub fn start(parts: Parts) -> Arc<Plane> {
        let state = spawn(&parts);
        Arc::new(Plane {
            parts,
            state: tokio::sync::Mutex::new(state),
        })
    }

    /// Stops the tasks for good; each saves what it holds.
    pub async fn stop(&self) {
        let mut state = self.state.lock().await;
        let previous = std::mem::replace(&mut *state, State::Stopped);
        join(previous).await;
    }

    /// Stops writing the data directory for a new process: routing changes
    /// wait, the tasks stop and save, the event log is sealed.
    pub async fn freeze(&self) {
        let mut state = self.state.lock().await;
        if !matches!(*state, State::Running { .. }) {
            return;
        }
        self.parts.controller.freeze().await;
        let previous = std::mem::replace(&mut *state, State::Frozen);
        join(previous).await;
        self.parts.events.seal().await;
    }

    /// Takes the data directory back after a takeover was called off.
    pub async fn thaw(&self) {
        let mut state = self.state.lock().await;
        if !matches!(*state, State::Frozen) {
            return;
        }
        if let Err(e) = self.parts.events.unseal().await {
            tracing::error!(error = %e, "could not reopen the event log after a takeover was called off");
        }
        *state = spawn(&self.parts);
        self.parts.controller.thaw();
    }
}

async fn join(state: State) {
    if let State::Running { stop, tasks } = state {
        let _ = stop.send(true);
        for task in tasks {
            let _ = task.await;
        }
    }
}

fn spawn(parts: &Parts) -> State {
    let (stop, stop_rx) = watch::channel(false);
    let tasks = vec![
        tokio::spawn(Arc::clone(&parts.monitor).run(parts.prober.clone(), stop_rx.clone())),
        tokio::spawn(controller::run_guard(
            Arc::clone(&parts.controller),
            stop_rx.clone(),
        )),
        tokio::spawn(ops::incidents::watcher::run(
            Arc::clone(&parts.incidents),
            parts.incidents_cfg,
            ops::incidents::watcher::Sources {
                traffic: Arc::clone(&parts.traffic),
                health: Arc::clone(&parts.health),
                events: Arc::clone(&parts.events),
                notifier: parts.notifier.clone(),
            },
            stop_rx.clone(),
        )),
        tokio::spawn(ops::budget::run(
            Arc::clone(&parts.budget),
            Arc::clone(&parts.router),
            Arc::clone(&parts.traffic),
            Arc::clone(&parts.metrics),
            stop_rx,
        )),
    ];
    State::Running { stop, tasks }
}
