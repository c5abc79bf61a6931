//! `[[scenario]]`: the probe scenarios the gate runs, each a list of steps
//! that do what users do.

use std::collections::BTreeMap;

use http::{HeaderName, Method, StatusCode};
use serde::Deserialize;

use super::problems::Problems;
use crate::config::{Capture, Scenario, Step, StepBody, StepTarget};

#[derive(Debug, Deserialize)]
pub(super) struct RawScenario {
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

/// Every scenario, with names unique across them.
pub(super) fn validate(raw: Vec<RawScenario>, p: &mut Problems) -> Vec<Scenario> {
    let mut scenarios: Vec<Scenario> = Vec::with_capacity(raw.len());
    for (i, raw) in raw.into_iter().enumerate() {
        let key = format!("scenario[{i}]");
        let s = raw.validate(&key, p);
        if scenarios.iter().any(|seen| seen.name == s.name) {
            p.push(
                format!("{key}.name"),
                format!("duplicate scenario name {:?}", s.name),
            );
        }
        scenarios.push(s);
    }
    scenarios
}

impl RawScenario {
    fn validate(self, key: &str, p: &mut Problems) -> Scenario {
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
        let steps = self
            .step
            .into_iter()
            .enumerate()
            .map(|(j, s)| s.validate(&format!("{key}.step[{j}]"), p))
            .collect();
        Scenario { name, steps }
    }
}

impl RawStep {
    fn validate(self, key: &str, p: &mut Problems) -> Step {
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
        Step {
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
        }
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
