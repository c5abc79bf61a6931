//! PostgreSQL going away under the real binary: a crash and restart of the server under load
//! (503s while it is down, healing by itself, no acknowledged write lost), and a server that
//! cannot be reached at startup.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::eventually;
use e2e::postgres::PostgresServer;
use reqwest::StatusCode;
use serde_json::json;
use tokio::task::JoinSet;

use crate::support::*;

/// Tasks creating and following links at once.
const USERS: usize = 4;
/// Bound on each user's requests, whatever happens.
const MAX_REQUESTS_PER_USER: usize = 20_000;
/// Bound on the whole load.
const LOAD_DEADLINE: Duration = Duration::from_secs(90);
/// Acknowledged creates to see before the crash, and again after the restart.
const ACKED_BEFORE: usize = 20;
const ACKED_AFTER: usize = 20;
/// A user's pause after a 503, as a client backing off would: keeps the outage from being a
/// busy loop on two cores.
const BACKOFF: Duration = Duration::from_millis(10);

/// What the users saw.
#[derive(Default)]
struct Tally {
    /// Answers by route and status, e.g. `("create", 201)`.
    statuses: HashMap<(&'static str, u16), usize>,
    /// Every create answered 201: code and URL.
    acked: Vec<(String, String)>,
    /// Redirects answered 302, by code: each is a click that must be stored.
    clicks: HashMap<String, i64>,
    /// The body of each answer that was neither a success nor a 503.
    unexpected: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_crash_under_load_is_503s_then_heals_and_loses_no_acknowledged_write() {
    // A server of its own: this test crashes it.
    let server = PostgresServer::start().await;
    let db = server.create_database().await;
    let app = Arc::new(
        ChildApp::spawn(
            &[
                "--listen",
                "127.0.0.1:0",
                "--db",
                &db.url,
                "--release",
                "v1",
            ],
            &[],
        )
        .await,
    );
    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut users = JoinSet::new();
    for user in 0..USERS {
        let (app, tally, stop) = (Arc::clone(&app), Arc::clone(&tally), Arc::clone(&stop));
        users.spawn(async move { use_the_shortener(user, &app, &tally, &stop).await });
    }
    let acked = || tally.lock().expect("tally").acked.len();
    let health = || async { send(app.get("/healthz")).await.status() };

    assert!(
        eventually(|| async { acked() >= ACKED_BEFORE }, PATIENCE).await,
        "{} creates acknowledged before the crash, want {ACKED_BEFORE}",
        acked()
    );
    server.kill().await;
    assert!(
        eventually(
            || async { health().await == StatusCode::SERVICE_UNAVAILABLE },
            PATIENCE
        )
        .await,
        "/healthz never answered 503 with PostgreSQL down"
    );
    let refused =
        send(app.post_json("/api/links", &json!({ "url": "https://example.com/" }))).await;
    let refused_message = error_of(refused, StatusCode::SERVICE_UNAVAILABLE).await;
    let acked_while_down = acked();
    server.start_again().await;
    assert!(
        eventually(|| async { health().await == StatusCode::OK }, PATIENCE).await,
        "/healthz never answered 200 again after PostgreSQL restarted"
    );
    assert!(
        eventually(
            || async { acked() >= acked_while_down + ACKED_AFTER },
            PATIENCE
        )
        .await,
        "{} creates acknowledged after the restart, want {ACKED_AFTER}",
        acked() - acked_while_down
    );
    stop.store(true, Ordering::Relaxed);
    while let Some(user) = users.join_next().await {
        user.expect("a user task");
    }

    let tally = std::mem::take(&mut *tally.lock().expect("tally"));
    assert!(
        tally.unexpected.is_empty(),
        "answers other than success or 503: {:?}\n{:?}\nshortener log:\n{}",
        tally.unexpected,
        tally.statuses,
        app.process.log().await
    );
    for refused in [("create", 503), ("follow", 503)] {
        assert!(
            tally.statuses.get(&refused).is_some_and(|n| *n > 0),
            "no {refused:?} while the server was down: {:?}",
            tally.statuses
        );
    }
    assert!(refused_message.contains("unavailable"), "{refused_message}");
    for (code, url) in &tally.acked {
        let res = send(app.get(&format!("/api/links/{code}"))).await;
        assert_eq!(
            res.status(),
            StatusCode::OK,
            "acknowledged link {code} is lost"
        );
        let link = json_of(res).await;
        assert_eq!(link["url"], url.as_str(), "{code}");
        let clicks = tally.clicks.get(code).copied().unwrap_or(0);
        // A redirect answered 503 may still have been counted: at least, never fewer.
        assert!(
            link["clicks"].as_i64().is_some_and(|n| n >= clicks),
            "{code}: {clicks} redirects answered, {} clicks stored",
            link["clicks"]
        );
    }
}

/// One user: creates a link (with an `x-request-id`, as through the proxy), then follows the
/// last link it created, again and again, until `stop` or its bounds.
async fn use_the_shortener(user: usize, app: &ChildApp, tally: &Mutex<Tally>, stop: &AtomicBool) {
    let deadline = Instant::now() + LOAD_DEADLINE;
    let mut last: Option<String> = None;
    for i in 0..MAX_REQUESTS_PER_USER {
        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
            return;
        }
        let url = format!("https://example.com/{user}/{i}");
        let create = app
            .post_json("/api/links", &json!({ "url": url }))
            .header("x-request-id", format!("user-{user}-{i}"));
        let res = send(create).await;
        let mut failed = res.status() != StatusCode::CREATED;
        if failed {
            record_failure(tally, "create", res).await;
        } else {
            let code = json_of(res).await["code"]
                .as_str()
                .expect("a code")
                .to_owned();
            let mut tally = tally.lock().expect("tally");
            *tally.statuses.entry(("create", 201)).or_default() += 1;
            tally.acked.push((code.clone(), url));
            last = Some(code);
        }
        if let Some(code) = &last {
            let res = send(app.get(&format!("/{code}"))).await;
            if res.status() == StatusCode::FOUND {
                let mut tally = tally.lock().expect("tally");
                *tally.statuses.entry(("follow", 302)).or_default() += 1;
                *tally.clicks.entry(code.clone()).or_default() += 1;
            } else {
                failed = true;
                record_failure(tally, "follow", res).await;
            }
        }
        if failed {
            tokio::time::sleep(BACKOFF).await;
        }
    }
}

/// Counts a failed answer: a 503 with a JSON error is expected while the server is down;
/// anything else is kept for the failure message.
async fn record_failure(tally: &Mutex<Tally>, route: &'static str, res: reqwest::Response) {
    let status = res.status();
    let json = header(&res, "content-type").starts_with("application/json");
    let body = text_of(res).await;
    let mut tally = tally.lock().expect("tally");
    *tally.statuses.entry((route, status.as_u16())).or_default() += 1;
    // The redirect's errors are HTML pages; the API's are JSON.
    if status != StatusCode::SERVICE_UNAVAILABLE || (route == "create" && !json) {
        tally.unexpected.push(format!("{route}: {status} {body}"));
    }
}

#[tokio::test]
async fn an_unreachable_postgres_stops_startup_with_a_clear_error() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let url = format!("postgres://app:secret@127.0.0.1:{port}/links");
    let unreachable = tokio::process::Command::new(env!("CARGO_BIN_EXE_shortener"))
        .args(["--listen", "127.0.0.1:0", "--db", &url])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let unreachable = tokio::time::timeout(PATIENCE, unreachable)
        .await
        .expect("it gives up within its connect timeout")
        .expect("the binary runs");

    let stderr = String::from_utf8_lossy(&unreachable.stderr);
    assert_eq!(unreachable.status.code(), Some(1), "{stderr}");
    assert!(unreachable.stdout.is_empty(), "no readiness line");
    assert!(
        stderr.contains(&format!(
            "cannot open the database postgres://app@127.0.0.1:{port}/links"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("connect"), "{stderr}");
    assert!(
        !stderr.contains("secret"),
        "the password is not logged: {stderr}"
    );
}
