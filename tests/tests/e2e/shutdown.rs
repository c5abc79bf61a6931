//! SIGTERM drains: a request in flight when the proxy is told to stop still gets its answer.

use std::time::Duration;

use e2e::client::release_of;
use e2e::{Shortener, TestStack, eventually, http_client};
use reqwest::StatusCode;

/// Blue holds every answer this long, so that a request is surely in flight; below the
/// proxy's health-check timeout (1000 ms by default), so that blue stays up and keeps serving.
const LATENCY_MS: u64 = 600;
const TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_at_sigterm_completes() {
    // Arrange
    let mut stack = TestStack::builder()
        .blue(
            Shortener::builder()
                .release("v1")
                .fault(&format!("latency={LATENCY_MS}")),
        )
        .start()
        .await;
    let client = http_client(TIMEOUT);
    let url = stack.proxy.public_url("/healthz");
    let in_flight = tokio::spawn(async move { client.get(url).send().await });
    assert!(
        eventually(
            || async {
                stack.proxy.status().await["slots"]["blue"]["in_flight"]
                    .as_u64()
                    .unwrap_or(0)
                    > 0
            },
            TIMEOUT
        )
        .await,
        "the slow request never showed as in flight"
    );

    // Act
    let exit = stack.proxy.stop().await;

    // Assert
    let response = in_flight
        .await
        .expect("the client task ran")
        .expect("the in-flight request got an answer, not a reset");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(release_of(&response), "v1");
    assert!(
        exit.success(),
        "the proxy did not exit cleanly after draining: {exit}"
    );
}
