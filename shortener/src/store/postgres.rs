//! The store on PostgreSQL: one database that the releases on every host share.
//!
//! - A pool of connections per process ([`POOL_SIZE`]), each session with a server-side
//!   `statement_timeout` and `lock_timeout`. Every wait is bounded: for a free connection
//!   ([`POOL_WAIT`]), for a new one ([`CONNECT_TIMEOUT`]), and for a whole operation from our
//!   side ([`OPERATION_TIMEOUT`]), since a server that stopped answering sends no timeout. A
//!   connection whose operation ran out of time is closed, not put back: its state is unknown.
//! - A restart of the server closes every connection; the pool hands out only open ones and
//!   opens new ones as needed, so the store heals by itself once the server is back. Until then
//!   each operation fails at once, as [`StoreError::is_transient`] (a 503).
//! - A write is one transaction, answered once committed. A create with a write key first takes
//!   a transaction-scoped advisory lock on the key, so that two creates with one key (the
//!   proxy's retry on the other slot) run one after the other and the second finds the first's
//!   link: what SQLite's single write lock gives for free.
//! - The schema and its additive-only rule live in [`migrations`].

mod migrations;

use std::future::Future;
use std::time::Duration;

use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime, TimeoutType,
};
use tokio::time::error::Elapsed;
use tokio_postgres::{NoTls, Row};

use super::{
    GENERATE_TRIES, LINK_COLUMNS, Link, PostgresUrl, is_replay_of, key_cutoff, now_rfc3339,
};
use crate::code::Code;
use crate::error::StoreError;
use crate::long_url::LongUrl;

/// Connections per process. Each is a server process on the other side, and several releases
/// on several hosts share the server's `max_connections` (100 by default).
const POOL_SIZE: usize = 16;

/// How long an operation waits for a free connection of the pool.
const POOL_WAIT: Duration = Duration::from_secs(5);

/// How long opening a connection may take: TCP, startup, authentication.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the server runs one statement, or waits for a row lock, before it gives up.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a session may sit in an open transaction: a client that hangs mid-transaction
/// releases its locks after this.
const IDLE_IN_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Our own bound on one operation (a transaction of a few statements): it holds when the server
/// no longer answers at all, where its own timeouts cannot.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(10);

/// The first key of the advisory lock a create with a write key takes (the second is the key's
/// hash): it keeps these locks apart from any other use of advisory locks in the database.
const WRITE_KEY_LOCK: i32 = 0x5348_4b59; // "SHKY"

/// The `application_name` of our sessions, unless the URL gives one: names them in
/// `pg_stat_activity`.
const APPLICATION_NAME: &str = "shortener";

/// A pool of connections to the database; cheap to clone, shared by all requests.
#[derive(Clone)]
pub(super) struct PostgresStore {
    pool: Pool,
}

impl PostgresStore {
    /// Connects and brings the schema up to this release's version. Fails when the server cannot
    /// be reached within the timeouts: a release that cannot reach its database does not start.
    pub(super) async fn open(url: &PostgresUrl) -> Result<Self, StoreError> {
        let mut config = url.config().clone();
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name(APPLICATION_NAME);
        }
        // Ours first, so that settings given in the URL's `options` win.
        let session = format!(
            "-c statement_timeout={} -c lock_timeout={} -c idle_in_transaction_session_timeout={}",
            STATEMENT_TIMEOUT.as_millis(),
            STATEMENT_TIMEOUT.as_millis(),
            IDLE_IN_TRANSACTION_TIMEOUT.as_millis(),
        );
        let options = match config.get_options() {
            Some(theirs) => format!("{session} {theirs}"),
            None => session,
        };
        config.options(options);
        let manager = Manager::from_config(
            config,
            NoTls,
            // Checks only that the connection is open: a query per checkout would double the
            // round trips of a redirect. A connection that died unnoticed fails its operation
            // (a 503), and is replaced.
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Pool(e.to_string()))?;
        let store = Self { pool };
        let mut client = store.connection().await?;
        let migrated =
            tokio::time::timeout(migrations::TIMEOUT, migrations::apply(&mut client)).await;
        settle(client, migrated, migrations::TIMEOUT)?;
        Ok(store)
    }

    pub(super) async fn insert(
        &self,
        code: Option<Code>,
        url: LongUrl,
        release: String,
        key: Option<String>,
    ) -> Result<Link, StoreError> {
        let mut client = self.connection().await?;
        let outcome = bounded(insert_on(&mut client, code, url, release, key)).await;
        settle(client, outcome, OPERATION_TIMEOUT)
    }

    pub(super) async fn get(&self, code: Code) -> Result<Option<Link>, StoreError> {
        let client = self.connection().await?;
        let outcome = bounded(async {
            let sql = format!("SELECT {LINK_COLUMNS} FROM links WHERE code = $1");
            let statement = client.prepare_cached(&sql).await?;
            let row = client.query_opt(&statement, &[&code.as_str()]).await?;
            Ok(row.as_ref().map(link_from_row).transpose()?)
        })
        .await;
        settle(client, outcome, OPERATION_TIMEOUT)
    }

    pub(super) async fn follow(&self, code: Code) -> Result<Option<String>, StoreError> {
        let client = self.connection().await?;
        let outcome = bounded(async {
            // One statement, committed before the answer comes back: a `302` means its click
            // is stored.
            let statement = client
                .prepare_cached(
                    "UPDATE links SET clicks = clicks + 1 WHERE code = $1 RETURNING url",
                )
                .await?;
            let row = client.query_opt(&statement, &[&code.as_str()]).await?;
            Ok(row.map(|row| row.try_get(0)).transpose()?)
        })
        .await;
        settle(client, outcome, OPERATION_TIMEOUT)
    }

    pub(super) async fn delete(&self, code: Code) -> Result<bool, StoreError> {
        let client = self.connection().await?;
        let outcome = bounded(async {
            let statement = client
                .prepare_cached("DELETE FROM links WHERE code = $1")
                .await?;
            Ok(client.execute(&statement, &[&code.as_str()]).await? > 0)
        })
        .await;
        settle(client, outcome, OPERATION_TIMEOUT)
    }

    pub(super) async fn list(
        &self,
        after: Option<Code>,
        limit: u32,
    ) -> Result<Vec<Link>, StoreError> {
        let client = self.connection().await?;
        let outcome = bounded(async {
            let sql = format!(
                "SELECT {LINK_COLUMNS} FROM links WHERE $1::text IS NULL OR code > $1 \
                 ORDER BY code LIMIT $2"
            );
            let statement = client.prepare_cached(&sql).await?;
            let after = after.as_ref().map(Code::as_str);
            let rows = client
                .query(&statement, &[&after, &i64::from(limit)])
                .await?;
            Ok(rows.iter().map(link_from_row).collect::<Result<_, _>>()?)
        })
        .await;
        settle(client, outcome, OPERATION_TIMEOUT)
    }

    pub(super) async fn ping(&self) -> Result<(), StoreError> {
        let client = self.connection().await?;
        let outcome = bounded(async {
            let statement = client.prepare_cached("SELECT 1 FROM links LIMIT 1").await?;
            client.query_opt(&statement, &[]).await?;
            Ok(())
        })
        .await;
        settle(client, outcome, OPERATION_TIMEOUT)
    }

    /// A connection of the pool, within [`POOL_WAIT`] and [`CONNECT_TIMEOUT`].
    async fn connection(&self) -> Result<Object, StoreError> {
        self.pool.get().await.map_err(|e| match e {
            PoolError::Backend(e) => StoreError::Postgres(e),
            PoolError::Timeout(TimeoutType::Wait) => StoreError::TimedOut {
                what: "waiting for a free connection",
                after: POOL_WAIT,
            },
            PoolError::Timeout(TimeoutType::Create | TimeoutType::Recycle) => {
                StoreError::TimedOut {
                    what: "connecting",
                    after: CONNECT_TIMEOUT,
                }
            }
            other => StoreError::Pool(other.to_string()),
        })
    }
}

/// One create, in one transaction (see [`super::Store::insert`]).
async fn insert_on(
    client: &mut Object,
    code: Option<Code>,
    url: LongUrl,
    release: String,
    key: Option<String>,
) -> Result<Link, StoreError> {
    let tx = client.transaction().await?;
    if let Some(key) = &key {
        // Held until the transaction ends; a create with another key does not wait for it.
        let lock = tx
            .prepare_cached("SELECT pg_advisory_xact_lock($1, hashtext($2))")
            .await?;
        tx.execute(&lock, &[&WRITE_KEY_LOCK, key]).await?;
        let stored = tx
            .prepare_cached(
                "SELECT l.code, l.url, l.created_at, l.clicks, l.release \
                 FROM write_keys k JOIN links l ON l.code = k.code WHERE k.key = $1",
            )
            .await?;
        if let Some(row) = tx.query_opt(&stored, &[key]).await? {
            let link = link_from_row(&row)?;
            if is_replay_of(&link, &url, code.as_ref()) {
                // Nothing written: dropping the transaction rolls it back, which frees the lock.
                return Ok(link);
            }
        }
    }
    let created_at = now_rfc3339();
    let insert = tx
        .prepare_cached(
            "INSERT INTO links (code, url, created_at, release) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (code) DO NOTHING",
        )
        .await?;
    let attempt = |code: String| {
        let (tx, insert, url, created_at, release) = (&tx, &insert, &url, &created_at, &release);
        async move {
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
                [&code, &url.as_str(), created_at, release];
            // Another create's uncommitted row with the same code makes this wait for its
            // outcome: exactly one of two racing creates gets a code.
            let inserted = tx.execute(insert, &params).await? == 1;
            Ok::<_, StoreError>(inserted.then_some(code))
        }
    };
    let code = match code {
        Some(code) => attempt(code.to_string())
            .await?
            .ok_or_else(|| StoreError::CodeTaken(code.to_string()))?,
        None => {
            let mut stored = None;
            for _ in 0..GENERATE_TRIES {
                let candidate = Code::generate(&mut rand::rng()).to_string();
                stored = attempt(candidate).await?;
                if stored.is_some() {
                    break;
                }
            }
            stored.ok_or(StoreError::CodeSpaceExhausted(GENERATE_TRIES))?
        }
    };
    if let Some(key) = &key {
        let remember = tx
            .prepare_cached(
                "INSERT INTO write_keys (key, code, created_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (key) DO UPDATE SET code = EXCLUDED.code, created_at = EXCLUDED.created_at",
            )
            .await?;
        tx.execute(&remember, &[key, &code, &created_at]).await?;
        let forget = tx
            .prepare_cached("DELETE FROM write_keys WHERE created_at < $1")
            .await?;
        tx.execute(&forget, &[&key_cutoff()]).await?;
    }
    tx.commit().await?;
    Ok(Link {
        code,
        url: url.to_string(),
        created_at,
        clicks: 0,
        release,
    })
}

/// `op` within [`OPERATION_TIMEOUT`].
async fn bounded<T>(
    op: impl Future<Output = Result<T, StoreError>>,
) -> Result<Result<T, StoreError>, Elapsed> {
    tokio::time::timeout(OPERATION_TIMEOUT, op).await
}

/// The result of an operation on `client`. One that ran out of time closes its connection
/// instead of putting it back: a statement may still be running on it.
fn settle<T>(
    client: Object,
    outcome: Result<Result<T, StoreError>, Elapsed>,
    after: Duration,
) -> Result<T, StoreError> {
    match outcome {
        Ok(result) => result,
        Err(_) => {
            drop(Object::take(client));
            Err(StoreError::TimedOut {
                what: "waiting for the server's answer",
                after,
            })
        }
    }
}

fn link_from_row(row: &Row) -> Result<Link, tokio_postgres::Error> {
    Ok(Link {
        code: row.try_get(0)?,
        url: row.try_get(1)?,
        created_at: row.try_get(2)?,
        clicks: row.try_get(3)?,
        release: row.try_get(4)?,
    })
}
