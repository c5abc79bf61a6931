//! A 32 MB body crosses the proxy intact both ways: up to the echo upstream, and back; and
//! an HTTP/2 body without a length, which the proxy sends upstream in chunks.

use std::time::Duration;

use bytes::Bytes;
use e2e::client::h2_connect;
use e2e::{EchoStack, fnv64, http_client};
use futures_util::stream;
use http_body_util::{BodyExt as _, StreamBody};
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

/// The upstream direction: what the echo says it received (its length and hash headers).
fn assert_echo_received(headers: &http::HeaderMap, sent: &[u8]) {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    assert_eq!(
        header("x-echo-received-len"),
        Some(sent.len().to_string()),
        "the upstream got another length"
    );
    assert_eq!(
        header("x-echo-received-fnv64"),
        Some(format!("{:016x}", fnv64(sent))),
        "the upstream got other bytes"
    );
}

async fn assert_round_trip(response: reqwest::Response, sent: &[u8]) {
    assert_eq!(response.status(), StatusCode::OK);
    assert_echo_received(response.headers(), sent);
    let body = response.bytes().await.expect("the whole body comes back");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_body_without_a_length_reaches_the_upstream_intact() {
    // Arrange: an HTTP/2 upload whose size the proxy cannot know in advance, so it goes
    // upstream (HTTP/1.1) in chunks.
    let stack = EchoStack::start().await;
    let addr = stack.proxy.public_addr();
    let sent: Vec<u8> = payload().into_iter().take(4 * 1024 * 1024).collect();
    let frames: Vec<Result<hyper::body::Frame<Bytes>, std::io::Error>> = sent
        .chunks(CHUNK)
        .map(|c| Ok(hyper::body::Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    let (mut sender, connection) = h2_connect(addr).await;
    let request = http::Request::post(format!("http://{addr}/echo-body"))
        .body(StreamBody::new(stream::iter(frames)))
        .expect("a constant request is valid");

    // Act
    let response = tokio::time::timeout(TIMEOUT, sender.send_request(request))
        .await
        .expect("an HTTP/2 answer within the timeout")
        .expect("an HTTP/2 answer");

    // Assert
    assert_eq!(response.status(), StatusCode::OK);
    assert_echo_received(response.headers(), &sent);
    let body = tokio::time::timeout(TIMEOUT, response.into_body().collect())
        .await
        .expect("the body within the timeout")
        .expect("the body arrives")
        .to_bytes();
    assert!(body == sent, "the client got other bytes back");
    connection.abort();
}
