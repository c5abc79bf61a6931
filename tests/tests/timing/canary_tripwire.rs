//! The guard trips on the request that crosses its limit: a canary that fails under user load
//! is pulled back after at most `min_requests` failed requests plus those already in flight,
//! long before the guard's next tick (ten seconds here), at two traffic levels. Every request
//! after the abort is served by the stable release. The stable release does not answer for
//! the canary here (`answer_from_stable = false`), so what users see is what the guard let
//! through.

use std::time::Duration;

use e2e::client::create_link;
use e2e::{Sample, Shortener, TestStack, UserLoad, eventually, http_client};
use reqwest::{Method, StatusCode};
use serde_json::json;

const MIN_REQUESTS: usize = 20;
/// A tick every 10 s: the first one comes as the proxy starts, the next one long after the
/// canary has failed hundreds of requests. Only the tripwire can meet the bound.
const INTERVAL: Duration = Duration::from_secs(10);
const GUARD: &str = "[guard]\nwindow_ms = 30000\ninterval_ms = 10000\nmax_failure_ratio = 0.02\n\
                     margin = 0.01\nmin_requests = 20\nbake_ms = 0\nanswer_from_stable = false\n";
/// The health checker takes green out only 6 s after it starts failing.
const HEALTH: &str = "[health]\ninterval_ms = 2000\nfall = 3\n";
/// Green answers its first 200 requests (health checks and gate probes included), then 500.
const FAIL_AFTER: &str = "fail-after=200";
/// 20 ms per request: users come at most tasks / 20 ms.
const SERVICE_TIME: &str = "latency=20";
const PERCENT: u8 = 20;
const MAX_PER_TASK: usize = 5_000;
const AFTER_ABORT: usize = 100;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_canary_is_aborted_within_min_requests_plus_in_flight_at_8_users() {
    aborted_within_the_bound(8).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_canary_is_aborted_within_min_requests_plus_in_flight_at_32_users() {
    aborted_within_the_bound(32).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_canary_is_aborted_within_min_requests_plus_in_flight_at_100_users() {
    aborted_within_the_bound(100).await;
}

/// `tasks` concurrent users, each with at most one request in flight.
async fn aborted_within_the_bound(tasks: usize) {
    // Arrange: links made on blue for the users to follow, then green at 20%.
    let stack = TestStack::builder()
        .blue(Shortener::builder().release("v1").fault(SERVICE_TIME))
        .green(
            Shortener::builder()
                .release("v2")
                .fault(SERVICE_TIME)
                .fault(FAIL_AFTER),
        )
        .proxy(|p| p.extra_toml(GUARD).extra_toml(HEALTH))
        .start()
        .await;
    let client = http_client(REQUEST_TIMEOUT);
    let mut links = Vec::new();
    for n in 0..10 {
        let url = format!("https://e2e.example/tripwire/{n}");
        let link = create_link(&client, &stack.base(), &url)
            .await
            .expect("a link is created on blue before the canary");
        links.push(link);
    }
    let (code, body) = stack
        .proxy
        .admin(
            Method::POST,
            "/canary",
            Some(json!({ "slot": "green", "percent": PERCENT })),
        )
        .await;
    assert_eq!(
        code,
        StatusCode::OK,
        "green must pass the gate first: {body}"
    );

    // Act: users keep coming until the guard has pulled the canary back.
    let load = UserLoad::start(&stack.base(), &links, tasks, MAX_PER_TASK);
    let began = std::time::Instant::now();
    let aborted = eventually(
        || async { stack.proxy.status().await["canary"].is_null() },
        INTERVAL * 3,
    )
    .await;
    let elapsed = began.elapsed();
    let samples = load.stop().await;

    // Assert: the guard acted.
    let status = stack.proxy.status().await;
    assert!(
        aborted,
        "the guard did not abort the failing canary: {status}"
    );
    assert_eq!(status["guard"]["aborted"], true, "{status}");
    assert_eq!(status["active"], "blue", "{status}");

    // Assert: the failed requests. Green fails every request from some point on, so the
    // ratio is crossed by at most MIN_REQUESTS failures; those in flight when the canary is
    // cleared fail too: at most one per user task.
    let failures: Vec<&Sample> = samples.iter().filter(|s| !s.ok).collect();
    let bound = MIN_REQUESTS + tasks;
    let figure = format!(
        "{tasks} users, {:.0} requests/s: {} of {} user requests failed before the guard \
         aborted the canary (bound {bound} = min_requests {MIN_REQUESTS} + {tasks} in flight)",
        samples.len() as f64 / elapsed.as_secs_f64(),
        failures.len(),
        samples.len(),
    );
    println!("canary tripwire: {figure}");
    assert!(!failures.is_empty(), "green never failed: {figure}");
    assert!(
        failures.len() <= bound,
        "too many users saw a failure before the abort: {figure}"
    );
    assert!(
        failures.iter().all(|s| s.release == "v2"),
        "only the canary may have failed: {figure}; {failures:#?}"
    );
    let abort_events = stack.proxy.events_of_kind("guard_abort").await;
    assert_eq!(
        abort_events.len(),
        1,
        "aborted exactly once: {abort_events:?}"
    );

    // Assert: after the abort every request is served by blue.
    let after = UserLoad::start(&stack.base(), &links, 4, AFTER_ABORT / 4)
        .finish()
        .await;
    assert_eq!(after.len(), AFTER_ABORT);
    assert!(
        after.iter().all(|s| s.ok && s.release == "v1"),
        "users are back on blue: {:#?}",
        after
            .iter()
            .filter(|s| !s.ok || s.release != "v1")
            .collect::<Vec<_>>()
    );
}
