//! The admin token: where it comes from (environment, token file, or a
//! generated file), and its constant-time comparison.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::error::ProxyError;
use crate::secret;

pub const TOKEN_ENV: &str = "PROXY_ADMIN_TOKEN";

/// Where the token in force came from, for the startup log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    Env,
    File(PathBuf),
    Generated(PathBuf),
}

pub struct AdminToken {
    secret: Vec<u8>,
    pub source: TokenSource,
}

impl AdminToken {
    /// Resolves the token in order: environment, configured file, generated
    /// file (reused when it exists). A non-loopback admin listener needs an
    /// explicitly configured token.
    pub fn resolve(config: &Config, env: Option<String>) -> Result<AdminToken, ProxyError> {
        if let Some(token) = env.map(|t| t.trim().to_string()).filter(|t| !t.is_empty()) {
            return Ok(AdminToken {
                secret: token.into_bytes(),
                source: TokenSource::Env,
            });
        }
        if let Some(path) = &config.token_file {
            let token = read_token(path)?;
            return Ok(AdminToken {
                secret: token.into_bytes(),
                source: TokenSource::File(path.clone()),
            });
        }
        if !config.admin.ip().is_loopback() {
            return Err(ProxyError::Token(format!(
                "the admin listener {} is not on loopback: set {TOKEN_ENV} or admin.token_file",
                config.admin
            )));
        }
        let path = config.generated_token_file();
        let token = match read_token(&path) {
            Ok(token) => token,
            Err(_) => generate(&path)?,
        };
        Ok(AdminToken {
            secret: token.into_bytes(),
            source: TokenSource::Generated(path),
        })
    }

    /// Compares in constant time, so the answer's timing says nothing about
    /// how much of a guess was right.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        secret::matches(&self.secret, candidate)
    }

    pub fn describe(&self) -> String {
        match &self.source {
            TokenSource::Env => format!("from ${TOKEN_ENV}"),
            TokenSource::File(p) | TokenSource::Generated(p) => format!("in {}", p.display()),
        }
    }
}

fn read_token(path: &Path) -> Result<String, ProxyError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ProxyError::Token(format!("cannot read {}: {e}", path.display())))?;
    let token = text.lines().next().unwrap_or("").trim().to_string();
    if token.is_empty() {
        return Err(ProxyError::Token(format!("{} is empty", path.display())));
    }
    Ok(token)
}

fn generate(path: &Path) -> Result<String, ProxyError> {
    use std::os::unix::fs::OpenOptionsExt;
    let token = hex::encode(rand::random::<[u8; 24]>());
    let fail =
        |e: std::io::Error| ProxyError::Token(format!("cannot write {}: {e}", path.display()));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(fail)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(fail)?;
    writeln!(file, "{token}").map_err(fail)?;
    file.sync_all().map_err(fail)?;
    tracing::info!(path = %path.display(), "generated an admin token");
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_a_private_token_once_and_reuses_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config::parse("").expect("defaults");
        config.data_dir = dir.path().to_path_buf();
        let first = AdminToken::resolve(&config, None).expect("generated");
        let mode = std::fs::metadata(config.generated_token_file())
            .expect("file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = AdminToken::resolve(&config, None).expect("reused");
        assert_eq!(first.secret, again.secret);
        assert!(first.matches(&first.secret.clone()));
        assert!(!first.matches(b"wrong"));
    }

    #[test]
    fn refuses_a_public_admin_listener_without_a_token() {
        let config = Config::parse("[listen]\nadmin = \"0.0.0.0:8099\"\n").expect("valid");
        assert!(AdminToken::resolve(&config, None).is_err());
        assert!(AdminToken::resolve(&config, Some("secret".into())).is_ok());
    }
}
