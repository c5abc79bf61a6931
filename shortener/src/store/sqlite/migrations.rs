//! The schema of the links database, versioned in `PRAGMA user_version`.
//!
//! THE RULE: migrations are additive only. Blue and green run different releases on the same
//! file at the same time, and a rollback puts the older release back on a schema the newer one
//! already migrated. So a migration may add a table, an index, or a nullable or defaulted column;
//! it never renames, drops or retypes anything, and never adds a `NOT NULL` column without a
//! default (the older release's `INSERT`s would fail). Queries name their columns (no
//! `SELECT *`, no `INSERT` without a column list) so every release works on any newer schema.
//! A migration, once released, is never edited: append a new one.

use rusqlite::{Connection, TransactionBehavior};

/// Migration `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: the links table of the first release.
    "CREATE TABLE IF NOT EXISTS links (
        id INTEGER PRIMARY KEY,
        code TEXT UNIQUE NOT NULL,
        url TEXT NOT NULL,
        created_at TEXT NOT NULL,
        clicks INTEGER NOT NULL DEFAULT 0,
        release TEXT NOT NULL
    );",
    // 2: idempotency keys of creates, so a create retried by the proxy on the
    // other slot (same x-request-id) is stored once.
    "CREATE TABLE IF NOT EXISTS write_keys (
        key TEXT PRIMARY KEY,
        code TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS write_keys_created_at ON write_keys (created_at);",
];

/// Brings the schema up to this release's version. The read of the version and the migrations
/// share one `BEGIN IMMEDIATE` transaction, so when both processes start at once, the second
/// waits for the first, then finds the schema current and does nothing. A schema newer than
/// ours is fine: the rule above guarantees we can run on it.
pub(super) fn apply(conn: &mut Connection) -> rusqlite::Result<()> {
    let latest = MIGRATIONS.len();
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found: usize = tx.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    for migration in MIGRATIONS.iter().skip(found) {
        tx.execute_batch(migration)?;
    }
    if found < latest {
        tx.pragma_update(None, "user_version", latest)?;
        tracing::info!(from = found, to = latest, "database schema migrated");
    } else if found > latest {
        tracing::info!(
            found,
            ours = latest,
            "database schema is newer than this release; running on it (migrations are additive)"
        );
    }
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(conn: &Connection) -> usize {
        conn.query_row("PRAGMA user_version", [], |row| row.get(0))
            .expect("user_version")
    }

    #[test]
    fn applies_once_and_records_the_version() {
        let mut conn = Connection::open_in_memory().expect("in-memory db");
        apply(&mut conn).expect("first run");
        apply(&mut conn).expect("second run is a no-op");
        assert_eq!(version(&conn), MIGRATIONS.len());
    }

    #[test]
    fn a_newer_schema_is_left_alone() {
        let mut conn = Connection::open_in_memory().expect("in-memory db");
        apply(&mut conn).expect("migrate");
        conn.execute_batch(
            "ALTER TABLE links ADD COLUMN expires_at TEXT; PRAGMA user_version = 99;",
        )
        .expect("a newer release's migration");
        apply(&mut conn).expect("older release starts");
        assert_eq!(version(&conn), 99);
    }
}
