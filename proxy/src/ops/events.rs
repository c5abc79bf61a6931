//! The event log: every switch, refusal, rollback, canary change, outage and
//! reload, as JSON lines appended to `<data_dir>/events.jsonl` (never
//! rewritten in place) by a thread of its own, the last ones in memory for
//! `GET /events`, and a broadcast for the parts that react to events
//! (incidents, notices). Recording never waits for the disk; an admin
//! answer waits (`flushed`) until the events before it are in the file.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, mpsc};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::{broadcast, watch};

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
    /// A TLS certificate expires within 14 days (or has expired).
    CertificateExpiring,
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

/// Where the writer appends: the log file, or a test's stand-in.
trait Sink: Send + 'static {
    /// Appends `bytes` and makes them durable.
    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()>;
}

impl Sink for File {
    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.write_all(bytes)?;
        self.sync_data()
    }
}

/// One event for the writer: its sequence number and its JSON line.
type Line = (u64, Vec<u8>);

struct Inner {
    /// A takeover is under way: the new process owns the file, so events
    /// are kept in memory and broadcast only. Set under this lock, so no
    /// line is queued after `seal` returns.
    sealed: bool,
    /// The highest sequence number queued for the writer: what `flushed`
    /// waits for (events recorded while sealed are never queued).
    queued: u64,
    next_seq: u64,
    recent: VecDeque<Event>,
    /// To the writer thread; `None` for a log kept in memory only. Sent
    /// under the lock that hands out sequence numbers, so lines reach the
    /// file in sequence order.
    writer: Option<mpsc::Sender<Line>>,
}

pub struct EventLog {
    /// The log file (empty for a log kept in memory): read again by
    /// `unseal`.
    path: PathBuf,
    /// A std mutex: held to number, queue and keep one event, never across
    /// an await, and never around file I/O (the writer thread does that).
    inner: Mutex<Inner>,
    tx: broadcast::Sender<Event>,
    /// The highest sequence number the writer has handled: appended and
    /// synced, or failed and logged. Written by the writer thread only.
    written: watch::Receiver<u64>,
}

impl EventLog {
    /// Opens (or creates) the log, reloads its tail into memory, and starts
    /// the thread that appends to it; the file work runs off the runtime.
    pub async fn open(path: &Path) -> std::io::Result<EventLog> {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || EventLog::open_blocking(&path))
            .await
            .map_err(std::io::Error::other)?
    }

    fn open_blocking(path: &Path) -> std::io::Result<EventLog> {
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
        EventLog::with_sink(file, path, next_seq, recent)
    }

    /// A log whose lines go to `sink`, appended by a thread of its own.
    fn with_sink(
        sink: impl Sink,
        path: &Path,
        next_seq: u64,
        recent: VecDeque<Event>,
    ) -> std::io::Result<EventLog> {
        let (lines, queue) = mpsc::channel();
        let (written_tx, written) = watch::channel(next_seq - 1);
        let file = path.to_path_buf();
        std::thread::Builder::new()
            .name("event-log".into())
            .spawn(move || append_all(sink, &file, &queue, &written_tx))?;
        let (tx, _) = broadcast::channel(1024);
        Ok(EventLog {
            path: path.to_path_buf(),
            inner: Mutex::new(Inner {
                sealed: false,
                queued: next_seq - 1,
                next_seq,
                recent,
                writer: Some(lines),
            }),
            tx,
            written,
        })
    }

    /// A log that keeps events in memory only (tests of other parts).
    #[cfg(test)]
    pub fn in_memory() -> EventLog {
        let (tx, _) = broadcast::channel(1024);
        // Nothing is ever waiting to be written.
        let (_, written) = watch::channel(u64::MAX);
        EventLog {
            path: PathBuf::new(),
            inner: Mutex::new(Inner {
                sealed: false,
                queued: 0,
                next_seq: 1,
                recent: VecDeque::new(),
                writer: None,
            }),
            tx,
            written,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .expect("event log lock is never poisoned: no panics under it")
    }

    /// Numbers the event, queues it for the file, keeps it in memory and
    /// broadcasts it, without waiting for the disk: the guard and the health
    /// checks call this and must not stall. `flushed` waits for the file.
    pub fn record(&self, mut event: Event) -> Event {
        {
            let mut inner = self.lock();
            event.seq = inner.next_seq;
            inner.next_seq += 1;
            if inner.sealed {
                tracing::warn!(kind = ?event.kind, "the event log is handed over: this event is not in the file");
            } else if let Some(writer) = &inner.writer {
                let mut line = serde_json::to_vec(&event).expect("events serialize");
                line.push(b'\n');
                if writer.send((event.seq, line)).is_err() {
                    tracing::error!(
                        seq = event.seq,
                        "the event log writer has stopped; the event is not in the file"
                    );
                } else {
                    inner.queued = event.seq;
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

    /// Waits until every event recorded before the call is in the file (or
    /// its write failed and was logged): what an admin answer waits for, so
    /// that the change it reports is on disk.
    pub async fn flushed(&self) {
        let last = self.lock().queued;
        let mut written = self.written.clone();
        // An error means the writer thread is gone: nothing more will land.
        let _ = written.wait_for(|seq| *seq >= last).await;
    }

    /// Stops appending to the file, once what was recorded before is in it:
    /// a new process takes the file over.
    pub async fn seal(&self) {
        self.lock().sealed = true;
        self.flushed().await;
    }

    /// Appends to the file again after a takeover was called off, numbering
    /// on from what is in it (the other process may have appended). The
    /// file is read off the runtime's threads.
    pub async fn unseal(&self) -> std::io::Result<()> {
        let path = self.path.clone();
        let last = tokio::task::spawn_blocking(move || last_seq(&path))
            .await
            .map_err(std::io::Error::other)??;
        let mut inner = self.lock();
        inner.next_seq = inner.next_seq.max(last + 1);
        inner.sealed = false;
        Ok(())
    }

    /// Events with `seq > since`, oldest first, at most `limit`.
    pub fn since(&self, since: u64, limit: usize) -> Vec<Event> {
        self.lock()
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

/// The highest sequence number in the log at `path` (0 when there is none).
fn last_seq(path: &Path) -> std::io::Result<u64> {
    let mut last = 0;
    if let Ok(file) = File::open(path) {
        for line in BufReader::new(file).lines() {
            if let Ok(event) = serde_json::from_str::<Event>(&line?) {
                last = last.max(event.seq);
            }
        }
    }
    Ok(last)
}

/// The writer thread: appends lines in the order they were queued, one sync
/// for all the lines waiting, until every `EventLog` handle is gone. A
/// write error is logged and the lines count as handled: losing the log
/// must not stop a rollback, nor leave an admin answer waiting.
fn append_all(
    mut sink: impl Sink,
    path: &Path,
    queue: &mpsc::Receiver<Line>,
    written: &watch::Sender<u64>,
) {
    // After a failed append the file may end mid-line; the next batch then
    // starts on a line of its own (a blank line is skipped at open).
    let mut torn = false;
    let mut batch = Vec::new();
    while let Ok((seq, line)) = queue.recv() {
        batch.clear();
        if torn {
            batch.push(b'\n');
        }
        batch.extend_from_slice(&line);
        let mut last = seq;
        for (seq, line) in queue.try_iter() {
            batch.extend_from_slice(&line);
            last = seq;
        }
        torn = match sink.append(&batch) {
            Ok(()) => false,
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, up_to_seq = last, "could not append to the event log");
                true
            }
        };
        written.send_replace(last);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Arc;
    use std::thread::ThreadId;
    use std::time::Duration;

    /// Long enough for any healthy machine; a bound so a broken build fails
    /// instead of hanging.
    const PATIENCE: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn appends_survive_a_reopen_and_sequence_numbers_continue() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("events.jsonl");
        let log = EventLog::open(&path).await.expect("open");
        log.record(
            Event::new(EventKind::Switch, "one")
                .slot_from(Slot::Blue)
                .slot_to(Slot::Green),
        );
        log.record(Event::new(EventKind::Rollback, "two"));
        log.flushed().await;
        drop(log);
        let mut text = std::fs::read_to_string(&path).expect("read");
        text.push_str("{\"seq\": 3, \"torn");
        std::fs::write(&path, text).expect("write");

        let log = EventLog::open(&path).await.expect("reopen");
        let third = log.record(Event::new(EventKind::Switch, "three"));
        assert_eq!(third.seq, 3);
        let all = log.since(0, 10);
        assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(all[0].to, Some(Slot::Green));
        assert_eq!(log.since(2, 10).len(), 1);
    }

    #[tokio::test]
    async fn a_sealed_log_leaves_the_file_to_the_next_process_and_unsealed_numbers_on_from_it() {
        // Arrange: one event in the file, then sealed for a takeover.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("events.jsonl");
        let log = EventLog::open(&path).await.expect("open");
        log.record(Event::new(EventKind::Switch, "before"));
        tokio::time::timeout(PATIENCE, log.seal())
            .await
            .expect("seal waits for what was recorded, no more");
        let in_file = |path: &Path| -> Vec<u64> {
            std::fs::read_to_string(path)
                .expect("read")
                .lines()
                .map(|l| serde_json::from_str::<Event>(l).expect("a line").seq)
                .collect()
        };
        assert_eq!(
            in_file(&path),
            vec![1],
            "recorded before the seal: in the file"
        );

        // Act: sealed, an event stays in memory; the next process appends two.
        log.record(Event::new(EventKind::Rollback, "while sealed"));
        tokio::time::timeout(PATIENCE, log.flushed())
            .await
            .expect("flushed does not wait for an event that is never written");
        let next = EventLog::open(&path)
            .await
            .expect("the next process opens it");
        next.record(Event::new(EventKind::Takeover, "two"));
        next.record(Event::new(EventKind::Switch, "three"));
        next.flushed().await;
        drop(next);
        log.unseal().await.expect("unseal");
        let after = log.record(Event::new(EventKind::Switch, "after"));
        tokio::time::timeout(PATIENCE, log.flushed())
            .await
            .expect("the writer runs again");

        // Assert
        assert_eq!(after.seq, 4, "numbered on from what the file holds");
        assert_eq!(in_file(&path), vec![1, 2, 3, 4]);
        assert_eq!(
            log.since(0, 10).len(),
            3,
            "the sealed one is still in memory"
        );
    }

    #[tokio::test]
    async fn events_recorded_from_many_threads_reach_the_file_in_sequence_order() {
        // Arrange
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("events.jsonl");
        let log = Arc::new(EventLog::open(&path).await.expect("open"));
        const THREADS: usize = 4;
        const EACH: usize = 50;

        // Act
        let recorders: Vec<_> = (0..THREADS)
            .map(|t| {
                let log = Arc::clone(&log);
                std::thread::spawn(move || {
                    for i in 0..EACH {
                        log.record(Event::new(EventKind::UpstreamUp, format!("{t}/{i}")));
                    }
                })
            })
            .collect();
        for recorder in recorders {
            recorder.join().expect("a recorder panicked");
        }
        tokio::time::timeout(PATIENCE, log.flushed())
            .await
            .expect("the writer keeps up");

        // Assert
        let text = std::fs::read_to_string(&path).expect("read");
        let seqs: Vec<u64> = text
            .lines()
            .map(|line| {
                serde_json::from_str::<Event>(line)
                    .unwrap_or_else(|e| panic!("a bad line ({e}): {line}"))
                    .seq
            })
            .collect();
        let expected: Vec<u64> = (1..=(THREADS * EACH) as u64).collect();
        assert_eq!(seqs, expected);
    }

    /// Each append: the thread that made it and its bytes.
    type Appends = Arc<Mutex<Vec<(ThreadId, Vec<u8>)>>>;

    /// A sink that holds each append until the test opens its gate, and
    /// notes the thread that appended.
    struct Gated {
        gate: mpsc::Receiver<()>,
        appended: Appends,
    }

    impl Sink for Gated {
        fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
            let opened = self.gate.recv_timeout(PATIENCE);
            self.appended
                .lock()
                .expect("no panics under it")
                .push((std::thread::current().id(), bytes.to_vec()));
            opened.map_err(std::io::Error::other)
        }
    }

    // The default test runtime is current_thread: a write done inside
    // `record` would run on this very thread, the runtime's only one.
    #[tokio::test]
    async fn record_does_not_wait_for_the_disk_and_flushed_does() {
        // Arrange: a disk that stalls until the gate opens.
        let (open_gate, gate) = mpsc::channel();
        let appended: Appends = Arc::default();
        let log = EventLog::with_sink(
            Gated {
                gate,
                appended: Arc::clone(&appended),
            },
            Path::new("stalled.jsonl"),
            1,
            VecDeque::new(),
        )
        .expect("writer thread");

        // Act
        let event = log.record(Event::new(EventKind::GuardRollback, "bad release"));

        // Assert: recorded (in memory, numbered) while the disk is stalled.
        assert_eq!(event.seq, 1);
        assert_eq!(log.since(0, 10).len(), 1);
        assert!(
            tokio::time::timeout(Duration::from_millis(200), log.flushed())
                .await
                .is_err(),
            "flushed must wait for the stalled append"
        );
        open_gate.send(()).expect("the writer holds the gate");
        tokio::time::timeout(PATIENCE, log.flushed())
            .await
            .expect("flushed once the append is done");
        let appended = appended.lock().expect("no panics under it").clone();
        assert_eq!(appended.len(), 1, "one append");
        let (thread, bytes) = &appended[0];
        assert_ne!(
            *thread,
            std::thread::current().id(),
            "the append ran on the runtime's thread"
        );
        let line: Event = serde_json::from_slice(bytes).expect("one JSON line");
        assert_eq!(line.seq, 1);
        assert!(bytes.ends_with(b"\n"));
    }
}
