//! A blue-green deployment reverse proxy: three planes, each a folder.
//!
//! ```text
//!  data plane (http/)
//!  user ──> server ──> forward: routing::Snapshot (one ArcSwap load) ──> upstream (pool, conn) ──> release
//!                        │ outcome                     ▲ new snapshots
//!                        ▼                             │
//!                     traffic (windows, totals)  ──────┼─────────────────────────────┐
//!                        │                             │                             │
//!  control plane (control/)                            │            operations (ops/)▼
//!                     controller (guard verdicts, ─────┘            incidents::watcher, budget
//!                       switch, canary, state file)                      │
//!                        ▲      │ gate ──> probe scenarios               ▼
//!                        │      └──────────────────────────────────> events (JSON lines)
//!                     health (checks; passive, from forward)             │──> notify (webhooks)
//!                        ▲                                               └──> status_page (public)
//!                     admin/ (routes + auth: the operator), reload (SIGHUP)
//! ```
//!
//! Shared leaves: `config` (raw -> validated -> typed), `error`, `slot`,
//! `atomic_file` and `persist` (the files in `data_dir`), `ticker` (the
//! background tasks' clock), `secret`, `metrics`. `run` wires the parts
//! together; `main.rs` only parses arguments, restarts itself with the
//! allocator's options and binds. Everything but
//! `run`, `Listeners`, the config and the admin token is private to the
//! crate.

mod admin;
mod atomic_file;
pub mod config;
mod control;
pub mod error;
mod http;
mod metrics;
mod ops;
mod persist;
mod secret;
mod slot;
mod ticker;

pub use admin::auth::{AdminToken, TOKEN_ENV};
pub use config::Config;
pub use error::ProxyError;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::admin::routes::AdminState;
use crate::control::controller::Controller;
use crate::control::health::HealthTable;
use crate::control::health::Monitor;
use crate::control::probe::Prober;
use crate::http::forward::Forwarder;
use crate::http::routing::{Policy, Router, Snapshot};
use crate::http::server::Drain;
use crate::http::traffic::Traffic;
use crate::http::upstream::Upstream;
use crate::metrics::Metrics;
use crate::ops::budget::Budget;
use crate::ops::events::EventLog;
use crate::ops::incidents::IncidentStore;
use crate::ops::notify::Notifier;
use crate::ops::status_page::StatusPage;
use crate::slot::Slot;

/// The bound listeners, so callers (and tests) can bind port 0 first.
pub struct Listeners {
    pub public: TcpListener,
    pub admin: TcpListener,
    /// The public status page: no token, no secrets.
    pub status: TcpListener,
}

/// Runs the proxy until `shutdown` resolves, then drains and returns.
/// `config_path` is what a reload (SIGHUP, `POST /reload`) reads again.
pub async fn run(
    config: Config,
    config_path: PathBuf,
    listeners: Listeners,
    token: AdminToken,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ProxyError> {
    let config = Arc::new(config);
    let events = Arc::new(EventLog::open(&config.data_dir.join("events.jsonl")).await?);
    let prober = Prober::new(config.timeouts.connect, config.gate.request_timeout);
    let health = Arc::new(HealthTable::default());
    let router = Arc::new(restore(&config, &prober, &health).await?);
    let traffic = Arc::new(Traffic::new());
    let budget = Arc::new(
        Budget::open(
            &config.data_dir.join("budget.json"),
            config.sla,
            time::OffsetDateTime::now_utc(),
        )
        .await?,
    );
    let incident_store =
        Arc::new(IncidentStore::open(&config.data_dir.join("incidents.json")).await?);
    let metrics = Arc::new(Metrics::new());
    let monitor = Arc::new(Monitor {
        router: Arc::clone(&router),
        table: Arc::clone(&health),
        events: Arc::clone(&events),
        cfg: config.health.clone(),
    });
    let controller = Arc::new(Controller::new(control::controller::Parts {
        router: Arc::clone(&router),
        health: Arc::clone(&health),
        prober: prober.clone(),
        config: Arc::clone(&config),
        events: Arc::clone(&events),
        metrics: Arc::clone(&metrics),
        traffic: Arc::clone(&traffic),
    }));

    // One shutdown path: every background task watches this.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let checker = tokio::spawn(Arc::clone(&monitor).run(prober, stop_rx.clone()));
    let guard = tokio::spawn(control::controller::run_guard(
        Arc::clone(&controller),
        stop_rx.clone(),
    ));
    let reloader = tokio::spawn(reload_on_sighup(
        Arc::clone(&controller),
        config_path.clone(),
        stop_rx.clone(),
    ));
    let (notifier, notices) =
        Notifier::start(config.notify.clone(), Arc::clone(&events), stop_rx.clone());
    let detector = tokio::spawn(ops::incidents::watcher::run(
        Arc::clone(&incident_store),
        config.incidents,
        ops::incidents::watcher::Sources {
            traffic: Arc::clone(&traffic),
            health: Arc::clone(&health),
            events: Arc::clone(&events),
            notifier,
        },
        stop_rx.clone(),
    ));
    let accountant = tokio::spawn(ops::budget::run(
        Arc::clone(&budget),
        Arc::clone(&router),
        Arc::clone(&traffic),
        Arc::clone(&metrics),
        stop_rx.clone(),
    ));
    let status_app = ops::status_page::app(StatusPage {
        router: Arc::clone(&router),
        health: Arc::clone(&health),
        budget: Arc::clone(&budget),
        incidents: incident_store,
    });
    let mut status_stop = stop_rx.clone();
    let status_listener = tokio::spawn(async move {
        let stopped = async move {
            let _ = status_stop.changed().await;
        };
        axum::serve(listeners.status, status_app)
            .with_graceful_shutdown(stopped)
            .await
    });

    let admin_app = admin::routes::app(AdminState {
        controller: Arc::clone(&controller),
        token: Arc::new(token),
        config_path: Arc::new(config_path),
        budget,
    });
    let mut admin_stop = stop_rx.clone();
    let admin = tokio::spawn(async move {
        let stopped = async move {
            let _ = admin_stop.changed().await;
        };
        axum::serve(listeners.admin, admin_app)
            .with_graceful_shutdown(stopped)
            .await
    });

    let forwarder = Arc::new(Forwarder::new(
        Arc::clone(&router),
        traffic,
        Arc::clone(&metrics),
        monitor,
    ));
    let drain = http::server::serve(
        listeners.public,
        forwarder,
        &metrics,
        config.limits,
        config.timeouts.shutdown_grace,
        shutdown,
    )
    .await;
    let _ = stop_tx.send(true);
    match drain {
        Drain::Graceful => tracing::info!("drained gracefully"),
        Drain::Forced {
            connections,
            cut_requests,
        } => tracing::warn!(
            connections,
            cut_requests,
            "grace period over: answered 504 to the requests still waiting and closed the connections still open"
        ),
    }
    let _ = tokio::join!(checker, guard, reloader, detector, accountant, notices);
    match tokio::time::timeout(config.timeouts.shutdown_grace, admin).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "admin listener failed"),
        Err(_) => tracing::warn!("admin listener did not stop in time"),
        _ => {}
    }
    match tokio::time::timeout(config.timeouts.shutdown_grace, status_listener).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "status listener failed"),
        Err(_) => tracing::warn!("status listener did not stop in time"),
        _ => {}
    }
    // The writer thread ends with the process: the last events (a notice
    // that could not be sent at shutdown) must be in the file first.
    events.flushed().await;
    Ok(())
}

async fn reload_on_sighup(
    controller: Arc<Controller>,
    path: PathBuf,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(hup) => hup,
        Err(e) => {
            tracing::warn!(error = %e, "no SIGHUP handler: reload with POST /reload");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = hup.recv() => {
                tracing::info!("SIGHUP: reloading {}", path.display());
                let _ = control::reload::reload(&controller, &path);
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// The first snapshot: from the state file when there is one, else from the
/// configuration; either way both upstreams are checked before they are
/// trusted with traffic.
async fn restore(
    config: &Config,
    prober: &Prober,
    health: &HealthTable,
) -> Result<Router, ProxyError> {
    let state_path = config.state_file();
    let (active, previous, addrs, last_switch, vetted_releases) = match control::state::load(
        &state_path,
    )
    .await?
    {
        Some(saved) => {
            tracing::info!(file = %state_path.display(), active = %saved.active, blue = %saved.blue, green = %saved.green, "restored routing state");
            (
                saved.active,
                saved.previous,
                saved.addrs(),
                saved.last_switch,
                saved.vetted.clone(),
            )
        }
        None => {
            tracing::info!(active = %config.initial_active, "no state file yet: starting from the configuration");
            (
                config.initial_active,
                None,
                config.slot_addrs,
                None,
                [None, None],
            )
        }
    };
    let (blue, green) = tokio::join!(
        control::health::check(prober, addrs[0], &config.health),
        control::health::check(prober, addrs[1], &config.health)
    );
    let mut healthy = [false; 2];
    // The active slot is the operator's choice; the other takes users in a
    // failover only if it still runs the release that passed the gate.
    let mut vetted = [false; 2];
    vetted[active.index()] = true;
    for (slot, result) in [(Slot::Blue, blue), (Slot::Green, green)] {
        let addr = addrs[slot.index()];
        health.reset(slot, addr);
        match &result {
            Ok(release) => {
                health.set_release(slot, release.clone());
                healthy[slot.index()] = true;
                if release.is_some() && *release == vetted_releases[slot.index()] {
                    vetted[slot.index()] = true;
                }
                tracing::info!(%slot, %addr, release = release.as_deref().unwrap_or("?"), "upstream answers");
            }
            Err(e) => tracing::warn!(%slot, %addr, error = %e, "upstream does not answer yet"),
        }
    }
    Ok(Router::new(Snapshot {
        active,
        previous,
        upstreams: Slot::ALL.map(|slot| Upstream::new(slot, addrs[slot.index()], &config.timeouts)),
        healthy,
        vetted,
        last_switch,
        canary: None,
        policy: Arc::new(Policy::from_config(config)),
    }))
}
