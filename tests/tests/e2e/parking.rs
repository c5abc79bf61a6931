//! Idle HTTP/1.1 connections are parked (the proxy keeps the bare socket and no buffer,
//! `bluegreen_parked_connections` counts them) and served as before when their next bytes
//! come: a request on a parked connection, pipelined requests and a request cut in two
//! that arrive while parked, a client that half-closes while parked, many parked at once.
//! HTTP/2 connections are not parked and stay served; parked connections do not hold up
//! the drain. And the proxy runs with mimalloc giving emptied pages back at once, without
//! which what parked connections free would stay resident.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use e2e::client::{h2_connect, raw_get};
use e2e::eventually;
use e2e::proxy::Proxy;
use e2e::recorder::{RawConnection, RecorderStack};
use http_body_util::Empty;
use reqwest::Method;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Bound on every wait; a connection parks about a second after its last answer.
const TIMEOUT: Duration = Duration::from_secs(15);
/// Connections held open and idle at once in the test of many.
const MANY: usize = 200;
/// Parked connections sent a request at once in that test.
const WAVE: usize = 20;

/// `bluegreen_parked_connections` and `bluegreen_client_connections`, from `/metrics`.
async fn connections(proxy: &Proxy) -> (u64, u64) {
    let text = proxy
        .admin_request(Method::GET, "/metrics")
        .bearer_auth(proxy.token())
        .send()
        .await
        .expect("the admin listener answers")
        .text()
        .await
        .expect("the metrics are text");
    let value = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in the metrics:\n{text}"))
    };
    (
        value("bluegreen_parked_connections"),
        value("bluegreen_client_connections"),
    )
}

/// Waits until exactly `parked` connections are parked; whether they were in time.
async fn parked(proxy: &Proxy, parked: u64) -> bool {
    eventually(|| async { connections(proxy).await.0 == parked }, TIMEOUT).await
}

/// A keep-alive connection that has had one request answered.
async fn answered_once(addr: SocketAddr, path: &str) -> RawConnection {
    let mut conn = RawConnection::connect(addr)
        .await
        .expect("the proxy accepts");
    conn.send(raw_get(path).as_bytes()).await.expect("send");
    let answer = conn.read_answer(TIMEOUT).await.expect("an answer");
    assert_eq!(answer.status, 200, "{answer:?}");
    conn
}

/// The targets of the user requests the recorder received, in order.
fn targets(stack: &RecorderStack) -> Vec<String> {
    stack
        .recorder
        .user_requests()
        .iter()
        .map(|r| r.target().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_on_a_parked_connection_is_answered_and_it_parks_again() {
    // Arrange
    let stack = RecorderStack::start(|proxy| proxy).await;
    let mut conn = answered_once(stack.proxy.public_addr(), "/first").await;
    assert!(
        parked(&stack.proxy, 1).await,
        "an idle keep-alive connection was never parked"
    );

    // Act
    conn.send(raw_get("/after-parking").as_bytes())
        .await
        .expect("send");
    let answer = conn.read_answer(TIMEOUT).await;

    // Assert
    let answer = answer.expect("an answer on the parked connection");
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body, b"recorded");
    assert_eq!(targets(&stack), ["/first", "/after-parking"]);
    assert!(
        parked(&stack.proxy, 1).await,
        "the connection was not parked again after its second request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_that_arrive_while_parked_are_answered_in_order() {
    // Arrange
    let stack = RecorderStack::start(|proxy| proxy).await;
    let mut conn = answered_once(stack.proxy.public_addr(), "/first").await;
    assert!(parked(&stack.proxy, 1).await, "never parked");
    let third = raw_get("/p3");
    let (third_start, third_rest) = third.split_at(20);

    // Act: two whole requests and the start of a third in one write; the rest of the
    // third once the first two are answered and the connection, with the start of the
    // third read and waiting, is parked again.
    let burst = format!("{}{}{third_start}", raw_get("/p1"), raw_get("/p2"));
    conn.send(burst.as_bytes()).await.expect("send");
    let first = conn.read_answer(TIMEOUT).await;
    let second = conn.read_answer(TIMEOUT).await;
    let parked_with_a_head_begun = parked(&stack.proxy, 1).await;
    conn.send(third_rest.as_bytes()).await.expect("send");
    let third = conn.read_answer(TIMEOUT).await;

    // Assert
    assert!(
        parked_with_a_head_begun,
        "not parked with the start of a head unread"
    );
    for answer in [first, second, third] {
        let answer = answer.expect("an answer to each pipelined request");
        assert_eq!(answer.status, 200, "{answer:?}");
    }
    assert_eq!(targets(&stack), ["/first", "/p1", "/p2", "/p3"]);
    assert!(
        stack
            .recorder
            .user_requests()
            .iter()
            .all(|r| r.problem.is_none()),
        "{:?}",
        stack.recorder.user_requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_half_closes_while_parked_gets_its_answer_then_the_end() {
    // Arrange
    let stack = RecorderStack::start(|proxy| proxy).await;
    let addr = stack.proxy.public_addr();
    let mut with_request = TcpStream::connect(addr).await.expect("the proxy accepts");
    let mut silent = TcpStream::connect(addr).await.expect("the proxy accepts");
    for (stream, path) in [(&mut with_request, "/a"), (&mut silent, "/b")] {
        stream
            .write_all(raw_get(path).as_bytes())
            .await
            .expect("send");
        read_one_answer(stream).await;
    }
    assert!(parked(&stack.proxy, 2).await, "never parked");

    // Act: one sends a last request and half-closes; the other half-closes with nothing.
    with_request
        .write_all(raw_get("/last").as_bytes())
        .await
        .expect("send");
    with_request.shutdown().await.expect("half-close");
    silent.shutdown().await.expect("half-close");
    let answered = tokio::time::timeout(TIMEOUT, read_to_end(&mut with_request)).await;
    let ended = tokio::time::timeout(TIMEOUT, read_to_end(&mut silent)).await;

    // Assert: the last request answered, then both connections closed by the proxy.
    let answered = answered.expect("the proxy closes after the answer");
    assert!(
        answered.starts_with(b"HTTP/1.1 200") && answered.ends_with(b"recorded"),
        "{:?}",
        String::from_utf8_lossy(&answered)
    );
    let ended = ended.expect("the proxy closes a half-closed idle connection");
    assert!(ended.is_empty(), "{:?}", String::from_utf8_lossy(&ended));
    assert_eq!(targets(&stack), ["/a", "/b", "/last"]);
    assert!(
        eventually(
            || async { connections(&stack.proxy).await == (0, 0) },
            TIMEOUT
        )
        .await,
        "connections still counted: {:?}",
        connections(&stack.proxy).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_idle_connections_are_parked_and_all_served_afterwards() {
    // Arrange
    let stack = RecorderStack::start(|proxy| proxy).await;
    let addr = stack.proxy.public_addr();
    let mut conns = Vec::with_capacity(MANY);
    for i in 0..MANY {
        conns.push(answered_once(addr, &format!("/before/{i}")).await);
    }

    // Act
    let all_parked = parked(&stack.proxy, MANY as u64).await;
    // In waves: a burst of all of them at once would make the proxy open as many
    // connections to the recorder at once, more than its accept backlog takes in time.
    let mut answers = Vec::with_capacity(MANY);
    for (wave, conns) in conns.chunks_mut(WAVE).enumerate() {
        for (i, conn) in conns.iter_mut().enumerate() {
            let path = format!("/after/{}", wave * WAVE + i);
            conn.send(raw_get(&path).as_bytes()).await.expect("send");
        }
        for conn in conns {
            answers.push(conn.read_answer(TIMEOUT).await);
        }
    }

    // Assert
    assert!(
        all_parked,
        "not all {MANY} idle connections were parked: {:?}",
        connections(&stack.proxy).await
    );
    for (i, answer) in answers.into_iter().enumerate() {
        let answer = answer.unwrap_or_else(|e| panic!("connection {i}: {e}"));
        assert_eq!(answer.status, 200, "connection {i}: {answer:?}");
    }
    let mut after: Vec<String> = targets(&stack)
        .into_iter()
        .filter(|t| t.starts_with("/after/"))
        .collect();
    after.sort();
    let mut expected: Vec<String> = (0..MANY).map(|i| format!("/after/{i}")).collect();
    expected.sort();
    assert_eq!(after, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_is_not_parked_and_stays_served() {
    // Arrange: an HTTP/2 connection idle since before an HTTP/1.1 one parks.
    let stack = RecorderStack::start(|proxy| proxy).await;
    let addr = stack.proxy.public_addr();
    let (mut h2, _driver) = h2_connect::<Empty<Bytes>>(addr).await;
    let first = h2
        .send_request(h2_get(addr, "/h2-first"))
        .await
        .expect("an HTTP/2 answer");
    assert_eq!(first.status(), 200);
    let _h1 = answered_once(addr, "/h1").await;

    // Act
    let one_parked = parked(&stack.proxy, 1).await;
    let (parked_now, open) = connections(&stack.proxy).await;
    let again = h2.send_request(h2_get(addr, "/h2-again")).await;

    // Assert
    assert!(
        one_parked && parked_now == 1 && open == 2,
        "{parked_now} parked of {open}"
    );
    assert_eq!(again.expect("an HTTP/2 answer").status(), 200);
    assert_eq!(targets(&stack), ["/h2-first", "/h1", "/h2-again"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_connections_are_closed_at_once_by_the_drain() {
    // Arrange: a grace period far longer than the test's bound.
    let mut stack =
        RecorderStack::start(|proxy| proxy.extra_toml("[timeouts]\nshutdown_grace_ms = 60000"))
            .await;
    let mut conn = TcpStream::connect(stack.proxy.public_addr())
        .await
        .expect("the proxy accepts");
    conn.write_all(raw_get("/a").as_bytes())
        .await
        .expect("send");
    read_one_answer(&mut conn).await;
    assert!(parked(&stack.proxy, 1).await, "never parked");

    // Act
    let began = Instant::now();
    let status = tokio::time::timeout(TIMEOUT, stack.proxy.stop()).await;
    let ended = tokio::time::timeout(TIMEOUT, read_to_end(&mut conn)).await;

    // Assert
    let status = status.expect("the proxy exits within the bound, not after the grace period");
    assert!(status.success(), "{status:?}: {}", stack.proxy.log_tail());
    assert!(began.elapsed() < TIMEOUT);
    assert_eq!(ended.expect("the parked connection is closed"), b"");
    assert!(
        stack.proxy.log_tail().contains("drained gracefully"),
        "{}",
        stack.proxy.log_tail()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_runs_with_mimalloc_giving_emptied_pages_back_at_once() {
    // Arrange: the harness sets no MIMALLOC_ variable; the proxy sets it for itself.
    let stack = RecorderStack::start(|proxy| proxy).await;
    let pid = stack.proxy.pid().expect("the proxy runs");

    // Act
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("its environment");

    // Assert
    let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
    assert!(
        vars.contains(&b"MIMALLOC_PURGE_DELAY=0".as_slice()),
        "{:?}",
        String::from_utf8_lossy(&environ)
    );
    let answer = answered_once(stack.proxy.public_addr(), "/after-restart").await;
    drop(answer);
}

fn h2_get(addr: SocketAddr, path: &str) -> http::Request<Empty<Bytes>> {
    http::Request::get(format!("http://{addr}{path}"))
        .body(Empty::new())
        .expect("a valid request")
}

/// Reads the recorder's answer to one request (a 200 whose body, `recorded`, ends it).
async fn read_one_answer(stream: &mut TcpStream) {
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.ends_with(b"recorded") {
        let n = tokio::time::timeout(TIMEOUT, stream.read(&mut buf))
            .await
            .expect("an answer in time")
            .expect("an answer");
        assert!(
            n > 0,
            "closed inside the answer: {:?}",
            String::from_utf8_lossy(&answer)
        );
        answer.extend_from_slice(&buf[..n]);
    }
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
}

/// Everything the peer sends until it closes; a reset counts as the end.
async fn read_to_end(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}
