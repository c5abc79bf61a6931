//! The configuration exactly as written in TOML, and its validation into the
//! typed `Config`: one validator per section (a file each under `raw/`), all
//! reporting into one `Problems`, so every problem of a file is named at
//! once. Unknown keys are collected while parsing (see `Config::parse`) and
//! reported with the other problems: a typo is an error, never a silent
//! default.

mod canary;
mod cluster;
mod forwarding;
mod gate;
mod guard;
mod health;
mod incidents;
mod limits;
mod listen;
mod notify;
mod problems;
mod scenario;
mod sla;
mod slots;
mod timeouts;

use std::path::PathBuf;

use serde::Deserialize;

use super::{Config, Problem, defaults as d};
use problems::Problems;

#[derive(Debug, Default, Deserialize)]
pub struct RawConfig {
    data_dir: Option<PathBuf>,
    #[serde(default)]
    listen: listen::RawListen,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    slots: slots::RawSlots,
    #[serde(default)]
    timeouts: timeouts::RawTimeouts,
    #[serde(default)]
    gate: gate::RawGate,
    #[serde(default)]
    health: health::RawHealth,
    #[serde(default)]
    limits: limits::RawLimits,
    #[serde(default)]
    forwarding: forwarding::RawForwarding,
    #[serde(default)]
    canary: canary::RawCanary,
    #[serde(default)]
    guard: guard::RawGuard,
    #[serde(default)]
    incidents: incidents::RawIncidents,
    #[serde(default)]
    sla: sla::RawSla,
    #[serde(default)]
    notify: notify::RawNotify,
    #[serde(default)]
    scenario: Vec<scenario::RawScenario>,
    #[serde(default)]
    tls: super::tls::RawTls,
    cluster: Option<cluster::RawCluster>,
}

/// `[admin]`: nothing to check here; the token file is read, and refused if
/// unreadable, when the proxy starts (`admin::auth`).
#[derive(Debug, Default, Deserialize)]
struct RawAdmin {
    token_file: Option<PathBuf>,
}

impl RawConfig {
    /// Checks every value and builds the typed config, or reports every
    /// problem (without line numbers: the caller locates them in the text).
    pub fn validate(self) -> Result<Config, Vec<Problem>> {
        // Named one by one, so a section added to the file cannot go unvalidated.
        let RawConfig {
            data_dir,
            listen,
            admin,
            slots,
            timeouts,
            gate,
            health,
            limits,
            forwarding,
            canary,
            guard,
            incidents,
            sla,
            notify,
            scenario,
            tls,
            cluster,
        } = self;
        let mut p = Problems::default();
        let public_tls = listen.public_tls.clone();
        let listen = listen.validate(&mut p);
        let (public_tls, tls) = tls.validate(public_tls.as_deref(), listen.public, p.list());
        let slots = slots.validate(&mut p);
        let timeouts = timeouts.validate(&mut p);
        let gate = gate.validate(&mut p);
        let health = health.validate(&mut p);
        let forwarding = forwarding.validate(&mut p);
        let canary = canary.validate(&mut p);
        let guard = guard.validate(&mut p);
        let incidents = incidents.validate(&mut p);
        let sla = sla.validate(&mut p);
        let notify = notify.validate(&mut p);
        let limits = limits.validate(&mut p);
        let scenarios = scenario::validate(scenario, &mut p);
        let cluster = cluster.and_then(|c| c.validate(&mut p));
        p.finish()?;
        Ok(Config {
            data_dir: data_dir.unwrap_or_else(|| PathBuf::from(d::DATA_DIR)),
            public: listen.public,
            public_tls,
            admin: listen.admin,
            status: listen.status,
            forwarding,
            canary,
            guard,
            incidents,
            sla,
            notify,
            token_file: admin.token_file,
            initial_active: slots.initial_active,
            slot_addrs: slots.addrs,
            slot_tls: slots.tls,
            timeouts,
            gate,
            health,
            limits,
            scenarios,
            tls,
            cluster,
        })
    }
}
