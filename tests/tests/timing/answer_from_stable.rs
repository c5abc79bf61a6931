//! The stable release answers for a failing one: a canary (or a release in its bake) that
//! fails, answers 5xx or answers too late has each failed request sent once to the stable
//! release, whose answer the user gets, while the guard is charged with the failure and pulls
//! the release back. Users keep their bucket cookie, so the same users keep hitting the
//! canary until it is gone.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use e2e::client::{create_link, release_of, unique};
use e2e::{Shortener, TestStack, eventually, http_client};
use reqwest::redirect::Policy;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const MIN_REQUESTS: u64 = 20;
/// The tick is far away: the tripwire acts, and the stable release answers meanwhile.
const GUARD: &str = "[guard]\nwindow_ms = 30000\ninterval_ms = 10000\nmax_failure_ratio = 0.02\n\
                     margin = 0.01\nmin_requests = 20\nbake_ms = 60000\nanswer_from_stable = true\n";
/// Creates may be resent: the shortener stores a create once per `x-request-id`.
const FORWARDING: &str = "[forwarding]\nretry_writes = true\n";
const HEALTH: &str = "[health]\ninterval_ms = 2000\nfall = 3\n";
const SERVICE_TIME: &str = "latency=10";
const TASKS: usize = 8;
const MAX_PER_TASK: usize = 2_000;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const ABORT_TIMEOUT: Duration = Duration::from_secs(30);

/// One user request: what it was, who answered, and whether it was the expected answer.
#[derive(Debug, Clone)]
struct Seen {
    what: String,
    release: String,
    ok: bool,
    created: Option<String>,
}

/// Users with a cookie jar each (bucket `task * 100 / tasks`), following links and creating
/// through the form and the API in turn, until `stop` or `MAX_PER_TASK` requests each.
fn users(
    base: &str,
    links: &[(String, String)],
    tasks: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<Seen>>> {
    (0..tasks)
        .map(|task| {
            let base = base.to_owned();
            let links = links.to_vec();
            let stop = Arc::clone(stop);
            tokio::spawn(async move {
                // Buckets spread evenly over the users, so that a 20% canary has its users
                // (two of eight) whatever the draw; the proxy's cookie is kept from there.
                let jar = Arc::new(reqwest::cookie::Jar::default());
                let url = base.parse().expect("the proxy's base URL parses");
                jar.add_cookie_str(&format!("bg_bucket={}; Path=/", task * 100 / tasks), &url);
                let client = reqwest::Client::builder()
                    .no_proxy()
                    .cookie_provider(jar)
                    .redirect(Policy::none())
                    .timeout(REQUEST_TIMEOUT)
                    .build()
                    .expect("a client without TLS always builds");
                let mut seen = Vec::new();
                for n in 0..MAX_PER_TASK {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    seen.push(one(&client, &base, &links[(task + n) % links.len()], n).await);
                }
                seen
            })
        })
        .collect()
}

async fn one(client: &reqwest::Client, base: &str, link: &(String, String), n: usize) -> Seen {
    let (code, url) = link;
    match n % 3 {
        0 => {
            let what = format!("GET /{code}");
            match client.get(format!("{base}/{code}")).send().await {
                Ok(r) => {
                    let ok = r.status() == StatusCode::FOUND
                        && r.headers().get("location").and_then(|v| v.to_str().ok())
                            == Some(url.as_str());
                    let release = release_of(&r);
                    Seen {
                        what: format!("{what}: {}", r.status()),
                        release,
                        ok,
                        created: None,
                    }
                }
                Err(e) => failed(what, e),
            }
        }
        1 => {
            let url = format!("https://e2e.example/{}", unique("api"));
            match client
                .post(format!("{base}/api/links"))
                .json(&json!({ "url": url }))
                .send()
                .await
            {
                Ok(r) => {
                    let status = r.status();
                    let release = release_of(&r);
                    let body: Value = r.json().await.unwrap_or(Value::Null);
                    let created = body["code"].as_str().map(str::to_owned);
                    Seen {
                        what: format!("POST /api/links: {status} {body}"),
                        release,
                        ok: status == StatusCode::CREATED && created.is_some(),
                        created,
                    }
                }
                Err(e) => failed("POST /api/links".into(), e),
            }
        }
        _ => {
            let code = unique("form").replace('-', "_");
            let url = format!("https://e2e.example/{code}");
            match client
                .post(format!("{base}/your-url"))
                .form(&[("url", url.as_str()), ("code", code.as_str())])
                .send()
                .await
            {
                Ok(r) => {
                    let status = r.status();
                    let release = release_of(&r);
                    let page = r.text().await.unwrap_or_default();
                    let ok = status == StatusCode::OK && page.contains(&code);
                    Seen {
                        what: format!("POST /your-url: {status}"),
                        release,
                        ok,
                        created: ok.then_some(code),
                    }
                }
                Err(e) => failed("POST /your-url".into(), e),
            }
        }
    }
}

fn failed(what: String, e: reqwest::Error) -> Seen {
    Seen {
        what: format!("{what}: {e:?}"),
        release: "(none)".into(),
        ok: false,
        created: None,
    }
}

async fn collect(tasks: Vec<tokio::task::JoinHandle<Vec<Seen>>>) -> Vec<Seen> {
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("a user task panicked"));
    }
    all
}

/// A counter's value in the proxy's `/metrics`.
async fn metric(stack: &TestStack, name: &str) -> u64 {
    let (code, body) = stack.proxy.admin(Method::GET, "/metrics", None).await;
    assert_eq!(code, StatusCode::OK);
    let text = body.as_str().unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("bluegreen_{name}_total ")))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or_else(|| panic!("no {name} in /metrics: {text}"), |v| v as u64)
}

async fn seed_links(stack: &TestStack) -> Vec<(String, String)> {
    let client = http_client(REQUEST_TIMEOUT);
    let mut links = Vec::new();
    for n in 0..10 {
        let url = format!("https://e2e.example/stable/{n}");
        let link = create_link(&client, &stack.base(), &url)
            .await
            .expect("a link is created on blue");
        links.push((link.code, link.url));
    }
    links
}

/// Every created link resolves through the proxy.
async fn all_resolve(stack: &TestStack, seen: &[Seen]) {
    let client = http_client(REQUEST_TIMEOUT);
    let created: Vec<&String> = seen.iter().filter_map(|s| s.created.as_ref()).collect();
    assert!(!created.is_empty());
    for code in created {
        let r = client
            .get(format!("{}/{code}", stack.base()))
            .send()
            .await
            .expect("the proxy answers");
        assert_eq!(
            r.status(),
            StatusCode::FOUND,
            "link {code} does not resolve"
        );
    }
}

/// Runs users until the guard has pulled `slot`'s release back (`done`), then asserts that
/// no user saw an error, and returns what they saw.
async fn users_until(
    stack: &TestStack,
    links: &[(String, String)],
    tasks: usize,
    done: &str,
) -> Vec<Seen> {
    let stop = Arc::new(AtomicBool::new(false));
    let tasks = users(&stack.base(), links, tasks, &stop);
    let pulled = eventually(
        || async {
            let status = stack.proxy.status().await;
            status["guard"]["aborted"] == true && status["active"] == done
        },
        ABORT_TIMEOUT,
    )
    .await;
    // Some more requests after the pull, all of which blue must answer.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let seen = collect(tasks).await;
    let status = stack.proxy.status().await;
    assert!(pulled, "the guard did not pull the release back: {status}");
    let errors: Vec<&Seen> = seen.iter().filter(|s| !s.ok).collect();
    println!(
        "answer from stable: {} user requests, {} user-visible errors, {} answered by v2",
        seen.len(),
        errors.len(),
        seen.iter().filter(|s| s.release == "v2").count()
    );
    let errors: Vec<String> = errors
        .iter()
        .map(|s| format!("{} (from {})", s.what, s.release))
        .collect();
    assert!(errors.is_empty(), "users saw errors: {errors:#?}");
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_canary_costs_users_nothing_at_8_users() {
    a_failing_canary_costs_users_nothing(8).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_canary_costs_users_nothing_at_32_users() {
    a_failing_canary_costs_users_nothing(32).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_canary_costs_users_nothing_at_100_users() {
    a_failing_canary_costs_users_nothing(100).await;
}

async fn a_failing_canary_costs_users_nothing(tasks: usize) {
    // Arrange: green answers its first 200 requests (gate and health checks), then 500.
    let stack = TestStack::builder()
        .blue(Shortener::builder().release("v1").fault(SERVICE_TIME))
        .green(
            Shortener::builder()
                .release("v2")
                .fault(SERVICE_TIME)
                .fault("fail-after=200"),
        )
        .proxy(|p| {
            p.extra_toml(GUARD)
                .extra_toml(FORWARDING)
                .extra_toml(HEALTH)
        })
        .start()
        .await;
    let links = seed_links(&stack).await;
    let (code, body) = stack
        .proxy
        .admin(
            Method::POST,
            "/canary",
            Some(json!({ "slot": "green", "percent": 20 })),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");

    // Act
    let seen = users_until(&stack, &links, tasks, "blue").await;

    // Assert: the guard counted the failures and the stable release answered them.
    let events = stack.proxy.events_of_kind("guard_abort").await;
    assert_eq!(events.len(), 1, "{events:?}");
    let counts = &events[0]["detail"]["since_start"];
    let failures = counts["failures"].as_u64().unwrap_or_default();
    let answered = counts["answered_by_stable"].as_u64().unwrap_or_default();
    println!(
        "answer from stable, {tasks} users: canary failures before the abort {failures} \
         (bound {}), answered by stable {answered}",
        MIN_REQUESTS + tasks as u64
    );
    assert!(
        (1..=MIN_REQUESTS + tasks as u64).contains(&failures),
        "failed canary requests before the abort: {counts}"
    );
    // The event is written as the guard acts: the requests in flight then (maybe all of the
    // failed ones) are answered later.
    assert!(
        answered <= failures,
        "blue answered for the canary: {counts}"
    );
    // In all, blue answered for every failure of the canary.
    let watched_failures = metric(&stack, "guard_watched_failures").await;
    assert!(
        watched_failures >= failures,
        "{watched_failures} < {counts}"
    );
    assert_eq!(
        metric(&stack, "guard_answered_by_stable").await,
        watched_failures
    );
    let tail: Vec<&Seen> = seen.iter().rev().take(tasks * 3).collect();
    assert!(
        tail.iter().all(|s| s.release == "v1"),
        "after the abort: {tail:#?}"
    );
    all_resolve(&stack, &seen).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_release_failing_in_its_bake_is_rolled_back_with_no_user_error() {
    let mut stack = TestStack::builder()
        .blue(Shortener::builder().release("v1").fault(SERVICE_TIME))
        .green(
            Shortener::builder()
                .release("v2")
                .fault(SERVICE_TIME)
                .fault("fail-after=200"),
        )
        .proxy(|p| {
            p.extra_toml(GUARD)
                .extra_toml(FORWARDING)
                .extra_toml(HEALTH)
        })
        .start()
        .await;
    let links = seed_links(&stack).await;
    let (code, body) = stack.proxy.switch("green").await;
    assert_eq!(code, StatusCode::OK, "{body}");

    let seen = users_until(&stack, &links, TASKS, "blue").await;

    let events = stack.proxy.events_of_kind("guard_rollback").await;
    assert_eq!(events.len(), 1, "{events:?}");
    let counts = &events[0]["detail"]["since_switch"];
    assert!(
        counts["failures"].as_u64().unwrap_or_default() >= 1,
        "{counts}"
    );
    all_resolve(&stack, &seen).await;
    stack.proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_slower_than_the_response_timeout_is_answered_by_the_stable_release() {
    // Green answers after 400 ms; users' requests wait 250 ms for an answer, the gate 2 s.
    let stack = TestStack::builder()
        .green(Shortener::builder().release("v2").fault("latency=400"))
        .gate(1, 10_000)
        .proxy(|p| {
            p.extra_toml("[timeouts]\nresponse_header_ms = 250\n")
                .extra_toml(GUARD)
                .extra_toml(FORWARDING)
        })
        .start()
        .await;
    let links = seed_links(&stack).await;
    let (code, body) = stack
        .proxy
        .admin(
            Method::POST,
            "/canary",
            Some(json!({ "slot": "green", "percent": 50 })),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");

    let seen = users_until(&stack, &links, TASKS, "blue").await;

    assert!(
        seen.iter().all(|s| s.release == "v1"),
        "green never answered in time"
    );
    let counts = &stack.proxy.events_of_kind("guard_abort").await[0]["detail"]["since_start"];
    assert!(
        counts["answered_by_stable"].as_u64().unwrap_or_default() >= 1,
        "{counts}"
    );
    all_resolve(&stack, &seen).await;
}

const HEALTH_SCENARIO: &str = "[[scenario]]\nname = \"health\"\n[[scenario.step]]\nname = \"healthz\"\npath = \"/healthz\"\nexpect_status = 200\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn when_both_releases_answer_500_the_user_gets_the_stable_one_s_once() {
    // Arrange: both releases fail every create (a genuine application error); the gate
    // checks health only, so green becomes a canary at 100%.
    let stack = TestStack::builder()
        .blue(Shortener::builder().release("v1").fault("create-500"))
        .green(Shortener::builder().release("v2").fault("create-500"))
        .proxy(|p| {
            p.scenarios(HEALTH_SCENARIO)
                .extra_toml(GUARD)
                .extra_toml(FORWARDING)
        })
        .start()
        .await;
    let (code, body) = stack
        .proxy
        .admin(
            Method::POST,
            "/canary",
            Some(json!({ "slot": "green", "percent": 100 })),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let retries_before = metric(&stack, "retries").await;

    // Act
    let r = http_client(REQUEST_TIMEOUT)
        .post(format!("{}/api/links", stack.base()))
        .json(&json!({ "url": "https://e2e.example/both-500" }))
        .send()
        .await
        .expect("the proxy answers");

    // Assert: blue's 500, after one resend and no more.
    assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(release_of(&r), "v1");
    assert_eq!(metric(&stack, "retries").await, retries_before + 1);
    assert_eq!(metric(&stack, "guard_watched_failures").await, 1);
    assert_eq!(metric(&stack, "guard_answered_by_stable").await, 1);
}
