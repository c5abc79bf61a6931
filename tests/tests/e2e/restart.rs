//! The routing decision survives a restart: the persisted state, not the config, decides.

use std::time::Duration;

use e2e::client::{create_link, release_of};
use e2e::{TestStack, http_client};
use reqwest::StatusCode;
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_restarted_proxy_keeps_serving_the_slot_it_switched_to() {
    // Arrange
    let mut stack = TestStack::start().await;
    let (code, body) = stack.proxy.switch("green").await;
    assert_eq!(
        code,
        StatusCode::OK,
        "the switch to a healthy green was refused: {body}"
    );
    let client = http_client(TIMEOUT);

    // Act
    stack.proxy.restart().await;

    // Assert
    let status = stack.proxy.status().await;
    assert_eq!(status["active"], "green", "{status}");
    assert!(
        status["last_switch"].is_string(),
        "the switch time is kept: {status}"
    );
    let health = client
        .get(stack.proxy.public_url("/healthz"))
        .send()
        .await
        .expect("the restarted proxy answers");
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(release_of(&health), "v2");
    let body: Value = health.json().await.expect("healthz answers JSON");
    assert_eq!(body["release"], "v2");
    let link = create_link(&client, &stack.base(), "https://e2e.example/after-restart")
        .await
        .expect("a link is created through the restarted proxy");
    assert_eq!(link.release, "v2");
}

#[tokio::test]
async fn a_restarted_proxy_that_never_switched_serves_the_configured_slot() {
    // Arrange
    let mut stack = TestStack::start().await;
    let client = http_client(TIMEOUT);

    // Act
    stack.proxy.restart().await;

    // Assert
    assert_eq!(stack.proxy.active().await, "blue");
    let health = client
        .get(stack.proxy.public_url("/healthz"))
        .send()
        .await
        .expect("the restarted proxy answers");
    assert_eq!(release_of(&health), "v1");
}
