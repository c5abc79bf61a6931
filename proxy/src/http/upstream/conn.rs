//! One keep-alive HTTP/1.1 connection to an upstream: writes a request
//! (the head, then the body framed by its length or in chunks) while
//! watching for the response head, and hands the connection to the
//! response's body, which reads the rest and gives it back to the pool.
//!
//! Hand-written over tokio's socket rather than hyper's client connection:
//! the whole exchange runs in the task of the client connection that asked
//! for it, so a request costs no channel send, no second task to wake and
//! no body channel between two tasks.
//! hyper still serves the client side.

use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::{Buf as _, Bytes, BytesMut};
use http::header::{self, HeaderMap};
use http::request::Parts;
use http::{Method, Request, Response};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncReadExt as _, AsyncWrite};
use tokio::time::Sleep;

use super::connector::Stream;
use super::request_body::{RequestBody, RequestBodyError};
use super::response::{Decoded, Framing, ResponseError, parse_head};
use crate::http::deadline::Progress;

/// Bytes asked of the socket per read once the buffer runs low.
const READ_SIZE: usize = 8 * 1024;

/// Below this much free room the read buffer is grown (or reclaimed) before
/// a read, so that a read is never a sliver.
const MIN_SPARE: usize = 1024;

/// Informational (1xx) responses skipped before the real one at most.
const MAX_INFORMATIONAL: usize = 8;

/// Room left in a response's header map for what the proxy adds to it
/// (the request id, a canary cookie).
const ADDED_HEADERS: usize = 2;

/// Request bytes gathered before they are written, so that a body's chunks
/// go out with the head and each other rather than a write each.
const WRITE_GATHER: usize = 64 * 1024;

/// Body frames up to this size are copied into the write buffer, to go out
/// with what surrounds them; a larger one is written from where it is, not
/// copied.
const COPY_LIMIT: usize = 8 * 1024;

/// Why an exchange with the upstream failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("writing the request: {0}")]
    Write(io::Error),
    #[error("reading the response: {0}")]
    Read(io::Error),
    #[error("the upstream closed the connection before answering")]
    Closed,
    #[error("the upstream closed the connection in the middle of the response")]
    Truncated,
    #[error("more than {MAX_INFORMATIONAL} informational responses")]
    TooManyInformational,
    #[error("an unrequested protocol switch (101)")]
    Switched,
    #[error(transparent)]
    Response(#[from] ResponseError),
    #[error("the request body: {0}")]
    RequestBody(#[from] RequestBodyError),
}

/// Why an exchange failed, with what it tells about a resend: whether the
/// connection had carried an earlier exchange (a pooled connection the
/// upstream may have closed meanwhile) and whether any byte of a response
/// came back (then the upstream has seen the request, and it is not sent
/// again).
#[derive(Debug)]
pub struct Failed {
    pub error: ExchangeError,
    pub reused: bool,
    pub responded: bool,
    /// The request's head, to send again; its body, if unread, went back to
    /// its `BodyShared`.
    pub parts: Box<Parts>,
}

/// A connection to an upstream, between requests or during one.
pub struct Conn {
    io: Stream,
    /// Bytes read and not yet used. Bodies are handed on as slices of it,
    /// so it is grown only when its free room runs out (and then reclaimed
    /// when those slices are gone).
    read: BytesMut,
    /// The request bytes not yet written.
    write: Vec<u8>,
    /// The connection has carried an exchange before this one: set when it
    /// is handed back for reuse.
    reused: bool,
    /// The longest a response body may go without a byte
    /// (`timeouts.upstream_read_ms`).
    read_timeout: Duration,
}

/// How the request body goes on the wire.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sending {
    /// No body, and no `Content-Length`.
    Nothing,
    /// `Content-Length: 0`: no body, but the length says so.
    Zero,
    Length(u64),
    Chunked,
}

/// The request being written.
struct Outgoing {
    sending: Sending,
    body: Option<RequestBody>,
    /// Bytes of `Conn::write` already written.
    written: usize,
    /// The rest of a large body frame, written after `Conn::write` (and
    /// followed by its chunk's CRLF); empty when there is none.
    frame: Bytes,
    /// Every byte of the request is written.
    done: bool,
    /// Writing failed (or the client's body did): nothing more is written,
    /// and the connection is not reused.
    failed: bool,
    /// The last turn ended waiting for the client's body, not the upstream.
    waiting_on_client: bool,
    /// Informational responses skipped so far.
    informational: usize,
    /// A byte of a response has come back.
    responded: bool,
}

impl Conn {
    pub fn new(io: Stream, read_timeout: Duration) -> Box<Conn> {
        Box::new(Conn {
            io,
            read: BytesMut::new(),
            write: Vec::new(),
            reused: false,
            read_timeout,
        })
    }

    /// Whether the connection can take a request: nothing unread and no close
    /// from the upstream. Costs no system call unless the socket has become
    /// readable since the last response, which for an idle connection means
    /// closed (or sending what nobody asked for; over TLS, also a session
    /// ticket, which leaves it usable).
    pub fn is_usable(&mut self) -> bool {
        self.read.is_empty() && self.io.is_usable()
    }

    /// Sends `req` and reads the response head; the response's body owns
    /// the connection from then on. `req`'s target must be in origin form
    /// (or authority form for `CONNECT`). `progress` hears when the proxy
    /// waits on the client's body and when it stops, for the response
    /// deadline, which counts from `began` until then.
    pub async fn send(
        mut self: Box<Self>,
        req: Request<RequestBody>,
        progress: &Progress,
        began: Instant,
    ) -> Result<Response<ResponseBody>, Failed> {
        let (parts, body) = req.into_parts();
        let sending = sending(&parts, &body);
        self.write.clear();
        encode_head(&mut self.write, &parts, sending);
        let mut out = Outgoing {
            sending,
            body: matches!(sending, Sending::Length(_) | Sending::Chunked).then_some(body),
            written: 0,
            frame: Bytes::new(),
            done: false,
            failed: false,
            waiting_on_client: false,
            informational: 0,
            responded: false,
        };
        let exchange = std::future::poll_fn(|cx| {
            self.poll_exchange(cx, &mut out, &parts.method, progress, began)
        })
        .await;
        let head = match exchange {
            Ok(head) => head,
            Err(error) => {
                return Err(Failed {
                    error,
                    reused: self.reused,
                    responded: out.responded,
                    parts: Box::new(parts),
                });
            }
        };
        // An upstream that refuses a request with a body (a 413, a 401) often
        // closes without reading the rest of the body and without saying
        // `Connection: close` (hyper's server does): kept, the connection
        // would take the next request just as the close arrives, and a write
        // cannot be resent. The rare refusal costs one new connection.
        let refused_body = head.status.as_u16() >= 400
            && matches!(out.sending, Sending::Length(_) | Sending::Chunked);
        let mut response = Response::new(ResponseBody {
            keep_alive: head.keep_alive && !out.failed && !refused_body,
            stall: None,
            progressed: false,
            conn: Some(self),
            framing: head.framing,
            // Boxed: rare, and the common response stays small.
            sending: (!out.done && !out.failed).then(|| Box::new(out)),
        });
        *response.status_mut() = head.status;
        *response.headers_mut() = head.headers;
        Ok(response)
    }

    /// Writes what it can of the request and reads what it can of the
    /// response: an upstream may answer before it has read the whole body
    /// (a 413, say), and waiting to finish writing first could wait forever.
    fn poll_exchange(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut Outgoing,
        method: &Method,
        progress: &Progress,
        began: Instant,
    ) -> Poll<Result<super::response::Head, ExchangeError>> {
        if !out.done && !out.failed {
            match self.poll_write_request(cx, out) {
                Poll::Ready(Ok(())) => out.done = true,
                // The client's body failed (too large, too late, malformed):
                // nothing the upstream says can make up for it.
                Poll::Ready(Err(e @ ExchangeError::RequestBody(_))) => return Poll::Ready(Err(e)),
                Poll::Ready(Err(e)) => {
                    // The upstream stopped taking the request: it may have
                    // answered first (an early 413, then a reset), and the
                    // read below says so; a write error comes at once, while
                    // the answer may wait in the socket for the reactor's
                    // next turn. Its reset ends the read soon either way.
                    tracing::debug!(error = %e, "the upstream stopped taking the request");
                    out.failed = true;
                    out.body = None;
                }
                Poll::Pending => {}
            }
            let waiting = out.waiting_on_client && !out.done && !out.failed;
            if waiting {
                progress.wait_on_client();
            } else if progress.is_waiting_on_client() {
                progress.resume(began, Instant::now());
            }
        }
        self.poll_head(cx, method, out)
    }

    fn poll_write_request(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut Outgoing,
    ) -> Poll<Result<(), ExchangeError>> {
        out.waiting_on_client = false;
        // Each turn takes a body frame or writes bytes, or returns.
        loop {
            // A large frame waiting goes out before the body is asked again.
            if out.frame.is_empty()
                && let Some(body) = out.body.as_mut()
                && self.write.len() - out.written < WRITE_GATHER
            {
                match Pin::new(body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        // What is written goes first, so the buffer holds no
                        // more than what is left plus a small frame.
                        self.write.drain(..out.written);
                        out.written = 0;
                        out.frame = encode_frame(&mut self.write, out.sending, frame);
                        continue;
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e.into())),
                    Poll::Ready(None) => {
                        if out.sending == Sending::Chunked {
                            self.write.extend_from_slice(b"0\r\n\r\n");
                        }
                        out.body = None;
                        continue;
                    }
                    Poll::Pending => {}
                }
            }
            if out.written < self.write.len() {
                let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.write[out.written..]))
                    .map_err(ExchangeError::Write)?;
                if n == 0 {
                    return Poll::Ready(Err(ExchangeError::Write(io::ErrorKind::WriteZero.into())));
                }
                out.written += n;
                if out.written == self.write.len() {
                    self.write.clear();
                    out.written = 0;
                }
                continue;
            }
            if !out.frame.is_empty() {
                let n = ready!(Pin::new(&mut self.io).poll_write(cx, &out.frame))
                    .map_err(ExchangeError::Write)?;
                if n == 0 {
                    return Poll::Ready(Err(ExchangeError::Write(io::ErrorKind::WriteZero.into())));
                }
                out.frame.advance(n);
                if out.frame.is_empty() && out.sending == Sending::Chunked {
                    self.write.extend_from_slice(b"\r\n");
                }
                continue;
            }
            // What TLS took in may wait in its buffer for a writable socket; a
            // plain socket has nothing to flush.
            let flushed = Pin::new(&mut self.io)
                .poll_flush(cx)
                .map_err(ExchangeError::Write)?;
            if out.body.is_none() {
                ready!(flushed);
                if self.write.capacity() > WRITE_GATHER {
                    // A large body's buffer is not kept by an idle connection.
                    self.write = Vec::new();
                }
                return Poll::Ready(Ok(()));
            }
            // The body has nothing yet; it wakes the task when it has.
            out.waiting_on_client = true;
            return Poll::Pending;
        }
    }

    /// Reads until a final response head is parsed, skipping informational
    /// ones (100 Continue, 103 Early Hints).
    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        method: &Method,
        out: &mut Outgoing,
    ) -> Poll<Result<super::response::Head, ExchangeError>> {
        // Each turn parses a head or reads bytes, or returns.
        loop {
            if !self.read.is_empty() {
                out.responded = true;
                if let Some(head) = parse_head(&mut self.read, method, ADDED_HEADERS)? {
                    if head.status == http::StatusCode::SWITCHING_PROTOCOLS {
                        return Poll::Ready(Err(ExchangeError::Switched));
                    }
                    if !head.status.is_informational() {
                        return Poll::Ready(Ok(head));
                    }
                    out.informational += 1;
                    if out.informational > MAX_INFORMATIONAL {
                        return Poll::Ready(Err(ExchangeError::TooManyInformational));
                    }
                    continue;
                }
            }
            let n = ready!(self.poll_fill(cx)).map_err(ExchangeError::Read)?;
            if n == 0 {
                return Poll::Ready(Err(if out.responded {
                    ExchangeError::Truncated
                } else {
                    ExchangeError::Closed
                }));
            }
        }
    }

    /// Reads once into the buffer; 0 is the upstream's close.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.read.capacity() - self.read.len() < MIN_SPARE {
            self.read.reserve(READ_SIZE);
        }
        std::pin::pin!(self.io.read_buf(&mut self.read)).poll(cx)
    }
}

/// How the request's body is framed. The client's own framing headers are
/// not passed on: the proxy frames the body it sends.
fn sending(parts: &Parts, body: &RequestBody) -> Sending {
    match body.size_hint().exact() {
        Some(0)
            if parts.headers.contains_key(header::CONTENT_LENGTH)
                || matches!(parts.method, Method::POST | Method::PUT | Method::PATCH) =>
        {
            Sending::Zero
        }
        Some(0) => Sending::Nothing,
        Some(n) => Sending::Length(n),
        None => Sending::Chunked,
    }
}

fn encode_head(w: &mut Vec<u8>, parts: &Parts, sending: Sending) {
    w.extend_from_slice(parts.method.as_str().as_bytes());
    w.push(b' ');
    let target = if parts.method == Method::CONNECT {
        parts.uri.authority().map(http::uri::Authority::as_str)
    } else {
        parts
            .uri
            .path_and_query()
            .map(http::uri::PathAndQuery::as_str)
    };
    w.extend_from_slice(target.unwrap_or("/").as_bytes());
    w.extend_from_slice(b" HTTP/1.1\r\n");
    encode_fields(w, &parts.headers);
    match sending {
        Sending::Nothing => {}
        Sending::Zero => w.extend_from_slice(b"content-length: 0\r\n"),
        Sending::Length(n) => {
            w.extend_from_slice(b"content-length: ");
            push_number(w, n, 10);
            w.extend_from_slice(b"\r\n");
        }
        Sending::Chunked => w.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    w.extend_from_slice(b"\r\n");
}

/// `n` in base 10 or 16 (lower case), without the allocation of `format!`.
fn push_number(w: &mut Vec<u8>, n: u64, base: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = n;
    loop {
        at -= 1;
        digits[at] = DIGITS[(n % base) as usize];
        n /= base;
        if n == 0 {
            break;
        }
    }
    w.extend_from_slice(&digits[at..]);
}

fn encode_fields(w: &mut Vec<u8>, headers: &HeaderMap) {
    for (name, value) in headers {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING {
            continue;
        }
        w.extend_from_slice(name.as_str().as_bytes());
        w.extend_from_slice(b": ");
        w.extend_from_slice(value.as_bytes());
        w.extend_from_slice(b"\r\n");
    }
}

/// Puts a body frame on the wire: its chunk-size line into `w`, and a small
/// frame's data (with its chunk's CRLF) too; returns a large frame's data,
/// to be written from where it is (then its CRLF), or nothing.
fn encode_frame(w: &mut Vec<u8>, sending: Sending, frame: Frame<Bytes>) -> Bytes {
    // Trailers are dropped: `TE: trailers` is hop-by-hop and never passed on,
    // so the upstream has not said it takes them.
    let Ok(data) = frame.into_data() else {
        return Bytes::new();
    };
    if data.is_empty() {
        return data;
    }
    let chunked = sending == Sending::Chunked;
    if chunked {
        push_number(w, data.len() as u64, 16);
        w.extend_from_slice(b"\r\n");
    }
    if data.len() > COPY_LIMIT {
        return data;
    }
    w.extend_from_slice(&data);
    if chunked {
        w.extend_from_slice(b"\r\n");
    }
    Bytes::new()
}

/// A response body read from the upstream connection, which it owns until
/// the body ends; then `take_reusable` gives the connection back if another
/// request may follow on it.
pub struct ResponseBody {
    conn: Option<Box<Conn>>,
    framing: Framing,
    keep_alive: bool,
    /// The read timeout's timer, made the first time the body waits for the
    /// upstream (most bodies are read whole with their head and never do).
    stall: Option<Pin<Box<Sleep>>>,
    /// Bytes arrived since the timer was last armed.
    progressed: bool,
    /// The rest of the request when the answer began before it was all
    /// sent: written on while the body is read, as an upstream that streams
    /// its answer while it reads (an echo) needs. A connection with a
    /// request not all sent is never reused.
    sending: Option<Box<Outgoing>>,
}

/// Why a response body stopped short.
#[derive(Debug, thiserror::Error)]
pub enum ResponseBodyError {
    #[error("reading the response body: {0}")]
    Read(#[from] io::Error),
    #[error("the upstream closed the connection in the middle of the body")]
    Truncated,
    #[error(transparent)]
    Decode(#[from] ResponseError),
    #[error("no byte of the response body for {0:?}")]
    Stalled(Duration),
}

impl ResponseBody {
    /// The connection, once the body has been read to its end and the
    /// connection may take another request.
    pub fn take_reusable(&mut self) -> Option<Box<Conn>> {
        if self.keep_alive && self.sending.is_none() && self.framing.ended() {
            let mut conn = self.conn.take()?;
            conn.reused = true;
            Some(conn)
        } else {
            None
        }
    }
}

/// Whether the upstream has sent nothing for `timeout`: `stall` is armed for
/// that long after the last byte (`progressed` says bytes came since it was
/// last armed). Polled only when a read would wait, so a body read whole
/// with its head never makes the timer.
fn poll_stalled(
    stall: &mut Option<Pin<Box<Sleep>>>,
    progressed: &mut bool,
    cx: &mut Context<'_>,
    timeout: Duration,
) -> bool {
    let moved = std::mem::take(progressed);
    let timer = match stall {
        None => stall.insert(Box::pin(tokio::time::sleep(timeout))),
        Some(timer) => {
            if moved {
                timer.as_mut().reset(tokio::time::Instant::now() + timeout);
            }
            timer
        }
    };
    timer.as_mut().poll(cx).is_ready()
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = ResponseBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ResponseBodyError>>> {
        let this = self.get_mut();
        let Some(conn) = this.conn.as_mut() else {
            return Poll::Ready(None);
        };
        if let Some(out) = this.sending.as_mut() {
            match conn.poll_write_request(cx, out) {
                Poll::Ready(Ok(())) => this.sending = None,
                Poll::Ready(Err(e)) => {
                    // The answer may still come whole: read on, but the
                    // connection ends with it.
                    tracing::debug!(error = %e, "the rest of the request could not be sent");
                    this.sending = None;
                    this.keep_alive = false;
                }
                Poll::Pending => {}
            }
        }
        // Each turn decodes bytes or reads some, or returns.
        loop {
            match this.framing.decode(&mut conn.read) {
                Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(Decoded::End) => return Poll::Ready(None),
                Ok(Decoded::More) => {}
                Err(e) => {
                    this.keep_alive = false;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
            let filled = match conn.poll_fill(cx) {
                Poll::Ready(filled) => filled,
                Poll::Pending => {
                    let timeout = conn.read_timeout;
                    if poll_stalled(&mut this.stall, &mut this.progressed, cx, timeout) {
                        this.keep_alive = false;
                        return Poll::Ready(Some(Err(ResponseBodyError::Stalled(timeout))));
                    }
                    return Poll::Pending;
                }
            };
            match filled {
                Ok(0) if matches!(this.framing, Framing::Close) => {
                    this.framing = Framing::Empty;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.keep_alive = false;
                    return Poll::Ready(Some(Err(ResponseBodyError::Truncated)));
                }
                Ok(_) => this.progressed = true,
                Err(e) => {
                    this.keep_alive = false;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing.ended()
    }

    fn size_hint(&self) -> SizeHint {
        self.framing
            .remaining()
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `encode_frame` puts on the wire for `data`: the buffer, then the
    /// frame it hands back, then the CRLF a chunk's data ends with.
    fn wire(sending: Sending, data: &[u8]) -> (Vec<u8>, usize) {
        let mut w = Vec::new();
        let rest = encode_frame(&mut w, sending, Frame::data(Bytes::copy_from_slice(data)));
        let in_place = rest.len();
        w.extend_from_slice(&rest);
        if in_place > 0 && sending == Sending::Chunked {
            w.extend_from_slice(b"\r\n");
        }
        (w, in_place)
    }

    #[test]
    fn small_frames_are_copied_and_large_ones_written_where_they_are() {
        let small = vec![b'a'; 26];
        let large = vec![b'b'; COPY_LIMIT + 1];
        assert_eq!(wire(Sending::Length(26), &small), (small.clone(), 0));
        assert_eq!(
            wire(Sending::Chunked, &small),
            ([&b"1a\r\n"[..], &small, b"\r\n"].concat(), 0)
        );
        assert_eq!(
            wire(Sending::Length(0), &large),
            (large.clone(), large.len())
        );
        let size_line = format!("{:x}\r\n", large.len());
        assert_eq!(
            wire(Sending::Chunked, &large),
            (
                [size_line.as_bytes(), &large, b"\r\n"].concat(),
                large.len()
            )
        );
        assert_eq!(wire(Sending::Chunked, b""), (Vec::new(), 0));
    }

    #[test]
    fn numbers_are_written_in_their_base() {
        for (n, base, text) in [
            (0, 10, "0"),
            (1_048_576, 10, "1048576"),
            (u64::MAX, 10, "18446744073709551615"),
            (255, 16, "ff"),
            (u64::MAX, 16, "ffffffffffffffff"),
        ] {
            let mut w = Vec::new();
            push_number(&mut w, n, base);
            assert_eq!(w, text.as_bytes());
        }
    }
}
