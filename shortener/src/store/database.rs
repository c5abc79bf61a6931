//! `Database`: what `--db` names, a SQLite file or a PostgreSQL server, parsed once at startup.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use tokio_postgres::config::{Host, SslMode};

/// The schemes that name a PostgreSQL server; anything else with `://` is refused rather than
/// taken for a file name.
const POSTGRES_SCHEMES: &[&str] = &["postgres", "postgresql"];

/// The port PostgreSQL listens on when the URL names none.
const DEFAULT_PORT: u16 = 5432;

/// The database the links live in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// A SQLite file, created (with its folder) when missing; blue and green share it.
    Sqlite(PathBuf),
    /// A PostgreSQL database, which releases on several hosts can share.
    Postgres(PostgresUrl),
}

/// A parsed `postgres://user@host:port/dbname` URL (any form `tokio-postgres` reads, such as
/// `?options=` or several hosts). Shown without its password.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresUrl {
    /// Boxed: it is ten times the size of a path, and `Database`s are moved around.
    config: Box<tokio_postgres::Config>,
}

/// Why `--db` was refused; each message names the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DatabaseError {
    #[error("the database is empty: give a SQLite file path or a postgres:// URL")]
    Empty,
    #[error(
        "`{0}://` is not a database this shortener knows: give a SQLite file path or a postgres:// URL"
    )]
    UnknownScheme(String),
    #[error("the PostgreSQL URL is not valid: {0}")]
    InvalidUrl(String),
    #[error("the PostgreSQL URL names no host")]
    NoHost,
    #[error(
        "sslmode=require is not supported: the shortener connects without TLS (use a loopback or private address)"
    )]
    TlsRequired,
}

impl FromStr for Database {
    type Err = DatabaseError;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        if raw.is_empty() {
            return Err(DatabaseError::Empty);
        }
        let Some((scheme, _)) = raw.split_once("://") else {
            return Ok(Self::Sqlite(PathBuf::from(raw)));
        };
        if !POSTGRES_SCHEMES
            .iter()
            .any(|known| scheme.eq_ignore_ascii_case(known))
        {
            return Err(DatabaseError::UnknownScheme(scheme.to_owned()));
        }
        // tokio-postgres reads only the lowercase schemes.
        let normalized = format!("postgresql://{}", &raw[scheme.len() + 3..]);
        let config = tokio_postgres::Config::from_str(&normalized)
            .map_err(|e| DatabaseError::InvalidUrl(source_text(&e)))?;
        if config.get_hosts().is_empty() {
            return Err(DatabaseError::NoHost);
        }
        if config.get_ssl_mode() == SslMode::Require {
            return Err(DatabaseError::TlsRequired);
        }
        Ok(Self::Postgres(PostgresUrl {
            config: Box::new(config),
        }))
    }
}

impl fmt::Display for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(path) => write!(f, "{}", path.display()),
            Self::Postgres(url) => url.fmt(f),
        }
    }
}

impl PostgresUrl {
    /// The connection settings, password included.
    pub(crate) fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }
}

/// `postgres://user@host:port/dbname`, rebuilt from the settings so that a password never shows.
impl fmt::Display for PostgresUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let config = &self.config;
        f.write_str("postgres://")?;
        if let Some(user) = config.get_user() {
            write!(f, "{user}@")?;
        }
        let ports = config.get_ports();
        for (i, host) in config.get_hosts().iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let port = ports
                .get(i)
                .or(ports.first())
                .copied()
                .unwrap_or(DEFAULT_PORT);
            match host {
                Host::Tcp(name) => write!(f, "{name}:{port}")?,
                Host::Unix(dir) => write!(f, "[{}]:{port}", dir.display())?,
            }
        }
        if let Some(dbname) = config.get_dbname() {
            write!(f, "/{dbname}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for PostgresUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PostgresUrl({self})")
    }
}

/// tokio-postgres's own message is only "invalid connection string"; the reason is its source.
fn source_text(err: &tokio_postgres::Error) -> String {
    match std::error::Error::source(err) {
        Some(source) => format!("{err}: {source}"),
        None => err.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Result<Database, DatabaseError> {
        raw.parse()
    }

    #[test]
    fn a_path_is_a_sqlite_file() {
        for raw in ["data/links.db", "/tmp/x.db", "links", "./a:b.db"] {
            assert_eq!(
                parse(raw),
                Ok(Database::Sqlite(PathBuf::from(raw))),
                "{raw}"
            );
        }
    }

    #[test]
    fn a_postgres_url_is_a_server_shown_without_its_password() {
        let db = parse("postgres://app:s3cret@127.0.0.1:5433/links").expect("valid");
        let Database::Postgres(url) = &db else {
            panic!("not postgres: {db:?}");
        };
        assert_eq!(url.config().get_dbname(), Some("links"));
        assert_eq!(url.config().get_password(), Some(&b"s3cret"[..]));
        assert_eq!(db.to_string(), "postgres://app@127.0.0.1:5433/links");
        assert!(!format!("{db:?}").contains("s3cret"));
        let other = parse("PostgreSQL://u@db.internal/x").expect("any case, either name");
        assert_eq!(other.to_string(), "postgres://u@db.internal:5432/x");
    }

    #[test]
    fn bad_databases_are_refused_naming_the_problem() {
        assert_eq!(parse(""), Err(DatabaseError::Empty));
        assert_eq!(
            parse("mysql://u@h/db"),
            Err(DatabaseError::UnknownScheme("mysql".into()))
        );
        assert_eq!(parse("postgres:///db"), Err(DatabaseError::NoHost));
        assert_eq!(
            parse("postgres://u@h/db?sslmode=require"),
            Err(DatabaseError::TlsRequired)
        );
        let Err(DatabaseError::InvalidUrl(why)) = parse("postgres://u@h:notaport/db") else {
            panic!("a bad port is an invalid URL");
        };
        assert!(why.contains("port"), "{why}");
    }
}
