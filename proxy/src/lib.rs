//! A blue-green deployment reverse proxy.
//!
//! ```text
//!  user ──> public listener ──> forward: load Snapshot (one ArcSwap) ──> serving slot's pooled client ──> upstream
//!                                                   ▲
//!  operator ──> admin API ──> Controller: gate (probe scenarios) ──> state file ──> store new Snapshot
//!                                                   ▲
//!  health checker (background) ── flips a slot up/down ┘
//! ```
//!
//! `run` wires the parts together; `main.rs` only parses arguments and binds.

pub mod admin;
pub mod auth;
pub mod body;
pub mod config;
pub mod control;
pub mod error;
pub mod events;
pub mod forward;
pub mod gate;
pub mod headers;
pub mod metrics;
pub mod health;
pub mod probe;
pub mod routing;
pub mod server;
pub mod slot;
pub mod state;
pub mod traffic;
pub mod upstream;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::admin::AdminState;
use crate::auth::AdminToken;
use crate::config::Config;
use crate::control::Controller;
use crate::error::ProxyError;
use crate::forward::Forwarder;
use crate::health::HealthTable;
use crate::probe::Prober;
use crate::routing::{Router, Snapshot};
use crate::server::Drain;
use crate::slot::Slot;
use crate::upstream::Upstream;

/// The bound listeners, so callers (and tests) can bind port 0 first.
pub struct Listeners {
    pub public: TcpListener,
    pub admin: TcpListener,
}

/// Runs the proxy until `shutdown` resolves, then drains and returns.
pub async fn run(
    config: Config,
    listeners: Listeners,
    token: AdminToken,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ProxyError> {
    let config = Arc::new(config);
    let prober = Prober::new(config.timeouts.connect, config.gate.request_timeout);
    let health = Arc::new(HealthTable::default());
    let router = Arc::new(restore(&config, &prober, &health).await?);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let checker = tokio::spawn(health::run(
        Arc::clone(&router),
        Arc::clone(&health),
        prober.clone(),
        config.health.clone(),
        stop_rx.clone(),
    ));

    let controller = Arc::new(Controller::new(
        Arc::clone(&router),
        Arc::clone(&health),
        prober,
        Arc::clone(&config),
    ));
    let admin_app = admin::app(AdminState {
        controller,
        token: Arc::new(token),
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
        config.timeouts.response_header,
    ));
    let drain = server::serve(
        listeners.public,
        forwarder,
        config.limits,
        config.timeouts.shutdown_grace,
        shutdown,
    )
    .await;
    let _ = stop_tx.send(true);
    match drain {
        Drain::Graceful => tracing::info!("drained gracefully"),
        Drain::Forced { connections } => tracing::warn!(
            connections,
            "grace period over: cut the connections still open"
        ),
    }
    let _ = checker.await;
    match tokio::time::timeout(config.timeouts.shutdown_grace, admin).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "admin listener failed"),
        Err(_) => tracing::warn!("admin listener did not stop in time"),
        _ => {}
    }
    Ok(())
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
    let (active, previous, addrs, last_switch) = match state::load(&state_path)? {
        Some(saved) => {
            tracing::info!(file = %state_path.display(), active = %saved.active, blue = %saved.blue, green = %saved.green, "restored routing state");
            (
                saved.active,
                saved.previous,
                saved.addrs(),
                saved.last_switch,
            )
        }
        None => {
            tracing::info!(active = %config.initial_active, "no state file yet: starting from the configuration");
            (config.initial_active, None, config.slot_addrs, None)
        }
    };
    let (blue, green) = tokio::join!(
        health::check(prober, addrs[0], &config.health),
        health::check(prober, addrs[1], &config.health)
    );
    let mut healthy = [false; 2];
    for (slot, result) in [(Slot::Blue, blue), (Slot::Green, green)] {
        let addr = addrs[slot.index()];
        health.reset(slot, addr);
        match &result {
            Ok(release) => {
                health.set_release(slot, release.clone());
                healthy[slot.index()] = true;
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
        last_switch,
    }))
}
