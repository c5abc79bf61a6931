//! `Config::parse` never panics: not on arbitrary text, not on TOML-shaped text made of the
//! real keys, not on any mutation of the reference config. Whatever it refuses, it refuses
//! with problems that each name a key and, when they give a line, a line of the text.

use proptest::prelude::*;
use proxy::config::{Config, Problem};

const REFERENCE: &str = include_str!("../../config/proxy.toml");

/// Tables and keys of the reference config, so that generated text reaches validation
/// rather than stopping at an unknown key.
const TABLES: &[&str] = &[
    "",
    "listen",
    "admin",
    "slots",
    "slots.blue",
    "slots.green",
    "timeouts",
    "health",
    "limits",
    "forwarding",
    "canary",
    "guard",
    "incidents",
    "sla",
    "notify",
    "gate",
];
const KEYS: &[&str] = &[
    "data_dir",
    "public",
    "admin",
    "status",
    "token_file",
    "active",
    "addr",
    "connect_ms",
    "response_header_ms",
    "upstream_idle_ms",
    "upstream_read_ms",
    "shutdown_grace_ms",
    "path",
    "interval_ms",
    "timeout_ms",
    "fall",
    "rise",
    "passive_fall",
    "header_read_timeout_ms",
    "idle_timeout_ms",
    "body_timeout_ms",
    "max_header_bytes",
    "max_body_bytes",
    "max_connections",
    "trusted_hops",
    "retry",
    "retry_writes",
    "cookie",
    "preview_header",
    "preview_cookie",
    "preview_secret",
    "window_ms",
    "max_failure_ratio",
    "margin",
    "min_requests",
    "bake_ms",
    "answer_from_stable",
    "failure_threshold",
    "quiet_ms",
    "allowed_downtime",
    "bad_minute_ratio",
    "max_attempts",
    "backoff_ms",
    "passes",
    "deadline_ms",
    "request_timeout_ms",
    "name",
    "method",
    "headers",
    "form",
    "json",
    "expect_status",
    "expect_headers",
    "expect_body",
    "capture",
    "url",
    "secret",
];

/// TOML values of every type, including the edges of each.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        Just("0".to_owned()),
        Just("18446744073709551615".to_owned()),
        Just("99999999999999999999999".to_owned()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        Just("nan".to_owned()),
        Just("-inf".to_owned()),
        any::<bool>().prop_map(|b| b.to_string()),
        "[ -~]{0,30}".prop_map(|s| format!("{s:?}")),
        "\\PC{0,20}".prop_map(|s| format!("{s:?}")),
        Just(r#""127.0.0.1:0""#.to_owned()),
        Just(r#""[::1]:99999""#.to_owned()),
        Just(r#""20m""#.to_owned()),
        Just(r#""999999999999999999d""#.to_owned()),
        Just(r#""/healthz""#.to_owned()),
        Just(r#"["127.0.0.1", "nope"]"#.to_owned()),
        Just(r#"{ a = "b", c = 1 }"#.to_owned()),
        Just("1979-05-27T07:32:00Z".to_owned()),
        Just("[]".to_owned()),
    ]
}

/// One line of TOML-shaped text built from the real tables and keys.
fn line() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => (prop::sample::select(KEYS), value()).prop_map(|(k, v)| format!("{k} = {v}")),
        1 => prop::sample::select(TABLES).prop_map(|t| format!("[{t}]")),
        1 => Just("[[scenario]]".to_owned()),
        1 => Just("[[scenario.step]]".to_owned()),
        1 => Just("[[notify.webhook]]".to_owned()),
        1 => "[ -~]{0,40}",
    ]
}

/// Every problem names its key, says something, and points at a line that exists.
fn check_problems(text: &str, problems: &[Problem]) -> Result<(), TestCaseError> {
    prop_assert!(!problems.is_empty(), "a refusal without a problem");
    let lines = text.lines().count().max(1) + 1;
    for p in problems {
        prop_assert!(!p.key.is_empty(), "a problem without a key: {p:?}");
        prop_assert!(!p.message.is_empty(), "a problem without a message: {p:?}");
        if let Some(line) = p.line {
            prop_assert!(
                (1..=lines).contains(&line),
                "{p:?} points at line {line} of {lines}"
            );
        }
    }
    Ok(())
}

/// A change to the reference text, at a position given as a fraction of its length.
#[derive(Debug, Clone)]
enum Mutation {
    DeleteBytes { at: f64, len: usize },
    InsertText { at: f64, text: String },
    ReplaceLine { at: f64, with: String },
    DuplicateLine { at: f64 },
    SwapLines { a: f64, b: f64 },
    ReplaceValue { at: f64, with: String },
    Truncate { at: f64 },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let at = 0.0..1.0f64;
    prop_oneof![
        (at.clone(), 1..40usize).prop_map(|(at, len)| Mutation::DeleteBytes { at, len }),
        (at.clone(), "\\PC{0,12}").prop_map(|(at, text)| Mutation::InsertText { at, text }),
        (at.clone(), line()).prop_map(|(at, with)| Mutation::ReplaceLine { at, with }),
        at.clone().prop_map(|at| Mutation::DuplicateLine { at }),
        (at.clone(), at.clone()).prop_map(|(a, b)| Mutation::SwapLines { a, b }),
        (at.clone(), value()).prop_map(|(at, with)| Mutation::ReplaceValue { at, with }),
        at.prop_map(|at| Mutation::Truncate { at }),
    ]
}

/// The largest char boundary of `text` at or below the fraction `at` of its length.
fn boundary(text: &str, at: f64) -> usize {
    let mut i = ((text.len() as f64) * at) as usize;
    i = i.min(text.len());
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The line at the fraction `at` of `lines`; `None` when there is no line, since earlier
/// mutations (a truncation, deleted bytes) may have emptied the text.
fn line_at(at: f64, lines: &[String]) -> Option<usize> {
    let last = lines.len().checked_sub(1)?;
    Some((((lines.len() as f64) * at) as usize).min(last))
}

/// `mutation` applied to `text`; a line mutation of a text without lines adds the line it
/// would write, or leaves the text as it is when it has nothing to write.
fn apply(text: &str, mutation: &Mutation) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    match mutation {
        Mutation::DeleteBytes { at, len } => {
            let start = boundary(text, *at);
            let end = boundary(text, ((start + len) as f64 / text.len() as f64).min(1.0));
            format!("{}{}", &text[..start], &text[end.max(start)..])
        }
        Mutation::InsertText { at, text: insert } => {
            let i = boundary(text, *at);
            format!("{}{insert}{}", &text[..i], &text[i..])
        }
        Mutation::ReplaceLine { at, with } => {
            match line_at(*at, &lines) {
                Some(i) => lines[i] = with.clone(),
                None => lines.push(with.clone()),
            }
            lines.join("\n")
        }
        Mutation::DuplicateLine { at } => {
            if let Some(i) = line_at(*at, &lines) {
                let copy = lines[i].clone();
                lines.insert(i, copy);
            }
            lines.join("\n")
        }
        Mutation::SwapLines { a, b } => {
            if let (Some(a), Some(b)) = (line_at(*a, &lines), line_at(*b, &lines)) {
                lines.swap(a, b);
            }
            lines.join("\n")
        }
        Mutation::ReplaceValue { at, with } => {
            // The value of the first `key = value` line at or after the position.
            let start = line_at(*at, &lines).unwrap_or(lines.len());
            if let Some(i) = (start..lines.len()).find(|&i| {
                let l = lines[i].trim_start();
                !l.starts_with('#') && l.contains(" = ")
            }) {
                let key = lines[i].split(" = ").next().unwrap_or_default().to_owned();
                lines[i] = format!("{key} = {with}");
            }
            lines.join("\n")
        }
        Mutation::Truncate { at } => text[..boundary(text, *at)].to_owned(),
    }
}

/// Every numeric key, with its table.
const NUMBERS: &[(&str, &str)] = &[
    ("timeouts", "connect_ms"),
    ("timeouts", "response_header_ms"),
    ("timeouts", "upstream_idle_ms"),
    ("timeouts", "upstream_read_ms"),
    ("timeouts", "shutdown_grace_ms"),
    ("health", "interval_ms"),
    ("health", "timeout_ms"),
    ("health", "fall"),
    ("health", "rise"),
    ("health", "passive_fall"),
    ("limits", "header_read_timeout_ms"),
    ("limits", "idle_timeout_ms"),
    ("limits", "body_timeout_ms"),
    ("limits", "max_header_bytes"),
    ("limits", "max_body_bytes"),
    ("limits", "max_connections"),
    ("guard", "window_ms"),
    ("guard", "interval_ms"),
    ("guard", "min_requests"),
    ("guard", "bake_ms"),
    ("incidents", "failure_threshold"),
    ("incidents", "quiet_ms"),
    ("notify", "max_attempts"),
    ("notify", "backoff_ms"),
    ("notify", "timeout_ms"),
    ("gate", "passes"),
    ("gate", "deadline_ms"),
    ("gate", "request_timeout_ms"),
];

/// Integers with every edge a conversion could trip on.
fn integer() -> impl Strategy<Value = i64> {
    prop_oneof![
        any::<i64>(),
        prop::sample::select(vec![
            0,
            1,
            -1,
            1023,
            1024,
            i64::from(u32::MAX),
            i64::from(u32::MAX) + 1,
            i64::MAX,
            i64::MIN,
        ]),
    ]
}

/// What the running proxy does with an accepted config must not panic either: its
/// deadlines are added to `Instant::now()`, its connection permits are a semaphore.
fn check_usable(config: &Config) -> Result<(), TestCaseError> {
    let durations = [
        config.timeouts.connect,
        config.timeouts.response_header,
        config.timeouts.upstream_idle,
        config.timeouts.shutdown_grace,
        config.health.interval,
        config.health.timeout,
        config.limits.header_read_timeout,
        config.limits.idle_timeout,
        config.limits.body_timeout,
        config.guard.window,
        config.guard.interval,
        config.guard.bake,
        config.incidents.quiet,
        config.notify.backoff,
        config.notify.timeout,
        config.gate.deadline,
        config.gate.request_timeout,
    ];
    let now = std::time::Instant::now();
    for d in durations {
        prop_assert!(now.checked_add(d).is_some(), "{d:?} overflows a deadline");
    }
    prop_assert!(config.limits.max_connections >= 1);
    prop_assert!(
        config.limits.max_connections <= tokio::sync::Semaphore::MAX_PERMITS,
        "max_connections {} cannot be a semaphore",
        config.limits.max_connections
    );
    prop_assert!(config.limits.max_header_bytes >= 1024);
    prop_assert!(config.health.fall >= 1 && config.health.rise >= 1);
    prop_assert!(config.gate.passes >= 1);
    Ok(())
}

#[test]
fn the_reference_config_parses() {
    assert!(Config::parse(REFERENCE).is_ok());
}

/// Found by `every_number_at_its_edges_is_refused_or_usable`: the listener's semaphore
/// panicked at start on a connection limit it cannot hold.
#[test]
fn a_connection_limit_beyond_a_semaphore_is_refused_by_its_key() {
    let text = format!("[limits]\nmax_connections = {}\n", i64::MAX);
    let problems = Config::parse(&text).expect_err("no semaphore holds that many");
    assert!(
        problems
            .iter()
            .any(|p| p.key == "limits.max_connections" && p.line == Some(2)),
        "{problems:?}"
    );
}

/// Found by `mutations_of_the_reference_config_never_panic`: a truncation to nothing, then a
/// line mutation, indexed a line of a text that had none.
#[test]
fn every_mutation_applies_to_a_text_emptied_by_an_earlier_one() {
    let empty = apply(REFERENCE, &Mutation::Truncate { at: 0.0 });
    let line = "[gate]".to_owned();
    let mutations = [
        Mutation::DeleteBytes { at: 0.5, len: 3 },
        Mutation::InsertText {
            at: 0.5,
            text: line.clone(),
        },
        Mutation::ReplaceLine {
            at: 0.5,
            with: line.clone(),
        },
        Mutation::DuplicateLine { at: 0.5 },
        Mutation::SwapLines { a: 0.2, b: 0.8 },
        Mutation::ReplaceValue {
            at: 0.5,
            with: "1".to_owned(),
        },
        Mutation::Truncate { at: 0.5 },
    ];

    let mutated: Vec<String> = mutations.iter().map(|m| apply(&empty, m)).collect();

    assert_eq!(empty, "");
    assert_eq!(mutated, ["", "[gate]", "[gate]", "", "", "", ""]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,300}") {
        if let Err(problems) = Config::parse(&text) {
            check_problems(&text, &problems)?;
        }
    }

    #[test]
    fn arbitrary_bytes_as_text_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let text = String::from_utf8_lossy(&bytes);
        if let Err(problems) = Config::parse(&text) {
            check_problems(&text, &problems)?;
        }
    }

    #[test]
    fn toml_made_of_the_real_keys_never_panics(lines in prop::collection::vec(line(), 0..40)) {
        let text = lines.join("\n");
        match Config::parse(&text) {
            Ok(config) => check_usable(&config)?,
            Err(problems) => check_problems(&text, &problems)?,
        }
    }

    #[test]
    fn every_number_at_its_edges_is_refused_or_usable(
        (table, key) in prop::sample::select(NUMBERS),
        n in integer(),
    ) {
        let text = format!("[{table}]\n{key} = {n}\n");
        match Config::parse(&text) {
            Ok(config) => check_usable(&config)?,
            Err(problems) => {
                check_problems(&text, &problems)?;
                // A value its Rust type cannot hold (a negative count, a u32
                // past 2^32) fails the TOML deserializer, whose problem is
                // keyed "(syntax)" but still points at the line; a value the
                // validation refuses is named by its key.
                let named = problems.iter().any(|p| {
                    p.line == Some(2)
                        && (p.key == format!("{table}.{key}")
                            || (p.key == "(syntax)" && p.message.starts_with("invalid value")))
                });
                prop_assert!(named, "{text:?}: the problem is not named at its key and line: {problems:?}");
            }
        }
    }

    #[test]
    fn mutations_of_the_reference_config_never_panic(
        mutations in prop::collection::vec(mutation(), 1..6),
    ) {
        let mut text = REFERENCE.to_owned();
        for m in &mutations {
            text = apply(&text, m);
        }
        if let Err(problems) = Config::parse(&text) {
            check_problems(&text, &problems)?;
        }
    }
}
