//! The command line: flags, their environment variables and defaults.

use std::net::SocketAddr;

use clap::Parser;

use crate::fault::Fault;
use crate::public_host::HostName;
use crate::release::Release;
use crate::store::Database;

/// Where to listen when `--listen` is not given.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8081";
/// The database file when `--db` is not given; relative to the working directory.
pub const DEFAULT_DB: &str = "data/links.db";
/// The release label when `--release` is not given.
pub const DEFAULT_RELEASE: &str = "v1";

/// A URL shortener, run as the blue or green slot behind the blue-green proxy.
///
/// Once listening it prints `shortener listening on ADDR` on stdout (the readiness line); logs go
/// to stderr (RUST_LOG, default `info`).
#[derive(Debug, Clone, Parser)]
#[command(name = "shortener", version)]
pub struct Args {
    /// Address to listen on; port 0 picks a free port, printed in the readiness line.
    #[arg(long, env = "SHORTENER_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// The database: a SQLite file (created with its folder when missing), shared by blue and
    /// green on one machine, or a PostgreSQL server as postgres://user@host:port/dbname, shared
    /// by releases on several hosts.
    #[arg(long, env = "SHORTENER_DB", default_value = DEFAULT_DB, value_name = "PATH|URL")]
    pub db: Database,

    /// Release label: sent as `x-release` on every response and recorded on every link written.
    #[arg(long, env = "SHORTENER_RELEASE", default_value = DEFAULT_RELEASE)]
    pub release: Release,

    /// Inject a fault for release drills: create-500, foreign-links-500, fail-after=N,
    /// latency=MS. Repeatable; comma-separated in the environment variable.
    #[arg(
        long = "fault",
        value_name = "KIND",
        env = "SHORTENER_FAULT",
        value_delimiter = ','
    )]
    pub faults: Vec<Fault>,

    /// Another host name users reach this shortener by (links to it are refused as loops).
    /// Repeatable; comma-separated in the environment variable.
    #[arg(
        long = "public-host",
        value_name = "HOST",
        env = "SHORTENER_PUBLIC_HOST",
        value_delimiter = ','
    )]
    pub public_hosts: Vec<HostName>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_contract() {
        let args = Args::try_parse_from(["shortener"]).expect("no flags needed");
        assert_eq!(args.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(args.db, Database::Sqlite(DEFAULT_DB.into()));
        assert_eq!(args.release.as_str(), DEFAULT_RELEASE);
        assert!(args.faults.is_empty() && args.public_hosts.is_empty());
    }

    #[test]
    fn faults_and_hosts_repeat() {
        let args = Args::try_parse_from([
            "shortener",
            "--fault",
            "create-500",
            "--fault",
            "latency=5",
            "--public-host",
            "Go.Example.",
            "--public-host",
            "b.example:8080",
        ])
        .expect("valid flags");
        assert_eq!(
            args.faults
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["create-500", "latency=5"]
        );
        assert_eq!(
            args.public_hosts
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["go.example", "b.example"]
        );
    }

    #[test]
    fn the_database_is_a_file_or_a_postgres_url() {
        let url = Args::try_parse_from(["shortener", "--db", "postgres://app:pw@10.0.0.9/links"])
            .expect("a PostgreSQL URL");
        assert!(matches!(url.db, Database::Postgres(_)), "{:?}", url.db);
        assert_eq!(url.db.to_string(), "postgres://app@10.0.0.9:5432/links");
        let err = Args::try_parse_from(["shortener", "--db", "mysql://u@h/links"])
            .expect_err("not a database we know");
        assert!(err.to_string().contains("`mysql://`"), "{err}");
    }

    #[test]
    fn an_unknown_fault_is_an_error_naming_it() {
        let err = Args::try_parse_from(["shortener", "--fault", "meltdown"]).expect_err("unknown");
        assert!(err.to_string().contains("meltdown"), "{err}");
    }
}
