//! Failover: when the active slot dies, users go to the other slot if (and only if) its
//! release passed the gate, without seeing an error; the recorded active slot never changes
//! by itself, and users go back once the active slot is up again. (`active_slot` covers a
//! slow active with an ungated green.)

use std::path::Path;
use std::time::Duration;

use e2e::client::{REQUEST_TIMEOUT, release_of};
use e2e::recorder::Recorder;
use e2e::{Proxy, Shortener, TestStack, Traffic, eventually, http_client};
use reqwest::{Method, StatusCode};
use serde_json::Value;

const CLIENTS: usize = 4;
/// Long enough for the default checker (every 1 s, fall 3, rise 2) to reach a verdict on a
/// busy 2-core machine.
const VERDICT_TIMEOUT: Duration = Duration::from_secs(20);
const TRAFFIC_TIMEOUT: Duration = Duration::from_secs(20);
/// Writes are resent to the other slot (the shortener deduplicates by x-request-id); no bake
/// guard, so that nothing but an operator moves the active slot.
const FAILOVER_TOML: &str = "[forwarding]\nretry_writes = true\n\n[guard]\nbake_ms = 0";

/// Switches to green and back, so that both releases passed the gate.
async fn vet_both(stack: &TestStack) {
    for to in ["green", "blue"] {
        let (code, body) = stack.proxy.switch(to).await;
        assert_eq!(
            code,
            StatusCode::OK,
            "the switch to {to} was refused: {body}"
        );
    }
}

async fn serving(stack: &TestStack) -> String {
    stack.proxy.status().await["serving"]
        .as_str()
        .unwrap_or("(none)")
        .to_owned()
}

/// `n` user requests for /healthz through the proxy: each one's status and release.
async fn health_answers(stack: &TestStack, n: usize) -> Vec<(StatusCode, String)> {
    let client = http_client(REQUEST_TIMEOUT);
    let mut answers = Vec::with_capacity(n);
    for _ in 0..n {
        let response = client
            .get(stack.proxy.public_url("/healthz"))
            .send()
            .await
            .expect("the proxy answers");
        answers.push((response.status(), release_of(&response)));
    }
    answers
}

/// The kind and the target slot (`to`) of every event so far, oldest first.
async fn event_kinds(stack: &TestStack) -> Vec<(String, String)> {
    let (code, body) = stack
        .proxy
        .admin(Method::GET, "/events?limit=1000", None)
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    body["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .map(|e| {
                    (
                        e["kind"].as_str().unwrap_or_default().to_owned(),
                        e["to"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_active_fails_over_to_the_vetted_slot_without_an_error_and_back_when_it_returns() {
    // Arrange
    let mut stack = TestStack::builder()
        .proxy(|proxy| proxy.extra_toml(FAILOVER_TOML))
        .start()
        .await;
    vet_both(&stack).await;
    let traffic = Traffic::start(&stack.base(), CLIENTS);
    assert!(
        traffic.wait_for_more(20, TRAFFIC_TIMEOUT).await,
        "the clients got no traffic through the proxy"
    );

    // Act 1: blue crashes.
    stack.blue.sigkill().await;
    let failed_over = eventually(
        || async { serving(&stack).await == "green" },
        VERDICT_TIMEOUT,
    )
    .await;
    let during_outage = traffic.wait_for_more(20, TRAFFIC_TIMEOUT).await;
    let status_during = stack.proxy.status().await;

    // Act 2: blue comes back on its port.
    stack.blue.restart().await;
    let failed_back = eventually(
        || async { serving(&stack).await == "blue" },
        VERDICT_TIMEOUT,
    )
    .await;
    let after_return = traffic.wait_for_more(20, TRAFFIC_TIMEOUT).await;
    let report = traffic.stop().await;
    let client = http_client(REQUEST_TIMEOUT);
    let answer = client
        .get(stack.proxy.public_url("/healthz"))
        .send()
        .await
        .expect("the proxy answers");

    // Assert
    assert!(failed_over, "users never went to green: {status_during}");
    assert!(during_outage, "the clients stalled while blue was down");
    assert_eq!(
        status_during["active"], "blue",
        "the active slot moved by itself: {status_during}"
    );
    assert_eq!(
        status_during["slots"]["blue"]["healthy"], false,
        "{status_during}"
    );
    assert!(
        failed_back,
        "users never went back to blue: {}",
        stack.proxy.status().await
    );
    assert!(after_return, "the clients stalled after blue came back");
    println!(
        "{} requests, per release {:?}",
        report.requests, report.by_release
    );
    report.assert_no_failure("through the failover");
    assert!(
        report.by_release.get("v2").copied().unwrap_or(0) > 0,
        "green never served: {:?}",
        report.by_release
    );
    assert_eq!(release_of(&answer), "v1", "blue takes its traffic again");
    assert_eq!(stack.proxy.active().await, "blue");
    // Only flips are logged: one down and one up for blue, one failover and one failback.
    let flips = |kinds: &[(String, String)]| {
        let count =
            |kind: &str, to: &str| kinds.iter().filter(|(k, t)| k == kind && t == to).count();
        (
            count("upstream_down", "blue"),
            count("upstream_up", "blue"),
            count("failover", "green"),
            count("failback", "blue"),
        )
    };
    let logged = eventually(
        || async { flips(&event_kinds(&stack).await) == (1, 1, 1, 1) },
        VERDICT_TIMEOUT,
    )
    .await;
    let kinds = event_kinds(&stack).await;
    assert!(
        logged,
        "not exactly one flip each way: {:?} in {kinds:?}",
        flips(&kinds)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_detection_marks_a_dead_active_down_without_waiting_for_a_check() {
    // Arrange: the checker looks once at start and not again for ten minutes.
    let mut stack = TestStack::builder()
        .proxy(|proxy| {
            proxy.extra_toml(&format!(
                "{FAILOVER_TOML}\n\n[health]\ninterval_ms = 600000\npassive_fall = 2"
            ))
        })
        .start()
        .await;
    vet_both(&stack).await;

    // Act
    stack.blue.sigkill().await;
    let answers = health_answers(&stack, 3).await;
    let status = stack.proxy.status().await;

    // Assert
    for (code, release) in &answers {
        assert_eq!(*code, StatusCode::OK, "a request failed: {answers:?}");
        assert_eq!(release, "v2", "retried on green: {answers:?}");
    }
    assert_eq!(status["slots"]["blue"]["healthy"], false, "{status}");
    assert_eq!(status["serving"], "green", "{status}");
    assert_eq!(status["active"], "blue", "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ungated_green_never_takes_users_when_the_active_dies() {
    // Arrange: green runs, healthy, but never passed the gate.
    let mut stack = TestStack::builder()
        .proxy(|proxy| proxy.extra_toml(FAILOVER_TOML))
        .start()
        .await;

    // Act
    stack.blue.sigkill().await;
    let marked_down = eventually(
        || async { stack.proxy.status().await["slots"]["blue"]["healthy"] == false },
        VERDICT_TIMEOUT,
    )
    .await;
    let answers = health_answers(&stack, 3).await;
    let status = stack.proxy.status().await;

    // Assert
    assert!(marked_down, "blue was never marked down: {status}");
    assert_eq!(status["slots"]["green"]["healthy"], true, "{status}");
    for (code, release) in &answers {
        assert_eq!(*code, StatusCode::BAD_GATEWAY, "{answers:?}");
        assert_ne!(
            release, "v2",
            "an ungated release served a user: {answers:?}"
        );
    }
    assert_eq!(status["serving"], "blue", "{status}");
    assert_eq!(status["active"], "blue", "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vetted_slot_pointed_at_a_new_release_is_no_failover_target_until_gated() {
    // Arrange: green passed the gate, then its address is changed to an ungated v3.
    let mut stack = TestStack::builder()
        .proxy(|proxy| proxy.extra_toml(FAILOVER_TOML))
        .start()
        .await;
    vet_both(&stack).await;
    let v3 = Shortener::builder()
        .release("v3")
        .db(stack.dir.path().join("links.db"))
        .start(stack.dir.path())
        .await;
    let (code, body) = stack.proxy.put_slot("green", v3.addr()).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let client = http_client(REQUEST_TIMEOUT);

    // Act
    stack.blue.sigkill().await;
    let marked_down = eventually(
        || async { stack.proxy.status().await["slots"]["blue"]["healthy"] == false },
        VERDICT_TIMEOUT,
    )
    .await;
    let response = client
        .get(stack.proxy.public_url("/healthz"))
        .send()
        .await
        .expect("the proxy answers");
    let status: Value = stack.proxy.status().await;

    // Assert
    assert!(marked_down, "blue was never marked down: {status}");
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
    assert_ne!(
        release_of(&response),
        "v3",
        "an ungated release served a user"
    );
    assert_eq!(status["serving"], "blue", "{status}");
    assert_eq!(status["active"], "blue", "{status}");
}

/// Only the health scenario: the recorders are no shorteners.
const HEALTH_SCENARIO: &str = "[[scenario]]\nname = \"health\"\n[[scenario.step]]\nname = \"healthz\"\npath = \"/healthz\"\nexpect_status = 200\n";

/// A proxy with `blue` and `green` both vetted (switched to and back), no passive
/// down-marking and no checks after the first: only the retry can move a request.
async fn vetted_pair(blue: &Recorder, green: &Recorder, retry_writes: bool, dir: &Path) -> Proxy {
    let proxy = Proxy::builder()
        .blue(blue.addr())
        .green(green.addr())
        .scenarios(HEALTH_SCENARIO)
        .extra_toml(&format!(
            "[forwarding]\nretry_writes = {retry_writes}\n\n[health]\ninterval_ms = 600000\npassive_fall = 100\n\n[guard]\nbake_ms = 0"
        ))
        .start(dir)
        .await;
    for to in ["green", "blue"] {
        let (code, body) = proxy.switch(to).await;
        assert_eq!(
            code,
            StatusCode::OK,
            "the switch to {to} was refused: {body}"
        );
    }
    proxy
}

/// Sends a request with a body through the proxy: its status and the request id it got.
async fn send(proxy: &Proxy, method: Method, path: &str) -> (StatusCode, String) {
    let response = http_client(REQUEST_TIMEOUT)
        .request(method, proxy.public_url(path))
        .body("payload")
        .send()
        .await
        .expect("the proxy answers");
    let id = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (response.status(), id)
}

fn targets(recorder: &Recorder) -> Vec<String> {
    recorder
        .user_requests()
        .iter()
        .map(|r| {
            format!(
                "{} {}",
                r.request_line.split(' ').next().unwrap_or_default(),
                r.target()
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_before_any_answer_is_retried_on_the_other_slot_for_idempotent_methods_only() {
    // Arrange: blue reads every request and closes without answering.
    let blue = Recorder::start_resetting().await;
    let green = Recorder::start().await;
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let proxy = vetted_pair(&blue, &green, false, dir.path()).await;

    // Act
    let get = send(&proxy, Method::GET, "/read").await;
    let put = send(&proxy, Method::PUT, "/idempotent-write").await;
    let post = send(&proxy, Method::POST, "/write").await;

    // Assert
    assert_eq!(get.0, StatusCode::OK, "an idempotent GET is retried");
    assert_eq!(put.0, StatusCode::OK, "an idempotent PUT is retried");
    assert_eq!(
        post.0,
        StatusCode::BAD_GATEWAY,
        "a POST is not resent without retry_writes"
    );
    assert_eq!(
        targets(&blue),
        ["GET /read", "PUT /idempotent-write", "POST /write"],
        "every request went to the active slot first"
    );
    assert_eq!(
        targets(&green),
        ["GET /read", "PUT /idempotent-write"],
        "only the idempotent ones were resent"
    );
    let put_on_green = &green.user_requests()[1];
    assert_eq!(put_on_green.body, b"payload", "the resent body is whole");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_retry_writes_a_reset_write_is_resent_whole_with_the_same_request_id() {
    // Arrange
    let blue = Recorder::start_resetting().await;
    let green = Recorder::start().await;
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let proxy = vetted_pair(&blue, &green, true, dir.path()).await;

    // Act
    let (code, id) = send(&proxy, Method::POST, "/write").await;

    // Assert
    assert_eq!(code, StatusCode::OK, "the reset POST was resent");
    let (first, resent) = (&blue.user_requests()[0], &green.user_requests()[0]);
    assert_eq!(resent.body, b"payload", "the resent body is whole");
    assert_eq!(first.header_all("x-request-id"), [id.as_str()]);
    assert_eq!(
        resent.header_all("x-request-id"),
        [id.as_str()],
        "the upstream deduplicates the write by its request id"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_retried_for_any_method() {
    // Arrange: blue's port closes after the gate; the checker will not notice for minutes.
    let blue = Recorder::start().await;
    let green = Recorder::start().await;
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let proxy = vetted_pair(&blue, &green, false, dir.path()).await;
    drop(blue);

    // Act
    let (code, _) = send(&proxy, Method::POST, "/never-reached-blue").await;
    let status = proxy.status().await;

    // Assert
    assert_eq!(
        code,
        StatusCode::OK,
        "a POST that never reached blue goes to green"
    );
    assert_eq!(targets(&green), ["POST /never-reached-blue"]);
    assert_eq!(green.user_requests()[0].body, b"payload");
    assert_eq!(status["active"], "blue", "{status}");
}
