//! `GET /metrics` on the admin listener: strict OpenMetrics text, whose counters move exactly
//! with the user traffic sent (probes are not users) and with the gate's refusals.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use e2e::client::release_of;
use e2e::{Shortener, TestStack, eventually, http_client, unique};
use reqwest::header::CONTENT_TYPE;
use reqwest::{Method, StatusCode};
use serde_json::json;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// User requests sent between two scrapes.
const USER_REQUESTS: usize = 40;
/// Blue is checked every second.
const HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// A sample's labels, sorted by name.
type Labels = BTreeMap<String, String>;

/// A parsed exposition: every sample by name and labels.
#[derive(Debug, Default)]
struct Exposition {
    /// Family name -> type.
    types: BTreeMap<String, String>,
    samples: BTreeMap<(String, Labels), f64>,
}

impl Exposition {
    /// The value of sample `name` with exactly `labels`, if present.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.samples.get(&(name.to_owned(), labels)).copied()
    }

    /// [`Self::get`], or a panic naming the missing sample.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no sample {name}{labels:?} in {:#?}", self.samples))
    }
}

/// Parses OpenMetrics text strictly: only `# HELP`, `# TYPE` and `# UNIT` comments; every
/// family has one HELP and one TYPE before its samples, and its samples are contiguous and
/// named for its type; every sample is `name{labels} value` or `name value` with a float
/// value and no timestamp; no sample is repeated; histogram buckets are cumulative and end
/// at `+Inf` = `_count`; the text ends with `# EOF` and a newline.
fn parse(text: &str) -> Result<Exposition, String> {
    let body = text
        .strip_suffix("# EOF\n")
        .or_else(|| text.strip_suffix("# EOF"))
        .ok_or("the exposition does not end with `# EOF`")?;
    let mut out = Exposition::default();
    let mut helps = BTreeSet::new();
    // The family whose samples may follow, and whether its TYPE has been seen.
    let mut current: Option<String> = None;
    let mut closed = BTreeSet::new();
    for (n, line) in body.lines().enumerate() {
        let at = |why: String| format!("line {}: {why}: {line:?}", n + 1);
        if let Some(comment) = line.strip_prefix("# ") {
            let mut parts = comment.splitn(3, ' ');
            let keyword = parts.next().unwrap_or_default();
            let family = parts
                .next()
                .ok_or_else(|| at("a comment without a name".into()))?;
            let rest = parts.next().unwrap_or_default();
            check_name(family).map_err(&at)?;
            if current.as_deref() != Some(family) {
                if let Some(previous) = current.take() {
                    closed.insert(previous);
                }
                if closed.contains(family) {
                    return Err(at(format!("family {family} appears twice")));
                }
                current = Some(family.to_owned());
            }
            match keyword {
                "HELP" => {
                    if !helps.insert(family.to_owned()) {
                        return Err(at("a second HELP".into()));
                    }
                }
                "TYPE" => {
                    let known = [
                        "counter",
                        "gauge",
                        "histogram",
                        "summary",
                        "info",
                        "stateset",
                    ];
                    if !known.contains(&rest) && rest != "unknown" && rest != "gaugehistogram" {
                        return Err(at(format!("unknown type {rest:?}")));
                    }
                    if out
                        .types
                        .insert(family.to_owned(), rest.to_owned())
                        .is_some()
                    {
                        return Err(at("a second TYPE".into()));
                    }
                }
                "UNIT" => {}
                other => return Err(at(format!("unknown comment {other:?}"))),
            }
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            return Err(at("not a sample, a HELP, a TYPE or a UNIT".into()));
        }
        let (name, labels, value) = parse_sample(line).map_err(&at)?;
        let family = current
            .as_deref()
            .ok_or_else(|| at("a sample before any family".into()))?;
        let kind = out
            .types
            .get(family)
            .ok_or_else(|| at(format!("a sample of {family} before its TYPE")))?;
        if !helps.contains(family) {
            return Err(at(format!("a sample of {family} before its HELP")));
        }
        let suffixes: &[&str] = match kind.as_str() {
            "counter" => &["_total", "_created"],
            "gauge" | "unknown" => &[""],
            "histogram" => &["_bucket", "_sum", "_count", "_created"],
            _ => &[""],
        };
        let suffix = name
            .strip_prefix(family)
            .filter(|s| suffixes.contains(s))
            .ok_or_else(|| at(format!("{name} is not a sample of the {kind} {family}")))?;
        if suffix == "_bucket" && !labels.contains_key("le") {
            return Err(at("a bucket without `le`".into()));
        }
        if kind == "counter" && (value.is_nan() || value < 0.0) {
            return Err(at("a negative counter".into()));
        }
        if out.samples.insert((name.clone(), labels), value).is_some() {
            return Err(at("a repeated sample".into()));
        }
    }
    for family in out.types.keys() {
        if !helps.contains(family) {
            return Err(format!("family {family} has a TYPE but no HELP"));
        }
    }
    for family in &helps {
        if !out.types.contains_key(family) {
            return Err(format!("family {family} has a HELP but no TYPE"));
        }
    }
    check_histograms(&out)?;
    Ok(out)
}

/// `name{labels} value` or `name value`.
fn parse_sample(line: &str) -> Result<(String, Labels, f64), String> {
    let name_end = line.find(['{', ' ']).ok_or("a sample without a value")?;
    let name = &line[..name_end];
    check_name(name)?;
    let mut rest = &line[name_end..];
    let mut labels = Labels::new();
    if let Some(inner) = rest.strip_prefix('{') {
        rest = inner;
        loop {
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = rest.find('=').ok_or("a label without `=`")?;
            let label = &rest[..eq];
            check_name(label)?;
            rest = rest[eq + 1..]
                .strip_prefix('"')
                .ok_or("a label value without quotes")?;
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let end = loop {
                match chars.next() {
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, 'n')) => value.push('\n'),
                        _ => return Err("a bad escape in a label value".into()),
                    },
                    Some((_, c)) => value.push(c),
                    None => return Err("an unterminated label value".into()),
                }
            };
            if labels.insert(label.to_owned(), value).is_some() {
                return Err(format!("label {label} twice"));
            }
            rest = &rest[end + 1..];
            if let Some(after) = rest.strip_prefix(',') {
                rest = after;
            } else if !rest.starts_with('}') {
                return Err("labels not separated by `,`".into());
            }
        }
    }
    let value = rest
        .strip_prefix(' ')
        .ok_or("no single space before the value")?;
    if value.contains(' ') {
        return Err("a timestamp or trailing text after the value".into());
    }
    let number = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        _ => value
            .parse::<f64>()
            .map_err(|_| format!("value {value:?} is not a float"))?,
    };
    Ok((name.to_owned(), labels, number))
}

fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
        Ok(())
    } else {
        Err(format!("{name:?} is not a metric or label name"))
    }
}

/// Every histogram series: buckets cumulative in `le` order, a `+Inf` bucket equal to `_count`.
fn check_histograms(out: &Exposition) -> Result<(), String> {
    for (family, kind) in &out.types {
        if kind != "histogram" {
            continue;
        }
        let bucket_name = format!("{family}_bucket");
        let mut series: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
        for ((name, labels), value) in &out.samples {
            if *name == bucket_name {
                let mut rest = labels.clone();
                let le = rest.remove("le").unwrap_or_default();
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse::<f64>()
                        .map_err(|_| format!("{family}: le={le:?} is not a float"))?
                };
                series.entry(rest).or_default().push((le, *value));
            }
        }
        for (labels, mut buckets) in series {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            if buckets.windows(2).any(|w| w[1].1 < w[0].1) {
                return Err(format!("{family}{labels:?}: buckets are not cumulative"));
            }
            let last = buckets.last().copied().unwrap_or((0.0, 0.0));
            let count = out
                .samples
                .get(&(format!("{family}_count"), labels.clone()));
            if last.0 != f64::INFINITY || count != Some(&last.1) {
                return Err(format!(
                    "{family}{labels:?}: the +Inf bucket {last:?} is not _count {count:?}"
                ));
            }
        }
    }
    Ok(())
}

/// Scrapes `GET /metrics` with the token; checks the content type and parses the body.
async fn scrape(stack: &TestStack) -> (Exposition, String) {
    let response = stack
        .proxy
        .admin_request(Method::GET, "/metrics")
        .bearer_auth(stack.proxy.token())
        .send()
        .await
        .expect("the admin listener answers");
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = response.text().await.expect("the metrics body is text");
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "the body ends with # EOF, so it is OpenMetrics, and says so: {content_type}"
    );
    let exposition = parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    (exposition, text)
}

const REQUESTS: &str = "bluegreen_requests_total";

/// Whether a shortener's access log shows a `GET /healthz` after its last other request.
fn health_check_came_last(log: &str) -> bool {
    let requests: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("shortener::access_log"))
        .collect();
    let is_health = |line: &&str| line.contains("method=GET path=\"/healthz\"");
    match requests.iter().rposition(|line| !is_health(line)) {
        Some(last_other) => requests[last_other + 1..].iter().any(is_health),
        None => false,
    }
}

fn requests(m: &Exposition, slot: &str, class: &str) -> f64 {
    m.value(REQUESTS, &[("slot", slot), ("class", class)])
}

#[test]
fn the_parser_refuses_what_is_not_openmetrics() {
    let good = "# HELP a_b A thing.\n# TYPE a_b counter\na_b_total{x=\"1\"} 2\n# EOF\n";
    assert!(parse(good).is_ok());
    for bad in [
        "# HELP a_b A thing.\n# TYPE a_b counter\na_b_total{x=\"1\"} 2\n",
        "# TYPE a_b counter\na_b_total 2\n# EOF\n",
        "# HELP a_b A thing.\na_b_total 2\n# EOF\n",
        "# HELP a_b A thing.\n# TYPE a_b counter\na_b 2\n# EOF\n",
        "# HELP a_b A thing.\n# TYPE a_b counter\na_b_total two\n# EOF\n",
        "# HELP a_b A thing.\n# TYPE a_b counter\na_b_total 2 1700000000\n# EOF\n",
        "# HELP a_b A thing.\n# TYPE a_b counter\na_b_total{x=1} 2\n# EOF\n",
        "# HELP a_b A thing.\n# TYPE a_b counter\na_b_total 2\na_b_total 3\n# EOF\n",
        "# HELP a_b A thing.\n# TYPE a_b counter\n# a comment\na_b_total 2\n# EOF\n",
        "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\nh_sum 1\n# EOF\n",
    ] {
        assert!(parse(bad).is_err(), "accepted: {bad:?}");
    }
}

#[tokio::test]
async fn user_requests_move_the_request_counters_by_exactly_their_number_and_probes_do_not() {
    // Arrange
    let stack = TestStack::start().await;
    let client = http_client(REQUEST_TIMEOUT);
    let (before, _) = scrape(&stack).await;

    // Act: users create links on blue (201, 2xx); then a gate run probes both slots (2xx and
    // 3xx answers from blue to the cross-release steps, all kinds from green), and the canary
    // it let in at 0% is aborted again; then a health check of blue (a GET /healthz, which no
    // user sent) comes in before the second scrape.
    for _ in 0..USER_REQUESTS {
        let url = format!("https://e2e.example/{}", unique("metrics"));
        let response = client
            .post(stack.proxy.public_url("/api/links"))
            .json(&json!({ "url": url }))
            .send()
            .await
            .expect("the proxy answers");
        assert_eq!(response.status(), StatusCode::CREATED, "{response:?}");
        assert_eq!(release_of(&response), "v1");
    }
    let (code, body) = stack
        .proxy
        .admin(
            Method::POST,
            "/canary",
            Some(json!({ "slot": "green", "percent": 0 })),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let (code, body) = stack.proxy.admin(Method::POST, "/abort", None).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert!(
        eventually(
            || async { health_check_came_last(&stack.blue.log_tail()) },
            HEALTH_CHECK_TIMEOUT
        )
        .await,
        "no health check reached blue after the users and the probes:\n{}",
        stack.blue.log_tail()
    );
    let (after, text) = scrape(&stack).await;

    // Assert
    let n = USER_REQUESTS as f64;
    assert_eq!(
        requests(&after, "blue", "2xx") - requests(&before, "blue", "2xx"),
        n,
        "blue's 2xx counter moves by the {USER_REQUESTS} user requests only:\n{text}"
    );
    for class in ["1xx", "3xx", "4xx", "5xx"] {
        assert_eq!(
            requests(&after, "blue", class),
            requests(&before, "blue", class),
            "blue {class}:\n{text}"
        );
    }
    for class in ["1xx", "2xx", "3xx", "4xx", "5xx"] {
        assert_eq!(
            requests(&after, "green", class),
            requests(&before, "green", class),
            "no user went to green, only probes did: {class}:\n{text}"
        );
    }
    let count = |m: &Exposition| {
        m.value(
            "bluegreen_request_duration_seconds_count",
            &[("slot", "blue")],
        )
    };
    assert_eq!(count(&after) - count(&before), n, "{text}");
    let aborts = |m: &Exposition| m.value("bluegreen_canary_aborts_total", &[]);
    assert_eq!(aborts(&after) - aborts(&before), 1.0, "{text}");
    assert_eq!(after.value("bluegreen_canary_percent", &[]), 0.0, "{text}");
    assert_eq!(
        after.value("bluegreen_active_slot", &[("slot", "blue")]),
        1.0
    );
    assert_eq!(
        after.value("bluegreen_active_slot", &[("slot", "green")]),
        0.0
    );
    for scenario in ["health", "create-and-follow", "cross-release"] {
        assert!(
            after
                .get(
                    "bluegreen_probe_results_total",
                    &[("scenario", scenario), ("result", "pass")]
                )
                .is_some_and(|v| v >= 1.0),
            "the gate's passed scenario {scenario} is counted:\n{text}"
        );
    }
}

#[tokio::test]
async fn a_refused_switch_is_counted_with_the_probe_result_of_each_scenario_that_ran() {
    // Arrange
    let stack = TestStack::builder()
        .green(Shortener::builder().release("v2").fault("create-500"))
        .start()
        .await;
    let (before, _) = scrape(&stack).await;

    // Act
    let (code, body) = stack.proxy.switch("green").await;
    let (after, text) = scrape(&stack).await;

    // Assert
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["failure"]["scenario"], "create-and-follow", "{body}");
    let counter = |m: &Exposition, name: &str| m.get(name, &[]).unwrap_or(0.0);
    assert_eq!(
        counter(&after, "bluegreen_refused_switches_total")
            - counter(&before, "bluegreen_refused_switches_total"),
        1.0,
        "{text}"
    );
    assert_eq!(
        counter(&after, "bluegreen_switches_total"),
        counter(&before, "bluegreen_switches_total"),
        "{text}"
    );
    assert_eq!(
        after.value("bluegreen_active_slot", &[("slot", "blue")]),
        1.0
    );
    let probe = |scenario: &str, result: &str| {
        after
            .get(
                "bluegreen_probe_results_total",
                &[("scenario", scenario), ("result", result)],
            )
            .unwrap_or(0.0)
    };
    // The gate runs its scenarios in order: `health` passed, `create-and-follow` failed at
    // its create step, and `cross-release` never ran, so it has no result at all.
    assert!(probe("health", "pass") >= 1.0, "{text}");
    assert_eq!(probe("health", "fail"), 0.0, "{text}");
    assert_eq!(probe("create-and-follow", "fail"), 1.0, "{text}");
    assert_eq!(probe("create-and-follow", "pass"), 0.0, "{text}");
    assert_eq!(
        probe("cross-release", "pass") + probe("cross-release", "fail"),
        0.0,
        "a scenario the gate never ran has no result:\n{text}"
    );
}
