//! The proxy's configuration: a pure parse of TOML text into raw structs,
//! `validate()` (one validator per section) that reports every problem with
//! its key and line, then the typed `Config` the rest of the proxy uses, and
//! how a reload applies each of its keys. File I/O is only in `load`.

mod apply;
mod locate;
mod raw;
mod tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method, StatusCode};
use rustls::pki_types::ServerName;

use crate::slot::Slot;

pub(crate) use apply::{Apply, Change, Reconciled};
pub use raw::RawConfig;
pub use tls::{CertificateFiles, TlsCfg};

/// Defaults, in one place so the reference config and the code cannot drift.
pub mod defaults {
    pub const DATA_DIR: &str = "data";
    pub const PUBLIC: &str = "127.0.0.1:8080";
    pub const ADMIN: &str = "127.0.0.1:8099";
    pub const BLUE: &str = "127.0.0.1:8081";
    pub const GREEN: &str = "127.0.0.1:8082";
    pub const ACTIVE: &str = "blue";
    pub const CONNECT_MS: u64 = 1_000;
    pub const RESPONSE_HEADER_MS: u64 = 30_000;
    pub const UPSTREAM_IDLE_MS: u64 = 90_000;
    pub const UPSTREAM_READ_MS: u64 = 60_000;
    pub const SHUTDOWN_GRACE_MS: u64 = 10_000;
    pub const GATE_PASSES: u32 = 3;
    pub const GATE_DEADLINE_MS: u64 = 10_000;
    pub const PROBE_REQUEST_TIMEOUT_MS: u64 = 2_000;
    pub const HEALTH_PATH: &str = "/healthz";
    pub const HEALTH_INTERVAL_MS: u64 = 1_000;
    pub const HEALTH_TIMEOUT_MS: u64 = 1_000;
    pub const HEALTH_FALL: u32 = 3;
    pub const HEALTH_RISE: u32 = 2;
    pub const HEADER_READ_TIMEOUT_MS: u64 = 10_000;
    pub const IDLE_TIMEOUT_MS: u64 = 60_000;
    pub const BODY_TIMEOUT_MS: u64 = 60_000;
    pub const MAX_HEADER_BYTES: usize = 64 * 1024;
    pub const MAX_BODY_BYTES: u64 = 100 * 1024 * 1024;
    pub const MAX_CONNECTIONS: usize = 10_000;
    pub const TLS_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
    pub const STATUS: &str = "127.0.0.1:8098";
    pub const PASSIVE_FALL: u32 = 2;
    pub const TRUSTED_HOPS: &[&str] = &["127.0.0.1", "::1"];
    pub const RETRY: bool = true;
    pub const RETRY_WRITES: bool = false;
    pub const CANARY_COOKIE: &str = "bg_bucket";
    pub const PREVIEW_HEADER: &str = "x-bluegreen-preview";
    pub const PREVIEW_COOKIE: &str = "bg_preview";
    pub const GUARD_WINDOW_MS: u64 = 30_000;
    pub const GUARD_INTERVAL_MS: u64 = 1_000;
    pub const GUARD_MAX_FAILURE_RATIO: f64 = 0.02;
    pub const GUARD_MARGIN: f64 = 0.01;
    pub const GUARD_MIN_REQUESTS: u64 = 20;
    pub const GUARD_BAKE_MS: u64 = 60_000;
    pub const GUARD_ANSWER_FROM_STABLE: bool = true;
    pub const INCIDENT_FAILURES: u64 = 5;
    pub const INCIDENT_QUIET_MS: u64 = 60_000;
    pub const SLA_ALLOWED: &str = "20m";
    pub const SLA_BAD_MINUTE_RATIO: f64 = 0.05;
    pub const NOTIFY_ATTEMPTS: u32 = 5;
    pub const NOTIFY_BACKOFF_MS: u64 = 500;
    pub const NOTIFY_TIMEOUT_MS: u64 = 5_000;
}

/// The validated configuration. Every value here has been checked; nothing
/// downstream needs to re-validate it.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub public: SocketAddr,
    /// The TLS listener, beside the plain one; none when unset.
    pub public_tls: Option<SocketAddr>,
    pub admin: SocketAddr,
    /// The public status page's listener.
    pub status: SocketAddr,
    pub forwarding: Forwarding,
    pub canary: CanaryCfg,
    pub guard: GuardCfg,
    pub incidents: IncidentsCfg,
    pub sla: SlaCfg,
    pub notify: NotifyCfg,
    pub token_file: Option<PathBuf>,
    pub initial_active: Slot,
    /// Each slot's members (upstream addresses), indexed by
    /// `Slot::index()`: one to `pool::MAX_MEMBERS`, distinct.
    pub slot_addrs: [Vec<SocketAddr>; 2],
    /// How each slot's members are reached over TLS (all alike), indexed by
    /// `Slot::index()`; `None`: plain HTTP.
    pub slot_tls: [Option<SlotTls>; 2],
    pub timeouts: Timeouts,
    pub gate: Gate,
    pub health: Health,
    pub limits: Limits,
    pub scenarios: Vec<Scenario>,
    pub tls: TlsCfg,
    /// `[cluster]`: the routing state shared with other proxies in
    /// PostgreSQL; none for a proxy on its own (the state file decides).
    pub cluster: Option<ClusterCfg>,
}

/// A slot reached over TLS (`[slots.blue] tls = true`): HTTP/1.1, the certificate verified.
#[derive(Debug, Clone)]
pub struct SlotTls {
    /// The name the upstream's certificate must be valid for, sent as SNI; unset: the
    /// address's IP (no SNI, and the certificate must name the IP).
    pub server_name: Option<ServerName<'static>>,
    /// The PEM file of the CAs the certificate is verified against; unset: the system's roots.
    pub ca: Option<PathBuf>,
    /// The client configuration that trusts them, made by `Config::load` (which reads the
    /// files); `None` after `Config::parse` alone.
    pub client: Option<Arc<rustls::ClientConfig>>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timeouts {
    pub connect: Duration,
    pub response_header: Duration,
    pub upstream_idle: Duration,
    /// The longest a response body may go without a byte from the upstream
    /// (nginx's `proxy_read_timeout`).
    pub upstream_read: Duration,
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gate {
    pub passes: u32,
    pub deadline: Duration,
    pub request_timeout: Duration,
}

/// Background liveness checks of both slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive failures that mark a slot down.
    pub fall: u32,
    /// Consecutive successes that mark a slot up again.
    pub rise: u32,
    /// Consecutive connect failures or resets on user requests that mark a
    /// slot down at once, without waiting for the next check.
    pub passive_fall: u32,
}

/// How user requests are passed on.
#[derive(Debug, Clone, PartialEq)]
pub struct Forwarding {
    /// Peers whose `X-Forwarded-For` is kept and appended to; any other
    /// client's claim is replaced by its own address.
    pub trusted_hops: Vec<std::net::IpAddr>,
    /// Retry a request once on the other slot when it is safe to.
    pub retry: bool,
    /// Also retry a non-idempotent request reset before any answer; only
    /// for upstreams that deduplicate writes by `x-request-id`.
    pub retry_writes: bool,
}

/// The canary split's cookies and the private preview.
#[derive(Debug, Clone, PartialEq)]
pub struct CanaryCfg {
    pub cookie: String,
    pub preview_header: HeaderName,
    pub preview_cookie: String,
    /// The preview is off while this is unset.
    pub preview_secret: Option<String>,
}

/// The live guard: when a release's user traffic breaches these, it is
/// pulled back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GuardCfg {
    pub window: Duration,
    pub interval: Duration,
    pub max_failure_ratio: f64,
    /// How much worse than the stable release a canary may be.
    pub margin: f64,
    pub min_requests: u64,
    /// How long the new active slot is watched after a switch or promote.
    pub bake: Duration,
    /// A failed request of the watched release (a canary, or the new active
    /// slot in its bake) is sent once to the stable one, when it may be.
    pub answer_from_stable: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IncidentsCfg {
    /// Failed user requests within a minute that open an incident.
    pub failure_threshold: u64,
    /// A quiet period this long closes it.
    pub quiet: Duration,
}

/// Where the proxies of one service keep their shared routing state.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterCfg {
    /// The PostgreSQL server and database, password included.
    pub store: tokio_postgres::Config,
    /// This proxy's name in the heartbeat table and in the changes it
    /// commits; none: the address its public listener is bound to.
    pub name: Option<String>,
}

/// Without the store's password.
impl std::fmt::Debug for ClusterCfg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCfg")
            .field("store", &self.store.get_dbname())
            .field("name", &self.name)
            .finish()
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlaCfg {
    /// Downtime the SLA allows per year.
    pub allowed_downtime: Duration,
    /// A minute is bad when at least this share of user requests failed.
    pub bad_minute_ratio: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NotifyCfg {
    pub webhooks: Vec<Webhook>,
    pub max_attempts: u32,
    pub backoff: Duration,
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Webhook {
    pub url: http::Uri,
    /// When set, bodies are signed with HMAC-SHA256 in a header.
    pub secret: Option<String>,
    /// For an https:// URL: the CA file its certificate is verified against, instead of
    /// the system's roots.
    pub ca: Option<PathBuf>,
}

/// Limits on what a client may send to the public listener.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub body_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_body_bytes: u64,
    pub max_connections: usize,
    /// A TLS client has this long from its accept to the end of its handshake.
    pub tls_handshake_timeout: Duration,
}

/// A probe scenario: steps that do what users do, run in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    pub name: String,
    pub steps: Vec<Step>,
}

/// Which slot a probe step is sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepTarget {
    /// The slot being probed (the one that would take traffic).
    Candidate,
    /// The slot serving users now, so a scenario can write through one
    /// release and read through the other.
    Active,
}

#[derive(Debug, Clone, PartialEq)]
pub enum StepBody {
    None,
    /// Sent as `application/x-www-form-urlencoded`; values may hold placeholders.
    Form(Vec<(String, String)>),
    /// Sent as `application/json`; string values may hold placeholders.
    Json(serde_json::Value),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub name: String,
    pub target: StepTarget,
    pub method: Method,
    pub path: String,
    pub headers: Vec<(HeaderName, String)>,
    pub body: StepBody,
    pub expect_status: StatusCode,
    pub expect_headers: Vec<(HeaderName, String)>,
    pub expect_body: Option<String>,
    pub captures: Vec<(String, Capture)>,
}

/// Where a probe step takes a value for the steps that follow.
#[derive(Debug, Clone, PartialEq)]
pub enum Capture {
    /// A JSON pointer (RFC 6901) into the response body.
    JsonPointer(String),
    Header(HeaderName),
}

/// One problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The dotted key, e.g. `slots.green.addr` or `scenario[1].step[0].path`.
    pub key: String,
    /// 1-based line of the key in the file, when it is in the file.
    pub line: Option<usize>,
    pub message: String,
}

/// Every problem of one file; shown one per line.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", render(.file, .problems))]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

fn render(file: &Path, problems: &[Problem]) -> String {
    let mut out = format!("invalid configuration {}:", file.display());
    for p in problems {
        match p.line {
            Some(line) => out.push_str(&format!(
                "\n  {}:{}: {}: {}",
                file.display(),
                line,
                p.key,
                p.message
            )),
            None => out.push_str(&format!("\n  {}: {}: {}", file.display(), p.key, p.message)),
        }
    }
    out
}

impl Config {
    /// Reads and validates a file, then reads and checks the files it names (certificates,
    /// keys, CA files).
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            problems: vec![Problem {
                key: "(file)".into(),
                line: None,
                message: format!("cannot read: {e}"),
            }],
        })?;
        let mut config = Config::parse(&text).map_err(|problems| ConfigError {
            file: path.to_path_buf(),
            problems,
        })?;
        let mut problems = tls::read_files(&mut config);
        if problems.is_empty() {
            return Ok(config);
        }
        for p in &mut problems {
            p.line = locate::line_of(&text, &p.key);
        }
        Err(ConfigError {
            file: path.to_path_buf(),
            problems,
        })
    }

    /// A pure parse and validation of TOML text: every problem, or a `Config`.
    pub fn parse(text: &str) -> Result<Config, Vec<Problem>> {
        let deserializer =
            toml::Deserializer::parse(text).map_err(|e| vec![syntax_problem(text, &e)])?;
        let mut problems = Vec::new();
        let raw: RawConfig = serde_ignored::deserialize(deserializer, |path| {
            problems.push(Problem {
                key: key_of(&path),
                line: None,
                message: "unknown key (config/proxy.toml lists every key)".into(),
            });
        })
        .map_err(|e| vec![syntax_problem(text, &e)])?;
        match raw.validate() {
            Ok(config) if problems.is_empty() => return Ok(config),
            Ok(_) => {}
            Err(invalid) => problems.extend(invalid),
        }
        for p in &mut problems {
            p.line = locate::line_of(text, &p.key);
        }
        Err(problems)
    }

    pub fn state_file(&self) -> PathBuf {
        self.data_dir.join("state.json")
    }

    pub fn generated_token_file(&self) -> PathBuf {
        self.data_dir.join("admin.token")
    }
}

/// A serde path as our dotted key: `scenario[0].step[1].name`.
fn key_of(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", key_of(parent)),
        Path::Map { parent, key } => {
            let parent = key_of(parent);
            if parent.is_empty() {
                key.clone()
            } else {
                format!("{parent}.{key}")
            }
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => key_of(parent),
    }
}

/// A TOML or type error from serde: toml's message already says what was
/// wrong; the key is taken from its text where serde names it.
fn syntax_problem(text: &str, err: &toml::de::Error) -> Problem {
    let line = err
        .span()
        .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
    let message = err.message().trim().to_string();
    // A value of the wrong type sits at a key; a broken file has none.
    let key = err
        .span()
        .and_then(|span| locate::key_at(text, span.start))
        .unwrap_or_else(|| "(syntax)".into());
    Problem { key, line, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REFERENCE: &str = include_str!("../../config/proxy.toml");

    #[test]
    fn the_reference_config_is_valid_and_says_the_defaults() {
        let config = Config::parse(REFERENCE).expect("reference config is valid");
        let empty = Config::parse("").expect("an empty config takes every default");
        assert_eq!(config.public, empty.public);
        assert_eq!(config.admin, empty.admin);
        assert_eq!(config.slot_addrs, empty.slot_addrs);
        assert_eq!(config.gate.passes, empty.gate.passes);
        assert_eq!(config.gate.deadline, empty.gate.deadline);
        assert_eq!(config.timeouts.connect, empty.timeouts.connect);
        assert_eq!(config.scenarios.len(), 3);
        assert!(empty.scenarios.is_empty());
    }

    #[test]
    fn every_problem_is_reported_with_key_and_line() {
        let text = "[listen]\npublic = \"nonsense\"\n\n[slots]\nactive = \"purple\"\n[slots.green]\naddr = \"127.0.0.1:99999\"\n";
        let problems = Config::parse(text).expect_err("invalid");
        let keys: Vec<_> = problems.iter().map(|p| (p.key.as_str(), p.line)).collect();
        assert!(keys.contains(&("listen.public", Some(2))), "{problems:?}");
        assert!(keys.contains(&("slots.active", Some(5))), "{problems:?}");
        assert!(
            keys.contains(&("slots.green.addr", Some(7))),
            "{problems:?}"
        );
    }

    #[test]
    fn a_slot_takes_one_addr_or_a_pool_in_addrs() {
        let text = "[slots.blue]\naddrs = [\"127.0.0.2:8081\", \"127.0.0.3:8081\"]\n";
        let config = Config::parse(text).expect("a pool is valid");
        let addr = |a: &str| a.parse::<SocketAddr>().expect("addr");
        assert_eq!(
            config.slot_addrs,
            [
                vec![addr("127.0.0.2:8081"), addr("127.0.0.3:8081")],
                vec![addr("127.0.0.1:8082")],
            ]
        );
    }

    #[test]
    fn a_slot_with_both_addr_and_addrs_or_a_bad_pool_is_refused_with_key_and_line() {
        let text = "[slots.blue]\naddr = \"127.0.0.1:1\"\naddrs = [\"127.0.0.1:2\"]\n[slots.green]\naddrs = [\"127.0.0.1:3\", \"nonsense\", \"127.0.0.1:3\"]\n";
        let problems = Config::parse(text).expect_err("invalid");
        let found = |key: &str, line: usize, words: &str| {
            problems
                .iter()
                .any(|p| p.key == key && p.line == Some(line) && p.message.contains(words))
        };
        assert!(found("slots.blue.addrs", 3, "not both"), "{problems:?}");
        assert!(
            found("slots.green.addrs", 5, "\"nonsense\""),
            "{problems:?}"
        );
        assert!(
            found("slots.green.addrs", 5, "listed twice"),
            "{problems:?}"
        );
        let empty = Config::parse("[slots.green]\naddrs = []\n").expect_err("empty");
        assert!(
            empty
                .iter()
                .any(|p| p.key == "slots.green.addrs" && p.message.contains("no address")),
            "{empty:?}"
        );
    }

    #[test]
    fn an_unknown_key_is_an_error_with_its_line() {
        let problems = Config::parse("[gate]\npasses = 3\npasess = 4\n").expect_err("typo");
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].line, Some(3), "{problems:?}");
        assert_eq!(problems[0].key, "gate.pasess", "{problems:?}");
    }

    #[test]
    fn unknown_keys_and_invalid_values_are_reported_together() {
        let text = "[listen]\npublic = \"nowhere\"\n[[scenario]]\nname = \"s\"\n[[scenario.step]]\nname = \"x\"\npath = \"/\"\nexpect_stauts = 200\n";
        let problems = Config::parse(text).expect_err("invalid");
        let keys: Vec<_> = problems.iter().map(|p| (p.key.as_str(), p.line)).collect();
        assert!(keys.contains(&("listen.public", Some(2))), "{problems:?}");
        assert!(
            keys.contains(&("scenario[0].step[0].expect_stauts", Some(8))),
            "{problems:?}"
        );
    }

    #[test]
    fn a_value_of_the_wrong_type_names_its_key() {
        let problems = Config::parse("[limits]\nmax_connections = -5\n").expect_err("negative");
        assert_eq!(problems[0].key, "limits.max_connections", "{problems:?}");
        assert_eq!(problems[0].line, Some(2), "{problems:?}");
        let broken = Config::parse("[limits\n").expect_err("broken");
        assert_eq!(broken[0].key, "(syntax)", "{broken:?}");
    }

    #[test]
    fn scenario_problems_name_the_step() {
        let text = "[[scenario]]\nname = \"x\"\n[[scenario.step]]\nname = \"s\"\npath = \"no-slash\"\nmethod = \"G E T\"\nslot = \"other\"\ncapture = { v = \"cookie:x\" }\n";
        let problems = Config::parse(text).expect_err("invalid");
        let keys: Vec<_> = problems.iter().map(|p| p.key.as_str()).collect();
        for key in [
            "scenario[0].step[0].path",
            "scenario[0].step[0].method",
            "scenario[0].step[0].slot",
            "scenario[0].step[0].capture.v",
        ] {
            assert!(keys.contains(&key), "{key} missing from {problems:?}");
        }
        let path = problems
            .iter()
            .find(|p| p.key.ends_with(".path"))
            .expect("path problem");
        assert_eq!(path.line, Some(5));
    }
}
