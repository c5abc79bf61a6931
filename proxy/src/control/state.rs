//! The persisted routing state: which slot is active, the previous one, the
//! slot addresses, the releases that passed the gate, the canary and the
//! guard's record (bake, blocks). Written on every change through `persist`
//! (atomically, off the runtime), so a crash leaves the old or the new file,
//! never a torn one.

use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::control::guard::GuardRecord;
use crate::error::ProxyError;
use crate::persist;
use crate::slot::Slot;

const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersistedState {
    pub version: u32,
    pub active: Slot,
    pub previous: Option<Slot>,
    pub blue: SocketAddr,
    pub green: SocketAddr,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_switch: Option<OffsetDateTime>,
    /// The release label that passed the gate on each slot `[blue, green]`:
    /// after a restart, a slot still running that release may take users
    /// in a failover without being gated again.
    #[serde(default)]
    pub vetted: [Option<String>; 2],
    /// The canary's share, so that a restart or a takeover never ends a
    /// canary by accident.
    #[serde(default)]
    pub canary: Option<PersistedCanary>,
    /// The bake window and the guard's blocks and last pull.
    #[serde(default)]
    pub guard: GuardRecord,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersistedCanary {
    pub slot: Slot,
    pub percent: u8,
}

impl PersistedState {
    pub fn new(
        active: Slot,
        previous: Option<Slot>,
        addrs: [SocketAddr; 2],
        last_switch: Option<OffsetDateTime>,
    ) -> Self {
        PersistedState {
            version: VERSION,
            active,
            previous,
            blue: addrs[Slot::Blue.index()],
            green: addrs[Slot::Green.index()],
            last_switch,
            vetted: [None, None],
            canary: None,
            guard: GuardRecord::default(),
        }
    }

    pub fn with_canary(mut self, canary: Option<PersistedCanary>) -> Self {
        self.canary = canary;
        self
    }

    pub fn with_guard(mut self, guard: GuardRecord) -> Self {
        self.guard = guard;
        self
    }

    pub fn with_vetted(mut self, vetted: [Option<String>; 2]) -> Self {
        self.vetted = vetted;
        self
    }

    pub fn addrs(&self) -> [SocketAddr; 2] {
        [self.blue, self.green]
    }
}

/// Reads the state file: `None` when there is none yet (first start); an
/// error naming the file when it exists but cannot be trusted.
pub async fn load(path: &Path) -> Result<Option<PersistedState>, ProxyError> {
    persist::load(
        path,
        VERSION,
        "fix it, or move it away to start from the configuration",
    )
    .await
}

/// Writes the state atomically, off the runtime.
pub async fn save(path: &Path, state: &PersistedState) -> Result<(), ProxyError> {
    persist::save(path, state).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::guard::BakeRecord;

    #[tokio::test]
    async fn the_canary_and_the_guard_round_trip_and_an_older_file_loads_without_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        let addrs = [
            "127.0.0.1:1".parse().expect("addr"),
            "127.0.0.1:2".parse().expect("addr"),
        ];
        let state = PersistedState::new(Slot::Blue, None, addrs, None)
            .with_canary(Some(PersistedCanary {
                slot: Slot::Green,
                percent: 25,
            }))
            .with_guard(GuardRecord {
                bake: Some(BakeRecord {
                    slot: Slot::Blue,
                    until: OffsetDateTime::UNIX_EPOCH,
                }),
                reason: Some("3 of 20 failed".into()),
                ..GuardRecord::default()
            });
        save(&path, &state).await.expect("save");
        assert_eq!(load(&path).await.expect("load"), Some(state));

        std::fs::write(
            &path,
            r#"{"version":1,"active":"green","previous":null,"blue":"127.0.0.1:1","green":"127.0.0.1:2","last_switch":null}"#,
        )
        .expect("write");
        let older = load(&path)
            .await
            .expect("an older file loads")
            .expect("a state");
        assert_eq!((older.canary, older.guard), (None, GuardRecord::default()));
    }

    #[tokio::test]
    async fn round_trips_and_reports_corruption_by_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/state.json");
        assert_eq!(load(&path).await.expect("no file is fine"), None);
        let state = PersistedState::new(
            Slot::Green,
            Some(Slot::Blue),
            [
                "127.0.0.1:1".parse().expect("addr"),
                "127.0.0.1:2".parse().expect("addr"),
            ],
            Some(OffsetDateTime::UNIX_EPOCH),
        );
        save(&path, &state).await.expect("save");
        assert_eq!(load(&path).await.expect("load"), Some(state));

        std::fs::write(&path, "{\"active\": \"gre").expect("write");
        let err = load(&path).await.expect_err("corrupt").to_string();
        assert!(
            err.contains("state.json") && err.contains("corrupt"),
            "{err}"
        );
    }
}
