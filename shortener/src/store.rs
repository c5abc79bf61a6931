//! The store of links: the one interface the routes use, on either engine. A SQLite file
//! ([`sqlite`]) when blue and green run on one machine; a PostgreSQL database ([`postgres`]) when
//! the releases run on several hosts. `--db` picks one ([`Database`]). Both engines keep the
//! same rules, and the shortener's tests run every case against each:
//!
//! - Migrations are additive only, so an older release runs on a newer schema; releases that
//!   start at once on an empty database all get through (each engine's `migrations` says how).
//! - A write is answered only once it is committed: a `201` or a `302` means it is stored.
//! - A create carrying a write key (the `x-request-id`) that is already stored for the same URL
//!   answers the stored link: the proxy may send one create to both slots.
//! - Every wait is bounded; a database that is busy or unreachable for a moment is a
//!   [`StoreError::is_transient`] failure (a 503), never a hang.

mod database;
mod postgres;
mod sqlite;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::code::Code;
use crate::error::StoreError;
use crate::long_url::LongUrl;
use postgres::PostgresStore;
use sqlite::SqliteStore;

pub use database::{Database, DatabaseError, PostgresUrl};

/// Random codes tried before giving up on a generated code.
const GENERATE_TRIES: u32 = 8;

/// The columns of a [`Link`], in the order each engine reads them. Named, never `*`: a newer
/// release may have added columns.
const LINK_COLUMNS: &str = "code, url, created_at, clicks, release";

/// How long a write key is remembered. Retries come within seconds; a day of keys is plenty.
const WRITE_KEY_RETENTION: time::Duration = time::Duration::days(1);

/// A stored link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// A string, not a `Code`: rows are trusted, and a newer release may accept codes we don't.
    pub code: String,
    pub url: String,
    /// RFC 3339, UTC, whole seconds.
    pub created_at: String,
    pub clicks: i64,
    /// The release label of the instance that wrote the row.
    pub release: String,
}

/// A handle on the database; cheap to clone, shared by all requests.
#[derive(Clone)]
pub struct Store {
    engine: Engine,
}

#[derive(Clone)]
enum Engine {
    Sqlite(SqliteStore),
    Postgres(PostgresStore),
}

impl Store {
    /// Opens the database (creating a SQLite file and its folder when missing) and brings its
    /// schema up to this release's version.
    pub async fn open(db: &Database) -> Result<Self, StoreError> {
        let engine = match db {
            Database::Sqlite(path) => {
                let path = path.clone();
                // Opening a file, pragmas, migrations: blocking work, off the runtime.
                let store = tokio::task::spawn_blocking(move || SqliteStore::open(&path)).await??;
                Engine::Sqlite(store)
            }
            Database::Postgres(url) => Engine::Postgres(PostgresStore::open(url).await?),
        };
        Ok(Self { engine })
    }

    /// Stores a link under `code`, or under a generated code when `None`. With a write key, a
    /// create already stored under that key for the same URL (and code, if one was asked for)
    /// answers the stored link instead of storing a second one.
    pub async fn insert(
        &self,
        code: Option<Code>,
        url: LongUrl,
        release: String,
        key: Option<String>,
    ) -> Result<Link, StoreError> {
        match &self.engine {
            Engine::Sqlite(store) => store.insert(code, url, release, key).await,
            Engine::Postgres(store) => store.insert(code, url, release, key).await,
        }
    }

    /// The link under `code`, if any.
    pub async fn get(&self, code: Code) -> Result<Option<Link>, StoreError> {
        match &self.engine {
            Engine::Sqlite(store) => store.get(code).await,
            Engine::Postgres(store) => store.get(code).await,
        }
    }

    /// Counts a click and answers the target of `code`, if any, in one statement.
    pub async fn follow(&self, code: Code) -> Result<Option<String>, StoreError> {
        match &self.engine {
            Engine::Sqlite(store) => store.follow(code).await,
            Engine::Postgres(store) => store.follow(code).await,
        }
    }

    /// Removes the link under `code`; `false` when there was none.
    pub async fn delete(&self, code: Code) -> Result<bool, StoreError> {
        match &self.engine {
            Engine::Sqlite(store) => store.delete(code).await,
            Engine::Postgres(store) => store.delete(code).await,
        }
    }

    /// Up to `limit` links ordered by code (byte order on both engines), starting after `after`.
    pub async fn list(&self, after: Option<Code>, limit: u32) -> Result<Vec<Link>, StoreError> {
        match &self.engine {
            Engine::Sqlite(store) => store.list(after, limit).await,
            Engine::Postgres(store) => store.list(after, limit).await,
        }
    }

    /// A trivial query on the links table: fails when the database or the table is unusable.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match &self.engine {
            Engine::Sqlite(store) => store.ping().await,
            Engine::Postgres(store) => store.ping().await,
        }
    }
}

/// Whether `stored`, found under a create's write key, is that create's link: the same URL,
/// and the same code when one was asked for. Otherwise the key is reused for another create.
fn is_replay_of(stored: &Link, url: &LongUrl, code: Option<&Code>) -> bool {
    stored.url == url.as_str() && code.is_none_or(|c| c.as_str() == stored.code)
}

/// Write keys created before this are forgotten.
fn key_cutoff() -> String {
    rfc3339(OffsetDateTime::now_utc() - WRITE_KEY_RETENTION)
}

fn now_rfc3339() -> String {
    rfc3339(OffsetDateTime::now_utc())
}

/// The text both engines store times as: fixed width, so that text order is time order.
fn rfc3339(at: OffsetDateTime) -> String {
    at.replace_nanosecond(0)
        .expect("0 is a valid nanosecond")
        .format(&Rfc3339)
        .expect("a current UTC time has a four-digit year and no offset seconds")
}
