//! The bake: after a full switch the guard keeps watching the new active release, and when
//! it starts failing under real users the proxy switches back to blue on its own.

use std::time::Duration;

use e2e::client::create_link;
use e2e::{Sample, Shortener, TestStack, UserLoad, eventually, http_client};
use reqwest::StatusCode;
use serde_json::Value;

/// A short bake and window; the guard judges every second once 20 requests are in.
const GUARD: &str = "[guard]\nwindow_ms = 10000\ninterval_ms = 1000\nmax_failure_ratio = 0.02\n\
                     min_requests = 20\nbake_ms = 30000\n";
/// Green passes the gate (3 passes of 8 requests, plus a health check a second) and
/// serves its first users, then answers 500 to everything.
const FAIL_AFTER: &str = "fail-after=100";
/// Both releases take 10 ms per request: users at a human pace, not a debug build's loop.
const SERVICE_TIME: &str = "latency=10";
const TASKS: usize = 4;
const MAX_PER_TASK: usize = 5_000;
/// The bake lasts 30 s; the guard must act well within it.
const ROLLBACK_TIMEOUT: Duration = Duration::from_secs(30);
const AFTER_ROLLBACK: usize = 100;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_switched_release_that_fails_during_the_bake_is_rolled_back_by_the_guard() {
    // Arrange: links for the users to follow, then all traffic to green.
    let stack = TestStack::builder()
        .blue(Shortener::builder().release("v1").fault(SERVICE_TIME))
        .green(
            Shortener::builder()
                .release("v2")
                .fault(SERVICE_TIME)
                .fault(FAIL_AFTER),
        )
        .proxy(|p| p.extra_toml(GUARD))
        .start()
        .await;
    let client = http_client(REQUEST_TIMEOUT);
    let mut links = Vec::new();
    for n in 0..10 {
        let url = format!("https://e2e.example/bake/{n}");
        let link = create_link(&client, &stack.base(), &url)
            .await
            .expect("a link is created on blue before the switch");
        links.push(link);
    }
    let (code, body) = stack.proxy.switch("green").await;
    assert_eq!(
        code,
        StatusCode::OK,
        "green must pass the gate first: {body}"
    );
    let status = stack.proxy.status().await;
    assert_eq!(status["active"], "green", "{status}");
    assert_eq!(
        status["guard"]["watching"], "bake",
        "a switch starts the bake: {status}"
    );
    assert!(status["guard"]["bake_until"].is_string(), "{status}");

    // Act: users keep coming until the proxy has gone back to blue.
    let load = UserLoad::start(&stack.base(), &links, TASKS, MAX_PER_TASK);
    let rolled_back = eventually(
        || async {
            let status = stack.proxy.status().await;
            status["active"] == "blue" && status["guard"]["aborted"] == true
        },
        ROLLBACK_TIMEOUT,
    )
    .await;
    let samples = load.stop().await;

    // Assert
    let status = stack.proxy.status().await;
    assert!(
        rolled_back,
        "the guard did not roll the failing release back within {ROLLBACK_TIMEOUT:?}: {status}"
    );
    assert_eq!(status["active"], "blue", "{status}");
    assert_eq!(status["previous"], "green", "{status}");
    let guard = &status["guard"];
    assert_eq!(guard["aborted"], true, "{status}");
    assert!(
        guard["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "the guard names its reason: {status}"
    );
    assert_eq!(guard["slot"], "green", "{status}");
    assert!(
        guard["watching"].is_null(),
        "a rollback ends the bake and starts none: {status}"
    );
    assert_eq!(guard["blocked"]["slot"], "green", "{status}");

    let served_by_green = samples.iter().filter(|s| s.ok && s.release == "v2").count();
    let failures: Vec<&Sample> = samples.iter().filter(|s| !s.ok).collect();
    println!(
        "bake: {} of {} user requests failed before the rollback; green served {served_by_green} \
         successfully",
        failures.len(),
        samples.len()
    );
    assert!(
        served_by_green > 0,
        "green never served a user, so the switch was not exercised"
    );
    assert!(
        !failures.is_empty(),
        "green never failed a user, so the guard was not tested"
    );
    assert!(
        failures.iter().all(|s| s.release == "v2"),
        "only green may have failed: {:#?}",
        failures
            .iter()
            .filter(|s| s.release != "v2")
            .take(10)
            .collect::<Vec<_>>()
    );

    let rollbacks = stack.proxy.events_of_kind("guard_rollback").await;
    assert_eq!(rollbacks.len(), 1, "{rollbacks:?}");
    let event = &rollbacks[0];
    assert_eq!(event["from"], "green", "{event}");
    assert_eq!(event["to"], "blue", "{event}");
    assert!(
        event["detail"]["failed_requests"]
            .as_u64()
            .is_some_and(|n| n >= 1),
        "{event}"
    );
    let log_path = stack.proxy.data_dir().join("events.jsonl");
    let log = std::fs::read_to_string(&log_path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", log_path.display()));
    let logged: Vec<Value> = log
        .lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{} has a bad line ({e}): {line}", log_path.display()))
        })
        .filter(|e: &Value| e["kind"] == "guard_rollback")
        .collect();
    assert_eq!(
        logged.len(),
        1,
        "the rollback is in the event log file too: {log}"
    );
    assert_eq!(logged[0]["seq"], event["seq"], "{log}");

    let after = UserLoad::start(&stack.base(), &links, TASKS, AFTER_ROLLBACK / TASKS)
        .finish()
        .await;
    assert_eq!(after.len(), AFTER_ROLLBACK);
    let not_blue: Vec<&Sample> = after
        .iter()
        .filter(|s| !s.ok || s.release != "v1")
        .collect();
    assert!(
        not_blue.is_empty(),
        "{} of {AFTER_ROLLBACK} requests after the rollback were not served by blue: {:#?}",
        not_blue.len(),
        not_blue.iter().take(10).collect::<Vec<_>>()
    );
}
