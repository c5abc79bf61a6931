//! Reloading the configuration without a restart (SIGHUP or `POST /reload`):
//! all or nothing. A valid file's live keys take effect for new requests (its
//! TLS certificates, read again with it, for new handshakes), and every other
//! changed key is named with how it will take effect (`config::Apply`); an
//! invalid file, or one naming a broken certificate, is refused with every
//! problem named, and nothing changes.

use std::path::Path;

use crate::config::{Apply, Change, Config, ConfigError, Reconciled};
use crate::control::controller::Controller;
use crate::ops::events::{Event, EventKind};

/// Applies the file's live keys; answers every key that changed.
pub fn reload(controller: &Controller, path: &Path) -> Result<Vec<Change>, ConfigError> {
    let file = match Config::load(path) {
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
    let Reconciled { config, changes } = controller.config().reconcile(file);
    controller.reload(config);
    controller.events().record(
        Event::new(EventKind::ConfigReload, summary(path, &changes))
            .detail(serde_json::json!({ "changes": changes })),
    );
    Ok(changes)
}

/// "FILE reloaded", then the keys that wait, by what they wait for.
fn summary(path: &Path, changes: &[Change]) -> String {
    let mut restart = Vec::new();
    let mut seeds = Vec::new();
    for change in changes {
        match change.apply {
            Apply::Live => {}
            Apply::Restart => restart.push(change.key.to_string()),
            Apply::Seed { via } => seeds.push(format!("{} (use {via})", change.key)),
        }
    }
    let mut out = format!("{} reloaded", path.display());
    if !restart.is_empty() {
        out.push_str(&format!(
            "; unchanged until a restart: {}",
            restart.join(", ")
        ));
    }
    if !seeds.is_empty() {
        out.push_str(&format!(
            "; the routing state decides: {}",
            seeds.join(", ")
        ));
    }
    out
}
