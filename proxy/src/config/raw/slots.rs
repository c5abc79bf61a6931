//! `[slots]`: the two upstreams, how each is reached (plain, or TLS with the name its
//! certificate must carry and the CA it is verified against), and which one takes traffic
//! on a first start.

use std::net::SocketAddr;
use std::path::PathBuf;

use rustls::pki_types::ServerName;
use serde::Deserialize;

use super::problems::Problems;
use crate::config::SlotTls;
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
    tls: Option<bool>,
    server_name: Option<String>,
    ca: Option<PathBuf>,
}

/// The validated `[slots]`, spread over `Config`'s top-level fields.
pub(super) struct Slots {
    pub(super) initial_active: Slot,
    /// Indexed by `Slot::index()`.
    pub(super) addrs: [SocketAddr; 2],
    /// Indexed by `Slot::index()`; `None` for a plain upstream.
    pub(super) tls: [Option<SlotTls>; 2],
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
        let blue_tls = self.blue.tls(Slot::Blue, p);
        let green_tls = self.green.tls(Slot::Green, p);
        Slots {
            initial_active,
            addrs: [blue, green],
            tls: [blue_tls, green_tls],
        }
    }
}

impl RawSlot {
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
