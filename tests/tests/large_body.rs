//! A 32 MB body crosses the proxy intact both ways: up to the echo upstream, and back.

use std::time::Duration;

use bytes::Bytes;
use e2e::{EchoStack, fnv64, http_client};
use futures_util::stream;
use reqwest::{Body, StatusCode};

const SIZE: usize = 32 * 1024 * 1024;
/// The chunk size of the streamed (chunked) upload.
const CHUNK: usize = 64 * 1024;
/// Debug builds copying 64 MB on a busy 2-core machine.
const TIMEOUT: Duration = Duration::from_secs(120);

/// Bytes that differ from position to position, so that a reordered or repeated chunk shows.
fn payload() -> Vec<u8> {
    (0..SIZE)
        .map(|i| (i.wrapping_mul(31) ^ (i >> 12)) as u8)
        .collect()
}

async fn assert_round_trip(response: reqwest::Response, sent: &[u8]) {
    assert_eq!(response.status(), StatusCode::OK);
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let received_len = header("x-echo-received-len");
    let received_hash = header("x-echo-received-fnv64");
    let body = response.bytes().await.expect("the whole body comes back");
    // Upstream direction: what the echo received.
    assert_eq!(
        received_len,
        Some(sent.len().to_string()),
        "the upstream got another length"
    );
    assert_eq!(
        received_hash,
        Some(format!("{:016x}", fnv64(sent))),
        "the upstream got other bytes"
    );
    // Downstream direction: what came back.
    assert_eq!(body.len(), sent.len(), "the client got another length back");
    assert!(body == sent, "the client got other bytes back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_32_mb_body_with_a_length_passes_intact_both_ways() {
    // Arrange
    let stack = EchoStack::start().await;
    let client = http_client(TIMEOUT);
    let sent = payload();

    // Act
    let response = client
        .post(stack.proxy.public_url("/echo-body"))
        .body(sent.clone())
        .send()
        .await
        .expect("the proxy answers");

    // Assert
    assert_round_trip(response, &sent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_32_mb_chunked_body_passes_intact_both_ways() {
    // Arrange
    let stack = EchoStack::start().await;
    let client = http_client(TIMEOUT);
    let sent = payload();
    let chunks: Vec<Result<Bytes, std::io::Error>> = sent
        .chunks(CHUNK)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();

    // Act
    let response = client
        .post(stack.proxy.public_url("/echo-body"))
        .body(Body::wrap_stream(stream::iter(chunks)))
        .send()
        .await
        .expect("the proxy answers");

    // Assert
    assert_round_trip(response, &sent).await;
}
