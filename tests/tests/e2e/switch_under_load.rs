//! Fifty switches back and forth under concurrent users: nobody sees an error or a reset,
//! both releases serve, and every link created along the way still resolves.

use std::time::Duration;

use e2e::client::{REQUEST_TIMEOUT, follow};
use e2e::{TestStack, Traffic, http_client};
use reqwest::StatusCode;

const CLIENTS: usize = 8;
const SWITCHES: usize = 50;
/// Users must get requests in between two switches, or the switches test nothing.
const TRAFFIC_TIMEOUT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_switches_under_load_lose_no_request() {
    // Arrange
    let stack = TestStack::start().await;
    let traffic = Traffic::start(&stack.base(), CLIENTS);
    assert!(
        traffic.wait_for_more(20, TRAFFIC_TIMEOUT).await,
        "the clients got no traffic through the proxy"
    );

    // Act
    let mut refused = Vec::new();
    for n in 0..SWITCHES {
        let to = if n % 2 == 0 { "green" } else { "blue" };
        let (code, body) = stack.proxy.switch(to).await;
        if code != StatusCode::OK {
            refused.push(format!("switch #{n} to {to}: {code} {body}"));
        } else {
            assert_eq!(body["active"], to, "switch #{n} answered 200 with {body}");
        }
        assert!(
            traffic.wait_for_more(CLIENTS as u64, TRAFFIC_TIMEOUT).await,
            "the clients stalled after switch #{n}"
        );
    }
    let report = traffic.stop().await;

    // Assert
    assert!(
        refused.is_empty(),
        "healthy switches were refused: {refused:#?}"
    );
    println!(
        "{} requests, {} links, per release {:?}",
        report.requests,
        report.links.len(),
        report.by_release
    );
    report.assert_no_failure("during the switches");
    assert!(
        report.requests >= (SWITCHES * CLIENTS) as u64,
        "only {} requests across {SWITCHES} switches",
        report.requests
    );
    for release in ["v1", "v2"] {
        assert!(
            report.by_release.get(release).copied().unwrap_or(0) > 0,
            "{release} served nothing: {:?}",
            report.by_release
        );
    }
    assert_eq!(
        stack.proxy.active().await,
        "blue",
        "50 switches end where they began"
    );
    let client = http_client(REQUEST_TIMEOUT);
    let mut unresolved = Vec::new();
    for link in &report.links {
        if let Err(e) = follow(&client, &stack.base(), &link.code, &link.url).await {
            unresolved.push(e);
        }
    }
    assert!(
        unresolved.is_empty(),
        "{} of {} links do not resolve, first ones: {:#?}",
        unresolved.len(),
        report.links.len(),
        &unresolved[..unresolved.len().min(10)]
    );
}
