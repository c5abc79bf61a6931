//! A blue-green deployment reverse proxy: three planes, each a folder.
//!
//! ```text
//!  data plane (http/)
//!  user ──> server ──> forward: routing::Snapshot (one ArcSwap load) ──> pool (a member) ──> upstream (conn) ──> release
//!                        │ outcome (tally)             ▲ new snapshots
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
//! background tasks' clock), `secret`, `metrics`, `tls` (certificates, server
//! and client configurations). The process: `takeover` (a new process takes
//! the listening sockets over from the running one), `sockets` (inherited,
//! systemd's, or bound), `background` (the tasks a takeover freezes),
//! `systemd` (sd_notify). `cluster`: with `[cluster]`, the routing state
//! shared by several proxies in PostgreSQL, which the controller commits to
//! and follows. `run` wires the parts together; `main.rs` only parses
//! arguments (and restarts itself with the allocator's options). Everything
//! but `run`, `Listeners`, the config and the admin token is private to the
//! crate.

mod admin;
mod atomic_file;
mod background;
mod cluster;
pub mod config;
mod control;
pub mod error;
mod http;
mod metrics;
mod ops;
mod persist;
mod secret;
mod slot;
mod sockets;
mod systemd;
mod takeover;
mod ticker;
mod tls;

pub use admin::auth::{AdminToken, TOKEN_ENV};
pub use config::Config;
pub use error::ProxyError;

use std::future::Future;
use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::admin::routes::AdminState;
use crate::background::Plane;
use crate::cluster::Cluster;
use crate::control::controller::Controller;
use crate::control::guard::GuardRecord;
use crate::control::health::HealthTable;
use crate::control::health::Monitor;
use crate::control::probe::Prober;
use crate::control::state::PersistedState;
use crate::http::forward::Forwarder;
use crate::http::pool::Pool;
use crate::http::routing::{Canary, Policy, Router, Snapshot};
use crate::http::server::{Drain, Handshake, TlsListener};
use crate::http::traffic::Traffic;
use crate::metrics::Metrics;
use crate::ops::budget::{Budget, Downtime};
use crate::ops::events::{Event, EventKind, EventLog};
use crate::ops::incidents::IncidentStore;
use crate::ops::notify::Notifier;
use crate::ops::status_page::StatusPage;
use crate::slot::Slot;

/// The listening sockets: inherited from a predecessor or systemd, or bound
/// (`sockets`).
pub struct Listeners {
    pub public: TcpListener,
    /// The TLS listener, when `listen.public_tls` is set.
    pub public_tls: Option<TcpListener>,
    pub admin: TcpListener,
    /// The public status page: no token, no secrets.
    pub status: TcpListener,
}

impl Listeners {
    /// Copies of the sockets, by name, for a takeover to hand over.
    fn handover_copies(&self) -> std::io::Result<Vec<(&'static str, OwnedFd)>> {
        let mut copies = vec![("public", self.public.as_fd().try_clone_to_owned()?)];
        if let Some(tls) = &self.public_tls {
            copies.push(("public_tls", tls.as_fd().try_clone_to_owned()?));
        }
        copies.push(("admin", self.admin.as_fd().try_clone_to_owned()?));
        copies.push(("status", self.status.as_fd().try_clone_to_owned()?));
        Ok(copies)
    }
}

/// Runs the proxy until `shutdown` resolves or a new process took over,
/// then drains and returns. `config_path` is what a reload (SIGHUP,
/// `POST /reload`) reads again; `systemd` are the sockets systemd passed
/// (`LISTEN_FDS`), claimed by address.
///
/// When a proxy already serves the same data directory, this is a
/// takeover (`takeover`): that one freezes, this one restores and probes,
/// then receives its listening sockets and serves, and that one drains.
pub async fn run(
    config: Config,
    config_path: PathBuf,
    token: AdminToken,
    systemd: Vec<std::net::TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ProxyError> {
    let config = Arc::new(config);
    let mut predecessor = takeover::Predecessor::find(&config.data_dir).await?;
    let events = Arc::new(EventLog::open(&config.data_dir.join("events.jsonl")).await?);
    let prober = Prober::new(config.timeouts.connect, config.gate.request_timeout);
    let health = Arc::new(HealthTable::default());
    let cluster = match &config.cluster {
        Some(cfg) => Some(Cluster::new(cfg, config.public.to_string())?),
        None => None,
    };
    let (router, guard_record) = restore(&config, &prober, &health, cluster.as_deref()).await?;
    let router = Arc::new(router);
    let traffic = Arc::new(Traffic::new());
    let now = time::OffsetDateTime::now_utc();
    let budget =
        Arc::new(Budget::open(&config.data_dir.join("budget.json"), config.sla, now).await?);
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
        guard: guard_record,
        cluster: cluster.clone(),
    }));

    // Stops what outlives the drain (the reloader, the notifier).
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // Stops the admin and status listeners as soon as the public one stops
    // accepting: after a takeover, the new process answers them.
    let (listeners_stop_tx, listeners_stop_rx) = tokio::sync::watch::channel(false);
    let (notifier, notices) =
        Notifier::start(config.notify.clone(), Arc::clone(&events), stop_rx.clone());
    // After a takeover there is no gap: the old process served until a
    // moment ago, and serves until this one does.
    if predecessor.is_none()
        && let Some(gap) = budget.count_downtime(now)
    {
        record_downtime(&config, &events, &incident_store, &notifier, gap).await;
    }
    // A crash from now on is a gap from now on.
    budget.beat(now);
    budget.save().await?;

    let expiry = tokio::spawn(ops::cert_expiry::run(
        Arc::clone(&router),
        Arc::clone(&events),
        stop_rx.clone(),
    ));

    let inherited = sockets::Inherited::from_systemd(systemd);
    let inherited = match &mut predecessor {
        Some(old) => inherited.with_named(old.sockets().await?),
        None => inherited,
    };
    let listeners = inherited.listeners(&config).await?;
    let copies = listeners.handover_copies()?;
    let follower = match cluster {
        Some(cluster) => {
            cluster.bound(listeners.public.local_addr()?);
            Some(tokio::spawn(
                cluster.run(Arc::clone(&controller), stop_rx.clone()),
            ))
        }
        None => None,
    };
    announce(&listeners, &token)?;

    let plane = Plane::start(background::Parts {
        monitor: Arc::clone(&monitor),
        prober,
        controller: Arc::clone(&controller),
        incidents: Arc::clone(&incident_store),
        incidents_cfg: config.incidents,
        traffic: Arc::clone(&traffic),
        health: Arc::clone(&health),
        events: Arc::clone(&events),
        notifier,
        budget: Arc::clone(&budget),
        router: Arc::clone(&router),
        metrics: Arc::clone(&metrics),
    });
    let (handed_over_tx, handed_over) = tokio::sync::watch::channel(None::<u32>);
    let succession = Arc::new(takeover::Succession::new(handed_over.clone()));
    let reloader = tokio::spawn(reload_on_sighup(
        Arc::clone(&controller),
        Arc::clone(&succession),
        config_path.clone(),
        stop_rx.clone(),
    ));
    let status_app = ops::status_page::app(StatusPage {
        router: Arc::clone(&router),
        health: Arc::clone(&health),
        budget: Arc::clone(&budget),
        incidents: incident_store,
    });
    let status_listener = tokio::spawn(takeover::side_listeners::serve(
        listeners.status,
        status_app,
        listeners_stop_rx.clone(),
    ));

    let admin_app = admin::routes::app(AdminState {
        controller: Arc::clone(&controller),
        token: Arc::new(token),
        config_path: Arc::new(config_path),
        budget,
        succession,
    });
    let admin = tokio::spawn(takeover::side_listeners::serve(
        listeners.admin,
        admin_app,
        listeners_stop_rx,
    ));

    let tls = listeners.public_tls.map(|listener| TlsListener {
        listener,
        handshake: Handshake {
            router: Arc::clone(&router),
            metrics: Arc::clone(&metrics),
            timeout: config.limits.tls_handshake_timeout,
        },
    });
    let forwarder = Arc::new(Forwarder::new(
        Arc::clone(&router),
        traffic,
        Arc::clone(&metrics),
        monitor,
    ));
    // The listeners are ours now; the accept loop below starts at once.
    if let Some(old) = predecessor {
        let pid = old.pid();
        old.serving().await?;
        tracing::info!(pid, "took over: the old process drains");
        events.record(Event::new(
            EventKind::Takeover,
            format!(
                "a new proxy process (pid {}) took over from pid {pid}",
                std::process::id()
            ),
        ));
    }
    let answering = match takeover::bind(&config.data_dir).await {
        Ok(listener) => Some(tokio::spawn(takeover::answer(
            listener,
            takeover::Handover {
                sockets: copies,
                plane: Arc::clone(&plane),
            },
            stop_rx.clone(),
        ))),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for takeovers: a new process will not find this one");
            None
        }
    };
    write_pid(&config.data_dir).await;
    systemd::notify_serving();
    let mut watch_handover = handed_over.clone();
    let answered = async move {
        match answering {
            Some(task) => {
                if let Ok(Some(pid)) = task.await {
                    let _ = handed_over_tx.send(Some(pid));
                }
            }
            None => std::future::pending().await,
        }
    };
    let answered = tokio::spawn(answered);
    let stop_accepting = async move {
        tokio::select! {
            () = shutdown => {}
            _ = watch_handover.wait_for(Option::is_some) => {}
        }
        let _ = listeners_stop_tx.send(true);
        if watch_handover.borrow().is_none() {
            systemd::notify_stopping();
        }
    };
    let drain = http::server::serve(
        listeners.public,
        tls,
        forwarder,
        &metrics,
        config.limits,
        config.timeouts.shutdown_grace,
        stop_accepting,
    )
    .await;
    let took_over = *handed_over.borrow();
    if took_over.is_some() {
        // The new process owns the data directory: nothing here writes it again.
        controller.retire();
    } else {
        remove_takeover_socket(&config.data_dir).await;
    }
    plane.stop().await;
    let _ = stop_tx.send(true);
    answered.abort();
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
    let _ = tokio::join!(reloader, notices, expiry);
    if let Some(follower) = follower {
        let _ = follower.await;
    }
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

/// The readiness lines: harnesses and scripts read them to learn the ports.
fn announce(listeners: &Listeners, token: &AdminToken) -> Result<(), ProxyError> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "public listening on {}",
        listeners.public.local_addr()?
    )?;
    if let Some(tls) = &listeners.public_tls {
        writeln!(out, "public_tls listening on {}", tls.local_addr()?)?;
    }
    writeln!(out, "admin listening on {}", listeners.admin.local_addr()?)?;
    writeln!(
        out,
        "status listening on {}",
        listeners.status.local_addr()?
    )?;
    writeln!(out, "admin token {}", token.describe())?;
    out.flush()?;
    Ok(())
}

/// The gap since the last heartbeat: an event, and an incident opened and
/// closed for it (announced like any other outage).
async fn record_downtime(
    config: &Config,
    events: &EventLog,
    incidents: &IncidentStore,
    notifier: &Notifier,
    gap: Downtime,
) {
    let secs = (gap.to - gap.from).whole_seconds().max(0);
    let event = events.record(
        Event::new(
            EventKind::ProxyDown,
            format!("the proxy was not serving for {secs} s (a crash or a stop, not a takeover)"),
        )
        .detail(serde_json::json!({
            "from": gap.from.format(&time::format_description::well_known::Rfc3339).ok(),
            "down_secs": secs,
            "bad_minutes": gap.bad_minutes,
        })),
    );
    ops::incidents::watcher::downtime(
        incidents,
        config.incidents,
        &event,
        gap.from,
        events,
        notifier,
    )
    .await;
}

/// `<data_dir>/proxy.pid`: the process serving now, for supervisors that
/// follow a takeover (`scripts/up.sh`).
async fn write_pid(data_dir: &std::path::Path) {
    let path = data_dir.join("proxy.pid");
    let pid = format!("{}\n", std::process::id());
    if let Err(e) = atomic_file::write(&path, pid.into_bytes()).await {
        tracing::warn!(error = %e, "cannot write proxy.pid in the data directory");
    }
}

/// Off the runtime's threads, as every file operation in `data_dir`.
async fn remove_takeover_socket(data_dir: &std::path::Path) {
    let path = takeover::socket_path(data_dir);
    let _ = tokio::task::spawn_blocking(move || std::fs::remove_file(path)).await;
}

async fn reload_on_sighup(
    controller: Arc<Controller>,
    succession: Arc<takeover::Succession>,
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
                let _ = control::reload::reload(&controller, &succession, &path).await;
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
    cluster: Option<&Cluster>,
) -> Result<(Router, GuardRecord), ProxyError> {
    let state_path = config.state_file();
    let saved = control::state::load(&state_path).await?;
    // With a cluster, the store decides, and the state file is its cache.
    let saved = match cluster {
        Some(cluster) => {
            let local = saved.unwrap_or_else(|| {
                PersistedState::new(config.initial_active, None, config.slot_addrs.clone(), None)
            });
            let state = cluster.startup(local).await;
            if let Err(e) = control::state::save(&state_path, &state).await {
                tracing::error!(error = %e, "could not write the state file, the routing store's cache");
            }
            Some(state)
        }
        None => saved,
    };
    let (canary, guard) = match &saved {
        Some(saved) => (
            saved
                .canary
                .filter(|c| c.slot != saved.active)
                .map(|c| Canary {
                    slot: c.slot,
                    percent: c.percent,
                }),
            saved.guard.clone(),
        ),
        None => (None, GuardRecord::default()),
    };
    let (active, previous, addrs, last_switch, vetted_releases) = match saved {
        Some(saved) => {
            tracing::info!(file = %state_path.display(), active = %saved.active, blue = ?saved.blue.0, green = ?saved.green.0, "restored routing state");
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
                config.slot_addrs.clone(),
                None,
                [None, None],
            )
        }
    };
    let members: Vec<(Slot, SocketAddr)> = Slot::ALL
        .into_iter()
        .flat_map(|slot| addrs[slot.index()].iter().map(move |a| (slot, *a)))
        .collect();
    let mut pools = Slot::ALL.map(|slot| {
        Pool::new(
            slot,
            &addrs[slot.index()],
            &config.timeouts,
            config.slot_tls[slot.index()].as_ref(),
        )
    });
    let endpoints = Slot::ALL.map(|slot| pools[slot.index()].endpoints());
    let results = futures_util::future::join_all(members.iter().map(|(slot, addr)| {
        let at = endpoints[slot.index()]
            .iter()
            .find(|e| e.addr == *addr)
            .expect("the pool was built from these addresses");
        control::health::check(prober, at, &config.health)
    }))
    .await;
    // The active slot is the operator's choice; the other takes users in a
    // failover only if every member that answers still runs the release that
    // passed the gate.
    let mut vetted = [false; 2];
    vetted[active.index()] = true;
    let mut same_release = [true; 2];
    for slot in Slot::ALL {
        health.reset(slot, &addrs[slot.index()]);
    }
    for ((slot, addr), result) in members.into_iter().zip(results) {
        match &result {
            Ok(release) => {
                health.set_release(slot, addr, release.clone());
                let pool = &mut pools[slot.index()];
                if let Some(at) = pool.position(addr) {
                    *pool = pool.with_health(at, true);
                }
                if release.is_none() || *release != vetted_releases[slot.index()] {
                    same_release[slot.index()] = false;
                }
                tracing::info!(%slot, %addr, release = release.as_deref().unwrap_or("?"), "upstream answers");
            }
            // A member down is no sign of another release.
            Err(e) => tracing::warn!(%slot, %addr, error = %e, "upstream does not answer yet"),
        }
    }
    for slot in Slot::ALL {
        if pools[slot.index()].is_healthy() && same_release[slot.index()] {
            vetted[slot.index()] = true;
        }
    }
    if let Some(canary) = canary {
        tracing::info!(slot = %canary.slot, percent = canary.percent, "restored the canary");
        // It passed the gate when it started.
        vetted[canary.slot.index()] = true;
    }
    let router = Router::new(Snapshot {
        active,
        previous,
        pools: pools.map(Arc::new),
        vetted,
        last_switch,
        canary,
        policy: Arc::new(Policy::from_config(config)),
    });
    Ok((router, guard))
}
