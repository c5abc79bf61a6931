//! A green that is not running at all is refused at the first probe, and blue keeps serving.

use std::time::Duration;

use e2e::client::create_link;
use e2e::{TestStack, http_client};
use reqwest::StatusCode;

const TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_crashed_green_is_refused_by_the_health_scenario() {
    // Arrange
    let mut stack = TestStack::start().await;
    stack.green.sigkill().await;
    let client = http_client(TIMEOUT);

    // Act
    let (code, refusal) = stack.proxy.switch("green").await;

    // Assert
    assert_eq!(
        code,
        StatusCode::CONFLICT,
        "the switch was not refused: {refusal}"
    );
    assert_eq!(refusal["failure"]["scenario"], "health", "{refusal}");
    assert_eq!(refusal["failure"]["step"], "healthz", "{refusal}");
    assert_eq!(stack.proxy.active().await, "blue");
    let link = create_link(&client, &stack.base(), "https://e2e.example/still-blue")
        .await
        .expect("blue still serves");
    assert_eq!(link.release, "v1");
}
