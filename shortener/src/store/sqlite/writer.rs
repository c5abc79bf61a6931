//! The writer thread: it owns the one writer connection and commits every write of the process.
//!
//! Writes that queue up while a transaction is running are committed together in the next one
//! (group commit), each inside its own savepoint, so one write's failure rolls back that write
//! alone. A write is answered only once its transaction has committed: a `302` still means its
//! click is stored. What batching saves is per transaction, not per write: the `BEGIN
//! IMMEDIATE`, the WAL append and the file locks of a commit, and a thread wake. A write per
//! blocking-pool thread queued on a mutex instead would mean, at 50 concurrent redirects, 50
//! threads taking turns on one CPU.
//!
//! Batches only form if the thread lets requests queue up. Woken by the first write, a normal
//! thread preempts the runtime thread that queued it, commits that one write, and the next one
//! wakes it again: on a busy CPU, behind some proxies, batches averaged two writes. The thread
//! therefore runs as `SCHED_BATCH` ([`super::sched`]), which on Linux only means that its wakeups
//! do not preempt (its share of the CPU is unchanged): it runs once the runtime thread has read
//! what was ready and waits, and then commits all of it at once.
//!
//! Copying the WAL back into the database file is not this thread's job but the checkpointer's
//! ([`super::checkpoint`]): a checkpoint in a commit held every queued write for its two `fsync`s.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc::{self, Receiver, Sender};

use rusqlite::{Connection, TransactionBehavior};
use tokio::sync::oneshot;

use super::checkpoint::{Checkpoints, WalLimits};
use super::sched::let_requests_run_first;
use crate::error::StoreError;

/// Most writes in one transaction: bounds how long the file's write lock is held, which the
/// other slot's process waits on.
const MAX_BATCH: usize = 64;

const THREAD_NAME: &str = "sqlite-writer";

/// The handle that queues writes for the writer thread. The thread ends when the last handle is
/// dropped, after committing what was queued.
pub(super) struct Writer {
    jobs: Sender<Box<dyn Job>>,
}

impl Writer {
    /// Starts the thread that owns `conn`, and the one that checkpoints the WAL for it on
    /// `checkpointer`, a second connection to the same file.
    pub(super) fn spawn(conn: Connection, checkpointer: Connection) -> std::io::Result<Self> {
        let checkpoints = Checkpoints::start(&conn, checkpointer, WalLimits::default())?;
        let (jobs, queue) = mpsc::channel();
        std::thread::Builder::new()
            .name(THREAD_NAME.into())
            .spawn(move || {
                let_requests_run_first();
                serve(conn, &queue, &checkpoints);
            })?;
        Ok(Self { jobs })
    }

    /// Runs `write` in a transaction of the writer thread and answers once that transaction
    /// has committed. An error from `write` rolls back what it did, and only that.
    pub(super) async fn run<T, F>(&self, write: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.queue(write)?
            .await
            .map_err(|_| StoreError::WriterGone)?
    }

    /// Queues `write` and returns where its answer will come. Writes run in the order queued.
    fn queue<T, F>(&self, write: F) -> Result<Answer<T>, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Box::new(Pending {
            write: Some(write),
            result: None,
            reply,
        });
        self.jobs.send(job).map_err(|_| StoreError::WriterGone)?;
        Ok(answer)
    }
}

type Answer<T> = oneshot::Receiver<Result<T, StoreError>>;

/// A queued write, type-erased so that writes of any result type share the queue.
trait Job: Send {
    /// Does the write; `false` when it failed, and its savepoint must be rolled back.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Sends the answer: the write's own failure, else `failed` (the batch did not commit),
    /// else its value.
    fn answer(self: Box<Self>, failed: Option<&StoreError>);
}

struct Pending<T, F> {
    write: Option<F>,
    result: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> Job for Pending<T, F>
where
    T: Send,
    F: FnOnce(&Connection) -> Result<T, StoreError> + Send,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let Some(write) = self.write.take() else {
            return false;
        };
        // A panicking write must not take the thread, and with it every later write, down.
        let result = catch_unwind(AssertUnwindSafe(|| write(conn)))
            .unwrap_or_else(|_| Err(StoreError::WritePanicked));
        let done = result.is_ok();
        self.result = Some(result);
        done
    }

    fn answer(self: Box<Self>, failed: Option<&StoreError>) {
        let answer = match (self.result, failed) {
            (Some(Err(own)), _) => Err(own),
            (_, Some(failed)) => Err(failed.duplicate()),
            (Some(Ok(value)), None) => Ok(value),
            // Not run and no failure: cannot happen, but the caller still gets an answer.
            (None, None) => Err(StoreError::WriterGone),
        };
        // The request may have gone away; its write stands either way.
        let _ = self.reply.send(answer);
    }
}

/// The thread's loop: everything queued, up to [`MAX_BATCH`], goes into the next transaction.
/// Ends when every [`Writer`] is dropped and the queue is empty.
fn serve(mut conn: Connection, queue: &Receiver<Box<dyn Job>>, checkpoints: &Checkpoints) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Ok(first) = queue.recv() {
        batch.push(first);
        batch.extend(queue.try_iter().take(MAX_BATCH - 1));
        let failed = commit(&mut conn, &mut batch).err();
        for job in batch.drain(..) {
            job.answer(failed.as_ref());
        }
        // After the answers: a checkpoint the writer must run itself delays only the next batch.
        checkpoints.after_commit(&conn);
    }
}

/// Runs `batch` in one `BEGIN IMMEDIATE` transaction, each write in a savepoint. An error
/// here (the lock not had within the busy timeout, a failed commit) fails the whole batch,
/// and nothing of it is stored.
fn commit(conn: &mut Connection, batch: &mut [Box<dyn Job>]) -> Result<(), StoreError> {
    let mut tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for job in batch.iter_mut() {
        let savepoint = tx.savepoint()?;
        if job.run(&savepoint) {
            savepoint.commit()?;
        }
        // Else dropping the savepoint rolls back that write alone.
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::mpsc as std_mpsc;
    use std::time::Duration;

    use super::*;

    const PATIENCE: Duration = Duration::from_secs(10);

    fn open(path: &Path) -> Connection {
        let conn = Connection::open(path).expect("open");
        conn.pragma_update(None, "journal_mode", "wal")
            .expect("wal");
        conn.execute_batch("CREATE TABLE IF NOT EXISTS t (k TEXT PRIMARY KEY)")
            .expect("table");
        conn
    }

    fn stored(path: &Path, key: &str) -> bool {
        Connection::open(path)
            .expect("open")
            .query_row("SELECT 1 FROM t WHERE k = ?1", [key], |_| Ok(()))
            .is_ok()
    }

    fn insert(key: &'static str) -> impl FnOnce(&Connection) -> Result<(), StoreError> {
        move |conn| {
            conn.execute("INSERT INTO t (k) VALUES (?1)", [key])?;
            Ok(())
        }
    }

    fn wait<T>(answer: Answer<T>) -> Result<T, StoreError> {
        answer.blocking_recv().expect("an answer")
    }

    /// Keeps the writer thread inside a write until the returned sender is used, so that what
    /// is queued meanwhile is committed as one batch.
    fn hold(writer: &Writer) -> (std_mpsc::Sender<()>, Answer<()>) {
        let (release, released) = std_mpsc::channel::<()>();
        let (entered, inside) = std_mpsc::channel::<()>();
        let held = writer
            .queue(move |_| {
                entered.send(()).expect("the test waits for this");
                released
                    .recv_timeout(PATIENCE)
                    .map_err(|_| StoreError::WriterGone)
            })
            .expect("queued");
        inside
            .recv_timeout(PATIENCE)
            .expect("the writer ran the holding write");
        (release, held)
    }

    #[test]
    fn a_failed_write_in_a_batch_is_rolled_back_alone() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("w.db");
        let writer = Writer::spawn(open(&path), open(&path)).expect("spawn");
        wait(writer.queue(insert("taken")).expect("queued")).expect("the first insert");

        let (release, held) = hold(&writer);
        let before = writer.queue(insert("before")).expect("queued");
        // Writes `half`, then fails on the taken key: `half` must not be stored.
        let failing = writer
            .queue(|conn| {
                conn.execute("INSERT INTO t (k) VALUES ('half')", [])?;
                conn.execute("INSERT INTO t (k) VALUES ('taken')", [])?;
                Ok(())
            })
            .expect("queued");
        let after = writer.queue(insert("after")).expect("queued");
        release.send(()).expect("the holding write waits");

        wait(held).expect("the holding write");
        wait(before).expect("the write before the failing one");
        let failing = wait(failing);
        assert!(matches!(failing, Err(StoreError::Sqlite(_))), "{failing:?}");
        wait(after).expect("the write after the failing one");
        assert!(stored(&path, "before") && stored(&path, "after"));
        assert!(!stored(&path, "half"), "the failed write was rolled back");
    }

    /// The other slot's process holds the write lock past the busy timeout: every write is
    /// told so (a 503 for its request), none is stored, and the next batch goes through.
    #[test]
    fn writes_that_cannot_take_the_lock_all_fail_and_the_next_batch_goes_through() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("w.db");
        let conn = open(&path);
        conn.busy_timeout(Duration::from_millis(50))
            .expect("timeout");
        let writer = Writer::spawn(conn, open(&path)).expect("spawn");
        let other = Connection::open(&path).expect("the other process");
        other.execute_batch("BEGIN IMMEDIATE").expect("lock");

        // Usually one batch (queued within microseconds, while the writer waits 50 ms for the
        // lock); each must be told either way.
        let answers = ["a", "b", "c"].map(|key| writer.queue(insert(key)).expect("queued"));
        for answer in answers {
            match wait(answer) {
                Err(e) => assert!(e.is_transient(), "{e}"),
                Ok(()) => panic!("a write went through a held lock"),
            }
        }
        other.execute_batch("COMMIT").expect("unlock");
        assert!(!stored(&path, "a") && !stored(&path, "b") && !stored(&path, "c"));
        wait(writer.queue(insert("later")).expect("queued")).expect("the next batch");
        assert!(stored(&path, "later"));
    }

    #[test]
    fn a_panicking_write_fails_alone_and_the_writer_goes_on() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("w.db");
        let writer = Writer::spawn(open(&path), open(&path)).expect("spawn");
        let panicked = writer
            .queue(|conn| -> Result<(), StoreError> {
                conn.execute("INSERT INTO t (k) VALUES ('partial')", [])?;
                panic!("a bug in a write")
            })
            .expect("queued");
        assert!(matches!(wait(panicked), Err(StoreError::WritePanicked)));
        wait(writer.queue(insert("next")).expect("queued")).expect("the next write");
        assert!(stored(&path, "next") && !stored(&path, "partial"));
    }

    /// Without it, each write wakes the thread and is committed alone on a busy CPU.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_writer_thread_does_not_preempt_the_threads_that_queue_writes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let writer = Writer::spawn(
            open(&dir.path().join("w.db")),
            open(&dir.path().join("w.db")),
        )
        .expect("spawn");
        // Answered writes mean the thread has set its policy.
        wait(writer.queue(insert("k")).expect("queued")).expect("a write");
        let policies: Vec<i32> = std::fs::read_dir("/proc/self/task")
            .expect("the threads of this process")
            .filter_map(|task| {
                let task = task.ok()?.path();
                let name = std::fs::read_to_string(task.join("comm")).ok()?;
                (name.trim_end() == THREAD_NAME).then(|| {
                    let tid = task.file_name()?.to_str()?.parse().ok()?;
                    uapi::sched_getscheduler(tid).ok()
                })?
            })
            .collect();
        assert!(!policies.is_empty(), "no {THREAD_NAME} thread found");
        // Any, not all: another test's writer may not have set its policy yet.
        assert!(policies.contains(&uapi::c::SCHED_BATCH), "{policies:?}");
    }

    #[test]
    fn queued_writes_are_committed_before_the_thread_ends() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("w.db");
        let writer = Writer::spawn(open(&path), open(&path)).expect("spawn");
        let (release, held) = hold(&writer);
        let last = writer.queue(insert("last")).expect("queued");
        drop(writer);
        release.send(()).expect("the holding write waits");
        wait(held).expect("held");
        wait(last).expect("a write queued before the handle was dropped");
        assert!(stored(&path, "last"));
    }
}
