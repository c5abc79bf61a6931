//! The upstream side as strict as nginx and hyper, every failure blamed on whoever caused it
//! (issue 19). Blue is a hostile upstream answering scripted bytes on raw sockets; green is a
//! recorder that passed the gate, so a request sent to the other release would show. Each
//! test names the row of the issue it covers (or a case that was already right) and asserts
//! what the client got, what reached the upstream, whether the upstream connection was
//! reused, and what was counted against the slot (`/metrics` and `/status`).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use e2e::client::{h2_connect, raw_exchange};
use e2e::hostile::{Hostile, Reply, Seen, Then};
use e2e::recorder::Recorder;
use e2e::scrape::Samples;
use e2e::{Proxy, TestStack, http_client};
use http_body_util::{BodyExt as _, Full};
use reqwest::StatusCode;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Only the health scenario: neither upstream is a shortener.
const HEALTH_SCENARIO: &str = "[[scenario]]\nname = \"health\"\n[[scenario.step]]\nname = \"healthz\"\npath = \"/healthz\"\nexpect_status = 200\n";
/// No checks after the first (only user requests move the health verdict), no bake.
const QUIET: &str = "[health]\ninterval_ms = 600000\n\n[guard]\nbake_ms = 0\n";
/// As `QUIET`, but blue is watched in a bake for the whole test, with the stable release
/// (green) answering for it, and its tick far away.
const BAKING: &str = "[health]\ninterval_ms = 600000\n\n[guard]\nbake_ms = 600000\n\
                      interval_ms = 600000\nmin_requests = 1000\nanswer_from_stable = true\n";

/// A hostile blue, a vetted recorder on green, and a proxy in front; fields drop in order.
struct Setup {
    proxy: Proxy,
    blue: Hostile,
    green: Recorder,
    _dir: TempDir,
}

impl Setup {
    /// Blue answers user request `n` with `script(n)`; `toml` is added to the config.
    async fn start(toml: &str, script: impl Fn(usize) -> Reply + Send + Sync + 'static) -> Setup {
        Setup::start_with(QUIET, toml, script).await
    }

    /// As `start`, with `base` in place of `QUIET`.
    async fn start_with(
        base: &str,
        toml: &str,
        script: impl Fn(usize) -> Reply + Send + Sync + 'static,
    ) -> Setup {
        let blue = Hostile::start(script).await;
        let green = Recorder::start().await;
        let dir = tempfile::Builder::new()
            .prefix("e2e-conformance-")
            .tempdir()
            .expect("a temp dir can be created");
        let proxy = Proxy::builder()
            .blue(blue.addr())
            .green(green.addr())
            .gate(1, 10_000)
            .scenarios(HEALTH_SCENARIO)
            .extra_toml(&format!("{base}\n{toml}"))
            .start(dir.path())
            .await;
        // Both releases pass the gate, so green could take a resend.
        for to in ["green", "blue"] {
            let (code, body) = proxy.switch(to).await;
            assert_eq!(code, StatusCode::OK, "the switch to {to}: {body}");
        }
        Setup {
            proxy,
            blue,
            green,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        self.proxy.public_url(path)
    }

    async fn counts(&self) -> Counts {
        Counts::of(&Samples::scrape(&self.proxy).await)
    }

    async fn blue_healthy(&self) -> bool {
        self.proxy.status().await["slots"]["blue"]["healthy"] == true
    }

    /// The user requests green received: a resend to the other release shows here.
    fn green_requests(&self) -> usize {
        self.green.user_requests().len()
    }

    fn blue_requests(&self) -> Vec<Seen> {
        self.blue.requests()
    }
}

/// What blue was counted for so far.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
struct Counts {
    /// User requests that count against the slot (the guard's failures): class 5xx.
    against: f64,
    /// User requests the upstream answered without failing.
    answered: f64,
    /// Attempts the upstream failed, by any kind.
    upstream_failures: f64,
    /// Requests the client ended (its body late, too large, malformed).
    client_failures: f64,
    /// Requests sent again on a new connection after a pooled one was found closed.
    reconnects: f64,
}

impl Counts {
    fn of(m: &Samples) -> Counts {
        let requests = |class: &str| {
            m.get(
                "bluegreen_requests_total",
                &[("slot", "blue"), ("class", class)],
            )
        };
        Counts {
            against: requests("5xx"),
            answered: requests("1xx") + requests("2xx") + requests("3xx") + requests("4xx"),
            upstream_failures: m.sum("bluegreen_upstream_failures_total", &[("slot", "blue")]),
            client_failures: m.sum("bluegreen_client_failures_total", &[("slot", "blue")]),
            reconnects: m.get("bluegreen_reconnects_total", &[("slot", "blue")]),
        }
    }

    fn since(self, before: Counts) -> Counts {
        Counts {
            against: self.against - before.against,
            answered: self.answered - before.answered,
            upstream_failures: self.upstream_failures - before.upstream_failures,
            client_failures: self.client_failures - before.client_failures,
            reconnects: self.reconnects - before.reconnects,
        }
    }
}

/// A failed upstream's count in `kind`.
async fn failures_of_kind(setup: &Setup, kind: &str) -> f64 {
    Samples::scrape(&setup.proxy).await.get(
        "bluegreen_upstream_failures_total",
        &[("slot", "blue"), ("kind", kind)],
    )
}

fn ok_head(length: usize) -> String {
    format!("HTTP/1.1 200 OK\r\ncontent-length: {length}\r\n\r\n")
}

/// The connections the user requests came on, in order.
fn connections(seen: &[Seen]) -> Vec<usize> {
    seen.iter().map(|s| s.connection).collect()
}

/// A GET through the proxy: its status and whole body, or why the body did not arrive. A
/// response aborted before its head is status 0 with the error.
async fn get(setup: &Setup, path: &str) -> (StatusCode, Result<Bytes, String>) {
    let response = match http_client(REQUEST_TIMEOUT)
        .get(setup.url(path))
        .send()
        .await
    {
        Ok(response) => response,
        Err(e) => {
            return (
                StatusCode::from_u16(599).expect("a valid code"),
                Err(format!("{e:?}")),
            );
        }
    };
    let status = response.status();
    (status, response.bytes().await.map_err(|e| format!("{e:?}")))
}

// Row 1.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row01_an_early_answer_then_a_reset_is_the_upstreams_answer_and_no_failure() {
    // Arrange: blue answers 413 after the head and closes with the upload unread, which
    // makes the kernel reset the connection.
    let refusal = "{\"error\":\"request body is larger than 16384 bytes\"}";
    let answer = format!(
        "HTTP/1.1 413 Payload Too Large\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{refusal}",
        refusal.len()
    );
    let setup = Setup::start("", move |_| Reply {
        read_body: false,
        writes: vec![(Duration::ZERO, answer.clone().into_bytes())],
        then: Then::Close,
    })
    .await;
    let before = setup.counts().await;
    let client = http_client(REQUEST_TIMEOUT);
    const TRIES: usize = 20;

    // Act
    let mut got = Vec::new();
    for _ in 0..TRIES {
        let response = client
            .post(setup.url("/api/links"))
            .body(vec![b'x'; 1 << 20])
            .send()
            .await;
        got.push(match response {
            Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
            Err(e) => (0, format!("{e:?}")),
        });
    }
    let counted = setup.counts().await.since(before);

    // Assert
    for (status, body) in &got {
        assert_eq!(
            (*status, body.as_str()),
            (413, refusal),
            "every try gets the upstream's answer: {got:?}"
        );
    }
    assert_eq!(
        setup.blue_requests().len(),
        TRIES,
        "each upload reached blue once"
    );
    assert_eq!(setup.green_requests(), 0, "nothing was resent to green");
    assert_eq!(
        (counted.against, counted.upstream_failures, counted.answered),
        (0.0, 0.0, TRIES as f64),
        "413s are answers, not failures of the slot: {counted:?}"
    );
    assert!(setup.blue_healthy().await, "blue was marked down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row01_the_shortener_refusing_a_large_upload_is_always_its_413() {
    // Arrange
    let stack = TestStack::start().await;
    let client = http_client(REQUEST_TIMEOUT);
    const TRIES: usize = 20;

    // Act
    let mut statuses = Vec::new();
    for _ in 0..TRIES {
        let response = client
            .post(stack.proxy.public_url("/api/links"))
            .header("content-type", "application/json")
            .body(vec![b' '; 1 << 20])
            .send()
            .await;
        statuses.push(
            response
                .map(|r| r.status().as_u16())
                .map_err(|e| e.to_string()),
        );
    }
    let status = stack.proxy.status().await;

    // Assert
    assert!(
        statuses.iter().all(|s| *s == Ok(413)),
        "every try gets the shortener's 413: {statuses:?}"
    );
    assert_eq!(status["slots"]["blue"]["healthy"], true, "{status}");
}

// Row 2.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row02_a_stale_pooled_connection_is_resent_on_a_new_one_to_the_same_slot() {
    // Arrange: the first connection answers once, then closes as the second request comes
    // in on it, answering nothing: an idle close racing the reuse.
    let setup = Setup::start("[forwarding]\nretry_writes = true\n", |n| match n {
        0 | 3 => Reply::ok("first"),
        1 | 4 => Reply::nothing(Then::Close),
        _ => Reply::ok("again"),
    })
    .await;
    let before = setup.counts().await;
    let client = http_client(REQUEST_TIMEOUT);

    // Act: a GET, then a GET and a POST (resent under retry_writes) on stale connections.
    let first = get(&setup, "/a").await;
    let second = get(&setup, "/b").await;
    let third = client
        .get(setup.url("/c"))
        .send()
        .await
        .expect("the proxy answers");
    let _ = third.bytes().await;
    let write = client
        .post(setup.url("/d"))
        .body("payload")
        .send()
        .await
        .expect("the proxy answers");
    let write_status = write.status();
    let counted = setup.counts().await.since(before);
    let seen = setup.blue_requests();

    // Assert
    assert_eq!(first.0, StatusCode::OK);
    assert_eq!(first.1.as_deref().ok(), Some(&b"first"[..]));
    assert_eq!(second.0, StatusCode::OK);
    assert_eq!(second.1.as_deref().ok(), Some(&b"again"[..]));
    assert_eq!(write_status, StatusCode::OK, "the write was resent once");
    let targets: Vec<&str> = seen.iter().map(Seen::target).collect();
    assert_eq!(targets, ["/a", "/b", "/b", "/c", "/d", "/d"], "{seen:#?}");
    let conns = connections(&seen);
    assert_eq!(
        conns[0], conns[1],
        "the second request met the pooled connection"
    );
    assert_ne!(conns[1], conns[2], "the resend went on a new connection");
    assert_eq!(conns[3], conns[4], "the write met the pooled connection");
    assert_ne!(
        conns[4], conns[5],
        "the resent write went on a new connection"
    );
    assert_eq!(seen[5].body, b"payload", "the resent write is whole");
    assert_eq!(
        setup.green_requests(),
        0,
        "nothing went to the other release"
    );
    assert_eq!(
        (
            counted.against,
            counted.upstream_failures,
            counted.reconnects
        ),
        (0.0, 0.0, 2.0),
        "a stale connection is no failure: {counted:?}"
    );
    assert!(setup.blue_healthy().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_upstream_closed_before_its_body_came_is_resent_whole() {
    // Arrange: blue takes the head and closes before the body arrives, as an upstream
    // killed under load does to the request it was receiving.
    let setup = Setup::start("[forwarding]\nretry_writes = true\n", |_| Reply {
        read_body: false,
        writes: Vec::new(),
        then: Then::Close,
    })
    .await;
    let before = setup.counts().await;
    let mut stream = TcpStream::connect(setup.proxy.public_addr())
        .await
        .expect("the proxy accepts");

    // Act: the head, and the body only once blue has the head.
    stream
        .write_all(b"POST /write HTTP/1.1\r\nhost: conformance.example\r\ncontent-length: 7\r\nconnection: close\r\n\r\n")
        .await
        .expect("write");
    let head_reached_blue = e2e::eventually(
        || async { !setup.blue_requests().is_empty() },
        Duration::from_secs(10),
    )
    .await;
    stream.write_all(b"payload").await.expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(REQUEST_TIMEOUT, stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let counted = setup.counts().await.since(before);

    // Assert
    assert!(head_reached_blue);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let resent = setup.green.user_requests();
    assert_eq!(resent.len(), 1, "{resent:#?}");
    assert_eq!(resent[0].body, b"payload", "the resent write is whole");
    assert_eq!(
        resent[0].header_all("x-request-id"),
        setup.blue_requests()[0].header_all("x-request-id"),
        "the same write, for the upstream to deduplicate"
    );
    assert_eq!(counted.upstream_failures, 1.0, "{counted:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_a_pooled_connection_to_an_upstream_that_dies_goes_whole_to_the_other_slot() {
    // Arrange: the second request meets the pooled connection, and blue dies while it
    // holds it: the connection closes and new ones are refused.
    let setup = Setup::start("[forwarding]\nretry_writes = true\n", |n| match n {
        0 => Reply::ok("first"),
        _ => Reply {
            read_body: true,
            writes: vec![(Duration::from_secs(60), b"never".to_vec())],
            then: Then::Close,
        },
    })
    .await;
    let client = http_client(REQUEST_TIMEOUT);
    let first = get(&setup, "/first").await;
    let before = setup.counts().await;

    // Act
    let write = tokio::spawn({
        let url = setup.url("/write");
        async move {
            let response = client.post(url).body("payload").send().await?;
            let status = response.status();
            Ok::<_, reqwest::Error>((status, response.text().await?))
        }
    });
    let held = e2e::eventually(
        || async { setup.blue_requests().len() == 2 },
        Duration::from_secs(10),
    )
    .await;
    setup.blue.stop();
    let written = write.await.expect("the client task");
    let counted = setup.counts().await.since(before);

    // Assert
    assert_eq!(first.1.as_deref().ok(), Some(&b"first"[..]));
    assert!(held, "the write never reached blue");
    let conns = connections(&setup.blue_requests());
    assert_eq!(conns[0], conns[1], "the write met the pooled connection");
    let (status, body) = written.expect("an answer");
    assert_eq!((status, body.as_str()), (StatusCode::OK, "recorded"));
    let resent = setup.green.user_requests();
    assert_eq!(resent.len(), 1, "{resent:#?}");
    assert_eq!(resent[0].body, b"payload", "the resent write is whole");
    assert_eq!(
        (counted.reconnects, counted.upstream_failures),
        (1.0, 1.0),
        "a new connection first, refused, then the other slot: {counted:?}"
    );
}

// Row 3.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row03_a_body_that_stalls_after_the_head_is_cut_after_upstream_read_ms() {
    // Arrange: 10 of 100 bytes, then nothing, the connection held open.
    let setup = Setup::start("[timeouts]\nupstream_read_ms = 500\n", |n| match n {
        0 => Reply::bytes(format!("{}0123456789", ok_head(100)), Then::KeepOpen),
        _ => Reply::ok("fresh"),
    })
    .await;
    let before = setup.counts().await;
    let stalled = failures_of_kind(&setup, "stalled").await;

    // Act
    let started = std::time::Instant::now();
    let (status, body) = get(&setup, "/stalls").await;
    let waited = started.elapsed();
    let next = get(&setup, "/next").await;
    let counted = setup.counts().await.since(before);

    // Assert
    assert!(
        body.is_err(),
        "the client's response was aborted: {status} {body:?}"
    );
    assert!(
        waited < Duration::from_secs(10),
        "cut after {waited:?}, not after the read timeout"
    );
    assert_eq!(next.1.as_deref().ok(), Some(&b"fresh"[..]));
    let conns = connections(&setup.blue_requests());
    assert_ne!(conns[0], conns[1], "the stalled connection was not reused");
    assert_eq!(
        (counted.against, counted.upstream_failures),
        (1.0, 1.0),
        "{counted:?}"
    );
    assert_eq!(failures_of_kind(&setup, "stalled").await - stalled, 1.0);
}

// Row 4.

/// Sends a request head with `Content-Length: length`, then `body` one byte per `pause`,
/// and reads the answer; the status, or why there was none.
async fn slow_upload(
    addr: SocketAddr,
    length: usize,
    body: &[u8],
    pause: Duration,
) -> Result<u16, String> {
    let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let head = format!(
        "POST /upload HTTP/1.1\r\nhost: conformance.example\r\ncontent-length: {length}\r\n\r\n"
    );
    stream
        .write_all(head.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    for byte in body {
        tokio::time::sleep(pause).await;
        // An answer may come before the whole body (a 504 once did): read it then.
        if stream.write_all(&[*byte]).await.is_err() {
            break;
        }
    }
    let mut answer = Vec::new();
    let read = tokio::time::timeout(REQUEST_TIMEOUT, async {
        let mut chunk = [0u8; 4096];
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    read.map_err(|_| "no answer".to_owned())?;
    let text = String::from_utf8_lossy(&answer);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status in {text:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row04_a_slow_upload_within_the_body_timeout_waits_for_its_answer() {
    // Arrange: the response timeout is shorter than the upload.
    let setup = Setup::start(
        "[timeouts]\nresponse_header_ms = 1000\n\n[limits]\nbody_timeout_ms = 10000\n",
        |_| Reply::ok("stored"),
    )
    .await;
    let before = setup.counts().await;

    // Act: 10 bytes over 3 s.
    let status = slow_upload(
        setup.proxy.public_addr(),
        10,
        b"0123456789",
        Duration::from_millis(300),
    )
    .await;
    let counted = setup.counts().await.since(before);

    // Assert
    assert_eq!(
        status,
        Ok(200),
        "the header timeout starts once the request is sent"
    );
    let seen = setup.blue_requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].body, b"0123456789");
    assert_eq!(
        (counted.against, counted.answered),
        (0.0, 1.0),
        "{counted:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row04_a_client_too_slow_for_the_body_timeout_gets_408_never_charged_to_the_slot() {
    // Arrange
    let setup = Setup::start(
        "[timeouts]\nresponse_header_ms = 30000\n\n[limits]\nbody_timeout_ms = 1000\n",
        |_| Reply::ok("stored"),
    )
    .await;
    let before = setup.counts().await;

    // Act: 5 of 10 bytes, 400 ms apart: the body timeout passes mid-body.
    let status = slow_upload(
        setup.proxy.public_addr(),
        10,
        b"01234",
        Duration::from_millis(400),
    )
    .await;
    let counted = setup.counts().await.since(before);

    // Assert
    assert_eq!(status, Ok(408));
    assert_eq!(
        setup.green_requests(),
        0,
        "a client's fault is never resent"
    );
    assert_eq!(
        (
            counted.against,
            counted.upstream_failures,
            counted.client_failures
        ),
        (0.0, 0.0, 1.0),
        "the client's fault, not the slot's: {counted:?}"
    );
    assert!(setup.blue_healthy().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_too_slow_for_a_baking_release_is_neither_resent_to_the_stable_one_nor_charged() {
    // Arrange: blue bakes (the guard watches it) and answers 500; green may answer for it,
    // and writes may be resent.
    let setup = Setup::start_with(
        BAKING,
        "[forwarding]\nretry_writes = true\n\n[timeouts]\nresponse_header_ms = 30000\n\n\
         [limits]\nbody_timeout_ms = 1000\n",
        |_| {
            Reply::bytes(
                "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 4\r\n\r\nfail",
                Then::KeepOpen,
            )
        },
    )
    .await;
    let watched = |m: &Samples| m.get("bluegreen_guard_watched_failures_total", &[]);
    let before = watched(&Samples::scrape(&setup.proxy).await);

    // Act: a whole upload first (blue's 500 is the upstream's fault), then one whose client
    // stops mid-body.
    let whole = slow_upload(
        setup.proxy.public_addr(),
        2,
        b"01",
        Duration::from_millis(10),
    )
    .await;
    let answered_for = setup.green_requests();
    let slow = slow_upload(
        setup.proxy.public_addr(),
        10,
        b"01234",
        Duration::from_millis(400),
    )
    .await;
    let charged = watched(&Samples::scrape(&setup.proxy).await) - before;

    // Assert: the stable release answered for the upstream's failure, and for it alone.
    assert_eq!(whole, Ok(200), "green answers for blue's 500");
    assert_eq!(answered_for, 1, "blue's 500 went to green once");
    assert_eq!(slow, Ok(408));
    assert_eq!(
        setup.green_requests(),
        1,
        "a client's fault is never resent to the stable release"
    );
    assert_eq!(charged, 1.0, "only blue's 500 is charged to it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_body_breaks_off_is_never_charged_to_the_slot() {
    // Arrange
    let setup = Setup::start("[forwarding]\nretry_writes = true\n", |_| {
        Reply::ok("stored")
    })
    .await;
    let before = setup.counts().await;

    // Act: 10 of the 100 bytes announced, then the client stops sending.
    let mut stream = TcpStream::connect(setup.proxy.public_addr())
        .await
        .expect("the proxy accepts");
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nhost: conformance.example\r\ncontent-length: 100\r\n\r\n0123456789")
        .await
        .expect("write");
    stream.shutdown().await.expect("half-close");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(REQUEST_TIMEOUT, stream.read_to_end(&mut answer)).await;
    let counted = e2e::eventually(
        || async { setup.counts().await.since(before).client_failures == 1.0 },
        Duration::from_secs(10),
    )
    .await;
    let counted_as = setup.counts().await.since(before);

    // Assert
    assert!(counted, "not counted as the client's: {counted_as:?}");
    assert_eq!(
        setup.green_requests(),
        0,
        "a client's fault is never resent"
    );
    assert_eq!(
        (counted_as.against, counted_as.upstream_failures),
        (0.0, 0.0),
        "{counted_as:?}"
    );
    assert!(setup.blue_healthy().await);
}

// Row 5.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row05_a_body_that_fails_part_way_counts_as_a_failed_request() {
    // Arrange: a length cut short by a close, a malformed chunk, a reset mid-body.
    let setup = Setup::start("", |n| match n {
        0 => Reply::bytes(format!("{}0123456789", ok_head(100)), Then::Close),
        1 => Reply::bytes(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
            Then::KeepOpen,
        ),
        2 => Reply::bytes(format!("{}0123456789", ok_head(100)), Then::Reset),
        _ => Reply::ok("whole"),
    })
    .await;
    let before = setup.counts().await;
    let body_failures = failures_of_kind(&setup, "body").await;

    // Act
    let mut got = Vec::new();
    for path in ["/truncated", "/bad-chunk", "/reset"] {
        got.push(get(&setup, path).await);
    }
    let whole = get(&setup, "/whole").await;
    let counted = setup.counts().await.since(before);

    // Assert
    for (_, body) in &got {
        assert!(body.is_err(), "the client's response was aborted: {got:?}");
    }
    assert_eq!(whole.1.as_deref().ok(), Some(&b"whole"[..]));
    let conns = connections(&setup.blue_requests());
    assert_ne!(
        conns[1], conns[3],
        "the connection of the bad chunk was not reused"
    );
    assert_eq!(
        setup.green_requests(),
        0,
        "an answered request is never resent"
    );
    assert_eq!(
        (counted.against, counted.upstream_failures, counted.answered),
        (3.0, 3.0, 1.0),
        "{counted:?}"
    );
    assert_eq!(failures_of_kind(&setup, "body").await - body_failures, 3.0);
}

// Row 6.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row06_a_transfer_coding_other_than_chunked_is_a_502() {
    // Arrange
    let setup = Setup::start("", |n| match n {
        0 => Reply::bytes(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n\x1f\x08\x00coded",
            Then::Close,
        ),
        1 => Reply::bytes(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n5\r\ncoded\r\n0\r\n\r\n",
            Then::KeepOpen,
        ),
        _ => Reply::ok("plain"),
    })
    .await;
    let before = setup.counts().await;

    // Act
    let gzip = get(&setup, "/gzip").await;
    let gzip_chunked = get(&setup, "/gzip-chunked").await;
    let plain = get(&setup, "/plain").await;
    let counted = setup.counts().await.since(before);

    // Assert
    assert_eq!(gzip.0, StatusCode::BAD_GATEWAY, "{gzip:?}");
    assert_eq!(gzip_chunked.0, StatusCode::BAD_GATEWAY, "{gzip_chunked:?}");
    assert_eq!(plain.1.as_deref().ok(), Some(&b"plain"[..]));
    let conns = connections(&setup.blue_requests());
    assert_ne!(conns[1], conns[2], "the refused connection was not reused");
    assert_eq!(
        setup.green_requests(),
        0,
        "a malformed answer is never resent"
    );
    assert_eq!(
        (counted.against, counted.upstream_failures),
        (2.0, 2.0),
        "{counted:?}"
    );
}

// Row 7.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row07_a_malformed_answer_to_a_write_is_a_502_and_never_resent() {
    // Arrange: writes may be resent (retry_writes), but only when nothing came back.
    let setup = Setup::start("[forwarding]\nretry_writes = true\n", |n| match n {
        0 => Reply::bytes("HTTP/1.1 101 Switching Protocols\r\n\r\n", Then::Close),
        1 => Reply::bytes(
            "HTTP/1.1 201 Created\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok",
            Then::Close,
        ),
        _ => Reply::bytes("HTTP/1.1 201 Cre", Then::Close),
    })
    .await;
    let before = setup.counts().await;
    let client = http_client(REQUEST_TIMEOUT);

    // Act
    let mut statuses = Vec::new();
    for path in ["/switched", "/two-lengths", "/half-a-head"] {
        let response = client
            .post(setup.url(path))
            .body("write once")
            .send()
            .await
            .expect("the proxy answers");
        statuses.push(response.status());
    }
    let counted = setup.counts().await.since(before);

    // Assert
    assert_eq!(statuses, [StatusCode::BAD_GATEWAY; 3]);
    assert_eq!(
        setup.blue_requests().len(),
        3,
        "each write reached blue once"
    );
    assert_eq!(
        setup.green_requests(),
        0,
        "no write reached the other release"
    );
    assert_eq!(
        (counted.against, counted.upstream_failures),
        (3.0, 3.0),
        "{counted:?}"
    );
}

// Row 8.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row08_an_http2_clients_cookie_fields_reach_the_upstream_joined_in_one() {
    // Arrange
    let setup = Setup::start("", |_| Reply::ok("ok")).await;
    let (mut sender, _connection) = h2_connect::<Full<Bytes>>(setup.proxy.public_addr()).await;
    let request = http::Request::builder()
        .uri(format!("http://{}/cookies", setup.proxy.public_addr()))
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .header("cookie", "c=3")
        .body(Full::new(Bytes::new()))
        .expect("a valid request");

    // Act
    let response = sender.send_request(request).await.expect("an answer");
    let status = response.status();
    let _ = response.into_body().collect().await;

    // Assert
    assert_eq!(status, StatusCode::OK);
    let seen = setup.blue_requests();
    assert_eq!(seen[0].header_all("cookie"), ["a=1; b=2; c=3"], "{seen:#?}");
}

// Row 9.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row09_malformed_chunks_and_trailers_are_refused_and_the_connection_not_reused() {
    // Arrange: each malformed body, then a whole answer on the same connection if the proxy
    // were to read on.
    const BODIES: [&str; 4] = [
        // An empty chunk-size line.
        "5\r\nhello\r\n\r\n",
        // A size line with no digits.
        "5\r\nhello\r\n;ext=1\r\n",
        // A bare LF inside a chunk extension.
        "5;a\nb\r\nhello\r\n0\r\n\r\n",
        // A trailer line that is not a field.
        "5\r\nhello\r\n0\r\nnot a field\r\n\r\n",
    ];
    let setup = Setup::start("", |n| {
        if n % 2 == 0 {
            Reply::bytes(
                format!(
                    "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{}",
                    BODIES[n / 2]
                ),
                Then::KeepOpen,
            )
        } else {
            Reply::ok("next")
        }
    })
    .await;
    let before = setup.counts().await;

    // Act
    let mut got = Vec::new();
    for i in 0..BODIES.len() {
        got.push(get(&setup, &format!("/malformed/{i}")).await);
        got.push(get(&setup, &format!("/next/{i}")).await);
    }
    let counted = setup.counts().await.since(before);

    // Assert
    let conns = connections(&setup.blue_requests());
    for (i, pair) in got.chunks(2).enumerate() {
        assert!(pair[0].1.is_err(), "body {i} was taken: {:?}", pair[0]);
        assert_eq!(
            pair[1].1.as_deref().ok(),
            Some(&b"next"[..]),
            "after body {i}"
        );
        assert_ne!(
            conns[2 * i],
            conns[2 * i + 1],
            "body {i}'s connection was reused"
        );
    }
    assert_eq!(
        (counted.against, counted.upstream_failures, counted.answered),
        (4.0, 4.0, 4.0),
        "{counted:?}"
    );
}

// Row 10.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row10_an_http10_chunked_response_with_keep_alive_closes_the_connection() {
    // Arrange
    let setup = Setup::start("", |n| match n {
        0 => Reply::bytes(
            "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            Then::KeepOpen,
        ),
        _ => Reply::ok("next"),
    })
    .await;

    // Act
    let first = get(&setup, "/old").await;
    let next = get(&setup, "/next").await;

    // Assert
    assert_eq!(first.0, StatusCode::OK);
    assert_eq!(
        first.1.as_deref().ok(),
        Some(&b"hello"[..]),
        "decoded, framing not passed on"
    );
    assert_eq!(next.1.as_deref().ok(), Some(&b"next"[..]));
    let conns = connections(&setup.blue_requests());
    assert_ne!(conns[0], conns[1], "the HTTP/1.0 connection was reused");
}

// Row 11.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row11_empty_list_elements_of_transfer_encoding_are_ignored() {
    // Arrange
    let setup = Setup::start("", |n| {
        let coding = if n == 0 { "chunked," } else { ", chunked" };
        Reply::bytes(
            format!(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: {coding}\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
            ),
            Then::KeepOpen,
        )
    })
    .await;
    let before = setup.counts().await;

    // Act
    let first = get(&setup, "/trailing-comma").await;
    let second = get(&setup, "/leading-comma").await;
    let counted = setup.counts().await.since(before);

    // Assert
    assert_eq!(first.1.as_deref().ok(), Some(&b"hello"[..]), "{first:?}");
    assert_eq!(second.1.as_deref().ok(), Some(&b"hello"[..]), "{second:?}");
    let conns = connections(&setup.blue_requests());
    assert_eq!(
        conns[0], conns[1],
        "a whole chunked answer keeps its connection"
    );
    assert_eq!(
        (counted.against, counted.answered),
        (0.0, 2.0),
        "{counted:?}"
    );
}

// Row 12.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row12_connection_naming_content_length_does_not_unframe_the_response() {
    // Arrange: the connection is held open, so a body read to the close would hang.
    let setup = Setup::start("", |_| {
        Reply::bytes(
            "HTTP/1.1 200 OK\r\nconnection: Content-Length\r\ncontent-length: 5\r\n\r\nhello",
            Then::KeepOpen,
        )
    })
    .await;

    // Act
    let first = get(&setup, "/one").await;
    let second = get(&setup, "/two").await;

    // Assert
    assert_eq!(first.1.as_deref().ok(), Some(&b"hello"[..]), "{first:?}");
    assert_eq!(second.1.as_deref().ok(), Some(&b"hello"[..]), "{second:?}");
    let conns = connections(&setup.blue_requests());
    assert_eq!(conns[0], conns[1], "the framed answer kept its connection");
}

// Row 13.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row13_fields_that_only_look_like_framing_fields_are_dropped() {
    // Arrange
    let setup = Setup::start("", |_| Reply::ok("ok")).await;
    let request = "POST /look-alikes HTTP/1.1\r\nhost: conformance.example\r\n\
        Transfer_Encoding: chunked\r\nContent_Length: 1000\r\nTransfer---Encoding: chunked\r\n\
        content--length: 7\r\nX_Custom: 1\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello";

    // Act
    let response = raw_exchange(setup.proxy.public_addr(), request).await;

    // Assert
    assert_eq!(response.map(|r| r.status), Ok(200));
    let seen = setup.blue_requests();
    let names: Vec<&str> = seen[0].headers.iter().map(|(n, _)| n.as_str()).collect();
    for dropped in [
        "transfer_encoding",
        "content_length",
        "transfer---encoding",
        "content--length",
        "x_custom",
    ] {
        assert!(
            !names.contains(&dropped),
            "{dropped} reached the upstream: {names:?}"
        );
    }
    assert_eq!(seen[0].header_all("content-length"), ["5"]);
    assert_eq!(seen[0].body, b"hello");
}

// The cases that were already right.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn te_and_content_length_together_use_the_chunks_and_close_the_connection() {
    // Arrange
    let setup = Setup::start("", |n| match n {
        0 => Reply::bytes(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 100\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            Then::KeepOpen,
        ),
        _ => Reply::ok("next"),
    })
    .await;
    let before = setup.counts().await;

    // Act
    let first = get(&setup, "/both").await;
    let next = get(&setup, "/next").await;
    let counted = setup.counts().await.since(before);

    // Assert
    assert_eq!(first.1.as_deref().ok(), Some(&b"hello"[..]), "{first:?}");
    assert_eq!(next.1.as_deref().ok(), Some(&b"next"[..]));
    let conns = connections(&setup.blue_requests());
    assert_ne!(
        conns[0], conns[1],
        "a smuggling-shaped answer's connection was reused"
    );
    assert_eq!(
        (counted.against, counted.answered),
        (0.0, 2.0),
        "{counted:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_lengths_are_one_when_equal_and_a_502_when_not() {
    // Arrange
    let setup = Setup::start("", |n| match n {
        0 => Reply::bytes(
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 5\r\n\r\nhello",
            Then::KeepOpen,
        ),
        1 => Reply::bytes(
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!",
            Then::KeepOpen,
        ),
        _ => Reply::ok("next"),
    })
    .await;
    let before = setup.counts().await;

    // Act
    let equal = get(&setup, "/equal").await;
    let different = get(&setup, "/different").await;
    let next = get(&setup, "/next").await;
    let counted = setup.counts().await.since(before);

    // Assert
    assert_eq!(equal.1.as_deref().ok(), Some(&b"hello"[..]), "{equal:?}");
    assert_eq!(different.0, StatusCode::BAD_GATEWAY, "{different:?}");
    assert_eq!(next.1.as_deref().ok(), Some(&b"next"[..]));
    let conns = connections(&setup.blue_requests());
    assert_eq!(conns[0], conns[1], "equal lengths keep the connection");
    assert_ne!(conns[1], conns[2], "conflicting lengths close it");
    assert_eq!(setup.green_requests(), 0);
    assert_eq!(
        (counted.against, counted.upstream_failures, counted.answered),
        (1.0, 1.0, 2.0),
        "{counted:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn informational_responses_are_skipped_for_the_final_one() {
    // Arrange
    let setup = Setup::start("", |_| {
        Reply::bytes(
            format!(
                "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n{}final",
                ok_head(5)
            ),
            Then::KeepOpen,
        )
    })
    .await;

    // Act
    let first = get(&setup, "/one").await;
    let second = get(&setup, "/two").await;

    // Assert
    assert_eq!(first.1.as_deref().ok(), Some(&b"final"[..]), "{first:?}");
    assert_eq!(second.1.as_deref().ok(), Some(&b"final"[..]), "{second:?}");
    let conns = connections(&setup.blue_requests());
    assert_eq!(conns[0], conns[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_body_is_read_for_204_304_or_head_whatever_the_length_says() {
    // Arrange: each answer claims a body and sends none; a next answer follows on the
    // same connection.
    let setup = Setup::start("", |n| match n {
        0 => Reply::bytes(
            "HTTP/1.1 204 No Content\r\ncontent-length: 10\r\n\r\n",
            Then::KeepOpen,
        ),
        1 => Reply::bytes(
            "HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\n\r\n",
            Then::KeepOpen,
        ),
        2 => Reply::bytes(ok_head(10), Then::KeepOpen),
        _ => Reply::ok("next"),
    })
    .await;
    let client = http_client(REQUEST_TIMEOUT);

    // Act
    let no_content = get(&setup, "/204").await;
    let not_modified = get(&setup, "/304").await;
    let head = client
        .head(setup.url("/head"))
        .send()
        .await
        .expect("the proxy answers");
    let head_status = head.status();
    let next = get(&setup, "/next").await;

    // Assert
    assert_eq!(no_content.0, StatusCode::NO_CONTENT);
    assert_eq!(not_modified.0, StatusCode::NOT_MODIFIED);
    assert_eq!(head_status, StatusCode::OK);
    assert_eq!(next.1.as_deref().ok(), Some(&b"next"[..]));
    let conns = connections(&setup.blue_requests());
    assert!(
        conns.windows(2).all(|w| w[0] == w[1]),
        "one connection: {conns:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extra_bytes_after_a_response_keep_its_connection_out_of_the_pool() {
    // Arrange
    let setup = Setup::start("", |n| match n {
        0 => Reply::bytes(
            format!(
                "{}helloHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nextra",
                ok_head(5)
            ),
            Then::KeepOpen,
        ),
        _ => Reply::ok("next"),
    })
    .await;
    let before = setup.counts().await;

    // Act
    let first = get(&setup, "/one").await;
    let next = get(&setup, "/next").await;
    let counted = setup.counts().await.since(before);

    // Assert
    assert_eq!(first.1.as_deref().ok(), Some(&b"hello"[..]));
    assert_eq!(
        next.1.as_deref().ok(),
        Some(&b"next"[..]),
        "not the extra answer"
    );
    let conns = connections(&setup.blue_requests());
    assert_ne!(conns[0], conns[1]);
    assert_eq!(
        (counted.against, counted.answered),
        (0.0, 2.0),
        "{counted:?}"
    );
}
