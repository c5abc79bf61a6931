//! `/healthz`: 200 only when the store answers.

use reqwest::StatusCode;
use serde_json::json;

use crate::support::*;

on_each_engine!(
    a_working_store_is_healthy,
    an_unusable_store_is_503_and_other_routes_500_without_leaking,
);

async fn a_working_store_is_healthy(engine: Engine) {
    let app = spawn_app_with(engine, &["--release", "v4"]).await;

    let res = send(app.get("/healthz")).await;

    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        json_of(res).await,
        json!({ "status": "ok", "release": "v4" })
    );
}

async fn an_unusable_store_is_503_and_other_routes_500_without_leaking(engine: Engine) {
    let app = spawn_app(engine).await;
    app.create("https://example.com/", Some("before")).await;
    // Another process breaking the database under us, as a bad migration would.
    app.db.execute("DROP TABLE links").await;

    let health = send(app.get("/healthz")).await;
    let redirect = send(app.get("/before")).await;
    let create = send(app.post_json("/api/links", &json!({ "url": "https://example.com/" }))).await;

    assert_eq!(health.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(header(&health, "x-release"), "v1");
    let body = json_of(health).await;
    assert_eq!(body["status"], "unavailable");
    assert_eq!(body["release"], "v1");
    assert!(
        body["error"].as_str().is_some_and(|e| e.contains("links")),
        "{body}"
    );
    assert_eq!(redirect.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let message = error_of(create, StatusCode::INTERNAL_SERVER_ERROR).await;
    assert!(
        !message.contains("links"),
        "internal causes stay in the log: {message}"
    );
}
