//! Checkpoints: when the WAL's pages are copied back into the database file, and by which thread.
//!
//! SQLite checkpoints by default inside the commit that takes the WAL past 1,000 pages: the
//! committing thread copies the pages back and syncs the WAL and the database file, and every
//! write queued behind it waits. Here that thread is the writer, and every redirect waits on it:
//! a checkpoint holds it for milliseconds (most of it the two `fsync`s), several times a second
//! under load, which would make most of the shortener's p99. So the writer's connection does not
//! checkpoint on its own; a thread of its own, on its own connection, runs `PASSIVE` checkpoints when the writer
//! asks, which neither wait for the writer nor block it.
//!
//! One thing the checkpointer cannot do: SQLite rewinds the WAL to its start only when a write
//! transaction begins with every frame copied back, and a passive checkpoint beside a busy writer
//! never catches up with the frames appended meanwhile. Under continuous writes the file would
//! grow without end. So when the WAL passes [`WalLimits::rewind_pages`], the writer runs one
//! passive checkpoint itself, between two transactions; by then the checkpointer has copied all
//! but the last frames, and the next transaction rewinds the WAL.

use std::cell::Cell;
use std::ffi::c_int;
use std::sync::mpsc::{self, Receiver, SyncSender};

use rusqlite::Connection;
use rusqlite::hooks::Wal;

use super::sched::let_requests_run_first;

/// When checkpoints happen, in pages of the WAL.
#[derive(Debug, Clone, Copy)]
pub(super) struct WalLimits {
    /// The checkpointer is asked to run past this many pages: SQLite's own default.
    pub(super) checkpoint_pages: u32,
    /// The writer checkpoints itself at the first checkpoint due past this many, so that the
    /// WAL rewinds: about `rewind_pages` x 4 KiB on disk (32 MiB with the default), and one
    /// stall of the writer where there were eight.
    pub(super) rewind_pages: u32,
}

impl Default for WalLimits {
    fn default() -> Self {
        Self {
            checkpoint_pages: 1_000,
            rewind_pages: 8_000,
        }
    }
}

const THREAD_NAME: &str = "sqlite-checkpoint";

thread_local! {
    /// The WAL's size in pages after this thread's last commit, if it committed since the last
    /// look: set by [`record_wal_size`], which SQLite calls on the committing thread.
    static WAL_PAGES: Cell<Option<u32>> = const { Cell::new(None) };
}

/// The writer's side: decides after each commit whether someone checkpoints, and who.
pub(super) struct Checkpoints {
    limits: WalLimits,
    /// Holds at most one request: while one is pending, more would only repeat it.
    ask: SyncSender<()>,
    /// The WAL's size at the last checkpoint asked for or run: the next is due once
    /// `checkpoint_pages` more have been appended, not at every commit past the mark, which kept
    /// the checkpointer copying and syncing back to back.
    asked_at: Cell<u32>,
}

impl Checkpoints {
    /// Takes automatic checkpoints off `writer` and starts the thread that runs them on
    /// `checkpointer`, its own connection to the same file. The thread ends when this is dropped.
    pub(super) fn start(
        writer: &Connection,
        checkpointer: Connection,
        limits: WalLimits,
    ) -> std::io::Result<Self> {
        // Replaces SQLite's own WAL hook, the one that checkpoints in the committing thread.
        writer.wal_hook(Some(record_wal_size));
        let (ask, asked) = mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name(THREAD_NAME.into())
            .spawn(move || {
                // Its wakeups need not preempt the request threads either.
                let_requests_run_first();
                serve(&checkpointer, &asked);
            })?;
        Ok(Self {
            limits,
            ask,
            asked_at: Cell::new(0),
        })
    }

    /// Called by the writer thread after each of its transactions, committed or not.
    pub(super) fn after_commit(&self, writer: &Connection) {
        let Some(pages) = WAL_PAGES.take() else {
            return;
        };
        if pages < self.asked_at.get() {
            // Rewound since.
            self.asked_at.set(0);
        }
        if pages
            < self
                .asked_at
                .get()
                .saturating_add(self.limits.checkpoint_pages)
        {
            return;
        }
        self.asked_at.set(pages);
        if pages >= self.limits.rewind_pages {
            // Returns at once if the checkpointer is busy. If this one cannot copy everything
            // either (a reader of the other process still on old frames), the next try is
            // `checkpoint_pages` later, where SQLite's own would retry at every commit.
            if let Err(e) = checkpoint(writer) {
                tracing::warn!(error = %e, pages, "the writer's checkpoint failed");
            }
        } else {
            // Full: a request is already pending. Gone: the thread died, and the writer's own
            // checkpoints past `rewind_pages` still bound the WAL.
            let _ = self.ask.try_send(());
        }
    }
}

/// The WAL hook of the writer's connection.
fn record_wal_size(_: &Wal, pages: c_int) -> rusqlite::Result<()> {
    WAL_PAGES.set(Some(u32::try_from(pages).unwrap_or(0)));
    Ok(())
}

fn serve(conn: &Connection, asked: &Receiver<()>) {
    while asked.recv().is_ok() {
        if let Err(e) = checkpoint(conn) {
            tracing::warn!(error = %e, "checkpoint failed; the next request tries again");
        }
    }
}

/// One passive checkpoint: copies what no reader still needs, waits for nobody.
fn checkpoint(conn: &Connection) -> rusqlite::Result<()> {
    // (busy, frames in the WAL, frames copied): `busy` only says another checkpoint ran.
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::{Duration, Instant};

    use super::*;

    const PATIENCE: Duration = Duration::from_secs(10);
    const PAGE: usize = 4096;

    fn open(path: &Path) -> Connection {
        let conn = Connection::open(path).expect("open");
        conn.busy_timeout(Duration::from_secs(5)).expect("timeout");
        conn.pragma_update(None, "synchronous", "NORMAL")
            .expect("synchronous");
        conn.pragma_update(None, "journal_mode", "wal")
            .expect("wal");
        conn.execute_batch("CREATE TABLE IF NOT EXISTS t (v BLOB)")
            .expect("table");
        conn
    }

    /// One transaction of about one page, as the writer thread commits them.
    fn commit_a_page(conn: &Connection, checkpoints: &Checkpoints) {
        conn.execute("INSERT INTO t (v) VALUES (zeroblob(?1))", [PAGE as i64])
            .expect("insert");
        checkpoints.after_commit(conn);
    }

    fn len(path: &Path) -> u64 {
        std::fs::metadata(path).map_or(0, |m| m.len())
    }

    #[test]
    fn the_checkpointer_copies_the_wal_into_the_database_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("c.db");
        let writer = open(&path);
        let limits = WalLimits {
            checkpoint_pages: 20,
            rewind_pages: 1_000,
        };
        let checkpoints = Checkpoints::start(&writer, open(&path), limits).expect("start");
        let before = len(&path);
        for _ in 0..40 {
            commit_a_page(&writer, &checkpoints);
        }
        // Without a checkpoint the rows are only in the WAL, and the file keeps its size.
        let deadline = Instant::now() + PATIENCE;
        while len(&path) < before + 20 * PAGE as u64 {
            assert!(
                Instant::now() < deadline,
                "no checkpoint: {} bytes",
                len(&path)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn the_writer_itself_neither_checkpoints_early_nor_lets_the_wal_grow_past_its_bound() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("c.db");
        let wal = dir.path().join("c.db-wal");
        let writer = open(&path);
        let limits = WalLimits {
            checkpoint_pages: 1_000,
            rewind_pages: 3_000,
        };
        // A checkpointer on another database: asked, it copies nothing of this one, so only
        // the writer's own checkpoints count here.
        let elsewhere = Connection::open_in_memory().expect("in memory");
        let checkpoints = Checkpoints::start(&writer, elsewhere, limits).expect("start");
        let before = len(&path);
        // Past SQLite's own threshold (1,000 pages), where it would have checkpointed.
        for _ in 0..5_000 {
            if frames(&wal) > 1_100 {
                break;
            }
            commit_a_page(&writer, &checkpoints);
        }
        assert!(frames(&wal) > 1_100, "{} frames", frames(&wal));
        assert_eq!(
            len(&path),
            before,
            "the writer checkpointed before its bound"
        );
        // Past the bound: rewound, the file is reused from its start.
        for _ in 0..3_000 {
            commit_a_page(&writer, &checkpoints);
        }
        assert!(len(&path) > before, "never checkpointed");
        assert!(
            frames(&wal) < 3_100,
            "the WAL grew to {} frames",
            frames(&wal)
        );
    }

    /// Frames in the WAL file: a 32-byte header, then a 24-byte header and a page each.
    fn frames(wal: &Path) -> u64 {
        len(wal).saturating_sub(32) / (24 + PAGE as u64)
    }
}
