//! Reloading the configuration without a restart (SIGHUP or `POST /reload`):
//! all or nothing. A valid file takes effect for new requests; an invalid
//! one is refused with every problem named, and nothing changes.

use std::path::Path;

use crate::config::{Config, ConfigError};
use crate::control::Controller;
use crate::events::{Event, EventKind};

pub fn reload(controller: &Controller, path: &Path) -> Result<(), ConfigError> {
    let config = match Config::load(path) {
        Ok(config) => config,
        Err(e) => {
            tracing::warn!("reload refused: {e}");
            controller.events().record(
                Event::new(EventKind::ConfigReloadRefused, format!("{} has {} problem(s); nothing changed", path.display(), e.problems.len()))
                    .detail(serde_json::json!({ "problems": e.problems.iter().map(|p| format!("{}: {}", p.key, p.message)).collect::<Vec<_>>() })),
            );
            return Err(e);
        }
    };
    let old = controller.config();
    let mut restart_needed = Vec::new();
    if old.public != config.public {
        restart_needed.push("listen.public");
    }
    if old.admin != config.admin {
        restart_needed.push("listen.admin");
    }
    if old.status != config.status {
        restart_needed.push("listen.status");
    }
    if old.data_dir != config.data_dir {
        restart_needed.push("data_dir");
    }
    // The incident detector, the budget and the notifier read these at start.
    if old.incidents != config.incidents {
        restart_needed.push("incidents.*");
    }
    if old.sla != config.sla {
        restart_needed.push("sla.*");
    }
    if old.notify != config.notify {
        restart_needed.push("notify.*");
    }
    if old.slot_addrs != config.slot_addrs {
        restart_needed.push("slots.*.addr (use PUT /slots/{slot})");
    }
    controller.reload(config);
    let reason = if restart_needed.is_empty() {
        format!("{} reloaded", path.display())
    } else {
        format!(
            "{} reloaded; unchanged until a restart: {}",
            path.display(),
            restart_needed.join(", ")
        )
    };
    controller
        .events()
        .record(Event::new(EventKind::ConfigReload, reason));
    Ok(())
}
