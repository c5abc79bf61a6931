//! Rollback returns traffic to the slot that served before the last switch.

use std::time::Duration;

use e2e::client::create_link;
use e2e::{TestStack, http_client};
use reqwest::StatusCode;

const TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn rollback_after_a_switch_returns_to_blue() {
    // Arrange
    let stack = TestStack::start().await;
    let (code, body) = stack.proxy.switch("green").await;
    assert_eq!(
        code,
        StatusCode::OK,
        "the switch to a healthy green was refused: {body}"
    );
    assert_eq!(body["active"], "green", "{body}");
    assert_eq!(body["slots"]["green"]["last_probe"]["ok"], true, "{body}");
    assert!(body["last_switch"].is_string(), "{body}");
    let client = http_client(TIMEOUT);

    // Act
    let (code, status) = stack.proxy.rollback().await;

    // Assert
    assert_eq!(code, StatusCode::OK, "{status}");
    assert_eq!(status["active"], "blue", "{status}");
    let link = create_link(&client, &stack.base(), "https://e2e.example/rolled-back")
        .await
        .expect("a link is created through the proxy");
    assert_eq!(link.release, "v1");
}
