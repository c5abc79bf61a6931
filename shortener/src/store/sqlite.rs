//! The store on SQLite. Blue and green are separate processes on one database file, so
//! everything here is built for two writers that never see each other:
//!
//! - WAL journal: readers never block the writer nor each other, and a commit by one process is
//!   visible to the next read of the other.
//! - `busy_timeout`: a process that finds the write lock taken waits (up to [`BUSY_TIMEOUT`])
//!   instead of failing with `SQLITE_BUSY`.
//! - Every write is `BEGIN IMMEDIATE`: it takes the write lock up front. A deferred transaction
//!   that reads and then writes can meet the other process doing the same, and one of them gets
//!   `SQLITE_BUSY` with no retry possible (the upgrade deadlock); immediate ones just queue.
//! - `synchronous = NORMAL`: in WAL mode a commit survives a killed process; only a power cut may
//!   lose the last commits. Good enough for a demo shortener, and writes stay fast.
//!
//! The schema and its additive-only rule live in [`migrations`]; the thread that commits every
//! write, several to a transaction under load, in [`writer`]; the thread that copies the WAL back
//! into the database file, and when it does, in [`checkpoint`]; the scheduling policy of both
//! threads in [`sched`].

mod checkpoint;
mod migrations;
mod sched;
mod writer;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::{Duration, Instant};

use rand::Rng;

use rusqlite::{Connection, OptionalExtension, Row, ffi};

use super::{GENERATE_TRIES, LINK_COLUMNS, Link, is_replay_of, key_cutoff, now_rfc3339};
use crate::code::Code;
use crate::error::StoreError;
use crate::long_url::LongUrl;
use writer::Writer;

/// How long a statement waits for the other process's write lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Reader connections per process; the machine this runs on has few cores.
const READERS: usize = 2;

/// A handle on the SQLite file; cheap to clone, shared by all requests.
///
/// One writer connection, owned by the writer thread, and a few reader connections, each behind
/// a std `Mutex` and used only from `spawn_blocking`: no SQLite call ever blocks the async
/// runtime. One writer loses nothing: SQLite admits one writer per file at a time anyway, across
/// processes. Separate readers keep `GET`s and `/healthz` answering while a write waits out the
/// other process's lock, which a single connection would not. Std mutexes, not Tokio ones,
/// because they are never held across an `.await`. Connections are opened once: opening costs a
/// file open and several pragmas.
#[derive(Clone)]
pub(super) struct SqliteStore {
    pool: Arc<Pool>,
}

struct Pool {
    /// Every write goes through its connection.
    writer: Writer,
    /// Read-only use; any free one will do.
    readers: Vec<Mutex<Connection>>,
    /// Round-robin start when all readers are busy.
    next_reader: AtomicUsize,
}

impl SqliteStore {
    /// Opens (creating when missing) the database file and its folder, switches it to WAL and
    /// applies the migrations. Blocking: call off the runtime, at startup.
    pub(super) fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| StoreError::CreateDir {
                path: parent.to_owned(),
                source,
            })?;
        }
        let writer =
            Writer::spawn(open_writer(path)?, connect(path)?).map_err(StoreError::WriterThread)?;
        let readers = (0..READERS)
            .map(|_| connect(path).map(Mutex::new))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            pool: Arc::new(Pool {
                writer,
                readers,
                next_reader: AtomicUsize::new(0),
            }),
        })
    }

    /// See [`super::Store::insert`]. Writes are serialized by the file's write lock, so a create
    /// retried on the other process finds the first one's key once that one has committed.
    pub(super) async fn insert(
        &self,
        code: Option<Code>,
        url: LongUrl,
        release: String,
        key: Option<String>,
    ) -> Result<Link, StoreError> {
        self.write(move |tx| {
            let created_at = now_rfc3339();
            if let Some(key) = &key {
                let sql = "SELECT l.code, l.url, l.created_at, l.clicks, l.release \
                           FROM write_keys k JOIN links l ON l.code = k.code WHERE k.key = ?1";
                let stored = tx
                    .prepare_cached(sql)?
                    .query_row([key], link_from_row)
                    .optional()?;
                if let Some(link) = stored
                    && is_replay_of(&link, &url, code.as_ref())
                {
                    return Ok(link);
                }
            }
            let mut insert = tx.prepare_cached(
                "INSERT INTO links (code, url, created_at, release) VALUES (?1, ?2, ?3, ?4)",
            )?;
            let mut attempt =
                |code: &str| match insert.execute((code, url.as_str(), &created_at, &release)) {
                    Ok(_) => Ok(true),
                    Err(err) if is_unique_violation(&err) => Ok(false),
                    Err(err) => Err(err),
                };
            let code = match code {
                Some(code) => {
                    if !attempt(code.as_str())? {
                        return Err(StoreError::CodeTaken(code.to_string()));
                    }
                    code.to_string()
                }
                None => generate_into(&mut attempt)?,
            };
            if let Some(key) = &key {
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO write_keys (key, code, created_at) VALUES (?1, ?2, ?3)",
                )?
                .execute((key, &code, &created_at))?;
                tx.prepare_cached("DELETE FROM write_keys WHERE created_at < ?1")?
                    .execute([key_cutoff()])?;
            }
            Ok(Link {
                code,
                url: url.to_string(),
                created_at,
                clicks: 0,
                release,
            })
        })
        .await
    }

    pub(super) async fn get(&self, code: Code) -> Result<Option<Link>, StoreError> {
        self.read(move |conn| {
            let sql = format!("SELECT {LINK_COLUMNS} FROM links WHERE code = ?1");
            conn.prepare_cached(&sql)?
                .query_row([code.as_str()], link_from_row)
                .optional()
        })
        .await
    }

    pub(super) async fn follow(&self, code: Code) -> Result<Option<String>, StoreError> {
        self.write(move |tx| {
            let url = tx
                .prepare_cached(
                    "UPDATE links SET clicks = clicks + 1 WHERE code = ?1 RETURNING url",
                )?
                .query_row([code.as_str()], |row| row.get(0))
                .optional()?;
            Ok(url)
        })
        .await
    }

    pub(super) async fn delete(&self, code: Code) -> Result<bool, StoreError> {
        self.write(move |tx| {
            let removed = tx
                .prepare_cached("DELETE FROM links WHERE code = ?1")?
                .execute([code.as_str()])?;
            Ok(removed > 0)
        })
        .await
    }

    pub(super) async fn list(
        &self,
        after: Option<Code>,
        limit: u32,
    ) -> Result<Vec<Link>, StoreError> {
        self.read(move |conn| {
            let sql = format!(
                "SELECT {LINK_COLUMNS} FROM links WHERE ?1 IS NULL OR code > ?1 ORDER BY code LIMIT ?2"
            );
            let after = after.as_ref().map(Code::as_str);
            conn.prepare_cached(&sql)?
                .query_map((after, limit), link_from_row)?
                .collect()
        })
        .await
    }

    pub(super) async fn ping(&self) -> Result<(), StoreError> {
        self.read(|conn| {
            conn.prepare_cached("SELECT 1 FROM links LIMIT 1")?
                .exists([])
                .map(drop)
        })
        .await
    }

    /// Runs `f` on a reader connection, off the async runtime.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let pool = Arc::clone(&self.pool);
        let value = tokio::task::spawn_blocking(move || f(&pool.reader())).await??;
        Ok(value)
    }

    /// Runs `f` in a `BEGIN IMMEDIATE` transaction of the writer thread, answering once it is
    /// committed. An error from `f` rolls back what `f` did.
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.pool.writer.run(f).await
    }
}

impl Pool {
    /// A free reader if there is one, else waits on the next in turn.
    fn reader(&self) -> MutexGuard<'_, Connection> {
        for reader in &self.readers {
            match reader.try_lock() {
                Ok(guard) => return guard,
                Err(TryLockError::Poisoned(poisoned)) => return poisoned.into_inner(),
                Err(TryLockError::WouldBlock) => {}
            }
        }
        let turn = self.next_reader.fetch_add(1, Ordering::Relaxed) % self.readers.len();
        lock(&self.readers[turn])
    }
}

/// Locks a connection even if a previous holder panicked: a panic mid-transaction drops the
/// `Transaction`, which rolls back, so the connection is in a clean state.
fn lock(mutex: &Mutex<Connection>) -> MutexGuard<'_, Connection> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Opens the writer, switches the file to WAL and migrates it, starting over while the other
/// process holds the file (up to [`BUSY_TIMEOUT`]). The busy handler alone is not enough when
/// blue and green start together on a new file: SQLite answers `SQLITE_BUSY` at once, without
/// waiting, to one of two connections that both hold a shared lock and both want the exclusive
/// one the switch to WAL needs (waiting could deadlock). The loser only has to try again.
fn open_writer(path: &Path) -> Result<Connection, StoreError> {
    let deadline = Instant::now() + BUSY_TIMEOUT;
    loop {
        match prepare_writer(path) {
            Err(e) if e.is_transient() && Instant::now() < deadline => {
                let pause = Duration::from_millis(rand::rng().random_range(5..=40));
                tracing::debug!(error = %e, ?pause, "database held by the other process; retrying");
                std::thread::sleep(pause);
            }
            done => return done,
        }
    }
}

fn prepare_writer(path: &Path) -> Result<Connection, StoreError> {
    let mut writer = connect(path)?;
    let mode: String =
        writer.pragma_update_and_check(None, "journal_mode", "wal", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::NotWal(mode));
    }
    migrations::apply(&mut writer)?;
    Ok(writer)
}

fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    // First, so that even the pragmas below wait for the other process instead of failing.
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(conn)
}

/// Tries random codes with `attempt` until one is free.
fn generate_into(
    attempt: &mut impl FnMut(&str) -> rusqlite::Result<bool>,
) -> Result<String, StoreError> {
    let mut rng = rand::rng();
    for _ in 0..GENERATE_TRIES {
        let code = Code::generate(&mut rng);
        if attempt(code.as_str())? {
            return Ok(code.to_string());
        }
    }
    Err(StoreError::CodeSpaceExhausted(GENERATE_TRIES))
}

fn is_unique_violation(err: &rusqlite::Error) -> bool {
    matches!(err, rusqlite::Error::SqliteFailure(e, _) if e.extended_code == ffi::SQLITE_CONSTRAINT_UNIQUE)
}

fn link_from_row(row: &Row<'_>) -> rusqlite::Result<Link> {
    Ok(Link {
        code: row.get(0)?,
        url: row.get(1)?,
        created_at: row.get(2)?,
        clicks: row.get(3)?,
        release: row.get(4)?,
    })
}

#[cfg(test)]
mod tests {
    use time::OffsetDateTime;
    use time::format_description::well_known::Rfc3339;

    use super::*;
    use crate::public_host::OwnHosts;

    fn url(raw: &str) -> LongUrl {
        LongUrl::parse(raw, &OwnHosts::NONE).expect("a valid test URL")
    }

    fn code(raw: &str) -> Code {
        Code::parse(raw).expect("a valid test code")
    }

    /// Blue and green starting together on a new file: each open races the others for the
    /// switch to WAL and the migrations, and every one must get through.
    #[test]
    fn concurrent_opens_of_a_new_file_all_succeed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("links.db");
        let start = Arc::new(std::sync::Barrier::new(6));
        let opens: Vec<_> = (0..6)
            .map(|_| {
                let (path, start) = (path.clone(), Arc::clone(&start));
                std::thread::spawn(move || {
                    start.wait();
                    SqliteStore::open(&path).map(drop)
                })
            })
            .collect();
        for open in opens {
            open.join().expect("an opening thread").expect("the open");
        }
    }

    #[tokio::test]
    async fn a_link_round_trips_and_counts_clicks() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(&dir.path().join("nested/links.db")).expect("open");

        let link = store
            .insert(
                Some(code("abc")),
                url("https://example.com/"),
                "v1".into(),
                None,
            )
            .await
            .expect("insert");
        assert_eq!(
            store.follow(code("abc")).await.expect("follow"),
            Some(link.url.clone())
        );

        let stored = store.get(code("abc")).await.expect("get").expect("present");
        assert_eq!(stored, Link { clicks: 1, ..link });
        assert!(OffsetDateTime::parse(&stored.created_at, &Rfc3339).is_ok());
    }

    /// Concurrent redirects share transactions; each click is still counted once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_click_of_concurrent_redirects_is_counted() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(&dir.path().join("links.db")).expect("open");
        for c in ["a", "b"] {
            store
                .insert(
                    Some(code(c)),
                    url("https://example.com/"),
                    "v1".into(),
                    None,
                )
                .await
                .expect("insert");
        }
        let follows: Vec<_> = (0..300)
            .map(|i| {
                let store = store.clone();
                let which = if i % 3 == 0 { "a" } else { "b" };
                tokio::spawn(async move { store.follow(code(which)).await })
            })
            .collect();
        for follow in follows {
            let target = follow.await.expect("task").expect("follow");
            assert_eq!(target.as_deref(), Some("https://example.com/"));
        }
        assert_eq!(store.follow(code("none")).await.expect("follow"), None);
        let clicks = |c| {
            let store = store.clone();
            async move {
                store
                    .get(code(c))
                    .await
                    .expect("get")
                    .expect("present")
                    .clicks
            }
        };
        assert_eq!((clicks("a").await, clicks("b").await), (100, 200));
    }

    #[tokio::test]
    async fn a_taken_code_is_refused_and_generated_codes_differ() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(&dir.path().join("links.db")).expect("open");
        store
            .insert(
                Some(code("x")),
                url("https://a.example/"),
                "v1".into(),
                None,
            )
            .await
            .expect("first insert");

        let again = store
            .insert(
                Some(code("x")),
                url("https://b.example/"),
                "v1".into(),
                None,
            )
            .await;
        assert!(matches!(again, Err(StoreError::CodeTaken(c)) if c == "x"));

        let a = store
            .insert(None, url("https://a.example/"), "v1".into(), None)
            .await
            .expect("a");
        let b = store
            .insert(None, url("https://a.example/"), "v1".into(), None)
            .await
            .expect("b");
        assert_ne!(a.code, b.code);
    }

    #[tokio::test]
    async fn data_survives_reopening_and_migrations_run_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("links.db");
        let store = SqliteStore::open(&path).expect("open");
        store
            .insert(
                Some(code("keep")),
                url("https://example.com/"),
                "v1".into(),
                None,
            )
            .await
            .expect("insert");
        drop(store);

        let reopened = SqliteStore::open(&path).expect("reopen");
        assert!(reopened.get(code("keep")).await.expect("get").is_some());
    }
}

#[cfg(test)]
mod write_key_tests {
    use super::*;

    #[tokio::test]
    async fn a_create_retried_with_its_key_is_stored_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("links.db")).expect("open");
        let url = || {
            LongUrl::parse("https://example.com/a", &crate::public_host::OwnHosts::NONE)
                .expect("url")
        };
        let key = Some("req-1".to_string());
        let first = store
            .insert(None, url(), "v1".into(), key.clone())
            .await
            .expect("first");
        let again = store
            .insert(None, url(), "v2".into(), key.clone())
            .await
            .expect("retry");
        assert_eq!(first.code, again.code);
        assert_eq!(store.list(None, 10).await.expect("list").len(), 1);
        // The same key for another URL is another create, not a replay.
        let other = LongUrl::parse("https://example.com/b", &crate::public_host::OwnHosts::NONE)
            .expect("url");
        let third = store
            .insert(None, other, "v1".into(), key)
            .await
            .expect("third");
        assert_ne!(third.code, first.code);
    }
}
