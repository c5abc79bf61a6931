//! "Every user request goes to the active slot": a slow active is still the active, and its
//! users are never handed to a candidate that has not passed the gate.

use std::time::Duration;

use e2e::client::{REQUEST_TIMEOUT, create_link};
use e2e::{Shortener, TestStack, eventually, http_client};

/// Slower than the proxy's default health-check timeout (1000 ms), well within its
/// response timeout (30 s): blue answers every request, just late.
const BLUE_LATENCY_MS: u64 = 1_500;
/// Long enough for the default health checker (every 1 s, 3 failures) to act.
const HEALTH_VERDICT_TIMEOUT: Duration = Duration::from_secs(15);
const CREATES: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_active_keeps_its_users_away_from_an_ungated_green() {
    // Arrange
    let stack = TestStack::builder()
        .blue(
            Shortener::builder()
                .release("v1")
                .fault(&format!("latency={BLUE_LATENCY_MS}")),
        )
        .green(Shortener::builder().release("v2").fault("create-500"))
        .start()
        .await;
    // Not a precondition (the proxy may judge a slow slot alive): gives the health checker
    // the time to reach a verdict about blue before users arrive.
    let _blue_marked_down = eventually(
        || async { stack.proxy.status().await["slots"]["blue"]["healthy"] == false },
        HEALTH_VERDICT_TIMEOUT,
    )
    .await;
    let client = http_client(REQUEST_TIMEOUT);

    // Act
    let mut results = Vec::new();
    for n in 0..CREATES {
        let url = format!("https://e2e.example/slow-blue/{n}");
        results.push(create_link(&client, &stack.base(), &url).await);
    }

    // Assert
    let status = stack.proxy.status().await;
    assert_eq!(status["active"], "blue", "{status}");
    for result in results {
        let link = result.unwrap_or_else(|e| {
            panic!("a user was not served by the active slot: {e}\nstatus: {status}")
        });
        assert_eq!(link.release, "v1", "a user was served by green: {status}");
    }
}
