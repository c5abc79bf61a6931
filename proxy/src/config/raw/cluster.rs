//! `[cluster]`: the PostgreSQL database where several proxies of one service
//! keep their one routing state, and this proxy's name among them.

use std::str::FromStr;

use serde::Deserialize;

use super::problems::Problems;
use crate::config::ClusterCfg;

/// The schemes that name a PostgreSQL server.
const SCHEMES: &[&str] = &["postgres", "postgresql"];

#[derive(Debug, Default, Deserialize)]
pub(super) struct RawCluster {
    store: Option<String>,
    name: Option<String>,
}

impl RawCluster {
    /// The cluster's settings, or none after naming the problem.
    pub(super) fn validate(self, p: &mut Problems) -> Option<ClusterCfg> {
        if let Some(name) = &self.name
            && (name.trim().is_empty() || name.len() > 200)
        {
            p.push("cluster.name", "a name of 1 to 200 characters");
        }
        let Some(text) = self.store else {
            p.push(
                "cluster.store",
                "required in [cluster]: a postgres://user@host:port/dbname URL",
            );
            return None;
        };
        match parse_store(&text) {
            Ok(store) => Some(ClusterCfg {
                store,
                name: self.name,
            }),
            Err(why) => {
                p.push("cluster.store", why);
                None
            }
        }
    }
}

/// A `postgres://` URL in any form tokio-postgres reads; the message never
/// repeats the URL, which may hold a password.
fn parse_store(text: &str) -> Result<tokio_postgres::Config, String> {
    let Some((scheme, rest)) = text.split_once("://") else {
        return Err("not a URL: expected postgres://user@host:port/dbname".into());
    };
    if !SCHEMES.iter().any(|s| scheme.eq_ignore_ascii_case(s)) {
        return Err(format!(
            "`{scheme}://` is not PostgreSQL: expected postgres://user@host:port/dbname"
        ));
    }
    // tokio-postgres reads only the lowercase scheme.
    let config = tokio_postgres::Config::from_str(&format!("postgresql://{rest}"))
        .map_err(|e| format!("not a valid PostgreSQL URL ({e})"))?;
    if config.get_hosts().is_empty() {
        return Err("the URL names no host".into());
    }
    if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
        return Err("sslmode=require is not supported: the proxy connects without TLS".into());
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_postgres_url_is_taken_and_anything_else_is_named() {
        let ok = parse_store("postgres://proxy:secret@127.0.0.1:5432/routing").expect("valid");
        assert_eq!(ok.get_dbname(), Some("routing"));
        for (bad, why) in [
            ("127.0.0.1:5432", "not a URL"),
            ("mysql://h/db", "not PostgreSQL"),
            ("postgres:///db", "no host"),
        ] {
            let err = parse_store(bad).expect_err(bad);
            assert!(err.contains(why), "{bad}: {err}");
            assert!(!err.contains("secret"), "{err}");
        }
    }
}
