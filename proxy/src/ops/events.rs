//! The event log: every switch, refusal, rollback, canary change, outage and
//! reload, as JSON lines appended to `<data_dir>/events.jsonl` (never
//! rewritten in place, flushed before the call that caused it answers), the
//! last ones in memory for `GET /events`, and a broadcast for the parts that
//! react to events (incidents, notices).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::broadcast;

use crate::slot::Slot;

/// Events kept in memory for `GET /events`.
pub const RECENT: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Switch,
    SwitchRefused,
    Rollback,
    RollbackRefused,
    SlotChanged,
    CanaryStart,
    CanaryChange,
    CanaryRefused,
    CanaryAbort,
    Promote,
    /// The guard pulled a release back (during a canary or a bake).
    GuardAbort,
    GuardRollback,
    UpstreamDown,
    UpstreamUp,
    Failover,
    Failback,
    ConfigReload,
    ConfigReloadRefused,
    /// A new proxy process took the listeners over from the running one.
    Takeover,
    /// The proxy was not serving: it crashed or was stopped, and started
    /// again (a takeover is no gap). Detail: the gap and its bad minutes.
    ProxyDown,
    IncidentOpen,
    IncidentClose,
    PreventedIncident,
    NoticeFailed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Increasing within the file, across restarts.
    pub seq: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub kind: EventKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Slot>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Slot>,
    /// Release labels involved, as their slots reported them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub releases: Vec<String>,
    pub reason: String,
    /// Anything specific to the kind (a probe failure, counts, a percent).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub detail: serde_json::Value,
}

impl Event {
    pub fn new(kind: EventKind, reason: impl Into<String>) -> Event {
        Event {
            seq: 0,
            at: OffsetDateTime::now_utc(),
            kind,
            from: None,
            to: None,
            releases: Vec::new(),
            reason: reason.into(),
            detail: serde_json::Value::Null,
        }
    }

    pub fn slot_from(mut self, slot: Slot) -> Event {
        self.from = Some(slot);
        self
    }

    pub fn slot_to(mut self, slot: Slot) -> Event {
        self.to = Some(slot);
        self
    }

    pub fn releases(mut self, releases: impl IntoIterator<Item = Option<String>>) -> Event {
        self.releases = releases.into_iter().flatten().collect();
        self
    }

    pub fn detail(mut self, detail: serde_json::Value) -> Event {
        self.detail = detail;
        self
    }
}

struct Inner {
    file: Option<File>,
    /// A takeover is under way: the new process owns the file, so events
    /// stay in memory and the log only.
    sealed: bool,
    next_seq: u64,
    recent: VecDeque<Event>,
}

pub struct EventLog {
    path: PathBuf,
    /// A std mutex: held for one append and flush, never across an await,
    /// and appends must be ordered as their sequence numbers are.
    inner: Mutex<Inner>,
    tx: broadcast::Sender<Event>,
}

impl EventLog {
    /// Opens (or creates) the log and reloads its tail into memory.
    pub fn open(path: &Path) -> std::io::Result<EventLog> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let mut recent = VecDeque::with_capacity(RECENT);
        let mut next_seq = 1;
        if let Ok(file) = File::open(path) {
            for line in BufReader::new(file).lines() {
                let line = line?;
                // A torn last line (a crash mid-write) is skipped, not fatal.
                if let Ok(event) = serde_json::from_str::<Event>(&line) {
                    next_seq = next_seq.max(event.seq + 1);
                    if recent.len() == RECENT {
                        recent.pop_front();
                    }
                    recent.push_back(event);
                }
            }
        }
        let mut file = OpenOptions::new().create(true).append(true).open(path)?;
        // A torn last line must not swallow the next event.
        let len = file.metadata()?.len();
        if len > 0 {
            let bytes = std::fs::read(path)?;
            if bytes.last() != Some(&b'\n') {
                file.write_all(b"\n")?;
            }
        }
        let (tx, _) = broadcast::channel(1024);
        Ok(EventLog {
            path: path.to_path_buf(),
            inner: Mutex::new(Inner {
                file: Some(file),
                sealed: false,
                next_seq,
                recent,
            }),
            tx,
        })
    }

    /// A log that keeps events in memory only (tests of other parts).
    #[cfg(test)]
    pub fn in_memory() -> EventLog {
        let (tx, _) = broadcast::channel(1024);
        EventLog {
            path: PathBuf::new(),
            inner: Mutex::new(Inner {
                file: None,
                sealed: false,
                next_seq: 1,
                recent: VecDeque::new(),
            }),
            tx,
        }
    }

    /// Appends, flushes to the file, keeps it in memory and broadcasts it.
    /// A write error is logged: losing the log must not stop a rollback.
    pub fn record(&self, mut event: Event) -> Event {
        {
            let mut inner = self.inner.lock().expect("event log lock is never poisoned");
            event.seq = inner.next_seq;
            inner.next_seq += 1;
            if inner.sealed {
                tracing::warn!(kind = ?event.kind, "the event log is handed over: this event is not in the file");
            } else if let Some(file) = inner.file.as_mut() {
                let mut line = serde_json::to_vec(&event).expect("events serialize");
                line.push(b'\n');
                if let Err(e) = file.write_all(&line).and_then(|()| file.sync_data()) {
                    tracing::error!(path = %self.path.display(), error = %e, "could not append to the event log");
                }
            }
            if inner.recent.len() == RECENT {
                inner.recent.pop_front();
            }
            inner.recent.push_back(event.clone());
        }
        tracing::info!(kind = ?event.kind, from = ?event.from, to = ?event.to, reason = %event.reason, "event");
        let _ = self.tx.send(event.clone());
        event
    }

    /// Stops appending to the file: a new process takes it over.
    pub fn seal(&self) {
        self.inner
            .lock()
            .expect("event log lock is never poisoned")
            .sealed = true;
    }

    /// Appends to the file again after a takeover was called off, numbering
    /// on from what is in it (the other process may have appended).
    pub fn unseal(&self) -> std::io::Result<()> {
        let mut last = 0;
        if let Ok(file) = File::open(&self.path) {
            for line in BufReader::new(file).lines() {
                if let Ok(event) = serde_json::from_str::<Event>(&line?) {
                    last = last.max(event.seq);
                }
            }
        }
        let mut inner = self.inner.lock().expect("event log lock is never poisoned");
        inner.next_seq = inner.next_seq.max(last + 1);
        inner.sealed = false;
        Ok(())
    }

    /// Events with `seq > since`, oldest first, at most `limit`.
    pub fn since(&self, since: u64, limit: usize) -> Vec<Event> {
        let inner = self.inner.lock().expect("event log lock is never poisoned");
        inner
            .recent
            .iter()
            .filter(|e| e.seq > since)
            .take(limit)
            .cloned()
            .collect()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_survive_a_reopen_and_sequence_numbers_continue() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("events.jsonl");
        let log = EventLog::open(&path).expect("open");
        log.record(
            Event::new(EventKind::Switch, "one")
                .slot_from(Slot::Blue)
                .slot_to(Slot::Green),
        );
        log.record(Event::new(EventKind::Rollback, "two"));
        drop(log);
        let mut text = std::fs::read_to_string(&path).expect("read");
        text.push_str("{\"seq\": 3, \"torn");
        std::fs::write(&path, text).expect("write");

        let log = EventLog::open(&path).expect("reopen");
        let third = log.record(Event::new(EventKind::Switch, "three"));
        assert_eq!(third.seq, 3);
        let all = log.since(0, 10);
        assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(all[0].to, Some(Slot::Green));
        assert_eq!(log.since(2, 10).len(), 1);
    }
}
