//! The configuration exactly as written in TOML, and its validation into the
//! typed `Config`. Unknown keys are collected while parsing (see
//! `Config::parse`) and reported with the other problems: a typo is an error,
//! never a silent default.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderName, Method, StatusCode};
use serde::Deserialize;

use super::{
    CanaryCfg, Capture, Config, Forwarding, Gate, GuardCfg, Health, IncidentsCfg, Limits,
    NotifyCfg, Problem, Scenario, SlaCfg, Step, StepBody, StepTarget, Timeouts, Webhook,
    defaults as d,
};
use crate::slot::Slot;

#[derive(Debug, Default, Deserialize)]
pub struct RawConfig {
    data_dir: Option<PathBuf>,
    #[serde(default)]
    listen: RawListen,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    slots: RawSlots,
    #[serde(default)]
    timeouts: RawTimeouts,
    #[serde(default)]
    gate: RawGate,
    #[serde(default)]
    health: RawHealth,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    forwarding: RawForwarding,
    #[serde(default)]
    canary: RawCanary,
    #[serde(default)]
    guard: RawGuard,
    #[serde(default)]
    incidents: RawIncidents,
    #[serde(default)]
    sla: RawSla,
    #[serde(default)]
    notify: RawNotify,
    #[serde(default)]
    scenario: Vec<RawScenario>,
    #[serde(default)]
    tls: super::tls::RawTls,
}

#[derive(Debug, Default, Deserialize)]
struct RawForwarding {
    trusted_hops: Option<Vec<String>>,
    retry: Option<bool>,
    retry_writes: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
struct RawCanary {
    cookie: Option<String>,
    preview_header: Option<String>,
    preview_cookie: Option<String>,
    preview_secret: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RawGuard {
    window_ms: Option<u64>,
    interval_ms: Option<u64>,
    max_failure_ratio: Option<f64>,
    margin: Option<f64>,
    min_requests: Option<u64>,
    bake_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
struct RawIncidents {
    failure_threshold: Option<u64>,
    quiet_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
struct RawSla {
    allowed_downtime: Option<String>,
    bad_minute_ratio: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
struct RawNotify {
    #[serde(default)]
    webhook: Vec<RawWebhook>,
    max_attempts: Option<u32>,
    backoff_ms: Option<u64>,
    timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct RawWebhook {
    url: Option<String>,
    secret: Option<String>,
    ca: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
struct RawListen {
    public: Option<String>,
    public_tls: Option<String>,
    admin: Option<String>,
    status: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RawAdmin {
    token_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
struct RawSlots {
    active: Option<String>,
    #[serde(default)]
    blue: RawSlot,
    #[serde(default)]
    green: RawSlot,
}

#[derive(Debug, Default, Deserialize)]
struct RawSlot {
    addr: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct RawTimeouts {
    connect_ms: Option<u64>,
    response_header_ms: Option<u64>,
    upstream_idle_ms: Option<u64>,
    shutdown_grace_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
struct RawGate {
    passes: Option<u32>,
    deadline_ms: Option<u64>,
    request_timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
struct RawHealth {
    passive_fall: Option<u32>,
    path: Option<String>,
    interval_ms: Option<u64>,
    timeout_ms: Option<u64>,
    fall: Option<u32>,
    rise: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
struct RawLimits {
    header_read_timeout_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    body_timeout_ms: Option<u64>,
    max_header_bytes: Option<usize>,
    max_body_bytes: Option<u64>,
    max_connections: Option<usize>,
    tls_handshake_timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct RawScenario {
    name: Option<String>,
    #[serde(default)]
    step: Vec<RawStep>,
}

#[derive(Debug, Deserialize)]
struct RawStep {
    name: Option<String>,
    slot: Option<String>,
    method: Option<String>,
    path: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    form: Option<BTreeMap<String, String>>,
    json: Option<toml::Value>,
    expect_status: Option<u16>,
    #[serde(default)]
    expect_headers: BTreeMap<String, String>,
    expect_body: Option<String>,
    #[serde(default)]
    capture: BTreeMap<String, String>,
}

/// Collects problems while validating, so one pass reports all of them.
#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            key: key.into(),
            line: None,
            message: message.into(),
        });
    }

    fn addr(&mut self, key: &str, value: Option<&str>, default: &str) -> SocketAddr {
        let text = value.unwrap_or(default);
        match text.parse::<SocketAddr>() {
            Ok(addr) => addr,
            Err(_) => {
                self.push(
                    key,
                    format!("{text:?} is not an IP address with a port, like \"127.0.0.1:8080\""),
                );
                default.parse().expect("defaults are valid addresses")
            }
        }
    }

    fn millis(&mut self, key: &str, value: Option<u64>, default: u64) -> Duration {
        let ms = value.unwrap_or(default);
        if ms == 0 {
            self.push(key, "must be at least 1 millisecond");
        }
        Duration::from_millis(ms.max(1))
    }

    fn at_least_one<T: Copy + PartialOrd + From<u8>>(
        &mut self,
        key: &str,
        value: Option<T>,
        default: T,
    ) -> T {
        let v = value.unwrap_or(default);
        if v < T::from(1) {
            self.push(key, "must be at least 1");
            return default;
        }
        v
    }
}

impl RawConfig {
    /// Checks every value and builds the typed config, or reports every
    /// problem (without line numbers: the caller locates them in the text).
    pub fn validate(self) -> Result<Config, Vec<Problem>> {
        let mut p = Problems::default();

        let public = p.addr("listen.public", self.listen.public.as_deref(), d::PUBLIC);
        let admin = p.addr("listen.admin", self.listen.admin.as_deref(), d::ADMIN);
        let status = p.addr("listen.status", self.listen.status.as_deref(), d::STATUS);
        let blue = p.addr("slots.blue.addr", self.slots.blue.addr.as_deref(), d::BLUE);
        let green = p.addr(
            "slots.green.addr",
            self.slots.green.addr.as_deref(),
            d::GREEN,
        );
        if public == admin && public.port() != 0 {
            p.push("listen.admin", "must differ from listen.public");
        }
        let (public_tls, tls) =
            self.tls
                .validate(self.listen.public_tls.as_deref(), public, &mut p.0);

        let initial_active = match self
            .slots
            .active
            .as_deref()
            .unwrap_or("blue")
            .parse::<Slot>()
        {
            Ok(slot) => slot,
            Err(e) => {
                p.push("slots.active", e);
                Slot::Blue
            }
        };

        let t = &self.timeouts;
        let timeouts = Timeouts {
            connect: p.millis("timeouts.connect_ms", t.connect_ms, d::CONNECT_MS),
            response_header: p.millis(
                "timeouts.response_header_ms",
                t.response_header_ms,
                d::RESPONSE_HEADER_MS,
            ),
            upstream_idle: p.millis(
                "timeouts.upstream_idle_ms",
                t.upstream_idle_ms,
                d::UPSTREAM_IDLE_MS,
            ),
            shutdown_grace: p.millis(
                "timeouts.shutdown_grace_ms",
                t.shutdown_grace_ms,
                d::SHUTDOWN_GRACE_MS,
            ),
        };

        let g = &self.gate;
        let gate = Gate {
            passes: p.at_least_one("gate.passes", g.passes, d::GATE_PASSES),
            deadline: p.millis("gate.deadline_ms", g.deadline_ms, d::GATE_DEADLINE_MS),
            request_timeout: p.millis(
                "gate.request_timeout_ms",
                g.request_timeout_ms,
                d::PROBE_REQUEST_TIMEOUT_MS,
            ),
        };

        let h = &self.health;
        let health_path = h.path.clone().unwrap_or_else(|| d::HEALTH_PATH.into());
        if !health_path.starts_with('/') {
            p.push("health.path", "must start with \"/\"");
        }
        let health = Health {
            path: health_path,
            interval: p.millis("health.interval_ms", h.interval_ms, d::HEALTH_INTERVAL_MS),
            timeout: p.millis("health.timeout_ms", h.timeout_ms, d::HEALTH_TIMEOUT_MS),
            fall: p.at_least_one("health.fall", h.fall, d::HEALTH_FALL),
            rise: p.at_least_one("health.rise", h.rise, d::HEALTH_RISE),
            passive_fall: p.at_least_one("health.passive_fall", h.passive_fall, d::PASSIVE_FALL),
        };

        let mut trusted_hops = Vec::new();
        for (i, hop) in self
            .forwarding
            .trusted_hops
            .clone()
            .unwrap_or_else(|| d::TRUSTED_HOPS.iter().map(|s| s.to_string()).collect())
            .iter()
            .enumerate()
        {
            match hop.parse::<std::net::IpAddr>() {
                Ok(ip) => trusted_hops.push(ip),
                Err(_) => p.push(
                    format!("forwarding.trusted_hops[{i}]"),
                    format!("{hop:?} is not an IP address"),
                ),
            }
        }
        let forwarding = Forwarding {
            trusted_hops,
            retry: self.forwarding.retry.unwrap_or(true),
            retry_writes: self.forwarding.retry_writes.unwrap_or(false),
        };

        let c = &self.canary;
        let header_name =
            |p: &mut Problems, key: &str, v: &Option<String>, default: &str| -> HeaderName {
                match HeaderName::from_bytes(v.as_deref().unwrap_or(default).as_bytes()) {
                    Ok(h) => h,
                    Err(_) => {
                        p.push(key, "not a header name");
                        HeaderName::from_bytes(default.as_bytes())
                            .expect("default header names are valid")
                    }
                }
            };
        let cookie_name =
            |p: &mut Problems, key: &str, v: &Option<String>, default: &str| -> String {
                let name = v.clone().unwrap_or_else(|| default.to_string());
                if name.is_empty()
                    || !name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                {
                    p.push(key, "a cookie name is letters, digits, '_' and '-'");
                }
                name
            };
        let canary = CanaryCfg {
            cookie: cookie_name(&mut p, "canary.cookie", &c.cookie, d::CANARY_COOKIE),
            preview_header: header_name(
                &mut p,
                "canary.preview_header",
                &c.preview_header,
                d::PREVIEW_HEADER,
            ),
            preview_cookie: cookie_name(
                &mut p,
                "canary.preview_cookie",
                &c.preview_cookie,
                d::PREVIEW_COOKIE,
            ),
            preview_secret: c.preview_secret.clone().filter(|s| !s.is_empty()),
        };
        if let Some(secret) = &canary.preview_secret
            && secret.len() < 16
        {
            p.push(
                "canary.preview_secret",
                "at least 16 characters: it is a password",
            );
        }

        let gd = &self.guard;
        let ratio = |p: &mut Problems, key: &str, v: Option<f64>, default: f64| -> f64 {
            let r = v.unwrap_or(default);
            if !(0.0..=1.0).contains(&r) {
                p.push(key, "a ratio between 0 and 1, like 0.02 for 2%");
                return default;
            }
            r
        };
        let guard = GuardCfg {
            window: p.millis("guard.window_ms", gd.window_ms, d::GUARD_WINDOW_MS),
            interval: p.millis("guard.interval_ms", gd.interval_ms, d::GUARD_INTERVAL_MS),
            max_failure_ratio: ratio(
                &mut p,
                "guard.max_failure_ratio",
                gd.max_failure_ratio,
                d::GUARD_MAX_FAILURE_RATIO,
            ),
            margin: ratio(&mut p, "guard.margin", gd.margin, d::GUARD_MARGIN),
            min_requests: p.at_least_one(
                "guard.min_requests",
                gd.min_requests,
                d::GUARD_MIN_REQUESTS,
            ),
            bake: Duration::from_millis(gd.bake_ms.unwrap_or(d::GUARD_BAKE_MS)),
        };
        if guard.window > Duration::from_secs(crate::http::traffic::MAX_WINDOW_SECS) {
            p.push(
                "guard.window_ms",
                format!("at most {} seconds", crate::http::traffic::MAX_WINDOW_SECS),
            );
        }

        let incidents = IncidentsCfg {
            failure_threshold: p.at_least_one(
                "incidents.failure_threshold",
                self.incidents.failure_threshold,
                d::INCIDENT_FAILURES,
            ),
            quiet: p.millis(
                "incidents.quiet_ms",
                self.incidents.quiet_ms,
                d::INCIDENT_QUIET_MS,
            ),
        };

        let allowed_text = self
            .sla
            .allowed_downtime
            .clone()
            .unwrap_or_else(|| d::SLA_ALLOWED.to_string());
        let allowed_downtime = match parse_duration(&allowed_text) {
            Some(d) => d,
            None => {
                p.push(
                    "sla.allowed_downtime",
                    format!("{allowed_text:?} is not a duration like \"20m\", \"1h\" or \"90s\""),
                );
                Duration::from_secs(20 * 60)
            }
        };
        let sla = SlaCfg {
            allowed_downtime,
            bad_minute_ratio: ratio(
                &mut p,
                "sla.bad_minute_ratio",
                self.sla.bad_minute_ratio,
                d::SLA_BAD_MINUTE_RATIO,
            ),
        };

        let mut webhooks = Vec::new();
        for (i, w) in self.notify.webhook.iter().enumerate() {
            let key = format!("notify.webhook[{i}].url");
            match w.url.as_deref().map(|u| u.parse::<http::Uri>()) {
                Some(Ok(uri))
                    if matches!(uri.scheme_str(), Some("http" | "https"))
                        && uri.authority().is_some() =>
                {
                    if w.ca.is_some() && uri.scheme_str() != Some("https") {
                        p.push(
                            format!("notify.webhook[{i}].ca"),
                            "only for an https:// URL",
                        );
                    }
                    webhooks.push(Webhook {
                        url: uri,
                        secret: w.secret.clone(),
                        ca: w.ca.clone(),
                    })
                }
                Some(Ok(_)) => p.push(key, "an http:// or https:// URL with a host"),
                Some(Err(_)) => p.push(key, "not a URL"),
                None => p.push(key, "required"),
            }
        }
        let notify = NotifyCfg {
            webhooks,
            max_attempts: p.at_least_one(
                "notify.max_attempts",
                self.notify.max_attempts,
                d::NOTIFY_ATTEMPTS,
            ),
            backoff: p.millis(
                "notify.backoff_ms",
                self.notify.backoff_ms,
                d::NOTIFY_BACKOFF_MS,
            ),
            timeout: p.millis(
                "notify.timeout_ms",
                self.notify.timeout_ms,
                d::NOTIFY_TIMEOUT_MS,
            ),
        };

        let l = &self.limits;
        let limits = Limits {
            header_read_timeout: p.millis(
                "limits.header_read_timeout_ms",
                l.header_read_timeout_ms,
                d::HEADER_READ_TIMEOUT_MS,
            ),
            idle_timeout: p.millis(
                "limits.idle_timeout_ms",
                l.idle_timeout_ms,
                d::IDLE_TIMEOUT_MS,
            ),
            body_timeout: p.millis(
                "limits.body_timeout_ms",
                l.body_timeout_ms,
                d::BODY_TIMEOUT_MS,
            ),
            max_header_bytes: l.max_header_bytes.unwrap_or(d::MAX_HEADER_BYTES),
            max_body_bytes: l.max_body_bytes.unwrap_or(d::MAX_BODY_BYTES),
            max_connections: p.at_least_one(
                "limits.max_connections",
                l.max_connections,
                d::MAX_CONNECTIONS,
            ),
            tls_handshake_timeout: p.millis(
                "limits.tls_handshake_timeout_ms",
                l.tls_handshake_timeout_ms,
                d::TLS_HANDSHAKE_TIMEOUT_MS,
            ),
        };
        if limits.max_header_bytes < 1024 {
            p.push("limits.max_header_bytes", "must be at least 1024");
        }
        // The connection permits are a semaphore, which cannot hold more.
        if limits.max_connections > tokio::sync::Semaphore::MAX_PERMITS {
            p.push(
                "limits.max_connections",
                format!("at most {}", tokio::sync::Semaphore::MAX_PERMITS),
            );
        }

        let mut scenarios = Vec::with_capacity(self.scenario.len());
        let mut names = Vec::new();
        for (i, raw) in self.scenario.into_iter().enumerate() {
            let key = format!("scenario[{i}]");
            if let Some(s) = raw.validate(&key, &mut p) {
                if names.contains(&s.name) {
                    p.push(
                        format!("{key}.name"),
                        format!("duplicate scenario name {:?}", s.name),
                    );
                }
                names.push(s.name.clone());
                scenarios.push(s);
            }
        }

        if !p.0.is_empty() {
            return Err(p.0);
        }
        Ok(Config {
            data_dir: self.data_dir.unwrap_or_else(|| PathBuf::from(d::DATA_DIR)),
            public,
            public_tls,
            admin,
            status,
            forwarding,
            canary,
            guard,
            incidents,
            sla,
            notify,
            token_file: self.admin.token_file,
            initial_active,
            slot_addrs: [blue, green],
            timeouts,
            gate,
            health,
            limits,
            scenarios,
            tls,
        })
    }
}

impl RawScenario {
    fn validate(self, key: &str, p: &mut Problems) -> Option<Scenario> {
        let name = match self.name {
            Some(n) if !n.trim().is_empty() => n,
            _ => {
                p.push(format!("{key}.name"), "every scenario needs a name");
                String::new()
            }
        };
        if self.step.is_empty() {
            p.push(
                format!("{key}.step"),
                "a scenario needs at least one [[scenario.step]]",
            );
        }
        let steps: Vec<Step> = self
            .step
            .into_iter()
            .enumerate()
            .filter_map(|(j, s)| s.validate(&format!("{key}.step[{j}]"), p))
            .collect();
        Some(Scenario { name, steps })
    }
}

impl RawStep {
    fn validate(self, key: &str, p: &mut Problems) -> Option<Step> {
        let name = self.name.unwrap_or_else(|| {
            p.push(format!("{key}.name"), "every step needs a name");
            String::new()
        });
        let target = match self.slot.as_deref() {
            None | Some("candidate") => StepTarget::Candidate,
            Some("active") => StepTarget::Active,
            Some(other) => {
                p.push(
                    format!("{key}.slot"),
                    format!("{other:?} is not \"candidate\" or \"active\""),
                );
                StepTarget::Candidate
            }
        };
        let method = match Method::from_bytes(self.method.as_deref().unwrap_or("GET").as_bytes()) {
            Ok(m) => m,
            Err(_) => {
                p.push(format!("{key}.method"), "not an HTTP method");
                Method::GET
            }
        };
        let path = self.path.unwrap_or_default();
        if !path.starts_with('/') {
            p.push(format!("{key}.path"), "required, and must start with \"/\"");
        }
        let headers = header_pairs(&format!("{key}.headers"), self.headers, p);
        let body = match (self.form, self.json) {
            (Some(_), Some(_)) => {
                p.push(
                    format!("{key}.json"),
                    "a step has either form or json, not both",
                );
                StepBody::None
            }
            (Some(form), None) => StepBody::Form(form.into_iter().collect()),
            (None, Some(json)) => match serde_json::to_value(&json) {
                Ok(v) => StepBody::Json(v),
                Err(e) => {
                    p.push(
                        format!("{key}.json"),
                        format!("cannot be sent as JSON: {e}"),
                    );
                    StepBody::None
                }
            },
            (None, None) => StepBody::None,
        };
        let expect_status = match StatusCode::from_u16(self.expect_status.unwrap_or(200)) {
            Ok(s) => s,
            Err(_) => {
                p.push(
                    format!("{key}.expect_status"),
                    "not an HTTP status code (100-999)",
                );
                StatusCode::OK
            }
        };
        let expect_headers = header_pairs(&format!("{key}.expect_headers"), self.expect_headers, p);
        let mut captures = Vec::new();
        for (var, source) in self.capture {
            let ckey = format!("{key}.capture.{var}");
            if let Some(ptr) = source.strip_prefix("json:") {
                if !(ptr.is_empty() || ptr.starts_with('/')) {
                    p.push(
                        ckey,
                        "a JSON pointer starts with \"/\", like \"json:/code\"",
                    );
                } else {
                    captures.push((var, Capture::JsonPointer(ptr.to_string())));
                }
            } else if let Some(name) = source.strip_prefix("header:") {
                match HeaderName::from_bytes(name.as_bytes()) {
                    Ok(h) => captures.push((var, Capture::Header(h))),
                    Err(_) => p.push(ckey, format!("{name:?} is not a header name")),
                }
            } else {
                p.push(ckey, "must be \"json:/pointer\" or \"header:name\"");
            }
        }
        Some(Step {
            name,
            target,
            method,
            path,
            headers,
            body,
            expect_status,
            expect_headers,
            expect_body: self.expect_body,
            captures,
        })
    }
}

fn header_pairs(
    key: &str,
    map: BTreeMap<String, String>,
    p: &mut Problems,
) -> Vec<(HeaderName, String)> {
    let mut out = Vec::with_capacity(map.len());
    for (name, value) in map {
        match HeaderName::from_bytes(name.as_bytes()) {
            Ok(h) => out.push((h, value)),
            Err(_) => p.push(format!("{key}.{name}"), "not a header name"),
        }
    }
    out
}

/// "20m", "1h", "90s", "1h30m", "500ms": a small, strict duration syntax.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text.is_empty() {
        return None;
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.checked_mul(60)?),
            "h" => Duration::from_secs(n.checked_mul(3600)?),
            "d" => Duration::from_secs(n.checked_mul(86_400)?),
            _ => return None,
        };
        total = total.checked_add(unit)?;
        rest = &rest[unit_len..];
    }
    Some(total)
}
