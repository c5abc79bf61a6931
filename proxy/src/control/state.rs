//! The persisted routing state: which slot is active, the previous one, the
//! slot addresses and the releases that passed the gate. Written on every
//! change through `persist` (atomically, off the runtime), so a crash leaves
//! the old or the new file, never a torn one.

use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

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
        }
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
