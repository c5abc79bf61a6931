//! Reloading the configuration (SIGHUP, `POST /reload`): a valid change takes effect for
//! new requests while users see no error; an invalid file is refused with every problem
//! named by key and line, and the running config and routing stay exactly as they were.

use std::path::Path;
use std::time::Duration;

use e2e::client::{REQUEST_TIMEOUT, raw_exchange, raw_exchange_on, release_of};
use e2e::recorder::RecorderStack;
use e2e::{Proxy, TestStack, Traffic, eventually, http_client};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::io::AsyncReadExt as _;

const SECRET: &str = "preview-secret-0123456789";
const OTHER_SECRET: &str = "another-secret-9876543210";
const RELOADS: usize = 10;
const TIMEOUT: Duration = Duration::from_secs(20);

/// The id of the running process started with `config` as an argument: the harness keeps
/// it private, and every test's config path is unique.
fn pid_started_with(config: &Path) -> u32 {
    let wanted = config.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/proc")
        .expect("/proc lists the processes")
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            cmdline
                .split(|b| *b == 0)
                .any(|arg| arg == wanted)
                .then_some(pid)
        })
        .next()
        .unwrap_or_else(|| panic!("no process runs with {}", config.display()))
}

async fn sighup(pid: u32) {
    let status = tokio::process::Command::new("kill")
        .arg("-HUP")
        .arg(pid.to_string())
        .status()
        .await
        .expect("kill runs");
    assert!(status.success(), "kill -HUP {pid} failed: {status}");
}

/// `text` with a table appended (tables after the `[[scenario]]` arrays are top level).
fn with_tables(text: &str, tables: &str) -> String {
    format!("{text}\n{tables}\n")
}

async fn post_reload(proxy: &Proxy) -> (StatusCode, Value) {
    proxy.admin(Method::POST, "/reload", None).await
}

/// The release that answers a preview request (the secret in the preview header).
async fn preview_release(client: &reqwest::Client, stack: &TestStack, secret: &str) -> String {
    let response = client
        .get(stack.proxy.public_url("/healthz"))
        .header("x-bluegreen-preview", secret)
        .send()
        .await
        .expect("the proxy answers");
    assert_eq!(response.status(), StatusCode::OK);
    release_of(&response)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn post_reload_applies_a_valid_change_to_new_requests_and_drops_none() {
    // Arrange
    let stack = TestStack::start().await;
    let config = stack.proxy.config_path().to_owned();
    let original = std::fs::read_to_string(&config).expect("the config is readable");
    let versions = [
        with_tables(&original, &format!("[canary]\npreview_secret = {SECRET:?}")),
        with_tables(
            &original,
            &format!("[canary]\npreview_secret = {OTHER_SECRET:?}"),
        ),
    ];
    let client = http_client(REQUEST_TIMEOUT);
    let before = preview_release(&client, &stack, SECRET).await;
    let traffic = Traffic::start(&stack.base(), 4);
    assert!(
        traffic.wait_for_more(10, TIMEOUT).await,
        "the clients got no traffic through the proxy"
    );

    // Act: reloads back and forth while users keep coming.
    let mut refused = Vec::new();
    for n in 0..RELOADS {
        std::fs::write(&config, &versions[n % 2]).expect("the config is writable");
        let (code, body) = post_reload(&stack.proxy).await;
        if code != StatusCode::OK {
            refused.push(format!("reload #{n}: {code} {body}"));
        }
        assert!(
            traffic.wait_for_more(4, TIMEOUT).await,
            "the clients stalled after reload #{n}"
        );
    }
    let report = traffic.stop().await;
    // The last version loaded has the other secret.
    let with_old_secret = preview_release(&client, &stack, SECRET).await;
    let with_new_secret = preview_release(&client, &stack, OTHER_SECRET).await;

    // Assert
    assert_eq!(before, "v1", "the preview is off before the reload");
    assert!(
        refused.is_empty(),
        "valid reloads were refused: {refused:#?}"
    );
    report.assert_no_failure("during the reloads");
    assert_eq!(
        with_new_secret, "v2",
        "the reloaded secret reaches the candidate"
    );
    assert_eq!(with_old_secret, "v1", "the replaced secret no longer does");
    assert_eq!(stack.proxy.active().await, "blue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sighup_applies_a_valid_change_to_new_requests_and_drops_none() {
    // Arrange: loopback is trusted by default, so a client's X-Forwarded-For is kept.
    let stack = RecorderStack::start(|proxy| proxy).await;
    let config = stack.proxy.config_path().to_owned();
    let original = std::fs::read_to_string(&config).expect("the config is readable");
    let pid = pid_started_with(&config);
    let public = stack.proxy.public_addr();
    let request = "GET /xff HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\nX-Forwarded-For: 203.0.113.7\r\n\r\n";
    let xff_of_last = |stack: &RecorderStack| {
        stack
            .recorder
            .user_requests()
            .iter()
            .rfind(|r| r.target() == "/xff")
            .map(|r| r.header_all("x-forwarded-for").join(", "))
    };
    let first = raw_exchange(public, request).await.map(|r| r.status);
    let before = xff_of_last(&stack);
    // Users during the reload: raw requests in a loop until told to stop.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let users = tokio::spawn({
        let stop = std::sync::Arc::clone(&stop);
        async move {
            let mut answers = Vec::new();
            for _ in 0..100_000 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let answer = raw_exchange(
                    public,
                    "GET /user HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n",
                )
                .await;
                answers.push(answer.map(|r| r.status));
            }
            answers
        }
    });

    // Act
    std::fs::write(
        &config,
        with_tables(&original, "[forwarding]\ntrusted_hops = []"),
    )
    .expect("the config is writable");
    sighup(pid).await;
    let replaced = eventually(
        || async {
            let _ = raw_exchange(public, request).await;
            xff_of_last(&stack).as_deref() == Some("127.0.0.1")
        },
        TIMEOUT,
    )
    .await;
    let last = xff_of_last(&stack);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let answers = users.await.expect("the user task ran");

    // Assert
    assert_eq!(first, Ok(200));
    assert_eq!(
        before.as_deref(),
        Some("203.0.113.7, 127.0.0.1"),
        "trusted before"
    );
    assert!(
        replaced,
        "after SIGHUP the client's X-Forwarded-For is still kept: {last:?}\n{}",
        stack.proxy.log_tail()
    );
    let failed: Vec<_> = answers.iter().filter(|a| **a != Ok(200)).collect();
    assert!(!answers.is_empty(), "no user request ran during the reload");
    assert!(
        failed.is_empty(),
        "{} of {} user requests failed during the reload: {failed:?}",
        failed.len(),
        answers.len()
    );
}

/// The parts of the status that a reload must not touch.
fn routing(status: &Value) -> Value {
    serde_json::json!({
        "active": status["active"],
        "serving": status["serving"],
        "previous": status["previous"],
        "last_switch": status["last_switch"],
        "canary": status["canary"],
        "blue": [status["slots"]["blue"]["addr"], status["slots"]["blue"]["healthy"]],
        "green": [status["slots"]["green"]["addr"], status["slots"]["green"]["healthy"]],
    })
}

/// The 1-based number of the line of `text` that starts with `prefix`, searching from the
/// line that starts with `after`.
fn line_of(text: &str, after: &str, prefix: &str) -> usize {
    let start = text
        .lines()
        .position(|line| line.starts_with(after))
        .unwrap_or_else(|| panic!("no line starts with {after:?}"));
    text.lines()
        .enumerate()
        .skip(start)
        .find(|(_, line)| line.starts_with(prefix))
        .map(|(i, _)| i + 1)
        .unwrap_or_else(|| panic!("no line starts with {prefix:?} after {after:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_file_is_refused_with_every_problem_and_changes_nothing() {
    // Arrange: a running config with a preview secret, and routing that moved once.
    let stack = TestStack::start().await;
    let config = stack.proxy.config_path().to_owned();
    let original = std::fs::read_to_string(&config).expect("the config is readable");
    let valid = with_tables(&original, &format!("[canary]\npreview_secret = {SECRET:?}"));
    std::fs::write(&config, &valid).expect("the config is writable");
    let (code, body) = post_reload(&stack.proxy).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let (code, body) = stack.proxy.switch("green").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let client = http_client(REQUEST_TIMEOUT);
    let before = routing(&stack.proxy.status().await);
    let invalid = with_tables(
        &original,
        "[canary]\n\
         preview_secret = \"too-short\"\n\
         \n\
         [forwarding]\n\
         trusted_hops = [\"not-an-ip\"]\n\
         \n\
         [limits]\n\
         max_conections = 5\n\
         \n\
         [health]\n\
         fall = 0",
    );
    let expected = [
        (
            "canary.preview_secret",
            line_of(&invalid, "[canary]", "preview_secret"),
        ),
        (
            "forwarding.trusted_hops[0]",
            line_of(&invalid, "[forwarding]", "trusted_hops"),
        ),
        (
            "limits.max_conections",
            line_of(&invalid, "[limits]", "max_conections"),
        ),
        ("health.fall", line_of(&invalid, "[health]", "fall")),
    ];
    std::fs::write(&config, &invalid).expect("the config is writable");

    // Act
    let (code, refusal) = post_reload(&stack.proxy).await;
    let after_post = routing(&stack.proxy.status().await);
    sighup(pid_started_with(&config)).await;
    let hup_refused = eventually(
        || async { stack.proxy.log_tail().matches("reload refused").count() >= 2 },
        TIMEOUT,
    )
    .await;
    let after_hup = routing(&stack.proxy.status().await);
    // The running config still has the old secret: the preview reaches the candidate (blue,
    // now that green is active).
    let preview = client
        .get(stack.proxy.public_url("/healthz"))
        .header("x-bluegreen-preview", SECRET)
        .send()
        .await
        .expect("the proxy answers");

    // Assert
    assert_eq!(code, StatusCode::BAD_REQUEST, "{refusal}");
    assert!(refusal["error"].is_string(), "{refusal}");
    let problems: Vec<(String, Option<u64>)> = refusal["problems"]
        .as_array()
        .unwrap_or_else(|| panic!("no problem list: {refusal}"))
        .iter()
        .map(|p| {
            (
                p["key"].as_str().unwrap_or_default().to_owned(),
                p["line"].as_u64(),
            )
        })
        .collect();
    for (key, line) in expected {
        assert!(
            problems.contains(&(key.to_owned(), Some(line as u64))),
            "{key} at line {line} is not among the problems: {problems:?}"
        );
    }
    assert_eq!(
        after_post, before,
        "a refused POST /reload changed the routing"
    );
    assert!(
        hup_refused,
        "the SIGHUP reload was not refused:\n{}",
        stack.proxy.log_tail()
    );
    assert_eq!(
        after_hup, before,
        "a refused SIGHUP reload changed the routing"
    );
    assert_eq!(preview.status(), StatusCode::OK);
    assert_eq!(
        release_of(&preview),
        "v1",
        "the running preview secret changed after a refused reload"
    );
    // A valid file is taken again afterwards: the refusals left reloading working.
    std::fs::write(&config, &original).expect("the config is writable");
    let (code, body) = post_reload(&stack.proxy).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let no_preview = client
        .get(stack.proxy.public_url("/healthz"))
        .header("x-bluegreen-preview", SECRET)
        .send()
        .await
        .expect("the proxy answers");
    assert_eq!(release_of(&no_preview), "v2", "the preview is off again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_connection_kept_open_through_a_takeover_is_answered_then_closed() {
    // Arrange: a keep-alive admin connection, answered once and idle, as a release script's
    // client keeps it between two polls; a change only a new process applies.
    let stack = RecorderStack::start(|proxy| proxy).await;
    let ask = format!(
        "GET /status HTTP/1.1\r\nhost: admin\r\nauthorization: Bearer {}\r\n\r\n",
        stack.proxy.token()
    );
    let mut kept = tokio::net::TcpStream::connect(stack.proxy.admin_addr())
        .await
        .expect("the admin listener accepts");
    let first = raw_exchange_on(&mut kept, &ask).await.expect("an answer");
    assert_eq!(first.status, 200, "{first:?}");
    let config = stack.proxy.config_path().to_owned();
    let original = std::fs::read_to_string(&config).expect("the config is readable");
    std::fs::write(
        &config,
        with_tables(&original, "[limits]\nmax_connections = 5"),
    )
    .expect("the config is writable");

    // Act: the takeover, then the next request on the kept connection at once.
    let (code, body) = post_reload(&stack.proxy).await;
    let next = raw_exchange_on(&mut kept, &ask).await;
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(REQUEST_TIMEOUT, kept.read_to_end(&mut rest)).await;

    // Assert
    assert_eq!(code, StatusCode::OK, "{body}");
    let successor = body["took_over"]
        .as_u64()
        .map(|pid| e2e::proxy::Adopted::new(u32::try_from(pid).expect("a pid fits in u32")))
        .unwrap_or_else(|| panic!("no process took over: {body}"));
    let next = next.expect("the kept connection's next request is answered, not cut");
    assert_eq!(next.status, 200, "{next:?}");
    assert_eq!(next.header("connection"), Some("close"), "{next:?}");
    assert!(
        matches!(closed, Ok(Ok(0))),
        "the old process closes the connection after that answer: {closed:?}"
    );
    assert!(successor.stop().await, "the successor did not stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_applies_the_settings_read_at_start_by_a_takeover() {
    // Arrange: the listener's limits and the checker's settings are read once, at start.
    let stack = RecorderStack::start(|proxy| proxy).await;
    let config = stack.proxy.config_path().to_owned();
    let original = std::fs::read_to_string(&config).expect("the config is readable");
    std::fs::write(
        &config,
        with_tables(
            &original,
            "[limits]\nmax_connections = 5\nbody_timeout_ms = 5000\n\n[health]\nfall = 5",
        ),
    )
    .expect("the config is writable");

    // Act
    let (code, body) = post_reload(&stack.proxy).await;
    let successor = body["took_over"]
        .as_u64()
        .map(|pid| e2e::proxy::Adopted::new(u32::try_from(pid).expect("a pid fits in u32")));
    let (_, events) = stack
        .proxy
        .admin(Method::GET, "/events?limit=1000", None)
        .await;

    // Assert
    assert_eq!(code, StatusCode::OK, "{body}");
    let successor = successor.unwrap_or_else(|| panic!("no process took over: {body}"));
    let reason = events["events"]
        .as_array()
        .and_then(|events| events.iter().rfind(|e| e["kind"] == "config_reload"))
        .and_then(|e| e["reason"].as_str())
        .unwrap_or_else(|| panic!("no config_reload event: {events}"))
        .to_owned();
    assert!(
        reason.contains("a new process takes over for")
            && reason.contains("limits.")
            && reason.contains("health."),
        "the reload did not say what went by a takeover: {reason:?}"
    );
    let changes = body["changes"].as_array().cloned().unwrap_or_default();
    for (key, apply, via) in [
        ("limits.max_connections", "restart", Some("takeover")),
        ("limits.body_timeout_ms", "live", None),
        ("health.fall", "restart", Some("takeover")),
    ] {
        assert!(
            changes
                .iter()
                .any(|c| c["key"] == key && c["apply"] == apply && c["via"].as_str() == via),
            "the answer does not say that {key} went {apply} via {via:?}: {body}"
        );
    }
    // The new process answers on the same admin listener, and a second reload of the same
    // file finds nothing left to apply.
    let (code, body) = post_reload(&stack.proxy).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["changes"], serde_json::json!([]), "{body}");
    assert!(successor.stop().await, "the successor did not stop");
}
