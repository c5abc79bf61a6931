//! Background liveness checks of both slots: a GET of the health path every
//! interval, flipping a slot down after `fall` consecutive failures and up
//! after `rise` consecutive successes. Only a flip is logged and stored (as a
//! new routing snapshot); the release label each slot reports is kept for
//! the status.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use time::OffsetDateTime;

use crate::config::Health;
use crate::control::probe::{Endpoint, Prober};
use crate::http::routing::Router;
use crate::ops::events::{Event, EventKind, EventLog};
use crate::slot::Slot;
use crate::ticker::Ticker;

/// What the checker knows of one slot beyond the routing verdict.
#[derive(Debug, Clone, Default)]
pub struct SlotHealth {
    /// The address these counters are about; a new address starts over.
    pub addr: Option<SocketAddr>,
    /// The `release` its health endpoint reported last.
    pub release: Option<String>,
    pub ok_streak: u32,
    pub fail_streak: u32,
    pub last_error: Option<String>,
    pub last_check: Option<OffsetDateTime>,
}

/// Per-slot health details, written by the checker, read by the admin API.
/// A std `Mutex`: held for a few field writes, never across an `.await`.
#[derive(Default)]
pub struct HealthTable {
    slots: [Mutex<SlotHealth>; 2],
}

impl HealthTable {
    pub fn get(&self, slot: Slot) -> SlotHealth {
        self.slots[slot.index()]
            .lock()
            .expect("health lock is never poisoned: no panics under it")
            .clone()
    }

    /// Records one check result; returns the new verdict when the streak
    /// crosses a threshold (`currently` is the verdict in force).
    pub fn record(
        &self,
        slot: Slot,
        addr: SocketAddr,
        result: &Result<Option<String>, String>,
        currently: bool,
        cfg: &Health,
    ) -> Option<bool> {
        let mut h = self.slots[slot.index()]
            .lock()
            .expect("health lock is never poisoned: no panics under it");
        if h.addr != Some(addr) {
            *h = SlotHealth {
                addr: Some(addr),
                ..SlotHealth::default()
            };
        }
        h.last_check = Some(OffsetDateTime::now_utc());
        match result {
            Ok(release) => {
                h.ok_streak += 1;
                h.fail_streak = 0;
                h.last_error = None;
                if release.is_some() {
                    h.release = release.clone();
                }
                (!currently && h.ok_streak >= cfg.rise).then_some(true)
            }
            Err(e) => {
                h.fail_streak += 1;
                h.ok_streak = 0;
                h.last_error = Some(e.clone());
                (currently && h.fail_streak >= cfg.fall).then_some(false)
            }
        }
    }

    /// Forgets what was known of a slot (its address changed).
    pub fn reset(&self, slot: Slot, addr: SocketAddr) {
        *self.slots[slot.index()]
            .lock()
            .expect("health lock is never poisoned: no panics under it") = SlotHealth {
            addr: Some(addr),
            ..SlotHealth::default()
        };
    }

    pub fn set_release(&self, slot: Slot, release: Option<String>) {
        if release.is_some() {
            self.slots[slot.index()]
                .lock()
                .expect("health lock is never poisoned: no panics under it")
                .release = release;
        }
    }
}

/// One liveness check: the release label on success, what went wrong otherwise.
pub async fn check(prober: &Prober, to: &Endpoint, cfg: &Health) -> Result<Option<String>, String> {
    let response = prober.get(to, &cfg.path, cfg.timeout).await?;
    if !response.status.is_success() {
        return Err(format!(
            "{} answered status {}",
            cfg.path,
            response.status.as_u16()
        ));
    }
    Ok(serde_json::from_slice::<serde_json::Value>(&response.body)
        .ok()
        .and_then(|v| {
            v.get("release")
                .and_then(|r| r.as_str())
                .map(str::to_string)
        }))
}

/// The health verdicts' writer: the background checker and the request
/// path's passive detection both go through it, so a flip is stored, logged
/// and recorded as an event the same way whoever saw it.
pub struct Monitor {
    pub router: Arc<Router>,
    pub table: Arc<HealthTable>,
    pub events: Arc<EventLog>,
    pub cfg: Health,
}

impl Monitor {
    /// Checks both slots every interval until `shutdown` changes.
    pub async fn run(
        self: Arc<Self>,
        prober: Prober,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut ticker = Ticker::new(self.cfg.interval, shutdown);
        while ticker.tick().await {
            let [blue_at, green_at] = {
                let snap = self.router.load();
                Slot::ALL.map(|slot| Endpoint::of(snap.upstream(slot)))
            };
            let (blue, green) = tokio::join!(
                check(&prober, &blue_at, &self.cfg),
                check(&prober, &green_at, &self.cfg)
            );
            let addrs = [blue_at.addr, green_at.addr];
            for (slot, result) in [(Slot::Blue, blue), (Slot::Green, green)] {
                let addr = addrs[slot.index()];
                let currently = self.router.load().is_healthy(slot);
                let release_before = self.table.get(slot).release;
                let flip = self.table.record(slot, addr, &result, currently, &self.cfg);
                if let Ok(Some(now)) = &result
                    && release_before.as_ref().is_some_and(|before| before != now)
                {
                    self.release_changed(slot, addr, release_before, now);
                }
                if let Some(up) = flip {
                    let why = match &result {
                        Ok(_) => format!("{} consecutive checks passed", self.cfg.rise),
                        Err(e) => format!("{} consecutive checks failed; last: {e}", self.cfg.fall),
                    };
                    self.flip(slot, addr, up, why);
                }
            }
        }
    }

    /// Another release now runs on a slot: it is no failover target until it
    /// passes the gate.
    fn release_changed(&self, slot: Slot, addr: SocketAddr, before: Option<String>, now: &str) {
        self.router.update(|snap| {
            let mut next = snap.to_builder();
            if snap.upstream(slot).addr == addr && snap.active != slot {
                next.vetted[slot.index()] = false;
            }
            next
        });
        tracing::info!(%slot, before = before.as_deref().unwrap_or("?"), now, "another release runs on the slot");
    }

    /// A user request could not connect or was reset: after `passive_fall`
    /// in a row, the slot is down at once (the checker brings it back).
    pub fn passive_failure(&self, slot: Slot, addr: SocketAddr, consecutive: u32, error: &str) {
        if consecutive >= self.cfg.passive_fall && self.router.load().is_healthy(slot) {
            self.table
                .record(slot, addr, &Err(error.to_string()), false, &self.cfg);
            self.flip(
                slot,
                addr,
                false,
                format!("{consecutive} user requests in a row failed: {error}"),
            );
        }
    }

    /// Stores the new verdict (if the address is still the slot's) and
    /// records the flip, and a failover or failback when it changes where
    /// users go.
    fn flip(&self, slot: Slot, addr: SocketAddr, up: bool, why: String) {
        let mut changed = None;
        self.router.update(|snap| {
            let mut next = snap.to_builder();
            if snap.upstream(slot).addr == addr && snap.is_healthy(slot) != up {
                next.healthy[slot.index()] = up;
                changed = Some((snap.serving(), next.serving()));
            } else {
                changed = None;
            }
            next
        });
        let Some((serving_before, serving_after)) = changed else {
            return;
        };
        let release = self.table.get(slot).release;
        let kind = if up {
            EventKind::UpstreamUp
        } else {
            EventKind::UpstreamDown
        };
        self.events.record(
            Event::new(kind, why)
                .slot_to(slot)
                .releases([release])
                .detail(serde_json::json!({ "addr": addr })),
        );
        if serving_before != serving_after {
            let snap = self.router.load();
            let kind = if serving_after == snap.active {
                EventKind::Failback
            } else {
                EventKind::Failover
            };
            self.events.record(
                Event::new(
                    kind,
                    format!("users now go to {serving_after} (active: {})", snap.active),
                )
                .slot_from(serving_before)
                .slot_to(serving_after),
            );
        }
    }
}
