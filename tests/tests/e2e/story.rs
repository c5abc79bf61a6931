//! The story the proxy exists for: green's release cannot create links, the switch to green
//! is refused at the create step, and users never notice.

use std::time::Duration;

use e2e::{Shortener, TestStack, Traffic};
use reqwest::StatusCode;

/// Clients creating and following links during the switch attempt.
const CLIENTS: usize = 2;
const TRAFFIC_TIMEOUT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_green_that_cannot_create_links_is_refused_at_the_create_step_and_users_see_no_error() {
    // Arrange
    let stack = TestStack::builder()
        .green(Shortener::builder().release("v2").fault("create-500"))
        .start()
        .await;
    let traffic = Traffic::start(&stack.base(), CLIENTS);
    assert!(
        traffic.wait_for_more(10, TRAFFIC_TIMEOUT).await,
        "the background clients got no traffic through the proxy"
    );

    // Act
    let (code, refusal) = stack.proxy.switch("green").await;
    assert!(
        traffic.wait_for_more(10, TRAFFIC_TIMEOUT).await,
        "the background clients stalled after the refused switch"
    );
    let report = traffic.stop().await;

    // Assert
    assert_eq!(
        code,
        StatusCode::CONFLICT,
        "the switch was not refused: {refusal}"
    );
    assert!(
        refusal["error"].is_string(),
        "a refusal names its error: {refusal}"
    );
    assert_eq!(
        refusal["failure"]["scenario"], "create-and-follow",
        "{refusal}"
    );
    assert_eq!(refusal["failure"]["step"], "create", "{refusal}");
    assert!(refusal["failure"]["expected"].is_string(), "{refusal}");
    assert!(refusal["failure"]["got"].is_string(), "{refusal}");
    report.assert_no_failure("during the story");
    assert_eq!(
        report.by_release.keys().collect::<Vec<_>>(),
        ["v1"],
        "only blue (v1) may have served users: {:?}",
        report.by_release
    );
    let status = stack.proxy.status().await;
    assert_eq!(
        status["active"], "blue",
        "routing changed after a refusal: {status}"
    );
    assert_eq!(status["slots"]["green"]["release"], "v2", "{status}");
    let probe = &status["slots"]["green"]["last_probe"];
    assert_eq!(
        probe["ok"], false,
        "green's last probe is the refused one: {status}"
    );
    assert_eq!(probe["scenario"], "create-and-follow", "{status}");
    assert_eq!(probe["step"], "create", "{status}");
    assert!(probe["at"].is_string(), "{status}");
}
