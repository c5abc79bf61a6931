//! The real binary: readiness, flags from the environment, two releases on one database,
//! restarts, and graceful shutdown.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;
use tokio::task::JoinSet;

use crate::support::*;

on_each_engine!(
    two_releases_on_one_database_lose_no_link,
    two_processes_racing_for_a_code_give_it_to_exactly_one,
    a_restart_keeps_the_data,
    sigterm_lets_an_in_flight_request_finish_then_exits_0,
    every_flag_can_come_from_the_environment,
);

/// Links each writer task creates in the two-process test.
const LINKS_PER_TASK: usize = 50;
/// Writer tasks per process.
const TASKS_PER_PROCESS: usize = 4;

/// v1 and v2 on one database, writing and reading at once: each link one release writes, the
/// other reads at once, and nothing is lost.
async fn two_releases_on_one_database_lose_no_link(engine: Engine) {
    let db = TestDb::new(engine).await;
    let (v1, v2) = tokio::join!(
        ChildApp::start(&db, &["--release", "v1"]),
        ChildApp::start(&db, &["--release", "v2"]),
    );
    let slots = [Arc::new(v1), Arc::new(v2)];

    let mut writers = JoinSet::new();
    for (slot, other) in [(&slots[0], &slots[1]), (&slots[1], &slots[0])] {
        for task in 0..TASKS_PER_PROCESS {
            let (slot, other) = (Arc::clone(slot), Arc::clone(other));
            writers.spawn(async move {
                let mut written = Vec::new();
                for i in 0..LINKS_PER_TASK {
                    let url = format!("https://example.com/{}/{task}/{i}", slot.addr.port());
                    let link = slot.create(&url, None).await;
                    let code = link["code"].as_str().expect("a code").to_owned();
                    let seen = send(other.get(&format!("/api/links/{code}"))).await;
                    assert_eq!(seen.status(), StatusCode::OK, "{code} via {}", other.addr);
                    assert_eq!(json_of(seen).await["url"], url.as_str());
                    written.push((code, url));
                }
                written
            });
        }
    }
    let mut written = HashMap::new();
    while let Some(batch) = writers.join_next().await {
        written.extend(batch.expect("a writer task"));
    }

    let expected = 2 * TASKS_PER_PROCESS * LINKS_PER_TASK;
    assert_eq!(written.len(), expected, "every code is distinct");
    let written = Arc::new(written);
    let mut readers = JoinSet::new();
    for slot in &slots {
        let (slot, written) = (Arc::clone(slot), Arc::clone(&written));
        readers.spawn(async move {
            for (code, url) in written.iter() {
                let res = send(slot.get(&format!("/{code}"))).await;
                assert_eq!(res.status(), StatusCode::FOUND, "{code} via {}", slot.addr);
                assert_eq!(header(&res, "location"), url);
            }
        });
    }
    while let Some(done) = readers.join_next().await {
        done.expect("a reader task");
    }
    let page = json_of(send(slots[0].get("/api/links?limit=500")).await).await;
    let links = page["links"].as_array().expect("a links array");
    assert_eq!(links.len(), expected);
    assert!(
        links.iter().all(|link| link["clicks"] == 2),
        "one click through each process"
    );
    let releases: HashSet<_> = links.iter().filter_map(|l| l["release"].as_str()).collect();
    assert_eq!(releases, HashSet::from(["v1", "v2"]));
}

async fn two_processes_racing_for_a_code_give_it_to_exactly_one(engine: Engine) {
    let db = TestDb::new(engine).await;
    let blue = Arc::new(ChildApp::start(&db, &["--release", "blue"]).await);
    let green = Arc::new(ChildApp::start(&db, &["--release", "green"]).await);

    let mut racers = JoinSet::new();
    for slot in [&blue, &green] {
        let slot = Arc::clone(slot);
        racers.spawn(async move {
            let mut statuses = Vec::new();
            for i in 0..30 {
                let body = json!({ "url": "https://example.com/", "code": format!("race-{i}") });
                statuses.push(send(slot.post_json("/api/links", &body)).await.status());
            }
            statuses
        });
    }
    let mut results = Vec::new();
    while let Some(statuses) = racers.join_next().await {
        results.push(statuses.expect("a racer task"));
    }

    let (first, second) = (&results[0], &results[1]);
    for (i, (a, b)) in first.iter().zip(second).enumerate() {
        let mut pair = [*a, *b];
        pair.sort();
        assert_eq!(
            pair,
            [StatusCode::CREATED, StatusCode::CONFLICT],
            "race-{i}"
        );
    }
    assert_eq!(first.len(), 30);
}

/// Reads run on blocking threads, on two reader connections: a burst of them must queue for a
/// few threads, not start one thread each (200 concurrent reads started 120 threads before the
/// pool was bounded).
#[cfg(target_os = "linux")]
mod a_burst_of_reads_runs_on_a_bounded_number_of_threads {
    use super::Engine;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sqlite() {
        super::a_burst_of_reads_runs_on_a_bounded_number_of_threads(Engine::Sqlite).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn postgres() {
        super::a_burst_of_reads_runs_on_a_bounded_number_of_threads(Engine::Postgres).await;
    }
}

#[cfg(target_os = "linux")]
async fn a_burst_of_reads_runs_on_a_bounded_number_of_threads(engine: Engine) {
    const READS: usize = 200;
    let db = TestDb::new(engine).await;
    let app = Arc::new(ChildApp::start(&db, &[]).await);
    let code = app.create("https://example.com/read", None).await["code"]
        .as_str()
        .expect("a code")
        .to_owned();
    let mut reads = JoinSet::new();
    for _ in 0..READS {
        let (app, code) = (Arc::clone(&app), code.clone());
        reads.spawn(async move { send(app.get(&format!("/api/links/{code}"))).await.status() });
    }
    while let Some(status) = reads.join_next().await {
        assert_eq!(status.expect("a read task"), StatusCode::OK);
    }
    let workers = std::thread::available_parallelism().map_or(1, usize::from);
    // The runtime's workers and 8 blocking threads, the main thread, the SQLite writer and
    // checkpointer, and slack for a thread of a platform's own.
    let bound = workers + 8 + 3 + 1;
    let threads = app.process.threads().await;
    assert!(
        threads <= bound,
        "{threads} threads after {READS} concurrent reads (bound {bound})"
    );
}

async fn a_restart_keeps_the_data(engine: Engine) {
    let db = TestDb::new(engine).await;
    let mut first = ChildApp::start(&db, &[]).await;
    let mut codes = Vec::new();
    for i in 0..20 {
        codes.push(
            first
                .create(&format!("https://example.com/{i}"), None)
                .await["code"]
                .clone(),
        );
    }
    send(first.get(&format!("/{}", codes[0].as_str().expect("a code")))).await;
    first.process.sigkill().await;

    let second = ChildApp::start(&db, &["--release", "v2"]).await;

    for (i, code) in codes.iter().enumerate() {
        let code = code.as_str().expect("a code");
        let res = send(second.get(&format!("/{code}"))).await;
        assert_eq!(res.status(), StatusCode::FOUND);
        assert_eq!(header(&res, "location"), format!("https://example.com/{i}"));
    }
    let first_link = json_of(
        send(second.get(&format!(
            "/api/links/{}",
            codes[0].as_str().expect("a code")
        )))
        .await,
    )
    .await;
    assert_eq!(first_link["clicks"], 2);
    assert_eq!(first_link["release"], "v1");
}

async fn sigterm_lets_an_in_flight_request_finish_then_exits_0(engine: Engine) {
    let db = TestDb::new(engine).await;
    let mut slot = ChildApp::start(&db, &["--fault", "latency=1000"]).await;
    let slow = slot.get("/healthz");
    let started = Instant::now();
    let in_flight = tokio::spawn(async move { send(slow).await.status() });
    assert!(
        slot.process.wait_for_log("fault latency", PATIENCE).await,
        "the slow request never reached the handler"
    );

    let status = slot.process.terminate().await;

    assert_eq!(in_flight.await.expect("the request task"), StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(1000));
    assert!(
        status.success(),
        "exit status {status}; stderr:\n{}",
        slot.process.log().await
    );
    // The child wrote its log itself, so it is complete once the child has exited.
    let log = slot.process.log().await;
    assert!(log.contains("stopped gracefully"), "{log}");
}

async fn every_flag_can_come_from_the_environment(engine: Engine) {
    let db = TestDb::new(engine).await;
    let db_arg = db.arg();
    let env = [
        ("SHORTENER_LISTEN", "127.0.0.1:0"),
        ("SHORTENER_DB", db_arg.as_str()),
        ("SHORTENER_RELEASE", "env-7"),
        ("SHORTENER_FAULT", "latency=1,fail-after=3"),
        ("SHORTENER_PUBLIC_HOST", "a.example,b.example"),
    ];
    let slot = ChildApp::spawn(&[], &env).await;

    let health = send(slot.get("/healthz")).await;
    let loop_a = send(slot.post_json("/api/links", &json!({ "url": "https://A.example/" }))).await;
    let loop_b = send(slot.post_json("/api/links", &json!({ "url": "https://b.example./" }))).await;
    let fourth = send(slot.get("/healthz")).await;

    assert_eq!(header(&health, "x-release"), "env-7");
    assert_eq!(health.status(), StatusCode::OK);
    assert!(
        error_of(loop_a, StatusCode::BAD_REQUEST)
            .await
            .contains("points back")
    );
    assert!(
        error_of(loop_b, StatusCode::BAD_REQUEST)
            .await
            .contains("points back")
    );
    assert_eq!(fourth.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        db.schema_version().await > 0,
        "the app migrated the database it was given"
    );
}

#[test]
fn an_unknown_fault_kind_stops_startup_naming_it() {
    let from_flag = std::process::Command::new(env!("CARGO_BIN_EXE_shortener"))
        .args(["--listen", "127.0.0.1:0", "--fault", "explode"])
        .output()
        .expect("the binary runs");
    let from_env = std::process::Command::new(env!("CARGO_BIN_EXE_shortener"))
        .args(["--listen", "127.0.0.1:0"])
        .env("SHORTENER_FAULT", "create-500,explode-env")
        .output()
        .expect("the binary runs");

    for (output, name) in [(from_flag, "explode"), (from_env, "explode-env")] {
        assert_eq!(output.status.code(), Some(2), "a usage error");
        assert!(output.stdout.is_empty(), "no readiness line");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(&format!("`{name}`")), "{stderr}");
    }
}
