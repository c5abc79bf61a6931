//! The persisted routing state: which slot is active, the previous one, the
//! slots' members, the releases that passed the gate, the canary and the
//! guard's record (bake, blocks). Written on every change through `persist`
//! (atomically, off the runtime), so a crash leaves the old or the new file,
//! never a torn one.

use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::control::guard::GuardRecord;
use crate::error::ProxyError;
use crate::http::pool::MAX_MEMBERS;
use crate::persist;
use crate::slot::Slot;

const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersistedState {
    pub version: u32,
    pub active: Slot,
    pub previous: Option<Slot>,
    pub blue: Members,
    pub green: Members,
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
        addrs: [Vec<SocketAddr>; 2],
        last_switch: Option<OffsetDateTime>,
    ) -> Self {
        let [blue, green] = addrs;
        PersistedState {
            version: VERSION,
            active,
            previous,
            blue: Members(blue),
            green: Members(green),
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

    pub fn addrs(&self) -> [Vec<SocketAddr>; 2] {
        [self.blue.0.clone(), self.green.0.clone()]
    }
}

/// A slot's members in the state file: one address as a string (the form
/// a slot of one has always had, which earlier builds read), several as a
/// list. Never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Members(pub Vec<SocketAddr>);

impl Serialize for Members {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0.as_slice() {
            [one] => one.serialize(s),
            many => many.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Members {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            One(SocketAddr),
            Many(Vec<SocketAddr>),
        }
        match Form::deserialize(d)? {
            Form::One(addr) => Ok(Members(vec![addr])),
            Form::Many(list) if list.is_empty() => {
                Err(serde::de::Error::custom("a slot lists no member"))
            }
            Form::Many(list) if list.len() > MAX_MEMBERS => Err(serde::de::Error::custom(format!(
                "a slot has at most {MAX_MEMBERS} members"
            ))),
            Form::Many(list) => Ok(Members(list)),
        }
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
            vec!["127.0.0.1:1".parse().expect("addr")],
            vec!["127.0.0.1:2".parse().expect("addr")],
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
                vec!["127.0.0.1:1".parse().expect("addr")],
                vec!["127.0.0.1:2".parse().expect("addr")],
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

    #[tokio::test]
    async fn a_pool_is_saved_as_a_list_and_a_slot_of_one_as_an_address_as_before() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.json");
        let addr = |a: &str| a.parse::<SocketAddr>().expect("addr");
        let state = PersistedState::new(
            Slot::Blue,
            None,
            [
                vec![addr("127.0.0.2:1"), addr("127.0.0.3:1")],
                vec![addr("127.0.0.1:2")],
            ],
            None,
        );
        save(&path, &state).await.expect("save");
        let text = std::fs::read_to_string(&path).expect("read");
        let json: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(
            json["blue"],
            serde_json::json!(["127.0.0.2:1", "127.0.0.3:1"])
        );
        assert_eq!(json["green"], serde_json::json!("127.0.0.1:2"));
        assert_eq!(load(&path).await.expect("load"), Some(state));

        std::fs::write(
            &path,
            r#"{"version":1,"active":"blue","previous":null,"blue":[],"green":"127.0.0.1:2","last_switch":null}"#,
        )
        .expect("write");
        let err = load(&path).await.expect_err("an empty pool").to_string();
        assert!(err.contains("no member"), "{err}");
    }
}
