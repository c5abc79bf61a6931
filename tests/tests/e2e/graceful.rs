//! Graceful shutdown on SIGTERM, beyond `shutdown` (a request in flight completes): new
//! connections are refused at once, keep-alive answers during the drain say
//! `Connection: close`, HTTP/2 clients get GOAWAY, the process exits and frees its port, and a
//! request still waiting when the grace period ends is answered 504 and counted in the log.

use std::process::ExitStatus;
use std::time::Duration;

use bytes::Bytes;
use e2e::Proxy;
use e2e::client::{h2_connect, raw_get};
use e2e::eventually;
use e2e::recorder::{RawConnection, RecorderStack};
use http_body_util::{BodyExt as _, Empty};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// How long the recorder holds a slow answer: the drain must outlast it.
const SLOW: &str = "/slow/3000";
/// Far above anything the proxy should take, so that only a hang fails.
const TIMEOUT: Duration = Duration::from_secs(20);

/// Sends SIGTERM and waits for the exit in the background; the proxy comes back with it.
fn terminate(mut proxy: Proxy) -> JoinHandle<(Proxy, ExitStatus)> {
    tokio::spawn(async move {
        let exit = proxy.stop().await;
        (proxy, exit)
    })
}

/// Waits until the upstream has received a request for `target`: it is in flight.
async fn wait_in_flight(stack: &RecorderStack, target: &str) {
    assert!(
        eventually(
            || async {
                stack
                    .recorder
                    .user_requests()
                    .iter()
                    .any(|r| r.target() == target)
            },
            TIMEOUT,
        )
        .await,
        "{target} never reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sigterm_new_connections_are_refused_and_keep_alive_answers_say_close() {
    // Arrange: one connection with a slow request in flight, one idle keep-alive connection.
    let stack = RecorderStack::start(|proxy| proxy).await;
    let public = stack.proxy.public_addr();
    let mut busy = RawConnection::connect(public)
        .await
        .expect("the proxy accepts");
    busy.send(raw_get("/first").as_bytes())
        .await
        .expect("written");
    let first = busy.read_answer(TIMEOUT).await.expect("a first answer");
    let mut idle = RawConnection::connect(public)
        .await
        .expect("the proxy accepts");
    idle.send(raw_get("/idle").as_bytes())
        .await
        .expect("written");
    let idle_answer = idle.read_answer(TIMEOUT).await.expect("an answer");
    busy.send(raw_get(SLOW).as_bytes()).await.expect("written");
    wait_in_flight(&stack, SLOW).await;
    let RecorderStack {
        proxy,
        recorder: _recorder,
        dir: _dir,
    } = stack;

    // Act
    let stopping = terminate(proxy);
    let refused = eventually(
        || async { TcpStream::connect(public).await.is_err() },
        TIMEOUT,
    )
    .await;
    let idle_closed = idle.closed_within(TIMEOUT).await;
    let slow = busy.read_answer(TIMEOUT).await;
    let busy_closed = busy.closed_within(TIMEOUT).await;
    let (proxy, exit) = tokio::time::timeout(TIMEOUT, stopping)
        .await
        .expect("the proxy exits after the drain")
        .expect("the stopping task ran");
    let rebound = TcpListener::bind(public).await;

    // Assert
    for answer in [&first, &idle_answer] {
        assert_eq!(answer.status, 200);
        assert!(
            answer.header_all("connection").is_empty(),
            "before SIGTERM a keep-alive answer stays open: {answer:?}"
        );
    }
    assert!(refused, "new connections were still accepted after SIGTERM");
    assert!(
        idle_closed,
        "an idle keep-alive connection stayed open during the drain"
    );
    let slow = slow.expect("the request in flight at SIGTERM got its answer");
    assert_eq!(slow.status, 200);
    assert_eq!(
        slow.header_all("connection"),
        ["close"],
        "an answer during the drain must close its connection: {slow:?}"
    );
    assert!(
        busy_closed,
        "the connection stayed open after its last answer"
    );
    assert!(
        exit.success(),
        "the proxy did not exit cleanly: {exit}\n{}",
        proxy.log_tail()
    );
    assert!(
        rebound.is_ok(),
        "the public port is still taken after the exit: {rebound:?}"
    );
    assert!(
        proxy.log_tail().contains("drained gracefully"),
        "the log does not say the drain was graceful:\n{}",
        proxy.log_tail()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_sigterm_an_http2_client_gets_goaway_and_its_open_stream_finishes() {
    // Arrange
    let stack = RecorderStack::start(|proxy| proxy).await;
    let public = stack.proxy.public_addr();
    let (mut sender, connection) = h2_connect(public).await;
    let request = |path: &str| {
        http::Request::get(format!("http://{public}{path}"))
            .body(Empty::<Bytes>::new())
            .expect("a constant request is valid")
    };
    let open = tokio::spawn(sender.send_request(request(SLOW)));
    wait_in_flight(&stack, SLOW).await;
    let RecorderStack {
        proxy,
        recorder: _recorder,
        dir: _dir,
    } = stack;

    // Act
    let stopping = terminate(proxy);
    let open = tokio::time::timeout(TIMEOUT, open)
        .await
        .expect("the open stream is answered in time")
        .expect("the request task ran");
    let open_body = match open {
        Ok(response) => Ok((
            response.status(),
            response.into_body().collect().await.map(|b| b.to_bytes()),
        )),
        Err(e) => Err(e),
    };
    // After the answer the GOAWAY has long been sent: a new stream is not served.
    let after = sender.send_request(request("/after-goaway")).await;
    let closed = tokio::time::timeout(TIMEOUT, connection).await;
    let (proxy, exit) = tokio::time::timeout(TIMEOUT, stopping)
        .await
        .expect("the proxy exits after the drain")
        .expect("the stopping task ran");

    // Assert
    let (status, body) = open_body.expect("the stream open at SIGTERM was answered");
    assert_eq!(status, 200);
    assert_eq!(
        body.expect("its body arrives whole"),
        "recorded",
        "the stream open at SIGTERM finished"
    );
    assert!(
        after.is_err(),
        "a new stream was served after GOAWAY: {:?}",
        after.map(|r| r.status())
    );
    let closed = closed.expect("the HTTP/2 connection closes after the drain");
    assert!(
        matches!(closed, Ok(Ok(()))),
        "the HTTP/2 connection did not close gracefully: {closed:?}"
    );
    assert!(
        exit.success(),
        "the proxy did not exit cleanly: {exit}\n{}",
        proxy.log_tail()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_still_waiting_when_the_grace_period_ends_is_cut_with_504_and_counted() {
    // Arrange: the upstream holds the answer far longer than the grace period.
    let stack =
        RecorderStack::start(|proxy| proxy.extra_toml("[timeouts]\nshutdown_grace_ms = 1000"))
            .await;
    let public = stack.proxy.public_addr();
    let mut conn = RawConnection::connect(public)
        .await
        .expect("the proxy accepts");
    conn.send(raw_get("/slow/10000").as_bytes())
        .await
        .expect("written");
    wait_in_flight(&stack, "/slow/10000").await;
    let RecorderStack {
        proxy,
        recorder: _recorder,
        dir: _dir,
    } = stack;

    // Act
    let stopping = terminate(proxy);
    let answer = conn.read_answer(TIMEOUT).await;
    let (proxy, exit) = tokio::time::timeout(TIMEOUT, stopping)
        .await
        .expect("the proxy exits after the grace period")
        .expect("the stopping task ran");

    // Assert
    let answer = answer.expect("the cut request was answered, not dropped");
    assert_eq!(answer.status, 504, "{answer:?}");
    assert!(
        exit.success(),
        "the proxy did not exit cleanly: {exit}\n{}",
        proxy.log_tail()
    );
    let log = proxy.log_tail();
    assert!(
        log.lines()
            .any(|line| line.contains("WARN") && line.contains("cut_requests=1")),
        "the log does not count the cut request:\n{log}"
    );
}
