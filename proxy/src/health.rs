//! Background liveness checks of both slots: a GET of the health path every
//! interval, flipping a slot down after `fall` consecutive failures and up
//! after `rise` consecutive successes. Only a flip is logged and stored (as a
//! new routing snapshot); the release label each slot reports is kept for
//! the status.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use time::OffsetDateTime;

use crate::config::Health;
use crate::probe::Prober;
use crate::routing::Router;
use crate::slot::Slot;

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
pub async fn check(
    prober: &Prober,
    addr: SocketAddr,
    cfg: &Health,
) -> Result<Option<String>, String> {
    let response = prober.get(addr, &cfg.path, cfg.timeout).await?;
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

/// Checks both slots every interval until `shutdown` resolves.
pub async fn run(
    router: Arc<Router>,
    table: Arc<HealthTable>,
    prober: Prober,
    cfg: Health,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(cfg.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutdown = shutdown;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => return,
        }
        let addrs = {
            let snap = router.load();
            [
                snap.upstream(Slot::Blue).addr,
                snap.upstream(Slot::Green).addr,
            ]
        };
        let (blue, green) = tokio::join!(
            check(&prober, addrs[0], &cfg),
            check(&prober, addrs[1], &cfg)
        );
        for (slot, result) in [(Slot::Blue, blue), (Slot::Green, green)] {
            apply(&router, &table, slot, addrs[slot.index()], &result, &cfg);
        }
    }
}

/// Records a result and, on a flip, stores a snapshot with the new verdict.
pub fn apply(
    router: &Router,
    table: &HealthTable,
    slot: Slot,
    addr: SocketAddr,
    result: &Result<Option<String>, String>,
    cfg: &Health,
) {
    let currently = router.load().is_healthy(slot);
    let Some(up) = table.record(slot, addr, result, currently, cfg) else {
        return;
    };
    router.update(|snap| {
        let mut next = snap.to_builder();
        // Only if the address checked is still the slot's address.
        if snap.upstream(slot).addr == addr {
            next.healthy[slot.index()] = up;
        }
        next
    });
    match result {
        Ok(_) => tracing::info!(%slot, %addr, "slot is up"),
        Err(e) => tracing::warn!(%slot, %addr, error = %e, "slot is down"),
    }
}
