//! The shared routing state's two tables in PostgreSQL: `proxy_routing`, one
//! row holding the state (as the state file's JSON), its generation, the
//! change that made it and the proxy that committed it; and
//! `proxy_heartbeat`, each proxy's last-seen generation. Every operation is
//! bounded: a server that stopped answering sends no timeout of its own.

use std::future::Future;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

use super::counts::Second;
use crate::http::traffic::WindowStats;
use crate::slot::Slot;

/// A handful: one change at a time, one read a tick, one heartbeat.
const POOL_SIZE: usize = 4;
/// Opening a connection, and waiting for a free one.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// One operation (a transaction of a few statements), from our side.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(3);
/// Keeps the schema creation of proxies starting at once apart from any
/// other use of advisory locks in the database ("PRXY").
const SCHEMA_LOCK: i64 = 0x5052_5859;
/// The channel every commit notifies, with the new generation as payload.
pub(super) const CHANNEL: &str = "proxy_routing";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS proxy_routing (
    id INT PRIMARY KEY CHECK (id = 1),
    generation BIGINT NOT NULL,
    state TEXT NOT NULL,
    change TEXT NOT NULL,
    by_proxy TEXT NOT NULL,
    committed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS proxy_traffic (
    name TEXT NOT NULL,
    slot TEXT NOT NULL,
    second BIGINT NOT NULL,
    count BIGINT NOT NULL,
    server_errors BIGINT NOT NULL,
    upstream_failures BIGINT NOT NULL,
    latency_us BIGINT NOT NULL,
    PRIMARY KEY (name, slot, second)
);
CREATE TABLE IF NOT EXISTS proxy_heartbeat (
    name TEXT PRIMARY KEY,
    generation BIGINT NOT NULL,
    seen_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
";

/// The routing row as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub generation: u64,
    /// The routing state, as the state file holds it.
    pub state: String,
    /// What the change that made this generation did.
    pub change: String,
    /// The proxy that committed it.
    pub by: String,
}

/// One proxy's last heartbeat.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Peer {
    pub name: String,
    /// The generation it served at its last heartbeat.
    pub generation: u64,
    /// Seconds since that heartbeat.
    pub seen_secs_ago: f64,
}

/// Why the store could not be used: the server is down or does not answer
/// in time. Internal detail for the log.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct Unreachable(pub String);

/// A pool of connections to the routing database.
pub struct Store {
    pool: Pool,
}

impl Store {
    /// No I/O: connections are opened when first needed.
    pub fn new(mut config: tokio_postgres::Config) -> Result<Store, Unreachable> {
        config.connect_timeout(CONNECT_TIMEOUT);
        if config.get_application_name().is_none() {
            config.application_name("bluegreen-proxy");
        }
        // Verified: a connection the server closed (a restart) is replaced
        // before use, so the first change after the store is back works.
        // A few operations a second can afford the round trip.
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Verified,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| Unreachable(e.to_string()))?;
        Ok(Store { pool })
    }

    /// Creates the tables when missing; proxies starting at once take turns.
    pub async fn migrate(&self) -> Result<(), Unreachable> {
        let mut client = self.client().await?;
        let done = bounded(async {
            let tx = client.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
                .await?;
            tx.batch_execute(SCHEMA).await?;
            tx.commit().await
        })
        .await;
        settle(client, done)
    }

    /// The routing row; none before the first proxy seeded it.
    pub async fn read(&self) -> Result<Option<Row>, Unreachable> {
        let client = self.client().await?;
        let row = bounded(async {
            let row = client
                .query_opt(
                    "SELECT generation, state, change, by_proxy FROM proxy_routing WHERE id = 1",
                    &[],
                )
                .await?;
            Ok(row.map(|r| Row {
                generation: u64::try_from(r.get::<_, i64>(0)).unwrap_or(0),
                state: r.get(1),
                change: r.get(2),
                by: r.get(3),
            }))
        })
        .await;
        settle(client, row)
    }

    /// Writes generation 1 from `state` unless a row exists; answers the row
    /// that stands (ours or the one another proxy seeded first).
    pub async fn seed(&self, state: &str, by: &str) -> Result<Row, Unreachable> {
        let client = self.client().await?;
        let seeded = bounded(client.execute(
            "INSERT INTO proxy_routing (id, generation, state, change, by_proxy) \
             VALUES (1, 1, $1, 'the first routing state', $2) ON CONFLICT (id) DO NOTHING",
            &[&state, &by],
        ))
        .await;
        settle(client, seeded)?;
        self.read()
            .await?
            .ok_or_else(|| Unreachable("the routing row vanished after it was seeded".into()))
    }

    /// Replaces the state if the row is still at `expected`, and notifies
    /// every proxy in the same transaction: the new generation, or the row
    /// that stands when another change committed meanwhile.
    pub async fn compare_and_set(
        &self,
        expected: u64,
        state: &str,
        change: &str,
        by: &str,
    ) -> Result<Result<u64, Row>, Unreachable> {
        let mut client = self.client().await?;
        let expected_sql = i64::try_from(expected).unwrap_or(i64::MAX);
        let committed = bounded(async {
            let tx = client.transaction().await?;
            let row = tx
                .query_opt(
                    "UPDATE proxy_routing SET generation = generation + 1, state = $2, \
                     change = $3, by_proxy = $4, committed_at = now() \
                     WHERE id = 1 AND generation = $1 RETURNING generation",
                    &[&expected_sql, &state, &change, &by],
                )
                .await?;
            let Some(row) = row else {
                tx.rollback().await?;
                return Ok(None);
            };
            let generation: i64 = row.get(0);
            tx.execute(
                "SELECT pg_notify($1, $2)",
                &[&CHANNEL, &generation.to_string()],
            )
            .await?;
            tx.commit().await?;
            Ok(Some(u64::try_from(generation).unwrap_or(0)))
        })
        .await;
        let committed = settle(client, committed)?;
        match committed {
            Some(generation) => Ok(Ok(generation)),
            None => match self.read().await? {
                Some(row) => Ok(Err(row)),
                None => Err(Unreachable("the routing row is missing".into())),
            },
        }
    }

    /// Records that `name` serves `generation` now, and answers every
    /// proxy's last heartbeat.
    pub async fn beat(&self, name: &str, generation: u64) -> Result<Vec<Peer>, Unreachable> {
        let client = self.client().await?;
        let generation = i64::try_from(generation).unwrap_or(i64::MAX);
        let peers = bounded(async {
            client
                .execute(
                    "INSERT INTO proxy_heartbeat (name, generation, seen_at) VALUES ($1, $2, now()) \
                     ON CONFLICT (name) DO UPDATE SET generation = $2, seen_at = now()",
                    &[&name, &generation],
                )
                .await?;
            let rows = client
                .query(
                    "SELECT name, generation, EXTRACT(EPOCH FROM now() - seen_at)::float8 \
                     FROM proxy_heartbeat ORDER BY name",
                    &[],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| Peer {
                    name: r.get(0),
                    generation: u64::try_from(r.get::<_, i64>(1)).unwrap_or(0),
                    seen_secs_ago: r.get(2),
                })
                .collect())
        })
        .await;
        settle(client, peers)
    }

    /// Writes this proxy's `seconds` (again: the newest may have grown),
    /// forgets seconds older than `oldest`, and answers the other proxies'
    /// seconds since then.
    pub async fn exchange_counts(
        &self,
        name: &str,
        seconds: &[Second],
        oldest: i64,
    ) -> Result<Vec<Second>, Unreachable> {
        let mut client = self.client().await?;
        let exchanged = bounded(async {
            let tx = client.transaction().await?;
            for s in seconds {
                let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
                tx.execute(
                    "INSERT INTO proxy_traffic (name, slot, second, count, server_errors, \
                     upstream_failures, latency_us) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                     ON CONFLICT (name, slot, second) DO UPDATE SET count = $4, \
                     server_errors = $5, upstream_failures = $6, latency_us = $7",
                    &[
                        &name,
                        &s.slot.as_str(),
                        &s.at,
                        &n(s.stats.count),
                        &n(s.stats.server_errors),
                        &n(s.stats.upstream_failures),
                        &n(s.stats.latency_us),
                    ],
                )
                .await?;
            }
            tx.execute("DELETE FROM proxy_traffic WHERE second < $1", &[&oldest])
                .await?;
            let rows = tx
                .query(
                    "SELECT slot, second, count, server_errors, upstream_failures, latency_us \
                     FROM proxy_traffic WHERE name <> $1 AND second >= $2",
                    &[&name, &oldest],
                )
                .await?;
            tx.commit().await?;
            let n = |v: i64| u64::try_from(v).unwrap_or(0);
            Ok(rows
                .iter()
                .filter_map(|r| {
                    let slot: Slot = r.get::<_, String>(0).parse().ok()?;
                    Some(Second {
                        slot,
                        at: r.get(1),
                        stats: WindowStats {
                            count: n(r.get(2)),
                            server_errors: n(r.get(3)),
                            upstream_failures: n(r.get(4)),
                            latency_us: n(r.get(5)),
                        },
                    })
                })
                .collect())
        })
        .await;
        settle(client, exchanged)
    }

    async fn client(&self) -> Result<Object, Unreachable> {
        self.pool
            .get()
            .await
            .map_err(|e| Unreachable(format!("no connection: {e}")))
    }
}

/// Puts the connection back after a success; closes it after a failure:
/// an operation cut short may have left it inside a transaction.
fn settle<T>(client: Object, outcome: Result<T, Unreachable>) -> Result<T, Unreachable> {
    if outcome.is_err() {
        drop(Object::take(client));
    }
    outcome
}

/// Runs `operation` within `OPERATION_TIMEOUT`.
async fn bounded<T>(
    operation: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, Unreachable> {
    match tokio::time::timeout(OPERATION_TIMEOUT, operation).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(Unreachable(describe(&e))),
        Err(_) => Err(Unreachable(format!(
            "no answer within {OPERATION_TIMEOUT:?}"
        ))),
    }
}

/// tokio-postgres's own text is often only "error connecting to server";
/// the reason is its source.
fn describe(err: &tokio_postgres::Error) -> String {
    match std::error::Error::source(err) {
        Some(source) => format!("{err}: {source}"),
        None => err.to_string(),
    }
}
