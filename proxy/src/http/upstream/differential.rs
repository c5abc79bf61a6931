//! The proxy's upstream client against hyper's, on the same bytes: a property
//! test feeds generated responses (well-formed ones, and the malformed shapes
//! of issue 19) to our connection (`Conn`, over a loopback socket) and to
//! `hyper::client::conn::http1` (over an in-memory duplex), and asserts the
//! same verdict: the status and the whole body, or an error; and whether the
//! connection may carry another request.
//!
//! Where the proxy is deliberately not hyper, `expected` says so, rule by
//! rule: a transfer coding other than `chunked` is refused (nginx's rule;
//! hyper passes the coded bytes on), empty list elements of the codings are
//! ignored (RFC 9110 section 5.6.1; hyper reads `chunked,` to the close), a
//! response with both a coding and a length, or a coding in HTTP/1.0, is
//! read but its connection not reused (hyper reuses the first and refuses
//! the second), and a 101 nobody asked for is an error.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt as _, Empty};
use proptest::prelude::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use super::Conn;
use super::request_body::{BodyLimits, RequestBody, Resend};
use crate::http::deadline::Progress;

/// A body read that waits this long after its head has all there is: the
/// server's bytes went out in one write. The server is then asked to close,
/// which ends a body read to the close (and cuts any other short).
const STALL: Duration = Duration::from_millis(60);
/// The server closes after this long whatever happens (a head that never
/// ends).
const HOLD: Duration = Duration::from_secs(2);
/// No verdict takes longer: anything slower is a hang, a failure.
const LIMIT: Duration = Duration::from_secs(5);

type Close = Option<tokio::sync::oneshot::Sender<()>>;

/// What a client made of a response.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Verdict {
    Complete {
        status: u16,
        body: Vec<u8>,
        /// The connection may carry another request.
        reusable: bool,
    },
    Error,
}

/// How the generated response frames its body.
#[derive(Debug, Clone)]
enum Framing {
    /// `Content-Length` lines (each as written), then `body` bytes.
    Lengths(Vec<String>),
    /// `Transfer-Encoding` lines (each as written), with a chunked body.
    Codings(Vec<String>),
    /// Both a `Transfer-Encoding: chunked` and a `Content-Length`.
    Both(u64),
    /// Neither: the body runs to the close.
    Neither,
}

/// One chunk of a chunked body, with what may be wrong with its framing.
#[derive(Debug, Clone)]
struct Chunk {
    data: Vec<u8>,
    size_text: SizeText,
    extension: Option<String>,
    /// Bytes after the data instead of CRLF.
    data_end: &'static str,
}

#[derive(Debug, Clone, Copy)]
enum SizeText {
    Lower,
    Upper,
    LeadingZeros,
    SpaceAfter,
    /// An empty size line.
    Empty,
    /// No digits: the extension alone.
    NoDigits,
}

#[derive(Debug, Clone)]
enum Ending {
    Plain,
    /// The trailer section's lines (each followed by CRLF).
    Trailers(Vec<String>),
    /// The last chunk missing.
    Missing,
}

#[derive(Debug, Clone)]
struct Message {
    http_10: bool,
    informational: bool,
    status: u16,
    head: bool,
    connection: Option<&'static str>,
    framing: Framing,
    body: Vec<u8>,
    chunks: Vec<Chunk>,
    ending: Ending,
    extra: &'static [u8],
}

impl Message {
    fn bytes(&self) -> Vec<u8> {
        let mut w = Vec::new();
        if self.informational {
            w.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        let version = if self.http_10 { "1.0" } else { "1.1" };
        w.extend_from_slice(format!("HTTP/{version} {} Whatever\r\n", self.status).as_bytes());
        w.extend_from_slice(b"x-a: 1\r\n");
        if let Some(connection) = self.connection {
            w.extend_from_slice(format!("connection: {connection}\r\n").as_bytes());
        }
        let chunked = match &self.framing {
            Framing::Lengths(lines) => {
                for line in lines {
                    w.extend_from_slice(format!("content-length: {line}\r\n").as_bytes());
                }
                false
            }
            Framing::Codings(lines) => {
                for line in lines {
                    w.extend_from_slice(format!("transfer-encoding: {line}\r\n").as_bytes());
                }
                true
            }
            Framing::Both(length) => {
                w.extend_from_slice(
                    format!("transfer-encoding: chunked\r\ncontent-length: {length}\r\n")
                        .as_bytes(),
                );
                true
            }
            Framing::Neither => false,
        };
        w.extend_from_slice(b"\r\n");
        if chunked {
            for chunk in &self.chunks {
                let size = match chunk.size_text {
                    SizeText::Lower => format!("{:x}", chunk.data.len()),
                    SizeText::Upper => format!("{:X}", chunk.data.len()),
                    SizeText::LeadingZeros => format!("000{:x}", chunk.data.len()),
                    SizeText::SpaceAfter => format!("{:x} \t", chunk.data.len()),
                    SizeText::Empty | SizeText::NoDigits => String::new(),
                };
                w.extend_from_slice(size.as_bytes());
                if let Some(extension) = &chunk.extension {
                    w.push(b';');
                    w.extend_from_slice(extension.as_bytes());
                } else if matches!(chunk.size_text, SizeText::NoDigits) {
                    w.extend_from_slice(b";x");
                }
                w.extend_from_slice(b"\r\n");
                w.extend_from_slice(&chunk.data);
                w.extend_from_slice(chunk.data_end.as_bytes());
            }
            match &self.ending {
                Ending::Plain => w.extend_from_slice(b"0\r\n\r\n"),
                Ending::Trailers(lines) => {
                    w.extend_from_slice(b"0\r\n");
                    for line in lines {
                        w.extend_from_slice(line.as_bytes());
                        w.extend_from_slice(b"\r\n");
                    }
                    w.extend_from_slice(b"\r\n");
                }
                Ending::Missing => {}
            }
        } else {
            w.extend_from_slice(&self.body);
        }
        w.extend_from_slice(self.extra);
        w
    }

    fn method(&self) -> Method {
        if self.head { Method::HEAD } else { Method::GET }
    }

    /// Whether the response has a body at all (RFC 9112 section 6.3, 1).
    fn has_body(&self) -> bool {
        !self.head && self.status != 204 && self.status != 304
    }

    /// The codings of every `Transfer-Encoding` line, empty list elements
    /// left out.
    fn codings(&self) -> Vec<String> {
        match &self.framing {
            Framing::Codings(lines) => lines
                .iter()
                .flat_map(|line| line.split(','))
                .map(|c| c.trim().to_ascii_lowercase())
                .filter(|c| !c.is_empty())
                .collect(),
            Framing::Both(_) => vec!["chunked".to_owned()],
            _ => Vec::new(),
        }
    }
}

/// What the proxy must make of `message`, given what hyper's client makes of
/// it and of its normalized form (see the module documentation).
async fn expected(message: &Message) -> Verdict {
    if message.status == 101 {
        return Verdict::Error;
    }
    let coded = matches!(message.framing, Framing::Codings(_) | Framing::Both(_));
    if !coded || !message.has_body() {
        return hypers(message).await;
    }
    if message.codings() != ["chunked"] {
        return Verdict::Error;
    }
    // Read as hyper reads a plain `chunked` HTTP/1.1 answer.
    let mut normal = message.clone();
    if matches!(normal.framing, Framing::Codings(_)) {
        normal.framing = Framing::Codings(vec!["chunked".to_owned()]);
    }
    normal.http_10 = false;
    let verdict = hypers(&normal).await;
    let untrusted = message.http_10 || matches!(message.framing, Framing::Both(_));
    match verdict {
        Verdict::Complete { status, body, .. } if untrusted => Verdict::Complete {
            status,
            body,
            reusable: false,
        },
        other => other,
    }
}

/// Serves `bytes` on `socket` after reading the request head, then holds the
/// connection until asked to close (or `HOLD`).
async fn serve<S>(mut socket: S, bytes: Vec<u8>, close: tokio::sync::oneshot::Receiver<()>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    if socket.write_all(&bytes).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(HOLD, close).await;
}

/// Reads `body` to its end; when a read waits `STALL`, asks the server to
/// close. `None` for an error.
async fn read_to_end<B>(body: &mut B, close: &mut Close) -> Option<Vec<u8>>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    let mut data = Vec::new();
    loop {
        tokio::select! {
            // The body first: after a pause of the whole machine both are
            // ready, and the bytes that are there must win.
            biased;
            frame = body.frame() => match frame {
                None => return Some(data),
                Some(Ok(frame)) => {
                    if let Ok(bytes) = frame.into_data() {
                        data.extend_from_slice(&bytes);
                    }
                }
                Some(Err(_)) => return None,
            },
            () = tokio::time::sleep(STALL), if close.is_some() => {
                if let Some(close) = close.take() {
                    let _ = close.send(());
                }
            }
        }
    }
}

/// Our client's verdict, over a loopback socket.
async fn ours(message: &Message) -> Verdict {
    ours_bytes(message.bytes(), message.method()).await
}

/// Our client's verdict on `bytes` as the answer to a `method` request.
async fn ours_bytes(bytes: Vec<u8>, method: Method) -> Verdict {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let (close, closed) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.expect("accept");
        serve(socket, bytes, closed).await;
    });
    let stream = TcpStream::connect(addr).await.expect("connect");
    let mut close = Some(close);
    let exchange = exchange(
        Conn::new(super::Stream::Plain(stream), LIMIT),
        method,
        &mut close,
    );
    let verdict = tokio::time::timeout(LIMIT, exchange)
        .await
        .expect("our client hung")
        .unwrap_or(Verdict::Error);
    if let Some(close) = close {
        let _ = close.send(());
    }
    let _ = server.await;
    verdict
}

/// One request on `conn` and its answer read to the end; `None` for an
/// error on the way.
async fn exchange(conn: Box<Conn>, method: Method, close: &mut Close) -> Option<Verdict> {
    let limits = BodyLimits {
        max_bytes: 0,
        timeout: LIMIT,
        retain: 0,
    };
    let (body, _) = RequestBody::new(Resend::Replay(Vec::new()), limits);
    let mut req = Request::new(body);
    *req.method_mut() = method;
    req.headers_mut()
        .insert(http::header::HOST, http::HeaderValue::from_static("x"));
    let response = conn
        .send(req, &Progress::default(), Instant::now())
        .await
        .ok()?;
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let data = read_to_end(&mut body, close).await?;
    let reusable = body
        .take_reusable()
        .is_some_and(|mut conn| conn.is_usable());
    Some(Verdict::Complete {
        status,
        body: data,
        reusable,
    })
}

/// hyper's client's verdict, over an in-memory duplex.
async fn hypers(message: &Message) -> Verdict {
    let (client, server_side) = tokio::io::duplex(64 * 1024);
    let (close, closed) = tokio::sync::oneshot::channel();
    let server = tokio::spawn(serve(server_side, message.bytes(), closed));
    let mut close = Some(close);
    let verdict = async {
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(client))
                .await
                .ok()?;
        let connection = tokio::spawn(connection);
        let req = Request::builder()
            .method(message.method())
            .uri("/")
            .header(http::header::HOST, "x")
            .body(Empty::<Bytes>::new())
            .expect("a valid request");
        let response = sender.send_request(req).await.ok()?;
        let status = response.status().as_u16();
        let mut body = response.into_body();
        let data = read_to_end(&mut body, &mut close).await?;
        let reusable = sender.ready().await.is_ok();
        connection.abort();
        Some(Verdict::Complete {
            status,
            body: data,
            reusable,
        })
    };
    let verdict = tokio::time::timeout(LIMIT, verdict)
        .await
        .expect("hyper's client hung")
        .unwrap_or(Verdict::Error);
    if let Some(close) = close {
        let _ = close.send(());
    }
    let _ = server.await;
    verdict
}

fn chunk() -> impl Strategy<Value = Chunk> {
    (
        proptest::collection::vec(any::<u8>(), 1..40),
        prop_oneof![
            8 => Just(SizeText::Lower),
            2 => Just(SizeText::Upper),
            2 => Just(SizeText::LeadingZeros),
            2 => Just(SizeText::SpaceAfter),
            1 => Just(SizeText::Empty),
            1 => Just(SizeText::NoDigits),
        ],
        prop_oneof![
            6 => Just(None),
            2 => Just(Some("name=value".to_owned())),
            1 => Just(Some("a\nb".to_owned())),
            1 => Just(Some("q=\"x;y\"".to_owned())),
        ],
        prop_oneof![8 => Just("\r\n"), 1 => Just("\n"), 1 => Just("XX")],
    )
        .prop_map(|(data, size_text, extension, data_end)| Chunk {
            data,
            size_text,
            extension,
            data_end,
        })
}

fn message() -> impl Strategy<Value = Message> {
    let framing = prop_oneof![
        4 => Just(Framing::Lengths(Vec::new())),
        1 => Just(Framing::Lengths(vec!["#".to_owned(), "#".to_owned()])),
        1 => Just(Framing::Lengths(vec!["#, #".to_owned()])),
        1 => Just(Framing::Lengths(vec!["#".to_owned(), "7".to_owned()])),
        1 => prop_oneof![Just("abc"), Just("-1"), Just(""), Just("1, 2"), Just("+5")]
            .prop_map(|bad| Framing::Lengths(vec![bad.to_owned()])),
        4 => Just(Framing::Codings(vec!["chunked".to_owned()])),
        2 => prop_oneof![
            Just("chunked,"), Just(", chunked"), Just("Chunked"), Just("gzip"),
            Just("gzip, chunked"), Just("chunked, gzip"), Just("identity"),
        ]
        .prop_map(|coding| Framing::Codings(vec![coding.to_owned()])),
        1 => Just(Framing::Codings(vec!["chunked".to_owned(), "chunked".to_owned()])),
        1 => (0u64..40).prop_map(Framing::Both),
        2 => Just(Framing::Neither),
    ];
    let ending = prop_oneof![
        6 => Just(Ending::Plain),
        1 => Just(Ending::Trailers(vec!["x-sum: 1".to_owned()])),
        1 => Just(Ending::Trailers(vec!["not a field".to_owned()])),
        1 => Just(Ending::Trailers(vec!["x: 1\ny: 2".to_owned()])),
        1 => Just(Ending::Missing),
    ];
    (
        (
            prop::bool::weighted(0.25),
            prop::bool::weighted(0.1),
            prop_oneof![
                8 => Just(200u16), 1 => Just(204), 1 => Just(304), 1 => Just(404),
                1 => Just(503), 1 => Just(101),
            ],
            prop::bool::weighted(0.1),
            prop_oneof![
                5 => Just(None), 1 => Just(Some("close")), 2 => Just(Some("keep-alive")),
                1 => Just(Some("Content-Length")), 2 => Just(Some("keep-alive, close")),
            ],
        ),
        framing,
        proptest::collection::vec(any::<u8>(), 0..60),
        -20i64..3,
        proptest::collection::vec(chunk(), 0..4),
        ending,
        prop_oneof![
            6 => Just(&b""[..]),
            1 => Just(&b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"[..]),
            1 => Just(&b"junk"[..]),
        ],
    )
        .prop_map(
            |(
                (http_10, informational, status, head, connection),
                framing,
                body,
                shortfall,
                chunks,
                ending,
                extra,
            )| {
                // `#` stands for the body's length, less a shortfall (the body
                // cut short) now and then.
                let length = if shortfall > 0 {
                    body.len() as i64 + shortfall
                } else {
                    body.len() as i64
                };
                let framing = match framing {
                    Framing::Lengths(lines) if lines.is_empty() => {
                        Framing::Lengths(vec![length.to_string()])
                    }
                    Framing::Lengths(lines) => Framing::Lengths(
                        lines
                            .into_iter()
                            .map(|l| l.replace('#', &body.len().to_string()))
                            .collect(),
                    ),
                    other => other,
                };
                Message {
                    http_10,
                    informational,
                    status,
                    head,
                    connection,
                    framing,
                    body,
                    chunks,
                    ending,
                    extra,
                }
            },
        )
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// On the same bytes, our client and hyper's reach the same verdict,
    /// but for the documented rules where the proxy is stricter.
    #[test]
    fn our_client_reads_what_hypers_reads(message in message()) {
        let (ours, expected) = runtime().block_on(async {
            tokio::join!(ours(&message), expected(&message))
        });
        prop_assert_eq!(
            ours,
            expected,
            "{:?}",
            String::from_utf8_lossy(&message.bytes())
        );
    }
}

#[test]
fn the_rows_of_issue_19_get_the_verdicts_they_should() {
    let rt = runtime();
    let chunked = |body: &str| {
        format!("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n{body}").into_bytes()
    };
    // The bytes, and the body and reuse they must give (`None`: an error).
    type Case = (Vec<u8>, Option<(&'static [u8], bool)>);
    let cases: Vec<Case> = vec![
        // 6: a coding other than chunked.
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\ncoded".to_vec(),
            None,
        ),
        // 9: an empty size line, no digits, a bare LF in an extension, a
        // trailer line that is not a field.
        (chunked("5\r\nhello\r\n\r\n"), None),
        (chunked("5\r\nhello\r\n;x\r\n0\r\n\r\n"), None),
        (chunked("5;a\nb\r\nhello\r\n0\r\n\r\n"), None),
        (chunked("5\r\nhello\r\n0\r\nnot a field\r\n\r\n"), None),
        // 10: HTTP/1.0 with keep-alive and chunked: read, not reused.
        (
            b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                .to_vec(),
            Some((b"hello", false)),
        ),
        // 11: an empty list element.
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked,\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                .to_vec(),
            Some((b"hello", true)),
        ),
        // 12: `Connection` naming the length.
        (
            b"HTTP/1.1 200 OK\r\nconnection: content-length\r\ncontent-length: 5\r\n\r\nhello"
                .to_vec(),
            Some((b"hello", true)),
        ),
    ];
    for (bytes, want) in cases {
        let verdict = rt.block_on(ours_bytes(bytes.clone(), Method::GET));
        let want = match want {
            None => Verdict::Error,
            Some((body, reusable)) => Verdict::Complete {
                status: 200,
                body: body.to_vec(),
                reusable,
            },
        };
        assert_eq!(verdict, want, "{:?}", String::from_utf8_lossy(&bytes));
    }
}
