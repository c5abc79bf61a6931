//! The incident task: feeds the detector every second (the traffic's new
//! failures, the releases serving) and with every event, then stores, logs
//! and announces (through `notify`) what it decides.

use std::sync::Arc;

use serde_json::json;
use time::OffsetDateTime;
use tokio::sync::broadcast::error::RecvError;

use super::{Change, Detector, IncidentStore, SAMPLE_EVERY};
use crate::config::IncidentsCfg;
use crate::control::health::HealthTable;
use crate::http::traffic::Traffic;
use crate::ops::events::{Event, EventKind, EventLog};
use crate::ops::notify::{Notice, NoticeKind, Notifier};
use crate::slot::Slot;
use crate::ticker::Ticker;

/// What the task needs from the rest of the proxy.
pub struct Sources {
    pub traffic: Arc<Traffic>,
    pub health: Arc<HealthTable>,
    pub events: Arc<EventLog>,
    pub notifier: Notifier,
}

/// Feeds the detector every second and with every event until `shutdown`
/// changes; stores, logs and announces what it decides.
pub async fn run(
    store: Arc<IncidentStore>,
    cfg: IncidentsCfg,
    sources: Sources,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let Sources {
        traffic,
        health,
        events,
        notifier,
    } = sources;
    let mut detector = Detector::new(cfg, &store.all(), OffsetDateTime::now_utc());
    let mut feed = events.subscribe();
    let mut last = Slot::ALL.map(|s| traffic.totals(s).failures);
    let mut ticker = Ticker::new(SAMPLE_EVERY, shutdown);
    loop {
        let change = tokio::select! {
            running = ticker.tick() => {
                if !running {
                    break;
                }
                let now_totals = Slot::ALL.map(|s| traffic.totals(s).failures);
                let failures = Slot::ALL.map(|s| now_totals[s.index()].saturating_sub(last[s.index()]));
                last = now_totals;
                let releases = Slot::ALL.map(|s| health.get(s).release);
                detector.sample(OffsetDateTime::now_utc(), failures, &releases)
            }
            received = feed.recv() => match received {
                Ok(event) => detector.event(&event),
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "the incident detector fell behind the event log; some events are not in timelines");
                    None
                }
                Err(RecvError::Closed) => break,
            },
        };
        if let Some(change) = change {
            apply(change, &store, &events, &notifier).await;
        }
    }
    // An open incident is saved as it stands; the next start resumes it.
    if let Some(open) = detector.open_incident() {
        store.upsert(open.clone());
        if let Err(e) = store.save().await {
            tracing::error!(error = %e, "could not save the incidents at shutdown");
        }
    }
}

/// Records the proxy's own downtime found at start (`event` is its
/// `proxy_down`, already in the log; `from` when it stopped serving): an
/// outage opened and closed at once, announced like any other.
pub async fn downtime(
    store: &IncidentStore,
    cfg: IncidentsCfg,
    event: &Event,
    from: OffsetDateTime,
    events: &EventLog,
    notifier: &Notifier,
) {
    let mut detector = Detector::new(cfg, &store.all(), event.at);
    for change in detector.downtime(event, from) {
        apply(change, store, events, notifier).await;
    }
}

async fn apply(change: Change, store: &IncidentStore, events: &EventLog, notifier: &Notifier) {
    let (incident, announce) = match change {
        // Kept in memory for the status page; written on open and close.
        Change::Updated(incident) => {
            store.upsert(incident);
            return;
        }
        Change::Opened(incident) => (incident, NoticeKind::IncidentOpen),
        Change::Closed(incident) => (incident, NoticeKind::IncidentClose),
        Change::Prevented(incident) => (incident, NoticeKind::PreventedIncident),
    };
    let kind = match announce {
        NoticeKind::IncidentOpen => EventKind::IncidentOpen,
        NoticeKind::IncidentClose => EventKind::IncidentClose,
        NoticeKind::PreventedIncident => EventKind::PreventedIncident,
    };
    events.record(
        Event::new(kind, incident.cause.clone())
            .releases(incident.releases.iter().cloned().map(Some))
            .detail(json!({
                "incident": incident.id,
                "failed_requests": incident.failed_requests,
                "duration_secs": incident.duration_secs,
            })),
    );
    // After the event: whoever sees the incident's new state (the status
    // page, /status) finds its event in the log too.
    store.upsert(incident.clone());
    if let Err(e) = store.save().await {
        tracing::error!(error = %e, "could not save the incidents");
    }
    notifier.send(Notice::new(announce, incident));
}
