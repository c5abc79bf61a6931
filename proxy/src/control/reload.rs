//! Reloading the configuration (SIGHUP or `POST /reload`): all or nothing.
//! A valid file's live keys take effect for new requests at once (its TLS
//! certificates, read again with it, for new handshakes); when keys that
//! only a start reads changed too, a new process of the same binary takes
//! the listeners over and starts with the whole file (`takeover`), without a
//! dropped connection. Every changed key is named with how it took effect
//! (`config::Apply`); an invalid file, or one naming a broken certificate, is
//! refused with every problem named, and nothing changes.

use std::path::Path;

use crate::config::{Apply, Change, Config, ConfigError, Problem, Reconciled};
use crate::control::controller::Controller;
use crate::ops::events::{Event, EventKind};
use crate::takeover::Succession;

/// How the takeover of a reload went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Takeover {
    /// Only live keys changed (or the data directory moved, which only a
    /// restart by the operator can apply): no takeover.
    NotNeeded,
    /// The new process (this pid) serves; this one drains and exits.
    HandedOver(u32),
    /// The new process did not take over; this one serves on, and the
    /// restart keys wait.
    Failed(String),
}

/// What a valid file changed and how.
#[derive(Debug)]
pub struct Reloaded {
    pub changes: Vec<Change>,
    pub takeover: Takeover,
}

/// Applies the file's live keys, and the rest by a takeover; answers every
/// key that changed.
pub async fn reload(
    controller: &Controller,
    succession: &Succession,
    path: &Path,
) -> Result<Reloaded, ConfigError> {
    let file = match load(path).await {
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
    // The new process finds this one through the data directory.
    let moves_data_dir = file.data_dir != controller.config().data_dir;
    let Reconciled {
        config,
        mut changes,
    } = controller.config().reconcile(file);
    controller.reload(config);
    let restarts = changes
        .iter()
        .any(|c| matches!(c.apply, Apply::Restart { .. }));
    if !restarts || moves_data_dir {
        record(controller, path, &changes, None);
        return Ok(Reloaded {
            changes,
            takeover: Takeover::NotNeeded,
        });
    }
    let mut via_takeover = changes.clone();
    for change in &mut via_takeover {
        if let Apply::Restart { via } = &mut change.apply {
            *via = Some("takeover");
        }
    }
    // Recorded before the takeover: once it succeeds, the new process owns
    // the event log.
    record(controller, path, &via_takeover, None);
    let takeover = match succession.hand_over().await {
        Ok(pid) => {
            changes = via_takeover;
            Takeover::HandedOver(pid)
        }
        Err(why) => {
            tracing::error!(%why, "the reload's takeover failed: this process serves on");
            record(controller, path, &changes, Some(&why));
            Takeover::Failed(why)
        }
    };
    Ok(Reloaded { changes, takeover })
}

/// Reads the file and every certificate it names, off the runtime's
/// threads: blocking file I/O must not stall a worker serving users.
async fn load(path: &Path) -> Result<Config, ConfigError> {
    let owned = path.to_path_buf();
    tokio::task::spawn_blocking(move || Config::load(&owned))
        .await
        .unwrap_or_else(|e| {
            Err(ConfigError {
                file: path.to_path_buf(),
                problems: vec![Problem {
                    key: "(file)".into(),
                    line: None,
                    message: format!("reading the configuration failed: {e}"),
                }],
            })
        })
}

fn record(controller: &Controller, path: &Path, changes: &[Change], failed: Option<&str>) {
    let mut reason = summary(path, changes);
    if let Some(why) = failed {
        reason.push_str(&format!("; the takeover failed ({why})"));
    }
    controller.events().record(
        Event::new(EventKind::ConfigReload, reason)
            .detail(serde_json::json!({ "changes": changes })),
    );
}

/// "FILE reloaded", then the keys that wait or went by a takeover.
fn summary(path: &Path, changes: &[Change]) -> String {
    let mut restart = Vec::new();
    let mut takeover = Vec::new();
    let mut seeds = Vec::new();
    for change in changes {
        match change.apply {
            Apply::Live => {}
            Apply::Restart { via: None } => restart.push(change.key.to_string()),
            Apply::Restart { via: Some(_) } => takeover.push(change.key.to_string()),
            Apply::Seed { via } => seeds.push(format!("{} (use {via})", change.key)),
        }
    }
    let mut out = format!("{} reloaded", path.display());
    if !takeover.is_empty() {
        out.push_str(&format!(
            "; a new process takes over for: {}",
            takeover.join(", ")
        ));
    }
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
