//! The public listener's limits and the upstream timeouts: each is answered with its own
//! status (or, for a client too slow to finish its headers, a closed connection), never a
//! hang. Each test sets the limit it tests low in its own config.

use std::time::Duration;

use e2e::client::{h2_connect, raw_exchange, raw_get};
use e2e::recorder::{RawConnection, RecorderStack};
use e2e::{Proxy, Shortener};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Bounds every wait for an answer: far above any limit set here, so that only a hang fails.
const TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sending_its_headers_slowly_is_closed() {
    // Arrange
    let stack = RecorderStack::start(|proxy| {
        proxy.extra_toml("[limits]\nheader_read_timeout_ms = 500\nidle_timeout_ms = 60000")
    })
    .await;
    let mut conn = RawConnection::connect(stack.proxy.public_addr())
        .await
        .expect("the proxy accepts");
    conn.send(b"GET /slow-head HTTP/1.1\r\nHost: shop.example\r\n")
        .await
        .expect("the request line is written");

    // Act: one more header line every 100 ms, for far longer than the limit, never the end.
    let mut closed = false;
    for n in 0..100 {
        if conn
            .send(format!("X-Slow-{n}: 1\r\n").as_bytes())
            .await
            .is_err()
            || conn.closed_within(Duration::from_millis(100)).await
        {
            closed = true;
            break;
        }
    }

    // Assert
    assert!(
        closed,
        "a client dribbling its headers for 10 s was never closed"
    );
    let unread = String::from_utf8_lossy(conn.unread()).into_owned();
    assert!(
        unread.is_empty() || unread.starts_with("HTTP/1.1 408"),
        "the slow client got something other than a 408 or a close: {unread:?}"
    );
    assert!(
        stack.recorder.user_requests().is_empty(),
        "a request without its full head was forwarded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    // Arrange: the header timeout is far longer, so only the idle timeout can close it.
    let stack = RecorderStack::start(|proxy| {
        proxy.extra_toml("[limits]\nheader_read_timeout_ms = 30000\nidle_timeout_ms = 300")
    })
    .await;
    let mut conn = RawConnection::connect(stack.proxy.public_addr())
        .await
        .expect("the proxy accepts");
    conn.send(raw_get("/before-idle").as_bytes())
        .await
        .expect("the request is written");
    let answer = conn.read_answer(TIMEOUT).await.expect("an answer");
    assert_eq!(answer.status, 200);

    // Act
    let closed = conn.closed_within(TIMEOUT).await;

    // Assert
    assert!(
        closed,
        "an idle keep-alive connection outlived idle_timeout_ms = 300 by {TIMEOUT:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_outlives_the_header_read_timeout() {
    // Arrange
    let stack = RecorderStack::start(|proxy| {
        proxy.extra_toml("[limits]\nheader_read_timeout_ms = 300\nidle_timeout_ms = 60000")
    })
    .await;
    let mut conn = RawConnection::connect(stack.proxy.public_addr())
        .await
        .expect("the proxy accepts");
    conn.send(raw_get("/first").as_bytes())
        .await
        .expect("the request is written");
    let first = conn.read_answer(TIMEOUT).await.expect("a first answer");

    // Act: idle for several header timeouts, well within the idle timeout. The passing time
    // is what is under test.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    conn.send(raw_get("/second").as_bytes())
        .await
        .expect("the connection is still open for writing");
    let second = conn.read_answer(TIMEOUT).await;

    // Assert
    assert_eq!(first.status, 200);
    let second = second.unwrap_or_else(|e| {
        panic!("an idle connection was closed by the header read timeout, not the idle one: {e}")
    });
    assert_eq!(second.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_is_closed_after_the_idle_timeout() {
    // Arrange
    let stack = RecorderStack::start(|proxy| {
        proxy.extra_toml("[limits]\nheader_read_timeout_ms = 30000\nidle_timeout_ms = 300")
    })
    .await;
    let addr = stack.proxy.public_addr();
    let (mut sender, connection) = h2_connect(addr).await;
    let request = http::Request::get(format!("http://{addr}/h2"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("a constant request is valid");
    let response = tokio::time::timeout(TIMEOUT, sender.send_request(request))
        .await
        .expect("an HTTP/2 answer within the timeout")
        .expect("an HTTP/2 answer");
    assert_eq!(response.status(), 200);
    drop(response);

    // Act
    let ended = tokio::time::timeout(TIMEOUT, connection).await;

    // Assert
    assert!(
        ended.is_ok(),
        "an idle HTTP/2 connection outlived idle_timeout_ms = 300 by {TIMEOUT:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_does_not_arrive_in_time_is_answered_408() {
    // Arrange
    let stack =
        RecorderStack::start(|proxy| proxy.extra_toml("[limits]\nbody_timeout_ms = 500")).await;
    let heads = [
        "POST /partial HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 100\r\n\r\nten bytes.",
        "POST /partial HTTP/1.1\r\nHost: shop.example\r\nTransfer-Encoding: chunked\r\n\r\na\r\nten bytes.\r\n",
    ];

    // Act
    let mut answers = Vec::new();
    for head in heads {
        let mut conn = RawConnection::connect(stack.proxy.public_addr())
            .await
            .expect("the proxy accepts");
        conn.send(head.as_bytes())
            .await
            .expect("the start is written");
        answers.push(conn.read_answer(TIMEOUT).await);
    }

    // Assert
    for (head, answer) in heads.iter().zip(answers) {
        let answer = answer.unwrap_or_else(|e| panic!("{head:?}: {e}"));
        assert_eq!(answer.status, 408, "{head:?}: {answer:?}");
        assert_eq!(
            answer.header_all("connection"),
            ["close"],
            "{head:?}: {answer:?}"
        );
    }
    assert!(
        stack
            .recorder
            .user_requests()
            .iter()
            .all(|r| r.is_truncated()),
        "an incomplete body was passed on as complete: {:#?}",
        stack.recorder.user_requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_over_the_limit_are_answered_431() {
    // Arrange: hyper's own buffer floor is 8 KiB; the limit set here is above it.
    let stack =
        RecorderStack::start(|proxy| proxy.extra_toml("[limits]\nmax_header_bytes = 16384")).await;
    let with_header = |bytes: usize| {
        format!(
            "GET /big-head HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\nX-Big: {}\r\n\r\n",
            "a".repeat(bytes)
        )
    };

    // Act
    let under = raw_exchange(stack.proxy.public_addr(), &with_header(12_000)).await;
    let over = raw_exchange(stack.proxy.public_addr(), &with_header(20_000)).await;

    // Assert
    assert_eq!(
        under.map(|r| r.status),
        Ok(200),
        "12 KB of headers are within 16 KiB"
    );
    assert_eq!(
        over.map(|r| r.status),
        Ok(431),
        "20 KB of headers are over 16 KiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_is_answered_413_with_a_length_or_chunked() {
    // Arrange
    let stack =
        RecorderStack::start(|proxy| proxy.extra_toml("[limits]\nmax_body_bytes = 1000")).await;
    let body = "b".repeat(2000);
    let requests = [
        (
            "length at the limit",
            format!(
                "POST /at-limit HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\nContent-Length: 1000\r\n\r\n{}",
                &body[..1000]
            ),
            200,
        ),
        (
            "length over the limit",
            format!(
                "POST /over HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\nContent-Length: 2000\r\n\r\n{body}"
            ),
            413,
        ),
        (
            "chunked over the limit",
            format!(
                "POST /over-chunked HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\n{}\r\n3e8\r\n{}\r\n0\r\n\r\n",
                &body[..1000],
                &body[1000..]
            ),
            413,
        ),
    ];

    // Act
    let mut answers = Vec::new();
    for (name, request, _) in &requests {
        answers.push((
            *name,
            raw_exchange(stack.proxy.public_addr(), request).await,
        ));
    }

    // Assert
    for ((name, answer), (_, _, want)) in answers.into_iter().zip(&requests) {
        let answer = answer.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(answer.status, *want, "{name}: {answer:?}");
    }
    let complete: Vec<_> = stack
        .recorder
        .user_requests()
        .into_iter()
        .filter(|r| !r.is_truncated())
        .map(|r| (r.target().to_owned(), r.body.len()))
        .collect();
    assert_eq!(
        complete,
        [("/at-limit".to_owned(), 1000)],
        "only the body within the limit reached the upstream whole"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_connection_limit_a_client_waits_and_is_served_when_one_closes() {
    // Arrange: two open keep-alive connections hold both permits.
    let stack =
        RecorderStack::start(|proxy| proxy.extra_toml("[limits]\nmax_connections = 2")).await;
    let addr = stack.proxy.public_addr();
    let mut held = Vec::new();
    for n in 0..2 {
        let mut conn = RawConnection::connect(addr)
            .await
            .expect("the proxy accepts");
        conn.send(raw_get(&format!("/held-{n}")).as_bytes())
            .await
            .expect("the request is written");
        let answer = conn
            .read_answer(TIMEOUT)
            .await
            .expect("a held connection is served");
        assert_eq!(answer.status, 200);
        held.push(conn);
    }

    // Act
    let mut third = RawConnection::connect(addr)
        .await
        .expect("the kernel's backlog takes the connection: it is not refused");
    third
        .send(raw_get("/third").as_bytes())
        .await
        .expect("the request is written");
    // Not served while both permits are held: an absence, so a bounded look.
    let early = third.read_answer(Duration::from_millis(500)).await;
    drop(held.remove(0));
    let served = third.read_answer(TIMEOUT).await;

    // Assert
    assert!(
        early.is_err(),
        "a third connection was served past max_connections = 2: {early:?}"
    );
    let served = served.expect("the waiting connection is served once a permit is free");
    assert_eq!(served.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_refuses_the_connection_is_answered_502() {
    // Arrange: a port that was just free, on both slots.
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        listener
            .local_addr()
            .expect("a bound listener has an address")
    };
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let proxy = Proxy::builder()
        .blue(closed)
        .green(closed)
        .start(dir.path())
        .await;

    // Act
    let answer = raw_exchange(
        proxy.public_addr(),
        "GET /refused HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n",
    )
    .await;

    // Assert
    assert_eq!(answer.map(|r| r.status), Ok(502));
}

/// Opens connections to `addr` until one does not complete within 300 ms: the listener's
/// accept queue is full and the kernel drops new SYNs. Returns the connections that hold it.
async fn fill_accept_queue(addr: std::net::SocketAddr) -> Option<Vec<TcpStream>> {
    let mut held = Vec::new();
    for _ in 0..16 {
        match tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => held.push(stream),
            Ok(Err(_)) => return None,
            Err(_) => return Some(held),
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_does_not_accept_in_time_is_answered_502() {
    // Arrange: a listener that never accepts, its backlog full, so connects hang on loopback.
    let socket = TcpSocket::new_v4().expect("a socket");
    socket
        .bind("127.0.0.1:0".parse().expect("a constant address"))
        .expect("an ephemeral port");
    let blackhole = socket.listen(1).expect("listening");
    let addr = blackhole
        .local_addr()
        .expect("a bound listener has an address");
    let _held = fill_accept_queue(addr)
        .await
        .expect("this kernel drops connects to a listener whose backlog is full");
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let proxy = Proxy::builder()
        .blue(addr)
        .green(addr)
        .extra_toml("[timeouts]\nconnect_ms = 300")
        .start(dir.path())
        .await;

    // Act
    let answer = raw_exchange(
        proxy.public_addr(),
        "GET /blackhole HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n",
    )
    .await;

    // Assert
    assert_eq!(answer.map(|r| r.status), Ok(502));
    let log = proxy.log_tail();
    assert!(
        log.lines().any(|line| line.contains("could not connect")
            && (line.contains("deadline has elapsed") || line.contains("timed out"))),
        "the 502 was not a connect timeout:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_slower_than_the_response_timeout_is_answered_504() {
    // Arrange
    let dir = tempfile::tempdir().expect("a temp dir can be created");
    let slow = Shortener::builder()
        .release("v1")
        .fault("latency=3000")
        .start(dir.path())
        .await;
    let proxy = Proxy::builder()
        .blue(slow.addr())
        .green(slow.addr())
        .extra_toml("[timeouts]\nresponse_header_ms = 500")
        .start(dir.path())
        .await;

    // Act
    let answer = raw_exchange(
        proxy.public_addr(),
        "GET /healthz HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n",
    )
    .await;

    // Assert
    assert_eq!(answer.map(|r| r.status), Ok(504));
}
