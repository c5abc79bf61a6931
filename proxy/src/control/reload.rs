//! Reloading the configuration without a restart (SIGHUP or `POST /reload`):
//! all or nothing. A valid file takes effect for new requests (and its TLS
//! certificates, read again with it, for new handshakes); an invalid one, or
//! one naming a broken certificate, is refused with every problem named, and
//! nothing changes.

use std::path::Path;

use crate::config::{Config, ConfigError};
use crate::control::controller::Controller;
use crate::ops::events::{Event, EventKind};

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
    if old.public_tls != config.public_tls {
        restart_needed.push("listen.public_tls");
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
    // The listener, the health checker and the prober read these at start;
    // the upstream pools when they are made (at start or PUT /slots).
    let (was, now) = (&old.limits, &config.limits);
    if (
        was.header_read_timeout,
        was.idle_timeout,
        was.max_header_bytes,
        was.max_connections,
        was.tls_handshake_timeout,
    ) != (
        now.header_read_timeout,
        now.idle_timeout,
        now.max_header_bytes,
        now.max_connections,
        now.tls_handshake_timeout,
    ) {
        restart_needed.push("limits.* (all but max_body_bytes and body_timeout_ms)");
    }
    if old.health != config.health {
        restart_needed.push("health.*");
    }
    let (was, now) = (&old.timeouts, &config.timeouts);
    if (was.connect, was.upstream_idle, was.shutdown_grace)
        != (now.connect, now.upstream_idle, now.shutdown_grace)
    {
        restart_needed.push("timeouts.* (all but response_header_ms)");
    }
    if old.gate.request_timeout != config.gate.request_timeout {
        restart_needed.push("gate.request_timeout_ms");
    }
    if old.token_file != config.token_file {
        restart_needed.push("admin.token_file");
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
