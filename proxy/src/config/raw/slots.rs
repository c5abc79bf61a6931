//! `[slots]`: each slot's upstreams (one `addr`, or a pool in `addrs`), how they are
//! reached (plain, or TLS with the name a certificate must carry and the CA it is verified
//! against; the same for every member), and which slot takes traffic on a first start.

use std::net::SocketAddr;
use std::path::PathBuf;

use rustls::pki_types::ServerName;
use serde::Deserialize;

use super::problems::Problems;
use crate::config::SlotTls;
use crate::config::defaults as d;
use crate::http::pool::MAX_MEMBERS;
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
    addrs: Option<Vec<String>>,
    tls: Option<bool>,
    server_name: Option<String>,
    ca: Option<PathBuf>,
}

/// The validated `[slots]`, spread over `Config`'s top-level fields.
pub(super) struct Slots {
    pub(super) initial_active: Slot,
    /// Each slot's members, indexed by `Slot::index()`; never empty.
    pub(super) addrs: [Vec<SocketAddr>; 2],
    /// Indexed by `Slot::index()`; `None` for a plain upstream.
    pub(super) tls: [Option<SlotTls>; 2],
}

impl RawSlots {
    pub(super) fn validate(self, p: &mut Problems) -> Slots {
        let blue_tls = self.blue.tls(Slot::Blue, p);
        let green_tls = self.green.tls(Slot::Green, p);
        let blue = self.blue.validate(Slot::Blue, d::BLUE, p);
        let green = self.green.validate(Slot::Green, d::GREEN, p);
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
            tls: [blue_tls, green_tls],
        }
    }
}

impl RawSlot {
    /// One member from `addr`, or the pool in `addrs`; both at once is
    /// ambiguous, so it is a problem rather than a silent choice.
    fn validate(self, slot: Slot, default: &str, p: &mut Problems) -> Vec<SocketAddr> {
        let fallback = || vec![default.parse().expect("defaults are valid addresses")];
        match (self.addr, self.addrs) {
            (Some(_), Some(_)) => {
                p.push(
                    format!("slots.{slot}.addrs"),
                    format!("give slots.{slot}.addr (one upstream) or slots.{slot}.addrs (a pool), not both"),
                );
                fallback()
            }
            (None, Some(list)) => {
                let key = format!("slots.{slot}.addrs");
                let mut addrs = Vec::with_capacity(list.len());
                for text in &list {
                    let addr = p.addr(&key, Some(text), default);
                    if addrs.contains(&addr) {
                        p.push(&*key, format!("{text:?} is listed twice"));
                    }
                    addrs.push(addr);
                }
                if addrs.is_empty() {
                    p.push(key, "lists no address: a slot needs at least one upstream");
                    return fallback();
                }
                if addrs.len() > MAX_MEMBERS {
                    p.push(
                        key,
                        format!(
                            "lists {} addresses; a slot takes at most {MAX_MEMBERS}",
                            addrs.len()
                        ),
                    );
                }
                addrs
            }
            (addr, None) => vec![p.addr(&format!("slots.{slot}.addr"), addr.as_deref(), default)],
        }
    }

    /// Every member of the slot is reached the same way: one TLS setting per slot.
    fn tls(&self, slot: Slot, p: &mut Problems) -> Option<SlotTls> {
        let server_name = self.server_name.as_deref().and_then(|name| {
            match ServerName::try_from(name.to_owned()) {
                Ok(name) => Some(name),
                Err(_) => {
                    p.push(
                        format!("slots.{slot}.server_name"),
                        format!("{name:?} is neither a DNS name nor an IP address"),
                    );
                    None
                }
            }
        });
        let ca = self.ca.clone().filter(|path| {
            let empty = path.as_os_str().is_empty();
            if empty {
                p.push(format!("slots.{slot}.ca"), "a PEM file, or no key at all");
            }
            !empty
        });
        if self.tls != Some(true) {
            for (key, set) in [
                ("server_name", self.server_name.is_some()),
                ("ca", self.ca.is_some()),
            ] {
                if set {
                    p.push(
                        format!("slots.{slot}.{key}"),
                        format!("has no effect without slots.{slot}.tls = true"),
                    );
                }
            }
            return None;
        }
        Some(SlotTls {
            server_name,
            ca,
            client: None,
        })
    }
}
