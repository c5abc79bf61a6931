//! A client that shuts down its sending side once its request is written (a half-close)
//! still gets the answer: the proxy does not take the end of the client's bytes for the
//! end of the exchange.

use e2e::client::raw_exchange_half_closed;
use e2e::recorder::RecorderStack;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_half_closes_after_its_request_is_answered() {
    // Arrange: the upstream holds the answer, so that the client's end of input reaches
    // the proxy while the request is surely in flight.
    let stack = RecorderStack::start(|proxy| proxy).await;

    // Act
    let response = raw_exchange_half_closed(
        stack.proxy.public_addr(),
        "GET /slow/200 HTTP/1.1\r\nHost: shop.example\r\n\r\n",
    )
    .await;

    // Assert
    let response = response.unwrap_or_else(|e| panic!("no answer after a half-close: {e}"));
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    assert_eq!(stack.recorder.user_requests().len(), 1);
}
