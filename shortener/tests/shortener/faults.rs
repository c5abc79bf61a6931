//! Fault injection for release drills.

use std::time::{Duration, Instant};

use clap::Parser;
use reqwest::StatusCode;
use serde_json::json;
use shortener::Args;

use crate::support::*;

on_each_engine!(
    create_500_breaks_creation_only,
    foreign_links_500_fails_rows_of_other_releases_only,
    fail_after_n_answers_500_from_request_n_plus_1,
    latency_delays_every_response,
    faults_combine,
);

async fn create_500_breaks_creation_only(engine: Engine) {
    let db = TestDb::new(engine).await;
    let healthy = spawn_app_on(&db, &[]).await;
    healthy.create("https://example.com/old", Some("old")).await;
    let broken = spawn_app_on(&db, &["--release", "v2", "--fault", "create-500"]).await;

    let api =
        send(broken.post_json("/api/links", &json!({ "url": "https://example.com/new" }))).await;
    let form = send(broken.post_form("/your-url", &[("url", "https://example.com/new")])).await;

    assert_eq!(header(&api, "x-release"), "v2");
    assert!(
        error_of(api, StatusCode::INTERNAL_SERVER_ERROR)
            .await
            .contains("create-500")
    );
    assert_eq!(form.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(header(&form, "content-type").starts_with("text/html"));
    assert_eq!(send(broken.get("/")).await.status(), StatusCode::OK);
    assert_eq!(send(broken.get("/old")).await.status(), StatusCode::FOUND);
    assert_eq!(send(broken.get("/healthz")).await.status(), StatusCode::OK);
    let list = json_of(send(broken.get("/api/links")).await).await;
    assert_eq!(
        list["links"].as_array().map(Vec::len),
        Some(1),
        "nothing created"
    );
}

async fn foreign_links_500_fails_rows_of_other_releases_only(engine: Engine) {
    let db = TestDb::new(engine).await;
    let v1 = spawn_app_on(&db, &["--release", "v1"]).await;
    let v2 = spawn_app_on(&db, &["--release", "v2", "--fault", "foreign-links-500"]).await;
    v1.create("https://example.com/1", Some("from-v1")).await;
    v2.create("https://example.com/2", Some("from-v2")).await;

    let foreign = send(v2.get("/from-v1")).await;
    let own = send(v2.get("/from-v2")).await;

    assert_eq!(foreign.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(header(&foreign, "x-release"), "v2");
    assert_eq!(own.status(), StatusCode::FOUND);
    assert_eq!(
        send(v2.get("/unknown")).await.status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(send(v1.get("/from-v1")).await.status(), StatusCode::FOUND);
    assert_eq!(send(v1.get("/from-v2")).await.status(), StatusCode::FOUND);
    let link = json_of(send(v1.get("/api/links/from-v1")).await).await;
    assert_eq!(link["clicks"], 1, "the failed redirect was not counted");
}

async fn fail_after_n_answers_500_from_request_n_plus_1(engine: Engine) {
    let app = spawn_app_with(engine, &["--fault", "fail-after=3"]).await;

    let first = [
        send(app.get("/healthz")).await.status(),
        send(app.get("/")).await.status(),
        send(app.get("/missing")).await.status(),
    ];
    let healthz = send(app.get("/healthz")).await;
    let home = send(app.get("/")).await;
    let create = send(app.post_json("/api/links", &json!({ "url": "https://example.com/" }))).await;

    assert_eq!(
        first,
        [StatusCode::OK, StatusCode::OK, StatusCode::NOT_FOUND]
    );
    assert_eq!(header(&healthz, "x-release"), "v1");
    assert!(
        error_of(healthz, StatusCode::INTERNAL_SERVER_ERROR)
            .await
            .contains("fail-after=3")
    );
    assert_eq!(home.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(header(&home, "content-type").starts_with("text/html"));
    error_of(create, StatusCode::INTERNAL_SERVER_ERROR).await;
}

async fn latency_delays_every_response(engine: Engine) {
    let app = spawn_app_with(engine, &["--fault", "latency=300"]).await;

    for path in ["/healthz", "/missing"] {
        let started = Instant::now();
        let res = send(app.get(path)).await;
        assert!(res.status() != StatusCode::INTERNAL_SERVER_ERROR);
        assert!(started.elapsed() >= Duration::from_millis(300), "{path}");
    }
}

async fn faults_combine(engine: Engine) {
    let app = spawn_app_with(engine, &["--fault", "latency=50", "--fault", "create-500"]).await;

    let started = Instant::now();
    let res = send(app.post_json("/api/links", &json!({ "url": "https://example.com/" }))).await;

    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(started.elapsed() >= Duration::from_millis(50));
}

#[test]
fn an_unknown_fault_kind_is_a_clap_error_naming_it() {
    let err = Args::try_parse_from(["shortener", "--fault", "slow-ish"]).expect_err("unknown kind");

    assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
    assert!(err.to_string().contains("slow-ish"), "{err}");
}
