//! Request smuggling: ambiguous or malformed framing sent byte for byte to the public
//! listener is either refused with 400 or passed on with one clean framing, never ambiguously.
//! A recording upstream keeps exactly the bytes the proxy sent; each case gets a fresh proxy
//! and a fresh recorder, so nothing of one case leaks into the next.

use std::time::Duration;

use e2e::client::{RawResponse, raw_exchange};
use e2e::eventually;
use e2e::recorder::{Received, RecorderStack};

/// How long the recorder may take to frame the marker request that closes a case.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the proxy must do with a case.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Answer 400 and pass nothing complete on.
    Reject,
    /// Pass exactly one request on, whose de-chunked body is this.
    Forward(&'static [u8]),
    /// Either of the above (both are allowed by RFC 9112); when forwarded, with this body.
    Either(&'static [u8]),
}

struct Case {
    name: &'static str,
    /// The whole request as sent, byte for byte; each ends the connection after itself.
    request: String,
    expect: Expect,
}

fn case(name: &'static str, request: impl Into<String>, expect: Expect) -> Case {
    Case {
        name,
        request: request.into(),
        expect,
    }
}

/// A request that a parser trusting the other framing would read as a second request.
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: shop.example\r\n\r\n";

/// `POST /upload` with the given header lines (each ending in CRLF) and body.
fn post(headers: &str, body: &str) -> String {
    format!(
        "POST /upload HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n{headers}\r\n{body}"
    )
}

/// Runs one case against a fresh proxy and recorder; returns what went wrong, if anything.
async fn run(case: &Case) -> Vec<String> {
    let RecorderStack {
        proxy,
        recorder,
        dir: _dir,
    } = RecorderStack::start(|proxy| proxy).await;

    let response = raw_exchange(proxy.public_addr(), &case.request).await;

    // A marker request on a fresh connection: once the recorder has it, whatever the proxy
    // sent for the case before answering has arrived too.
    let marker = format!(
        "GET /marker-{} HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n",
        case.name
    );
    let marker_answer = raw_exchange(proxy.public_addr(), &marker).await;
    let settled = eventually(
        || async {
            recorder
                .user_requests()
                .iter()
                .any(|r| r.target().starts_with("/marker-"))
        },
        SETTLE_TIMEOUT,
    )
    .await;
    let received: Vec<Received> = recorder
        .user_requests()
        .into_iter()
        .filter(|r| !r.target().starts_with("/marker-"))
        .collect();

    println!(
        "case {}: answered {:?}, the upstream framed {} request(s)",
        case.name,
        response.as_ref().map(|r| r.status),
        received.len()
    );
    let mut problems = judge(case, response, &received);
    if !settled {
        problems.push(format!(
            "the marker request after the case never reached the upstream: {marker_answer:?}"
        ));
    }
    if !problems.is_empty() {
        problems.push(format!(
            "proxy log:\n{}\nupstream received, raw: {:?}",
            proxy.log_tail(),
            recorder
                .raw()
                .iter()
                .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
                .collect::<Vec<_>>()
        ));
    }
    problems
}

/// The invariants every case must hold, then the case's own expectation.
fn judge(case: &Case, response: Result<RawResponse, String>, received: &[Received]) -> Vec<String> {
    let mut problems = Vec::new();
    let complete: Vec<&Received> = received.iter().filter(|r| !r.is_truncated()).collect();
    if complete.len() > 1 {
        problems.push(format!(
            "the client sent one request and the upstream received {}: {complete:#?}",
            complete.len()
        ));
    }
    for r in received {
        if let Some(problem) = r.problem.as_deref().filter(|_| !r.is_truncated()) {
            problems.push(format!(
                "the upstream could not frame a request ({problem}): {r:#?}"
            ));
        }
        let lengths = r.header_all("content-length");
        let codings = r.header_all("transfer-encoding");
        if !lengths.is_empty() && !codings.is_empty() {
            problems.push(format!("a request reached the upstream with both Content-Length and Transfer-Encoding: {r:#?}"));
        }
        if lengths.len() > 1 {
            problems.push(format!(
                "a request reached the upstream with {} Content-Lengths: {r:#?}",
                lengths.len()
            ));
        }
        if !codings.is_empty() && codings != ["chunked"] {
            problems.push(format!(
                "a request reached the upstream with Transfer-Encoding {codings:?}: {r:#?}"
            ));
        }
        if r.target().contains("smuggled") {
            problems.push(format!("the smuggled request reached the upstream: {r:#?}"));
        }
    }
    let response = match response {
        Ok(response) => response,
        Err(e) => {
            problems.push(format!("no answer to the client: {e}"));
            return problems;
        }
    };
    let forwarded = match (response.status, case.expect) {
        (400, Expect::Reject | Expect::Either(_)) => None,
        (200, Expect::Forward(body) | Expect::Either(body)) => Some(body),
        (status, expect) => {
            problems.push(format!(
                "answered {status} ({:?}), expected {expect:?}",
                String::from_utf8_lossy(&response.body)
            ));
            return problems;
        }
    };
    match forwarded {
        None if !complete.is_empty() => problems.push(format!(
            "answered 400 but a complete request reached the upstream: {complete:#?}"
        )),
        None => {}
        Some(body) => match complete.as_slice() {
            [one] if one.body == body => {}
            [one] => problems.push(format!(
                "the upstream got body {:?}, the client sent {:?}",
                String::from_utf8_lossy(&one.body),
                String::from_utf8_lossy(body)
            )),
            _ => problems.push(format!(
                "answered 200 but the upstream received {} complete requests",
                complete.len()
            )),
        },
    }
    problems
}

async fn assert_cases(cases: &[Case]) {
    let mut failed = Vec::new();
    for case in cases {
        let problems = run(case).await;
        if !problems.is_empty() {
            failed.push(format!(
                "case `{}` ({:?}):\n  {}",
                case.name,
                case.request,
                problems.join("\n  ")
            ));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_and_transfer_encoding_together_are_never_passed_on_both() {
    let chunked_abc = "3\r\nabc\r\n0\r\n\r\n";
    let cases = [
        case(
            "cl-then-te",
            post(
                &format!(
                    "Content-Length: {}\r\nTransfer-Encoding: chunked\r\n",
                    chunked_abc.len() + SMUGGLED.len()
                ),
                &format!("{chunked_abc}{SMUGGLED}"),
            ),
            Expect::Either(b"abc"),
        ),
        case(
            "te-then-cl",
            post(
                &format!(
                    "Transfer-Encoding: chunked\r\nContent-Length: {}\r\n",
                    chunked_abc.len() + SMUGGLED.len()
                ),
                &format!("{chunked_abc}{SMUGGLED}"),
            ),
            Expect::Either(b"abc"),
        ),
        case(
            "short-cl-with-chunked",
            post(
                "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
                chunked_abc,
            ),
            Expect::Either(b"abc"),
        ),
        case(
            "cl-zero-hides-a-request-in-a-chunk",
            post(
                "Content-Length: 0\r\nTransfer-Encoding: chunked\r\n",
                &format!("{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n", SMUGGLED.len()),
            ),
            Expect::Either(SMUGGLED.as_bytes()),
        ),
    ];
    assert_cases(&cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_and_malformed_content_lengths_are_refused_or_made_one() {
    let cases = [
        case(
            "duplicate-equal",
            post("Content-Length: 3\r\nContent-Length: 3\r\n", "abc"),
            Expect::Either(b"abc"),
        ),
        case(
            "conflicting",
            post("Content-Length: 3\r\nContent-Length: 4\r\n", "abcd"),
            Expect::Reject,
        ),
        case(
            "equal-list",
            post("Content-Length: 3, 3\r\n", "abc"),
            Expect::Either(b"abc"),
        ),
        case(
            "conflicting-list",
            post("Content-Length: 3, 4\r\n", "abcd"),
            Expect::Reject,
        ),
        case(
            "plus-sign",
            post("Content-Length: +3\r\n", "abc"),
            Expect::Reject,
        ),
        case(
            "negative",
            post("Content-Length: -3\r\n", "abc"),
            Expect::Reject,
        ),
        case(
            "hex",
            post("Content-Length: 0x3\r\n", "abc"),
            Expect::Reject,
        ),
        case(
            "trailing-letters",
            post("Content-Length: 3abc\r\n", "abc"),
            Expect::Reject,
        ),
        case(
            "space-inside",
            post("Content-Length: 3 3\r\n", "abc"),
            Expect::Reject,
        ),
        case("empty", post("Content-Length: \r\n", "abc"), Expect::Reject),
        case(
            "overflow",
            post("Content-Length: 99999999999999999999999\r\n", "abc"),
            Expect::Reject,
        ),
        case(
            "space-before-colon",
            post("Content-Length : 3\r\n", "abc"),
            Expect::Reject,
        ),
    ];
    assert_cases(&cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_chunk_sizes_are_refused() {
    let te = "Transfer-Encoding: chunked\r\n";
    let cases = [
        case(
            "not-hex",
            post(te, "zz\r\nabc\r\n0\r\n\r\n"),
            Expect::Reject,
        ),
        case(
            "negative",
            post(te, "-3\r\nabc\r\n0\r\n\r\n"),
            Expect::Reject,
        ),
        case(
            "hex-prefix",
            post(te, "0x3\r\nabc\r\n0\r\n\r\n"),
            Expect::Reject,
        ),
        case(
            "overflow",
            post(te, "fffffffffffffffff3\r\nabc\r\n0\r\n\r\n"),
            Expect::Reject,
        ),
        case(
            "chunk-longer-than-its-size",
            post(te, &format!("3\r\nabcdef\r\n0\r\n\r\n{SMUGGLED}")),
            Expect::Reject,
        ),
        case(
            "empty-size",
            post(te, "\r\nabc\r\n0\r\n\r\n"),
            Expect::Reject,
        ),
        case(
            "extension-is-fine",
            post(te, "3;name=value\r\nabc\r\n0\r\n\r\n"),
            Expect::Forward(b"abc"),
        ),
        case(
            "trailer-is-fine",
            post(te, "3\r\nabc\r\n0\r\nX-Trailer: t\r\n\r\n"),
            Expect::Forward(b"abc"),
        ),
    ];
    assert_cases(&cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn obfuscated_transfer_encodings_are_refused() {
    let body = "3\r\nabc\r\n0\r\n\r\n";
    let cases = [
        case(
            "chunked-then-identity",
            post("Transfer-Encoding: chunked , identity\r\n", body),
            Expect::Reject,
        ),
        case(
            "xchunked",
            post("Transfer-Encoding: xchunked\r\n", body),
            Expect::Reject,
        ),
        case(
            "quoted",
            post("Transfer-Encoding: \"chunked\"\r\n", body),
            Expect::Reject,
        ),
        case(
            "space-before-colon",
            post("Transfer-Encoding : chunked\r\n", body),
            Expect::Reject,
        ),
        case(
            "tab-before-colon",
            post("Transfer-Encoding\t: chunked\r\n", body),
            Expect::Reject,
        ),
        case(
            "vertical-tab-in-value",
            post("Transfer-Encoding: \u{b}chunked\r\n", body),
            Expect::Reject,
        ),
        case(
            "second-header-identity",
            post(
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
                body,
            ),
            Expect::Reject,
        ),
        case(
            "gzip-then-chunked",
            // The proxy cannot pass a coding on after re-framing the body, so it may not
            // silently drop it either.
            post("Transfer-Encoding: gzip, chunked\r\n", body),
            Expect::Reject,
        ),
        case(
            "http-1.0",
            format!(
                "POST /upload HTTP/1.0\r\nHost: shop.example\r\nTransfer-Encoding: chunked\r\n\r\n{body}"
            ),
            Expect::Reject,
        ),
        case(
            "obs-fold",
            post(
                "Content-Length: 15\r\nX-Padding: a\r\n Transfer-Encoding: chunked\r\n",
                body,
            ),
            Expect::Reject,
        ),
        case(
            "bare-lf-before-the-name",
            post(
                "Content-Length: 15\r\nX-Padding: a\ntransfer-encoding: chunked\r\n",
                body,
            ),
            Expect::Either(b"abc"),
        ),
        case(
            "tab-before-the-value",
            post("Transfer-Encoding:\tchunked\r\n", body),
            Expect::Either(b"abc"),
        ),
        case(
            "upper-case",
            post("Transfer-Encoding: CHUNKED\r\n", body),
            Expect::Forward(b"abc"),
        ),
    ];
    assert_cases(&cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_broken_chunks_does_not_mark_the_upstream_down() {
    // Arrange: the checker looks only once at start, so any flip is the request path's doing.
    let stack = RecorderStack::start(|proxy| {
        proxy.extra_toml("[health]\ninterval_ms = 600000\npassive_fall = 2")
    })
    .await;
    let proxy = &stack.proxy;
    let broken = post("Transfer-Encoding: chunked\r\n", "zz\r\nabc\r\n0\r\n\r\n");

    // Act
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let response = raw_exchange(proxy.public_addr(), &broken)
            .await
            .unwrap_or_else(|e| panic!("no answer to a broken body: {e}"));
        statuses.push(response.status);
    }
    let status = proxy.status().await;

    // Assert
    assert_eq!(
        statuses, [400; 4],
        "a broken client body is the client's error"
    );
    assert_eq!(
        status["slots"]["blue"]["healthy"], true,
        "the client's broken bodies marked the upstream down: {status}"
    );
}
