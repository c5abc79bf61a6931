//! Probe scenarios: multi-step HTTP checks that do what users do (create a
//! link, follow it), sent straight to a slot's upstream address (over the
//! slot's own connector: TLS when the slot says so), never through the
//! public listener, and marked with a probe header.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use serde::Serialize;

use crate::config::{Capture, Scenario, Step, StepBody, StepTarget};
use crate::http::upstream::{Connector, Upstream};

/// The header every probe request carries, valued with the scenario's name.
pub static PROBE_HEADER: HeaderName = HeaderName::from_static("x-bluegreen-probe");

/// A probe response body larger than this is a failure, not a memory sink.
const MAX_PROBE_BODY: usize = 1024 * 1024;

/// Where one failed probe went wrong, in words an operator can act on.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ProbeFailure {
    /// The candidate's member (its address) that failed: a slot's release
    /// passes only when every member does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    pub scenario: String,
    pub step: String,
    pub expected: String,
    pub got: String,
}

impl std::fmt::Display for ProbeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(member) = &self.member {
            write!(f, "member {member}: ")?;
        }
        write!(
            f,
            "scenario '{}' step '{}': expected {}, got {}",
            self.scenario, self.step, self.expected, self.got
        )
    }
}

/// Where a probe or a liveness check goes: an upstream's address and how
/// the slot reaches it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    pub connector: Connector,
}

impl Endpoint {
    pub fn of(upstream: &Upstream) -> Endpoint {
        Endpoint {
            addr: upstream.addr,
            connector: upstream.connector.clone(),
        }
    }
}

/// The two upstreams a scenario's steps can be sent to.
#[derive(Debug, Clone)]
pub struct Targets {
    pub candidate: Endpoint,
    /// The slot serving users; `None` when it is down, and then its steps
    /// run against the candidate (a dead release has no rows to check).
    pub active: Option<Endpoint>,
}

/// Sends probe requests, each on a connection of its own: a probe must
/// connect like a new user would, and a stale pooled socket must not fail a
/// healthy release. Cheap to clone.
#[derive(Clone)]
pub struct Prober {
    connect_timeout: Duration,
    request_timeout: Duration,
}

/// Ends a probe connection's task when the exchange that needed it ends,
/// however it ends (a timeout drops the exchange).
struct Driver(tokio::task::JoinHandle<()>);

impl Drop for Driver {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A probe answer, body read in full (bounded).
pub struct ProbeResponse {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Prober {
    pub fn new(connect_timeout: Duration, request_timeout: Duration) -> Prober {
        Prober {
            connect_timeout,
            request_timeout,
        }
    }

    /// Runs every step of `scenario` in order; the first unmet expectation
    /// is the failure.
    pub async fn run(&self, scenario: &Scenario, targets: &Targets) -> Result<(), ProbeFailure> {
        let mut vars = HashMap::new();
        vars.insert("random".to_string(), random_token());
        for step in &scenario.steps {
            let to = match step.target {
                StepTarget::Candidate => &targets.candidate,
                StepTarget::Active => targets.active.as_ref().unwrap_or(&targets.candidate),
            };
            self.run_step(scenario, step, to, &mut vars)
                .await
                .map_err(|(expected, got)| ProbeFailure {
                    member: Some(targets.candidate.addr.to_string()),
                    scenario: scenario.name.clone(),
                    step: step.name.clone(),
                    expected,
                    got,
                })?;
        }
        Ok(())
    }

    async fn run_step(
        &self,
        scenario: &Scenario,
        step: &Step,
        to: &Endpoint,
        vars: &mut HashMap<String, String>,
    ) -> Result<(), (String, String)> {
        let path = substitute(&step.path, vars);
        let mut builder = Request::builder()
            .method(step.method.clone())
            .uri(path)
            .header(header::HOST, to.addr.to_string())
            .header(&PROBE_HEADER, scenario.name.as_str());
        for (name, value) in &step.headers {
            builder = builder.header(name, substitute(value, vars));
        }
        let body = match &step.body {
            StepBody::None => Bytes::new(),
            StepBody::Form(pairs) => {
                let pairs: Vec<(&str, String)> = pairs
                    .iter()
                    .map(|(k, v)| (k.as_str(), substitute(v, vars)))
                    .collect();
                builder = builder.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
                Bytes::from(
                    serde_urlencoded::to_string(pairs)
                        .map_err(|e| ("a form body".to_string(), e.to_string()))?,
                )
            }
            StepBody::Json(value) => {
                builder = builder.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(substitute_json(value, vars).to_string())
            }
        };
        let request = builder.body(Full::new(body)).map_err(|e| {
            (
                "a valid request".to_string(),
                format!("could not build it: {e}"),
            )
        })?;
        let response = self
            .send(to, request)
            .await
            .map_err(|got| (format!("status {}", step.expect_status.as_u16()), got))?;

        if response.status != step.expect_status {
            return Err((
                format!("status {}", step.expect_status.as_u16()),
                format!(
                    "status {}{}",
                    response.status.as_u16(),
                    body_excerpt(&response.body)
                ),
            ));
        }
        for (name, expected) in &step.expect_headers {
            let expected = substitute(expected, vars);
            let got = response
                .headers
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            if got.as_deref() != Some(expected.as_str()) {
                return Err((
                    format!("header {name}: {expected}"),
                    match got {
                        Some(v) => format!("header {name}: {v}"),
                        None => format!("no {name} header"),
                    },
                ));
            }
        }
        if let Some(text) = &step.expect_body {
            let text = substitute(text, vars);
            let body = String::from_utf8_lossy(&response.body);
            if !body.contains(&text) {
                return Err((
                    format!("body containing {text:?}"),
                    format!(
                        "status {}{}",
                        response.status.as_u16(),
                        body_excerpt(&response.body)
                    ),
                ));
            }
        }
        for (var, capture) in &step.captures {
            let value = match capture {
                Capture::JsonPointer(pointer) => {
                    serde_json::from_slice::<serde_json::Value>(&response.body)
                        .ok()
                        .and_then(|json| json.pointer(pointer).cloned())
                        .map(|v| match v {
                            serde_json::Value::String(s) => s,
                            other => other.to_string(),
                        })
                }
                Capture::Header(name) => response
                    .headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
            };
            match value {
                Some(v) => {
                    vars.insert(var.clone(), v);
                }
                None => {
                    return Err((
                        format!("a value for {{{var}}} from {}", describe(capture)),
                        format!("nothing there{}", body_excerpt(&response.body)),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Sends one request (its target in origin form) on a new connection
    /// and reads the whole (bounded) answer within the request timeout; the
    /// error is what came back instead, in words.
    pub async fn send(
        &self,
        to: &Endpoint,
        request: Request<Full<Bytes>>,
    ) -> Result<ProbeResponse, String> {
        let exchange = async {
            let stream = to
                .connector
                .connect(to.addr, self.connect_timeout)
                .await
                .map_err(|e| format!("no connection ({e})"))?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| format!("no connection ({e})"))?;
            let _driver = Driver(tokio::spawn(async move {
                let _ = connection.await;
            }));
            let response = sender
                .send_request(request)
                .await
                .map_err(|e| format!("no response ({e})"))?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_PROBE_BODY)
                .collect()
                .await
                .map_err(|e| {
                    format!(
                        "status {} and an unreadable body ({e})",
                        parts.status.as_u16()
                    )
                })?
                .to_bytes();
            Ok(ProbeResponse {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(self.request_timeout, exchange)
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "no answer within {} ms",
                    self.request_timeout.as_millis()
                ))
            })
    }

    /// A plain GET, for liveness checks.
    pub async fn get(
        &self,
        to: &Endpoint,
        path: &str,
        timeout: Duration,
    ) -> Result<ProbeResponse, String> {
        let request = Request::builder()
            .method(Method::GET)
            .uri(path)
            .header(header::HOST, to.addr.to_string())
            .header(&PROBE_HEADER, HeaderValue::from_static("health"))
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        tokio::time::timeout(timeout, self.send(to, request))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {} ms", timeout.as_millis())))
    }
}

fn describe(capture: &Capture) -> String {
    match capture {
        Capture::JsonPointer(p) => format!("json:{p}"),
        Capture::Header(h) => format!("header:{h}"),
    }
}

/// The start of a body as readable text: tags dropped and whitespace
/// collapsed, so an HTML error page reads as its message.
fn body_excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut plain = String::with_capacity(text.len().min(4096));
    let mut in_tag = false;
    for c in text.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                plain.push(' ');
            }
            _ if !in_tag => plain.push(c),
            _ => {}
        }
    }
    let words: Vec<&str> = plain.split_whitespace().collect();
    if words.is_empty() {
        return String::new();
    }
    let joined = words.join(" ");
    let excerpt: String = joined.chars().take(160).collect();
    format!(", body: {excerpt:?}")
}

/// A value that is new for each run of a scenario: URL- and code-safe.
fn random_token() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..12)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Replaces each `{name}` whose name is a known variable; other braces stay.
pub fn substitute(text: &str, vars: &HashMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find('}').map(|close| (&after[..close], close)) {
            Some((name, close)) if vars.contains_key(name) => {
                out.push_str(&vars[name]);
                rest = &after[close + 1..];
            }
            _ => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

fn substitute_json(value: &serde_json::Value, vars: &HashMap<String, String>) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(s) => Value::String(substitute(s, vars)),
        Value::Array(items) => {
            Value::Array(items.iter().map(|v| substitute_json(v, vars)).collect())
        }
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), substitute_json(v, vars)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substitutes_known_variables_only() {
        let vars: HashMap<String, String> = [
            ("random".to_string(), "r1".to_string()),
            ("code".to_string(), "c".to_string()),
        ]
        .into();
        assert_eq!(substitute("/probe-{random}/{code}", &vars), "/probe-r1/c");
        assert_eq!(substitute("{unknown} {random", &vars), "{unknown} {random");
        assert_eq!(substitute("{}{{random}}", &vars), "{}{r1}");
    }

    #[test]
    fn an_html_body_reads_as_its_text() {
        let html =
            b"<!doctype html>\n<html><body>\n<h1>Error</h1>\n<p>internal   error</p></body></html>";
        assert_eq!(body_excerpt(html), ", body: \"Error internal error\"");
        assert_eq!(body_excerpt(b""), "");
    }

    #[test]
    fn random_tokens_differ_and_are_url_safe() {
        let a = random_token();
        assert_ne!(a, random_token());
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
    }
}
