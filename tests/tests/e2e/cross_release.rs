//! A green release that cannot read links written by another release is refused by the
//! cross-release scenario, while users keep being served by blue.

use std::time::Duration;

use e2e::{Shortener, TestStack, Traffic};
use reqwest::StatusCode;

const CLIENTS: usize = 2;
const TRAFFIC_TIMEOUT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_green_that_cannot_read_blue_links_is_refused_by_the_cross_release_scenario() {
    // Arrange
    let stack = TestStack::builder()
        .green(
            Shortener::builder()
                .release("v2")
                .fault("foreign-links-500"),
        )
        .start()
        .await;
    let traffic = Traffic::start(&stack.base(), CLIENTS);
    assert!(
        traffic.wait_for_more(10, TRAFFIC_TIMEOUT).await,
        "the background clients got no traffic through the proxy"
    );

    // Act
    let (code, refusal) = stack.proxy.switch("green").await;
    let report = traffic.stop().await;

    // Assert
    assert_eq!(
        code,
        StatusCode::CONFLICT,
        "the switch was not refused: {refusal}"
    );
    assert_eq!(refusal["failure"]["scenario"], "cross-release", "{refusal}");
    // Green fails the first step that reads a blue link through green.
    assert_eq!(
        refusal["failure"]["step"], "follow-on-candidate",
        "{refusal}"
    );
    report.assert_no_failure("across the releases");
    assert_eq!(stack.proxy.active().await, "blue");
}
