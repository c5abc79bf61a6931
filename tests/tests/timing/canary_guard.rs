//! The guard on a live canary: green passes the gate, takes 20% of real users, starts failing
//! under their load, and the proxy pulls it back on its own. The users who saw a failure are
//! counted and bounded by the guard's settings; nobody sees one after the abort; the pulled
//! release is refused until an operator overrides, and is then gated again; an override
//! that goes through lifts the block.

use std::time::Duration;

use e2e::client::create_link;
use e2e::{Sample, Shortener, TestStack, UserLoad, eventually, http_client};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// The guard's settings in this test (`[guard]`), and the numbers the bound is made of.
const MIN_REQUESTS: usize = 20;
const INTERVAL: Duration = Duration::from_millis(1_000);
const GUARD: &str = "[guard]\nwindow_ms = 10000\ninterval_ms = 1000\nmax_failure_ratio = 0.02\nanswer_from_stable = false\n\
                     margin = 0.01\nmin_requests = 20\nbake_ms = 0\n";
/// Health checks every 2 s (3 failed checks mark a slot down): green is taken out by the
/// checker only 6 s after it starts failing, so what protects users sooner is the guard alone.
const HEALTH: &str = "[health]\ninterval_ms = 2000\nfall = 3\n";
/// Green answers its first 200 requests (health checks and gate probes included), then 500.
const FAIL_AFTER: &str = "fail-after=200";
/// Both releases take 20 ms per request, so that users come at a human pace (at most
/// TASKS / 20 ms) rather than as fast as a debug build can loop.
const SERVICE_TIME: &str = "latency=20";
const PERCENT: u8 = 20;
/// Concurrent users, and how many requests each may send before giving up on the guard.
const TASKS: usize = 8;
const MAX_PER_TASK: usize = 5_000;
/// How long the guard may take to act once green fails (it acts within an interval; the rest
/// is a slow machine).
const ABORT_TIMEOUT: Duration = Duration::from_secs(60);
/// Requests sent once the canary is gone, every one of which must be served by blue.
const AFTER_ABORT: usize = 200;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The most green-served samples within any span of `span`.
fn most_within(green: &[&Sample], span: Duration) -> usize {
    let mut most = 0;
    let mut start = 0;
    for end in 0..green.len() {
        while green[end].at.duration_since(green[start].at) > span {
            start += 1;
        }
        most = most.max(end - start + 1);
    }
    most
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_that_fails_under_user_load_is_aborted_by_the_guard_within_its_bounds() {
    // Arrange: links made on blue for the users to follow, then green at 20%.
    let mut stack = TestStack::builder()
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
    for n in 0..20 {
        let url = format!("https://e2e.example/guard/{n}");
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
    let load = UserLoad::start(&stack.base(), &links, TASKS, MAX_PER_TASK);
    let aborted = eventually(
        || async {
            let status = stack.proxy.status().await;
            status["guard"]["aborted"] == true && status["canary"].is_null()
        },
        ABORT_TIMEOUT,
    )
    .await;
    let sent_until_abort_seen = load.sent();
    let samples = load.stop().await;

    // Assert: the guard acted, and says why.
    let status = stack.proxy.status().await;
    assert!(
        aborted,
        "the guard did not abort the failing canary within {ABORT_TIMEOUT:?} \
         ({sent_until_abort_seen} user requests): {status}"
    );
    let guard = &status["guard"];
    assert_eq!(guard["aborted"], true, "{status}");
    assert!(
        guard["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "the guard names its reason: {status}"
    );
    assert_eq!(guard["slot"], "green", "{status}");
    assert!(status["canary"].is_null(), "{status}");
    assert_eq!(status["active"], "blue", "{status}");

    // Assert: how many users saw a failure. Every failure happened before the abort: after it,
    // users go to blue, which does not fail (checked below).
    let failures: Vec<&Sample> = samples.iter().filter(|s| !s.ok).collect();
    let green: Vec<&Sample> = samples.iter().filter(|s| s.release == "v2").collect();
    let green_ok = green.iter().filter(|s| s.ok).count();
    // The bound, from the settings above. Green answers at most 200 requests in all, so the
    // window holds at most 200 of its successes, and the guard's rule (at least min_requests
    // requests, failure ratio above 2%) is breached by at most min_requests failures
    // (max(min_requests - successes, 2% of 200 successes) <= 20). The guard then acts at its
    // next evaluation, at most one interval later: add what green served in one interval, and
    // one more interval of slack for the tick's scheduling on a busy machine. Requests already
    // routed to green when the canary was cleared may still fail: at most one per user task.
    let green_in_two_intervals = most_within(&green, 2 * INTERVAL);
    let bound = MIN_REQUESTS + green_in_two_intervals + TASKS;
    let figure = format!(
        "{} of {} user requests failed before the guard aborted the canary \
         (green served {} of them, {green_ok} successfully; bound {bound} = min_requests \
         {MIN_REQUESTS} + {green_in_two_intervals} served by green in 2 intervals + {TASKS} tasks)",
        failures.len(),
        samples.len(),
        green.len(),
    );
    println!("canary guard: {figure}");
    assert!(
        !failures.is_empty(),
        "green never failed, so the guard was not tested: {figure}"
    );
    assert!(
        failures.len() <= bound,
        "too many users saw a failure before the abort: {figure}; first ones: {:#?}",
        failures.iter().take(10).collect::<Vec<_>>()
    );
    assert!(
        failures.iter().all(|s| s.release == "v2"),
        "only the canary may have failed: {figure}; {:#?}",
        failures
            .iter()
            .filter(|s| s.release != "v2")
            .take(10)
            .collect::<Vec<_>>()
    );
    let abort_events = stack.proxy.events_of_kind("guard_abort").await;
    assert_eq!(abort_events.len(), 1, "{abort_events:?}");
    let counted = abort_events[0]["detail"]["failed_requests"]
        .as_u64()
        .unwrap_or_else(|| panic!("the guard_abort event counts failures: {abort_events:?}"));
    assert!(
        (1..=failures.len() as u64).contains(&counted),
        "the guard counted {counted} failed requests; users saw {figure}"
    );

    // Assert: after the abort every user is on blue, without an error, even a user whose
    // bucket was on the canary.
    let after = UserLoad::start(&stack.base(), &links, 4, AFTER_ABORT / 4)
        .finish()
        .await;
    assert_eq!(after.len(), AFTER_ABORT);
    let not_blue: Vec<&Sample> = after
        .iter()
        .filter(|s| !s.ok || s.release != "v1")
        .collect();
    assert!(
        not_blue.is_empty(),
        "{} of {AFTER_ABORT} requests after the abort were not served by blue: {:#?}",
        not_blue.len(),
        not_blue.iter().take(10).collect::<Vec<_>>()
    );
    let former_canary_user = client
        .get(stack.proxy.public_url("/healthz"))
        .header("cookie", "bg_bucket=0")
        .send()
        .await
        .expect("the proxy answers");
    assert_eq!(former_canary_user.status(), StatusCode::OK);
    assert_eq!(e2e::client::release_of(&former_canary_user), "v1");

    // Assert: the pulled release is refused until an operator overrides the guard ...
    let (code, refusal) = stack
        .proxy
        .admin(
            Method::POST,
            "/canary",
            Some(json!({ "slot": "green", "percent": PERCENT })),
        )
        .await;
    assert_eq!(code, StatusCode::CONFLICT, "{refusal}");
    let error = refusal["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("guard") && error.contains("override_guard"),
        "the refusal names the guard and the way out: {refusal}"
    );
    assert!(
        refusal["failure"].is_null(),
        "no probe ran for a release the guard blocks: {refusal}"
    );
    // ... and with the override it is gated again: green now answers 500 to everything (its
    // 200 requests are long spent), so the gate refuses it at its first scenario and step.
    let (code, refusal) = stack
        .proxy
        .admin(
            Method::POST,
            "/canary",
            Some(json!({ "slot": "green", "percent": PERCENT, "override_guard": true })),
        )
        .await;
    assert_eq!(code, StatusCode::CONFLICT, "{refusal}");
    assert_eq!(refusal["failure"]["scenario"], "health", "{refusal}");
    assert_eq!(refusal["failure"]["step"], "healthz", "{refusal}");
    assert!(
        refusal["failure"]["got"]
            .as_str()
            .is_some_and(|got| got.contains("500")),
        "{refusal}"
    );
    let status = stack.proxy.status().await;
    assert!(status["canary"].is_null(), "{status}");
    assert_eq!(status["active"], "blue", "{status}");

    // The operator restarts green (its 200 good answers start over) and moves traffic to it
    // with the override: the gate passes, and the block is lifted with the switch, so the
    // status no longer reports a block on the release that now serves everyone.
    stack.green.restart().await;
    let (code, body) = stack
        .proxy
        .admin(
            Method::POST,
            "/switch",
            Some(json!({ "to": "green", "override_guard": true })),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let status = stack.proxy.status().await;
    assert_eq!(status["active"], "green", "{status}");
    assert!(
        status["guard"]["blocked"].is_null(),
        "an overridden block is lifted: {status}"
    );
}

/// Green answers every request after 400 ms; the proxy gives an upstream 250 ms for its
/// response headers, so every user request green gets fails (504), while the gate's probes,
/// which allow 2 s, all pass. One gate run (8 probes of green) takes over 3 s.
const SLOW: &str = "latency=400";
const SLOW_GUARD: &str = "[timeouts]\nresponse_header_ms = 250\n\n[guard]\nwindow_ms = 10000\n\
                          interval_ms = 200\nmin_requests = 10\nbake_ms = 0\n";
/// Long enough for a gate run of the slow green and a guard decision in it.
const PROMOTE_TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_promote_whose_canary_the_guard_pulls_back_during_its_gate_is_refused() {
    move_traffic_while_the_guard_pulls_the_canary_back("/promote", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_switch_to_the_canary_slot_the_guard_pulls_back_during_its_gate_is_refused() {
    move_traffic_while_the_guard_pulls_the_canary_back("/switch", Some(json!({ "to": "green" })))
        .await;
}

/// An operator moves all traffic to the canary's slot (`POST path`); while that change's
/// gate probes green (over 3 s), users fail on the canary and the guard (every 200 ms, from
/// 10 requests) pulls it back. The guard's decision must stand.
async fn move_traffic_while_the_guard_pulls_the_canary_back(path: &str, request: Option<Value>) {
    // Arrange: green at 50%, failing every user it gets but passing every probe.
    let stack = TestStack::builder()
        .green(Shortener::builder().release("v2").fault(SLOW))
        .gate(1, 10_000)
        .proxy(|p| p.extra_toml(SLOW_GUARD))
        .start()
        .await;
    let client = http_client(REQUEST_TIMEOUT);
    let mut links = Vec::new();
    for n in 0..10 {
        let url = format!("https://e2e.example/race/{n}");
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
            Some(json!({ "slot": "green", "percent": 50 })),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "green passes its probes: {body}");

    // Act
    let load = UserLoad::start(&stack.base(), &links, TASKS, MAX_PER_TASK);
    let change = tokio::time::timeout(
        PROMOTE_TIMEOUT,
        stack.proxy.admin(Method::POST, path, request),
    );
    let ((code, body), aborted_during_gate) = tokio::join!(
        async {
            change
                .await
                .unwrap_or_else(|_| panic!("POST {path} did not answer"))
        },
        eventually(
            || async { stack.proxy.status().await["guard"]["aborted"] == true },
            PROMOTE_TIMEOUT,
        )
    );
    let samples = load.stop().await;

    // Assert: the guard's decision stands: no promotion of the release it pulled back.
    let status = stack.proxy.status().await;
    let failed = samples.iter().filter(|s| !s.ok).count();
    assert!(
        aborted_during_gate,
        "the guard never aborted ({failed} user requests failed): {status}"
    );
    assert_eq!(
        code,
        StatusCode::CONFLICT,
        "POST {path} went through after the guard pulled the canary back: {body}"
    );
    // Not the refusal of a release the guard had already blocked (checked before the gate):
    // the one of a canary pulled back while the gate ran.
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("guard") && e.contains("while it was probed")),
        "the refusal names the guard's decision during the gate: {body}"
    );
    assert_eq!(status["active"], "blue", "{status}");
    assert!(status["canary"].is_null(), "{status}");
    assert_eq!(status["guard"]["aborted"], true, "{status}");
    let after = UserLoad::start(&stack.base(), &links, TASKS, 10)
        .finish()
        .await;
    assert!(
        after.iter().all(|s| s.ok && s.release == "v1"),
        "users are back on blue: {after:#?}"
    );
}
