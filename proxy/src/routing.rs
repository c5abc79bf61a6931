//! All routing state in one snapshot behind one `ArcSwap`: readers load it
//! once per request without a lock; writers build a whole new snapshot and
//! store it, so no request ever sees a half-made change.

use std::sync::Arc;

use arc_swap::ArcSwap;
use time::OffsetDateTime;

use crate::slot::Slot;
use crate::upstream::Upstream;

/// Everything a request needs to be routed. Immutable once stored.
pub struct Snapshot {
    /// The slot recorded as serving users. Changed only by an operator's
    /// switch or rollback, never by a passing outage.
    pub active: Slot,
    /// The slot that was active before the last switch: where a rollback goes.
    pub previous: Option<Slot>,
    /// Indexed by `Slot::index()`.
    pub upstreams: [Arc<Upstream>; 2],
    /// The health checker's verdict, indexed by `Slot::index()`.
    pub healthy: [bool; 2],
    pub last_switch: Option<OffsetDateTime>,
}

impl Snapshot {
    pub fn upstream(&self, slot: Slot) -> &Arc<Upstream> {
        &self.upstreams[slot.index()]
    }

    pub fn is_healthy(&self, slot: Slot) -> bool {
        self.healthy[slot.index()]
    }

    /// Where user requests go now: the active slot, unless it is down and the
    /// other one is up. Never a slot that failed its checks while a healthy
    /// one exists.
    pub fn serving(&self) -> Slot {
        let active = self.active;
        if !self.is_healthy(active) && self.is_healthy(active.other()) {
            active.other()
        } else {
            active
        }
    }

    /// A copy to modify into the next snapshot.
    pub fn to_builder(&self) -> Snapshot {
        Snapshot {
            active: self.active,
            previous: self.previous,
            upstreams: self.upstreams.clone(),
            healthy: self.healthy,
            last_switch: self.last_switch,
        }
    }
}

/// The one place routing state lives.
pub struct Router {
    current: ArcSwap<Snapshot>,
}

impl Router {
    pub fn new(initial: Snapshot) -> Router {
        Router {
            current: ArcSwap::from_pointee(initial),
        }
    }

    /// The snapshot in force; hold it only as long as the routing decision.
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    pub fn load_full(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Applies `change` to the latest snapshot and stores the result
    /// atomically. Writers that race (a health flip during a switch) are
    /// retried on the newer snapshot, so neither change is lost.
    pub fn update(&self, change: impl Fn(&Snapshot) -> Snapshot) -> Arc<Snapshot> {
        let mut next = None;
        self.current.rcu(|current| {
            let snap = Arc::new(change(current));
            next = Some(Arc::clone(&snap));
            snap
        });
        next.expect("rcu runs the closure at least once")
    }
}
