//! The canary split over real sockets: cookie-less users are spread by a random sticky bucket,
//! a user with a bucket cookie keeps their release while the share holds or grows, the private
//! preview reaches the candidate at 0%, and a canary the rules or the gate refuse is a 409.

use std::time::Duration;

use e2e::client::release_of;
use e2e::{Shortener, TestStack, http_client};
use futures_util::future::join_all;
use reqwest::header::{COOKIE, SET_COOKIE};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The sticky cookie of the reference config (`canary.cookie`).
const BUCKET_COOKIE: &str = "bg_bucket";
/// A preview secret of the minimum length or more (`canary.preview_secret`).
const PREVIEW_SECRET: &str = "e2e-preview-secret-0123456789";
/// Concurrent senders of the cookie-less requests.
const SENDERS: usize = 8;

/// `POST /canary {"slot": slot, "percent": percent}`.
async fn canary(stack: &TestStack, slot: &str, percent: u8) -> (StatusCode, Value) {
    stack
        .proxy
        .admin(
            Method::POST,
            "/canary",
            Some(json!({ "slot": slot, "percent": percent })),
        )
        .await
}

/// What one request through the proxy came back with.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    release: String,
    /// The bucket of a `bg_bucket` Set-Cookie, if one came back; `Err` when it did not parse.
    new_bucket: Option<Result<u8, String>>,
}

/// `GET /healthz` through the proxy, with `cookie` as the Cookie header when given.
async fn get(client: &reqwest::Client, base: &str, cookie: Option<&str>) -> Answer {
    let mut request = client.get(format!("{base}/healthz"));
    if let Some(cookie) = cookie {
        request = request.header(COOKIE, cookie);
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET /healthz through the proxy failed: {e}"));
    let new_bucket = response
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(bucket_in_set_cookie);
    Answer {
        status: response.status(),
        release: release_of(&response),
        new_bucket,
    }
}

/// The bucket of a `bg_bucket=N; ...` Set-Cookie value: `None` for another cookie, `Err` for a
/// value that is not a bucket 0-99.
fn bucket_in_set_cookie(header: &str) -> Option<Result<u8, String>> {
    let pair = header.split(';').next()?.trim();
    let (name, value) = pair.split_once('=')?;
    (name == BUCKET_COOKIE).then(|| {
        value
            .parse::<u8>()
            .ok()
            .filter(|b| *b < 100)
            .ok_or_else(|| format!("Set-Cookie {header:?} carries no bucket 0-99"))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn at_10_percent_cookie_less_users_are_split_by_their_new_bucket() {
    // Arrange
    const REQUESTS: usize = 2_000;
    let stack = TestStack::start().await;
    let (code, body) = canary(&stack, "green", 10).await;
    assert_eq!(code, StatusCode::OK, "the canary did not start: {body}");
    // No cookie store: every request is a new user without a bucket.
    let client = http_client(REQUEST_TIMEOUT);

    // Act
    let base = stack.base();
    let senders = (0..SENDERS).map(|sender| {
        let client = client.clone();
        let base = base.clone();
        async move {
            let mut answers = Vec::new();
            for _ in (sender..REQUESTS).step_by(SENDERS) {
                answers.push(get(&client, &base, None).await);
            }
            answers
        }
    });
    let answers: Vec<Answer> = join_all(senders).await.into_iter().flatten().collect();

    // Assert
    assert_eq!(answers.len(), REQUESTS);
    let mut on_canary = 0;
    for answer in &answers {
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
        let bucket = match &answer.new_bucket {
            Some(Ok(bucket)) => *bucket,
            Some(Err(why)) => panic!("{why}"),
            None => panic!("a user without a bucket got no {BUCKET_COOKIE} cookie: {answer:?}"),
        };
        let want = if bucket < 10 { "v2" } else { "v1" };
        assert_eq!(
            answer.release, want,
            "bucket {bucket} at 10% must be served by {want}: {answer:?}"
        );
        if answer.release == "v2" {
            on_canary += 1;
        }
    }
    // Each new user lands on the canary with p = 0.1: the count is Binomial(2000, 0.1), mean
    // 200, sd = sqrt(2000 * 0.1 * 0.9) ≈ 13.4. 140..=260 is ±4.5 sd: a false failure about
    // once in 120,000 runs, while a 5% or 15% split passes less than once in 100 runs. The
    // bucket-to-release check above is the exact one; this is the share the users saw.
    assert!(
        (140..=260).contains(&on_canary),
        "{on_canary} of {REQUESTS} cookie-less requests reached the 10% canary (want 140..=260)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_user_with_a_bucket_cookie_keeps_the_release_while_the_share_holds_or_grows() {
    // Arrange: 100 users get their bucket from the proxy at 10%, then send it back.
    const USERS: usize = 100;
    const REQUESTS_PER_STEP: usize = 3;
    let stack = TestStack::start().await;
    let (code, body) = canary(&stack, "green", 10).await;
    assert_eq!(code, StatusCode::OK, "the canary did not start: {body}");
    let client = http_client(REQUEST_TIMEOUT);
    let base = stack.base();
    let mut users = Vec::new();
    for _ in 0..USERS {
        let first = get(&client, &base, None).await;
        let bucket = match first.new_bucket {
            Some(Ok(bucket)) => bucket,
            other => panic!("a new user got no usable bucket cookie: {other:?}"),
        };
        users.push((bucket, first.release));
    }

    // Act / Assert: at each share every user's release holds across requests; a user once on
    // the canary stays on it as the share grows.
    let mut was_on_canary = [false; USERS];
    for percent in [10u8, 25, 50, 100] {
        if percent != 10 {
            let (code, body) = canary(&stack, "green", percent).await;
            assert_eq!(code, StatusCode::OK, "raising to {percent}%: {body}");
            assert_eq!(body["canary"]["percent"], percent, "{body}");
        }
        let mut on_canary = 0;
        for (user, (bucket, first_release)) in users.iter().enumerate() {
            let cookie = format!("theme=dark; {BUCKET_COOKIE}={bucket}");
            let mut releases = Vec::new();
            for _ in 0..REQUESTS_PER_STEP {
                let answer = get(&client, &base, Some(&cookie)).await;
                assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
                assert!(
                    answer.new_bucket.is_none(),
                    "a user who sent bucket {bucket} was given another: {answer:?}"
                );
                releases.push(answer.release);
            }
            let release = &releases[0];
            assert!(
                releases.iter().all(|r| r == release),
                "user {user} (bucket {bucket}) changed release at a held {percent}%: {releases:?}"
            );
            let want = if *bucket < percent { "v2" } else { "v1" };
            assert_eq!(
                release, want,
                "user {user} (bucket {bucket}) at {percent}%: {releases:?}"
            );
            if percent == 10 {
                assert_eq!(
                    release, first_release,
                    "user {user} (bucket {bucket}) moved once it had its cookie"
                );
            }
            let now_on_canary = release == "v2";
            assert!(
                !was_on_canary[user] || now_on_canary,
                "user {user} (bucket {bucket}) left the canary when the share grew to {percent}%"
            );
            was_on_canary[user] = now_on_canary;
            on_canary += usize::from(now_on_canary);
        }
        if percent == 25 || percent == 50 {
            // With 100 random buckets both sides are populated (P(not) < 1e-12), so the
            // stickiness above was exercised in both directions.
            assert!(
                (1..USERS).contains(&on_canary),
                "{on_canary} of {USERS} users on the canary at {percent}%"
            );
        }
        if percent == 100 {
            assert_eq!(on_canary, USERS, "every bucket is below 100");
        }
    }
}

#[tokio::test]
async fn the_preview_secret_reaches_green_at_0_percent_and_a_wrong_one_does_not() {
    // Arrange
    let stack = TestStack::builder()
        .proxy(|p| p.extra_toml(&format!("[canary]\npreview_secret = {PREVIEW_SECRET:?}\n")))
        .start()
        .await;
    let (code, body) = canary(&stack, "green", 0).await;
    assert_eq!(code, StatusCode::OK, "the canary did not start: {body}");
    assert_eq!(body["canary"]["percent"], 0, "{body}");
    let client = http_client(REQUEST_TIMEOUT);
    let url = stack.proxy.public_url("/healthz");
    let release_with = |header: Option<&str>, cookie: Option<String>| {
        let mut request = client.get(&url);
        if let Some(value) = header {
            request = request.header("x-bluegreen-preview", value);
        }
        if let Some(cookie) = cookie {
            request = request.header(COOKIE, cookie);
        }
        async move {
            let response = request
                .send()
                .await
                .unwrap_or_else(|e| panic!("GET /healthz through the proxy failed: {e}"));
            assert_eq!(response.status(), StatusCode::OK);
            release_of(&response)
        }
    };
    let wrong = format!("{PREVIEW_SECRET}x");

    // Act
    let by_header = release_with(Some(PREVIEW_SECRET), None).await;
    let by_cookie = release_with(None, Some(format!("bg_preview={PREVIEW_SECRET}"))).await;
    let wrong_header = release_with(Some(&wrong), None).await;
    let wrong_cookie = release_with(None, Some(format!("bg_preview={wrong}"))).await;
    let prefix_header = release_with(Some(&PREVIEW_SECRET[..16]), None).await;
    let mut plain = Vec::new();
    for _ in 0..50 {
        plain.push(release_with(None, None).await);
    }

    // Assert
    assert_eq!(by_header, "v2", "the preview header reaches the candidate");
    assert_eq!(by_cookie, "v2", "the preview cookie reaches the candidate");
    assert_eq!(
        wrong_header, "v1",
        "a wrong preview header is an ordinary user"
    );
    assert_eq!(
        wrong_cookie, "v1",
        "a wrong preview cookie is an ordinary user"
    );
    assert_eq!(
        prefix_header, "v1",
        "a prefix of the secret is not the secret"
    );
    assert!(
        plain.iter().all(|r| r == "v1"),
        "at 0% no ordinary user reaches the canary: {plain:?}"
    );
}

#[tokio::test]
async fn a_canary_on_the_active_slot_is_refused() {
    // Arrange
    let stack = TestStack::start().await;

    // Act
    let (code, body) = canary(&stack, "blue", 10).await;

    // Assert
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(error.contains("active"), "the refusal says why: {body}");
    let status = stack.proxy.status().await;
    assert!(status["canary"].is_null(), "{status}");
    assert_eq!(status["active"], "blue", "{status}");
}

#[tokio::test]
async fn a_canary_of_a_release_that_fails_the_gate_is_refused_at_the_create_step() {
    // Arrange
    let stack = TestStack::builder()
        .green(Shortener::builder().release("v2").fault("create-500"))
        .start()
        .await;
    let client = http_client(REQUEST_TIMEOUT);

    // Act
    let (code, body) = canary(&stack, "green", 10).await;

    // Assert
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    assert!(body["error"].is_string(), "{body}");
    assert_eq!(body["failure"]["scenario"], "create-and-follow", "{body}");
    assert_eq!(body["failure"]["step"], "create", "{body}");
    assert!(body["failure"]["expected"].is_string(), "{body}");
    assert!(body["failure"]["got"].is_string(), "{body}");
    let status = stack.proxy.status().await;
    assert!(
        status["canary"].is_null(),
        "a refused canary takes no share: {status}"
    );
    for _ in 0..50 {
        let answer = get(&client, &stack.base(), None).await;
        assert_eq!(answer.release, "v1", "{answer:?}");
        assert!(
            answer.new_bucket.is_none(),
            "without a canary nobody needs a bucket: {answer:?}"
        );
    }
}
