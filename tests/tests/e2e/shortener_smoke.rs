//! The harness against the shortener alone: it starts, answers, restarts on its port.

use std::time::Duration;

use e2e::client::{create_link, follow, release_of};
use e2e::{Shortener, http_client};
use reqwest::StatusCode;
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_started_shortener_answers_healthz_with_its_release() {
    // Arrange
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let shortener = Shortener::builder().release("v7").start(dir.path()).await;
    let client = http_client(TIMEOUT);

    // Act
    let response = client
        .get(shortener.url("/healthz"))
        .send()
        .await
        .expect("healthz answers");

    // Assert
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(release_of(&response), "v7");
    let body: Value = response.json().await.expect("healthz answers JSON");
    assert_eq!(body["status"], "ok");
    assert_eq!(body["release"], "v7");
}

#[tokio::test]
async fn a_restarted_shortener_keeps_its_port_and_its_links() {
    // Arrange
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let mut shortener = Shortener::builder().start(dir.path()).await;
    let client = http_client(TIMEOUT);
    let base = shortener.url("");
    let link = create_link(&client, &base, "https://e2e.example/restart")
        .await
        .expect("the link is created");
    let addr = shortener.addr();

    // Act
    shortener.restart().await;

    // Assert
    assert_eq!(shortener.addr(), addr);
    let release = follow(&client, &base, &link.code, &link.url)
        .await
        .expect("the link survives the restart");
    assert_eq!(release, "v1");
}

#[tokio::test]
async fn two_shorteners_share_one_db() {
    // Arrange
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let blue = Shortener::builder().release("v1").start(dir.path()).await;
    let green = Shortener::builder().release("v2").start(dir.path()).await;
    let client = http_client(TIMEOUT);

    // Act
    let link = create_link(&client, &blue.url(""), "https://e2e.example/shared")
        .await
        .expect("blue creates the link");
    let release = follow(&client, &green.url(""), &link.code, &link.url).await;

    // Assert
    assert_eq!(link.release, "v1");
    assert_eq!(release.as_deref(), Ok("v2"));
}

#[tokio::test]
async fn a_create_500_shortener_refuses_creates_but_serves_health() {
    // Arrange
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let broken = Shortener::builder()
        .release("v2")
        .fault("create-500")
        .start(dir.path())
        .await;
    let client = http_client(TIMEOUT);

    // Act
    let created = create_link(&client, &broken.url(""), "https://e2e.example/x").await;
    let health = client
        .get(broken.url("/healthz"))
        .send()
        .await
        .expect("healthz answers");

    // Assert
    let error = created.expect_err("create-500 refuses creates");
    assert!(error.contains("500"), "{error}");
    assert_eq!(health.status(), StatusCode::OK);
}
