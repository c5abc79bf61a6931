//! The harness's echo upstream and raw client, without the proxy: proves that the header and
//! body tests would see a hop-by-hop header or a bad byte if the proxy let one through.

use e2e::client::raw_exchange;
use e2e::echo::{HOP_BY_HOP_RESPONSE, SEND_HOP_BY_HOP, echoed_header};
use e2e::{EchoUpstream, fnv64};

#[tokio::test]
async fn the_echo_reports_hop_by_hop_request_headers_it_receives() {
    // Arrange
    let echo = EchoUpstream::start().await;
    let request = "GET /headers HTTP/1.1\r\nHost: shop.example\r\n\
        Connection: close, X-Custom-Hop\r\nX-Custom-Hop: secret\r\nTE: trailers\r\n\r\n";

    // Act
    let response = raw_exchange(echo.addr(), request)
        .await
        .expect("the echo answers");

    // Assert
    assert_eq!(response.status, 200);
    let body = response.json();
    assert_eq!(echoed_header(&body, "x-custom-hop"), ["secret"]);
    assert_eq!(echoed_header(&body, "te"), ["trailers"]);
    assert_eq!(echoed_header(&body, "host"), ["shop.example"]);
}

#[tokio::test]
async fn the_echo_sends_hop_by_hop_response_headers_on_request() {
    // Arrange
    let echo = EchoUpstream::start().await;
    let request = format!("GET /x HTTP/1.1\r\nHost: a\r\n{SEND_HOP_BY_HOP}: 1\r\n\r\n");

    // Act
    let response = raw_exchange(echo.addr(), &request)
        .await
        .expect("the echo answers");

    // Assert
    for (name, value) in HOP_BY_HOP_RESPONSE {
        assert!(
            response.header_all(name).contains(value),
            "the echo did not send {name}: {value}: {:?}",
            response.headers
        );
    }
    assert_eq!(response.header("x-release"), Some("echo"));
}

#[tokio::test]
async fn the_echo_returns_a_body_with_its_length_and_hash() {
    // Arrange
    let echo = EchoUpstream::start().await;
    let body = "hello, echo";
    let request = format!(
        "POST /echo-body HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );

    // Act
    let response = raw_exchange(echo.addr(), &request)
        .await
        .expect("the echo answers");

    // Assert
    assert_eq!(response.body, body.as_bytes());
    assert_eq!(response.header("x-echo-received-len"), Some("11"));
    let hash = format!("{:016x}", fnv64(body.as_bytes()));
    assert_eq!(
        response.header("x-echo-received-fnv64"),
        Some(hash.as_str())
    );
}
