//! `[slots]`: the two upstreams and which one takes traffic on a first start.

use std::net::SocketAddr;

use serde::Deserialize;

use super::problems::Problems;
use crate::config::defaults as d;
use crate::slot::Slot;

#[derive(Debug, Default, Deserialize)]
pub(super) struct RawSlots {
    active: Option<String>,
    #[serde(default)]
    blue: RawSlot,
    #[serde(default)]
    green: RawSlot,
}

#[derive(Debug, Default, Deserialize)]
struct RawSlot {
    addr: Option<String>,
}

/// The validated `[slots]`, spread over `Config`'s top-level fields.
pub(super) struct Slots {
    pub(super) initial_active: Slot,
    /// Indexed by `Slot::index()`.
    pub(super) addrs: [SocketAddr; 2],
}

impl RawSlots {
    pub(super) fn validate(self, p: &mut Problems) -> Slots {
        let blue = p.addr("slots.blue.addr", self.blue.addr.as_deref(), d::BLUE);
        let green = p.addr("slots.green.addr", self.green.addr.as_deref(), d::GREEN);
        let initial_active = match self.active.as_deref().unwrap_or(d::ACTIVE).parse::<Slot>() {
            Ok(slot) => slot,
            Err(e) => {
                p.push("slots.active", e);
                Slot::Blue
            }
        };
        Slots {
            initial_active,
            addrs: [blue, green],
        }
    }
}
