//! What the proxy does to headers, seen from both ends: an echo upstream reports the request
//! as forwarded, a raw client reads the response as sent.

use std::time::Duration;

use bytes::Bytes;
use e2e::EchoStack;
use e2e::client::{RawResponse, h2_connect, raw_exchange};
use e2e::echo::{HOP_BY_HOP_RESPONSE, SEND_HOP_BY_HOP, echoed_header};
use e2e::http_client;
use http_body_util::{BodyExt as _, Empty};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(10);

/// Sends a raw HTTP/1.1 request through the proxy and returns the response and, parsed, what
/// the echo upstream received.
async fn through_proxy(stack: &EchoStack, request: &str) -> (RawResponse, Value) {
    let response = raw_exchange(stack.proxy.public_addr(), request)
        .await
        .unwrap_or_else(|e| panic!("no response through the proxy: {e}"));
    assert_eq!(
        response.status,
        200,
        "the proxy answered {}: {}",
        response.status,
        String::from_utf8_lossy(&response.body)
    );
    let echo = response.json();
    (response, echo)
}

#[tokio::test]
async fn hop_by_hop_request_headers_are_not_forwarded() {
    // Arrange
    let stack = EchoStack::start().await;
    let request = "GET /headers HTTP/1.1\r\n\
        Host: shop.example\r\n\
        Connection: close, X-Custom-Hop\r\n\
        X-Custom-Hop: secret-from-client\r\n\
        Keep-Alive: timeout=5\r\n\
        Proxy-Connection: keep-alive\r\n\
        TE: trailers\r\n\
        Trailer: X-Trail\r\n\
        X-End-To-End: kept\r\n\
        \r\n";

    // Act
    let (_, echo) = through_proxy(&stack, request).await;

    // Assert
    for name in [
        "connection",
        "x-custom-hop",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
    ] {
        assert!(
            echoed_header(&echo, name).is_empty(),
            "hop-by-hop `{name}` reached the upstream: {echo}"
        );
    }
    assert_eq!(echoed_header(&echo, "x-end-to-end"), ["kept"], "{echo}");
}

#[tokio::test]
async fn an_upgrade_request_header_is_not_forwarded() {
    // Arrange
    let stack = EchoStack::start().await;
    let request = "GET /headers HTTP/1.1\r\n\
        Host: shop.example\r\n\
        Connection: close\r\n\
        Upgrade: foo/1\r\n\
        \r\n";

    // Act
    let (_, echo) = through_proxy(&stack, request).await;

    // Assert
    assert!(echoed_header(&echo, "upgrade").is_empty(), "{echo}");
    assert!(echoed_header(&echo, "connection").is_empty(), "{echo}");
}

#[tokio::test]
async fn hop_by_hop_response_headers_are_not_returned() {
    // Arrange
    let stack = EchoStack::start().await;
    let request =
        format!("GET /headers HTTP/1.1\r\nHost: shop.example\r\n{SEND_HOP_BY_HOP}: 1\r\n\r\n");

    // Act
    let (response, _) = through_proxy(&stack, &request).await;

    // Assert
    for (name, _) in HOP_BY_HOP_RESPONSE
        .iter()
        .filter(|(n, _)| *n != "connection")
    {
        assert!(
            response.header_all(name).is_empty(),
            "hop-by-hop `{name}` reached the client: {:?}",
            response.headers
        );
    }
    // The proxy may speak for its own connection, but never with the upstream's words.
    for value in response.header_all("connection") {
        assert!(
            !value.to_ascii_lowercase().contains("x-custom-hop"),
            "the upstream's Connection reached the client: {:?}",
            response.headers
        );
    }
    assert_eq!(
        response.header("x-release"),
        Some("echo"),
        "end-to-end headers pass"
    );
}

#[tokio::test]
async fn x_forwarded_for_is_appended_to_an_incoming_value() {
    // Arrange
    let stack = EchoStack::start().await;
    let request = "GET /xff HTTP/1.1\r\n\
        Host: shop.example\r\n\
        Connection: close\r\n\
        X-Forwarded-For: 203.0.113.7\r\n\
        \r\n";

    // Act
    let (_, echo) = through_proxy(&stack, request).await;

    // Assert
    let forwarded_for = echoed_header(&echo, "x-forwarded-for").join(", ");
    assert_eq!(forwarded_for, "203.0.113.7, 127.0.0.1", "{echo}");
}

#[tokio::test]
async fn x_forwarded_for_is_the_client_address_when_absent() {
    // Arrange
    let stack = EchoStack::start().await;
    let request = "GET /xff HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n";

    // Act
    let (_, echo) = through_proxy(&stack, request).await;

    // Assert
    assert_eq!(
        echoed_header(&echo, "x-forwarded-for"),
        ["127.0.0.1"],
        "{echo}"
    );
}

#[tokio::test]
async fn host_is_kept_and_x_forwarded_proto_and_host_are_set() {
    // Arrange
    let stack = EchoStack::start().await;
    let request = "GET /host HTTP/1.1\r\nHost: shop.example:8443\r\nConnection: close\r\n\r\n";

    // Act
    let (_, echo) = through_proxy(&stack, request).await;

    // Assert
    assert_eq!(
        echoed_header(&echo, "host"),
        ["shop.example:8443"],
        "{echo}"
    );
    assert_eq!(
        echoed_header(&echo, "x-forwarded-host"),
        ["shop.example:8443"],
        "{echo}"
    );
    assert_eq!(
        echoed_header(&echo, "x-forwarded-proto"),
        ["http"],
        "{echo}"
    );
    assert_eq!(echo["path"], "/host", "{echo}");
}

#[tokio::test]
async fn a_request_id_is_generated_when_absent_and_returned_to_the_client() {
    // Arrange
    let stack = EchoStack::start().await;
    let client = http_client(TIMEOUT);
    let url = stack.proxy.public_url("/id");

    // Act
    let first = client.get(&url).send().await.expect("the proxy answers");
    let second = client.get(&url).send().await.expect("the proxy answers");

    // Assert
    let mut ids = Vec::new();
    for response in [first, second] {
        let returned = response
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .expect("the client gets an x-request-id");
        let echo: Value = response.json().await.expect("the echo answers JSON");
        assert!(!returned.is_empty());
        assert_eq!(
            echoed_header(&echo, "x-request-id"),
            [returned.as_str()],
            "{echo}"
        );
        ids.push(returned);
    }
    assert_ne!(ids[0], ids[1], "two requests got the same id");
}

#[tokio::test]
async fn an_incoming_request_id_is_kept_and_returned() {
    // Arrange
    let stack = EchoStack::start().await;
    let client = http_client(TIMEOUT);

    // Act
    let response = client
        .get(stack.proxy.public_url("/id"))
        .header("x-request-id", "e2e-fixed-id-42")
        .send()
        .await
        .expect("the proxy answers");

    // Assert
    let returned: Vec<_> = response
        .headers()
        .get_all("x-request-id")
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_owned))
        .collect();
    assert_eq!(returned, ["e2e-fixed-id-42"]);
    let echo: Value = response.json().await.expect("the echo answers JSON");
    assert_eq!(
        echoed_header(&echo, "x-request-id"),
        ["e2e-fixed-id-42"],
        "{echo}"
    );
}

#[tokio::test]
async fn http2_cleartext_requests_are_forwarded() {
    // Arrange
    let stack = EchoStack::start().await;
    let addr = stack.proxy.public_addr();
    let (mut sender, connection) = h2_connect(addr).await;
    let request = http::Request::get(format!("http://{addr}/over-h2"))
        .header("x-end-to-end", "kept")
        .body(Empty::<Bytes>::new())
        .expect("a constant request is valid");

    // Act
    let response = tokio::time::timeout(TIMEOUT, sender.send_request(request))
        .await
        .expect("an HTTP/2 answer within the timeout")
        .expect("an HTTP/2 answer");

    // Assert
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-request-id"));
    let body = response
        .into_body()
        .collect()
        .await
        .expect("the body arrives")
        .to_bytes();
    let echo: Value = serde_json::from_slice(&body).expect("the echo answers JSON");
    assert_eq!(echo["path"], "/over-h2", "{echo}");
    assert_eq!(echoed_header(&echo, "x-end-to-end"), ["kept"], "{echo}");
    assert_eq!(
        echoed_header(&echo, "x-forwarded-proto"),
        ["http"],
        "{echo}"
    );
    assert_eq!(
        echoed_header(&echo, "host"),
        [addr.to_string().as_str()],
        "{echo}"
    );
    connection.abort();
}
