//! Background liveness checks of every member of both slots: a GET of the
//! health path every interval, flipping a member down after `fall`
//! consecutive failures and up after `rise` consecutive successes (a slot is
//! up while any member is). Only a flip is logged and stored (as a new
//! routing snapshot); the release label each member reports is kept for the
//! status.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use time::OffsetDateTime;

use crate::config::Health;
use crate::control::probe::{Endpoint, Prober};
use crate::http::routing::Router;
use crate::ops::events::{Event, EventKind, EventLog};
use crate::slot::Slot;
use crate::ticker::Ticker;

/// What the checker knows of one member of a slot beyond the routing verdict.
#[derive(Debug, Clone)]
pub struct MemberHealth {
    /// The member these counters are about.
    pub addr: SocketAddr,
    /// The `release` its health endpoint reported last.
    pub release: Option<String>,
    pub ok_streak: u32,
    pub fail_streak: u32,
    pub last_error: Option<String>,
    pub last_check: Option<OffsetDateTime>,
}

impl MemberHealth {
    fn new(addr: SocketAddr) -> MemberHealth {
        MemberHealth {
            addr,
            release: None,
            ok_streak: 0,
            fail_streak: 0,
            last_error: None,
            last_check: None,
        }
    }
}

/// What the checker knows of one slot: its members', summed up.
#[derive(Debug, Clone, Default)]
pub struct SlotHealth {
    /// The release its members reported (the first member that reported one).
    pub release: Option<String>,
    /// The last error of the first member that has one.
    pub last_error: Option<String>,
    /// In the pool's order.
    pub members: Vec<MemberHealth>,
}

/// Per-member health details, written by the checker, read by the admin
/// API. A std `Mutex` per slot: held for a few field writes, never across
/// an `.await`.
#[derive(Default)]
pub struct HealthTable {
    slots: [Mutex<Vec<MemberHealth>>; 2],
}

impl HealthTable {
    fn lock(&self, slot: Slot) -> std::sync::MutexGuard<'_, Vec<MemberHealth>> {
        self.slots[slot.index()]
            .lock()
            .expect("health lock is never poisoned: no panics under it")
    }

    pub fn get(&self, slot: Slot) -> SlotHealth {
        let members = self.lock(slot).clone();
        SlotHealth {
            release: members.iter().find_map(|m| m.release.clone()),
            last_error: members.iter().find_map(|m| m.last_error.clone()),
            members,
        }
    }

    pub fn member(&self, slot: Slot, addr: SocketAddr) -> Option<MemberHealth> {
        self.lock(slot).iter().find(|m| m.addr == addr).cloned()
    }

    /// Records one check result of the member at `addr`; returns the new
    /// verdict when the streak crosses a threshold (`currently` is the
    /// verdict in force).
    pub fn record(
        &self,
        slot: Slot,
        addr: SocketAddr,
        result: &Result<Option<String>, String>,
        currently: bool,
        cfg: &Health,
    ) -> Option<bool> {
        let mut members = self.lock(slot);
        let at = match members.iter().position(|m| m.addr == addr) {
            Some(at) => at,
            None => {
                members.push(MemberHealth::new(addr));
                members.len() - 1
            }
        };
        let h = &mut members[at];
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

    /// Forgets what was known of a slot (its members changed).
    pub fn reset(&self, slot: Slot, addrs: &[SocketAddr]) {
        *self.lock(slot) = addrs.iter().map(|a| MemberHealth::new(*a)).collect();
    }

    pub fn set_release(&self, slot: Slot, addr: SocketAddr, release: Option<String>) {
        if release.is_some()
            && let Some(m) = self.lock(slot).iter_mut().find(|m| m.addr == addr)
        {
            m.release = release;
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
    /// Checks every member of both slots every interval until `shutdown`
    /// changes.
    pub async fn run(
        self: Arc<Self>,
        prober: Prober,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut ticker = Ticker::new(self.cfg.interval, shutdown);
        while ticker.tick().await {
            let members: Vec<(Slot, Endpoint)> = {
                let snap = self.router.load();
                Slot::ALL
                    .into_iter()
                    .flat_map(|slot| {
                        snap.pool(slot)
                            .endpoints()
                            .into_iter()
                            .map(move |e| (slot, e))
                    })
                    .collect()
            };
            let results = futures_util::future::join_all(
                members.iter().map(|(_, at)| check(&prober, at, &self.cfg)),
            )
            .await;
            for ((slot, at), result) in members.into_iter().zip(results) {
                self.checked(slot, at.addr, &result);
            }
        }
    }

    /// Records one check of a member, and its flip when it crosses a threshold.
    fn checked(&self, slot: Slot, addr: SocketAddr, result: &Result<Option<String>, String>) {
        let currently = {
            let snap = self.router.load();
            let pool = snap.pool(slot);
            let Some(at) = pool.position(addr) else {
                return;
            };
            pool.member_healthy(at)
        };
        let release_before = self.table.member(slot, addr).and_then(|m| m.release);
        let flip = self.table.record(slot, addr, result, currently, &self.cfg);
        if let Ok(Some(now)) = result
            && release_before.as_ref().is_some_and(|before| before != now)
        {
            self.release_changed(slot, addr, release_before, now);
        }
        if let Some(up) = flip {
            let why = match result {
                Ok(_) => format!("{} consecutive checks passed", self.cfg.rise),
                Err(e) => format!("{} consecutive checks failed; last: {e}", self.cfg.fall),
            };
            self.flip(slot, addr, up, why);
        }
    }

    /// Another release now runs on a slot: it is no failover target until it
    /// passes the gate.
    fn release_changed(&self, slot: Slot, addr: SocketAddr, before: Option<String>, now: &str) {
        self.router.update(|snap| {
            let mut next = snap.to_builder();
            if snap.pool(slot).position(addr).is_some() && snap.active != slot {
                next.vetted[slot.index()] = false;
            }
            next
        });
        tracing::info!(%slot, before = before.as_deref().unwrap_or("?"), now, "another release runs on the slot");
    }

    /// A user request could not connect or was reset: after `passive_fall`
    /// in a row, the member is down at once (the checker brings it back).
    pub fn passive_failure(&self, slot: Slot, addr: SocketAddr, consecutive: u32, error: &str) {
        let up = || {
            let snap = self.router.load();
            let pool = snap.pool(slot);
            pool.position(addr)
                .is_some_and(|at| pool.member_healthy(at))
        };
        if consecutive >= self.cfg.passive_fall && up() {
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

    /// Stores the new verdict on a member (if it is still one of the
    /// slot's) and records the flip, and a failover or failback when it
    /// changes where users go.
    fn flip(&self, slot: Slot, addr: SocketAddr, up: bool, why: String) {
        let mut changed = None;
        self.router.update(|snap| {
            let mut next = snap.to_builder();
            let pool = snap.pool(slot);
            changed = None;
            if let Some(at) = pool.position(addr)
                && pool.member_healthy(at) != up
            {
                next.pools[slot.index()] = Arc::new(pool.with_health(at, up));
                changed = Some((snap.serving(), next.serving()));
            }
            next
        });
        let Some((serving_before, serving_after)) = changed else {
            return;
        };
        let release = self.table.member(slot, addr).and_then(|m| m.release);
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
