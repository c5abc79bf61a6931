//! Reading an upstream's response: the head parsed into a status and a
//! header map whose values share the bytes read (no copy) and which holds no
//! hop-by-hop header (they describe this connection, and are read here
//! rather than put in the map to be taken out again), the body's framing
//! decided as RFC 9112 section 6.3 says, and the body decoded by length, in
//! chunks, or up to the connection's close.
//!
//! As strict as hyper's client and nginx: what either refuses is refused
//! here too (a transfer coding other than `chunked`, nginx's rule; chunk
//! framing byte for byte as hyper's decoder reads it, trailers included),
//! and a response whose framing cannot be trusted is read but its connection
//! is not reused. `differential` checks this against hyper's client.

use std::mem::MaybeUninit;
use std::ops::Range;

use bytes::{Buf as _, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};

use crate::http::headers::{HOP_CONNECTION, HOP_TRANSFER_ENCODING, fixed_hop_by_hop, list_items};

/// The largest response head taken (nginx's default is 4 or 8 KiB); a
/// larger one is a bad gateway, not a buffer that grows without bound.
pub const MAX_HEAD: usize = 64 * 1024;

/// The most header fields taken in a response head (hyper's limit is 100).
const MAX_HEADERS: usize = 128;

/// The longest chunk-size line (size, whitespace and extensions) taken.
const MAX_CHUNK_LINE: usize = 4 * 1024;

/// Chunk-extension bytes taken over a whole body (hyper's limit).
const MAX_EXTENSIONS: u64 = 16 * 1024;

/// The largest trailer section taken (hyper's limit); trailers are checked
/// and dropped.
const MAX_TRAILERS: usize = 16 * 1024;

/// The most trailer fields taken (hyper's limit).
const MAX_TRAILER_FIELDS: usize = 100;

/// Why an upstream's response could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ResponseError {
    #[error("malformed response head: {0}")]
    Malformed(&'static str),
    #[error("response head larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("more than {MAX_HEADERS} header fields in the response head")]
    TooManyHeaders,
    #[error("conflicting or invalid Content-Length in the response")]
    BadLength,
    #[error("a transfer coding other than chunked")]
    Coding,
    #[error("malformed chunked response body: {0}")]
    BadChunk(&'static str),
}

/// How the response body ends.
#[derive(Debug)]
pub enum Framing {
    /// No body: HEAD, 1xx, 204, 304, a length of 0.
    Empty,
    /// This many bytes are still to come.
    Length(u64),
    Chunked(Chunked),
    /// Everything until the upstream closes the connection.
    Close,
}

/// A parsed response head.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// Whether the connection may carry another request once this response
    /// has been read to its end.
    pub keep_alive: bool,
}

/// Where one header field lies in the head.
#[derive(Clone, Copy, Default)]
struct Span {
    name: (u32, u32),
    value: (u32, u32),
}

fn range((start, end): (u32, u32)) -> Range<usize> {
    start as usize..end as usize
}

/// Parses a response head at the start of `buf` and splits it off; `None`
/// when it is not all there yet. `extra` is room to leave in the header map
/// for the headers the proxy adds, so that it is not grown again.
pub fn parse_head(
    buf: &mut BytesMut,
    method: &Method,
    extra: usize,
) -> Result<Option<Head>, ResponseError> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut spans = [Span::default(); MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        buf,
        &mut slots,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return Err(ResponseError::HeadTooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(ResponseError::TooManyHeaders),
        Err(e) => return Err(ResponseError::Malformed(error_text(e))),
    };
    if len > MAX_HEAD {
        return Err(ResponseError::HeadTooLarge);
    }
    let status = parsed
        .code
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or(ResponseError::Malformed("invalid status code"))?;
    let http_11 = parsed.version == Some(1);
    // The values go into the map as slices of the head, which needs the head
    // split off `buf` first: so note where each field is, then split.
    let base = buf.as_ptr() as usize;
    let offset = |part: &[u8]| {
        let start = (part.as_ptr() as usize - base) as u32;
        (start, start + part.len() as u32)
    };
    let count = parsed.headers.len();
    for (span, field) in spans.iter_mut().zip(parsed.headers.iter()) {
        *span = Span {
            name: offset(field.name.as_bytes()),
            value: offset(field.value),
        };
    }
    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(count + extra);
    let mut hop = HopByHop::default();
    for span in &spans[..count] {
        let name = HeaderName::from_bytes(&head[range(span.name)])
            .map_err(|_| ResponseError::Malformed("invalid header name"))?;
        let value = &head[range(span.value)];
        match fixed_hop_by_hop(&name) {
            None => {
                let value = HeaderValue::from_maybe_shared(head.slice(range(span.value)))
                    .map_err(|_| ResponseError::Malformed("invalid header value"))?;
                headers.append(name, value);
            }
            Some(HOP_CONNECTION) => hop.connection(value),
            Some(HOP_TRANSFER_ENCODING) => hop.transfer_encoding(value),
            Some(_) => {}
        }
    }
    // The framing first: `Connection` may name `Content-Length`, and the
    // body is still framed by it.
    let (framing, keep_alive) = framing(status, method, &mut headers, &hop, http_11)?;
    if hop.names_others {
        // `Connection` names headers of this hop too (rare): they go as well.
        for span in &spans[..count] {
            if head[range(span.name)].eq_ignore_ascii_case(b"connection") {
                for token in list_items(&head[range(span.value)]) {
                    if let Ok(name) = HeaderName::from_bytes(token) {
                        headers.remove(name);
                    }
                }
            }
        }
    }
    Ok(Some(Head {
        status,
        headers,
        framing,
        keep_alive,
    }))
}

fn error_text(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status line",
        httparse::Error::Token => "invalid token",
        httparse::Error::Version => "invalid HTTP version",
        _ => "unparseable",
    }
}

/// What a response's `Connection` and `Transfer-Encoding` said.
#[derive(Default)]
struct HopByHop {
    close: bool,
    keep_alive: bool,
    /// `Connection` names headers that may be in the map (any option but
    /// `keep-alive`, whose header is on the fixed list).
    names_others: bool,
    transfer_encoding: bool,
    /// The codings of every `Transfer-Encoding` line, empty list elements
    /// ignored (RFC 9110 section 5.6.1), counted up to 2.
    codings: u8,
    /// The first coding is `chunked`.
    chunked_first: bool,
}

impl HopByHop {
    fn connection(&mut self, value: &[u8]) {
        for token in list_items(value) {
            if token.eq_ignore_ascii_case(b"close") {
                // Also the name of a header of this hop, as any option is.
                self.close = true;
                self.names_others = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            } else {
                self.names_others = true;
            }
        }
    }

    fn transfer_encoding(&mut self, value: &[u8]) {
        self.transfer_encoding = true;
        for coding in list_items(value) {
            if self.codings == 0 {
                self.chunked_first = coding.eq_ignore_ascii_case(b"chunked");
            }
            self.codings = self.codings.saturating_add(1).min(2);
        }
    }

    /// Whether the codings are `chunked` alone: the only one the proxy (as
    /// nginx) takes. Any other would reach the client still coded, with
    /// nothing saying so once `Transfer-Encoding` is dropped.
    fn chunked_only(&self) -> bool {
        self.codings == 1 && self.chunked_first
    }
}

/// How the body of a response to `method` is framed, and whether the
/// connection may be reused after it (RFC 9112 sections 6.3 and 9.3).
fn framing(
    status: StatusCode,
    method: &Method,
    headers: &mut HeaderMap,
    hop: &HopByHop,
    http_11: bool,
) -> Result<(Framing, bool), ResponseError> {
    // A `close` anywhere wins over a `keep-alive`, as in hyper.
    let keep_alive = !hop.close && (http_11 || hop.keep_alive);
    if method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((Framing::Empty, keep_alive));
    }
    if method == Method::CONNECT && status.is_success() {
        // A tunnel, which the proxy does not open: nothing more is read,
        // and the connection is not the upstream's HTTP any more.
        return Ok((Framing::Empty, false));
    }
    if hop.transfer_encoding {
        if !hop.chunked_only() {
            return Err(ResponseError::Coding);
        }
        // A length as well is a sign of smuggling (section 6.3, 3); a coding
        // in HTTP/1.0 is framing to treat as faulty (section 6.1). Either
        // way the chunks are read, and the connection goes after them: what
        // follows on it cannot be trusted.
        let had_length = headers.remove(header::CONTENT_LENGTH).is_some();
        let trusted = http_11 && !had_length;
        return Ok((Framing::Chunked(Chunked::default()), keep_alive && trusted));
    }
    match content_length(headers)? {
        Some(0) => Ok((Framing::Empty, keep_alive)),
        Some(n) => Ok((Framing::Length(n), keep_alive)),
        None => Ok((Framing::Close, false)),
    }
}

/// The body's length if `Content-Length` gives one: every value (and every
/// item of a list) must be the same number (RFC 9112 section 6.3, 5).
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, ResponseError> {
    let mut length = None;
    for item in headers
        .get_all(header::CONTENT_LENGTH)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
    {
        let digits = item.trim_ascii();
        if digits.is_empty() {
            return Err(ResponseError::BadLength);
        }
        let mut n = 0u64;
        for &d in digits {
            if !d.is_ascii_digit() {
                return Err(ResponseError::BadLength);
            }
            n = n
                .checked_mul(10)
                .and_then(|n| n.checked_add(u64::from(d - b'0')))
                .ok_or(ResponseError::BadLength)?;
        }
        if length.is_some_and(|seen| seen != n) {
            return Err(ResponseError::BadLength);
        }
        length = Some(n);
    }
    Ok(length)
}

/// What decoding the bytes read so far gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Data(Bytes),
    /// The body has ended.
    End,
    /// More bytes must be read first.
    More,
}

impl Framing {
    /// Takes the next piece of the body from `buf` (a slice of it, not a
    /// copy). Bytes after the body's end stay in `buf`.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, ResponseError> {
        match self {
            Framing::Empty => Ok(Decoded::End),
            Framing::Length(remaining) => {
                if *remaining == 0 {
                    return Ok(Decoded::End);
                }
                if buf.is_empty() {
                    return Ok(Decoded::More);
                }
                let take = usize::try_from(*remaining).map_or(buf.len(), |r| r.min(buf.len()));
                *remaining -= take as u64;
                Ok(Decoded::Data(buf.split_to(take).freeze()))
            }
            Framing::Chunked(chunked) => chunked.decode(buf),
            Framing::Close if buf.is_empty() => Ok(Decoded::More),
            Framing::Close => Ok(Decoded::Data(buf.split().freeze())),
        }
    }

    /// Whether the body is known to have ended without another read.
    pub fn ended(&self) -> bool {
        match self {
            Framing::Empty => true,
            Framing::Length(remaining) => *remaining == 0,
            Framing::Chunked(chunked) => chunked.state == ChunkState::Done,
            Framing::Close => false,
        }
    }

    /// The bytes still to come, when known.
    pub fn remaining(&self) -> Option<u64> {
        match self {
            Framing::Empty => Some(0),
            Framing::Length(remaining) => Some(*remaining),
            Framing::Chunked(_) | Framing::Close => None,
        }
    }
}

/// The decoder of a chunked body (RFC 9112 section 7.1), reading the
/// framing byte for byte as hyper's decoder does: a size line is hex digits,
/// then optional spaces or tabs, then optional extensions (no bare LF in
/// them), then CRLF; chunk data ends with CRLF; the trailer section is
/// fields, each ending with CRLF, then CRLF.
#[derive(Debug, Default)]
pub struct Chunked {
    state: ChunkState,
    /// The size of the chunk whose size line is being read.
    size: u64,
    /// Bytes of the current size line so far.
    line: usize,
    /// Extension bytes so far, over the whole body.
    extensions: u64,
    /// The trailer section so far (rare: only a body with trailers has one),
    /// checked as fields when it ends.
    trailers: Option<Vec<u8>>,
    trailer_fields: usize,
}

#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
enum ChunkState {
    /// At a size line: a hex digit must come.
    #[default]
    Start,
    /// In the size's digits.
    Size,
    /// In the whitespace after them.
    SizeSpace,
    /// In the extensions.
    Extension,
    /// After the size line's CR.
    SizeLf,
    /// Inside a chunk's data, this many bytes from its end.
    Data(u64),
    /// At the CR after a chunk's data.
    DataCr,
    DataLf,
    /// After the last chunk's size line, or after a trailer field: the CR
    /// of the end, or a trailer field.
    EndCr,
    /// In a trailer field, up to its CR.
    Trailer,
    TrailerLf,
    /// After the end's CR.
    EndLf,
    Done,
}

impl Chunked {
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, ResponseError> {
        use ChunkState::*;
        // Each turn consumes bytes or returns, so the loop ends with `buf`.
        loop {
            if let Data(remaining) = self.state {
                if buf.is_empty() {
                    return Ok(Decoded::More);
                }
                let take = usize::try_from(remaining).map_or(buf.len(), |r| r.min(buf.len()));
                let left = remaining - take as u64;
                self.state = if left == 0 { DataCr } else { Data(left) };
                return Ok(Decoded::Data(buf.split_to(take).freeze()));
            }
            if self.state == Done {
                return Ok(Decoded::End);
            }
            // The framing bytes up to the next data or the end, consumed at
            // once when the loop leaves.
            let mut used = 0;
            let mut outcome = None;
            while used < buf.len() {
                let byte = buf[used];
                used += 1;
                match self.step(byte)? {
                    Step::Go => {}
                    Step::Keep => self.keep(byte)?,
                    Step::Stop => {
                        outcome = Some(());
                        break;
                    }
                }
                if self.line > MAX_CHUNK_LINE {
                    return Err(ResponseError::BadChunk("chunk-size line too long"));
                }
            }
            buf.advance(used);
            if outcome.is_none() {
                return Ok(Decoded::More);
            }
        }
    }

    /// Reads one framing byte; says whether the state reached data or the
    /// end (`Stop`), or the byte belongs to the trailer section (`Keep`).
    fn step(&mut self, byte: u8) -> Result<Step, ResponseError> {
        use ChunkState::*;
        let bad = ResponseError::BadChunk;
        self.state = match (self.state, byte) {
            (Start, b) => {
                let digit = hex(b).ok_or(bad("a chunk-size line without a size"))?;
                self.size = u64::from(digit);
                self.line = 1;
                Size
            }
            (Size, b) if hex(b).is_some() => {
                self.line += 1;
                self.size = self
                    .size
                    .checked_mul(16)
                    .and_then(|n| n.checked_add(u64::from(hex(b).unwrap_or(0))))
                    .ok_or(bad("chunk size overflows"))?;
                Size
            }
            (Size | SizeSpace, b' ' | b'\t') => {
                self.line += 1;
                SizeSpace
            }
            (Size | SizeSpace, b';') => {
                self.line += 1;
                Extension
            }
            (Size | SizeSpace | Extension, b'\r') => SizeLf,
            (Size, _) => return Err(bad("invalid chunk size")),
            (SizeSpace, _) => return Err(bad("invalid whitespace after a chunk size")),
            (Extension, b'\n') => return Err(bad("a bare LF in a chunk extension")),
            (Extension, _) => {
                self.line += 1;
                self.extensions += 1;
                if self.extensions >= MAX_EXTENSIONS {
                    return Err(bad("chunk extensions over the limit"));
                }
                Extension
            }
            (SizeLf, b'\n') => {
                self.line = 0;
                if self.size == 0 {
                    EndCr
                } else {
                    self.state = Data(self.size);
                    return Ok(Step::Stop);
                }
            }
            (SizeLf, _) => return Err(bad("no LF after a chunk-size line's CR")),
            (DataCr, b'\r') => DataLf,
            (DataCr, _) => return Err(bad("no CRLF after chunk data")),
            (DataLf, b'\n') => Start,
            (DataLf, _) => return Err(bad("no CRLF after chunk data")),
            (EndCr, b'\r') => {
                self.state = EndLf;
                return Ok(if self.trailers.is_some() {
                    Step::Keep
                } else {
                    Step::Go
                });
            }
            (EndCr, _) => {
                self.state = Trailer;
                self.trailers.get_or_insert_with(Vec::new);
                return Ok(Step::Keep);
            }
            (Trailer, b'\r') => {
                self.state = TrailerLf;
                return Ok(Step::Keep);
            }
            (Trailer, _) => {
                self.state = Trailer;
                return Ok(Step::Keep);
            }
            (TrailerLf, b'\n') => {
                self.trailer_fields += 1;
                if self.trailer_fields > MAX_TRAILER_FIELDS {
                    return Err(bad("too many trailer fields"));
                }
                self.state = EndCr;
                return Ok(Step::Keep);
            }
            (TrailerLf, _) => return Err(bad("no LF after a trailer field's CR")),
            (EndLf, b'\n') => {
                if let Some(section) = self.trailers.as_mut() {
                    section.push(b'\n');
                    check_trailers(section, self.trailer_fields)?;
                    self.trailers = None;
                }
                self.state = Done;
                return Ok(Step::Stop);
            }
            (EndLf, _) => return Err(bad("no CRLF at the end of the chunked body")),
            // `decode` takes data and the end before any framing byte.
            (Data(_) | Done, _) => return Err(bad("framing bytes after the end")),
        };
        Ok(Step::Go)
    }

    /// Keeps a byte of the trailer section, within its limit.
    fn keep(&mut self, byte: u8) -> Result<(), ResponseError> {
        let section = self.trailers.get_or_insert_with(Vec::new);
        if section.len() >= MAX_TRAILERS {
            return Err(ResponseError::BadChunk("trailer section too large"));
        }
        section.push(byte);
        Ok(())
    }
}

/// What one framing byte did.
enum Step {
    Go,
    /// The byte is part of the trailer section.
    Keep,
    /// Data or the end follows.
    Stop,
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Whether a trailer section (its fields and the final CRLF) is `fields`
/// well-formed fields, as hyper checks it.
fn check_trailers(section: &[u8], fields: usize) -> Result<(), ResponseError> {
    let mut slots = vec![httparse::EMPTY_HEADER; fields];
    let valid = match httparse::parse_headers(section, &mut slots) {
        Ok(httparse::Status::Complete((_, parsed))) => parsed.iter().all(|field| {
            HeaderName::from_bytes(field.name.as_bytes()).is_ok()
                && HeaderValue::from_bytes(field.value).is_ok()
        }),
        _ => false,
    };
    if valid {
        Ok(())
    } else {
        Err(ResponseError::BadChunk("a trailer field is malformed"))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn parse(text: &[u8], method: &Method) -> Result<Option<Head>, ResponseError> {
        parse_head(&mut BytesMut::from(text), method, 0)
    }

    fn head(text: &str) -> Head {
        parse(text.as_bytes(), &Method::GET)
            .expect("a valid head")
            .expect("a whole head")
    }

    /// Decodes everything `framing` takes from `wire`, fed in pieces of
    /// `step` bytes; returns the body and what was left after it.
    fn decode_all(
        mut framing: Framing,
        wire: &[u8],
        step: usize,
    ) -> Result<(Vec<u8>, Vec<u8>), ResponseError> {
        let mut buf = BytesMut::new();
        let mut fed = 0;
        let mut body = Vec::new();
        loop {
            match framing.decode(&mut buf)? {
                Decoded::Data(data) => body.extend_from_slice(&data),
                Decoded::End => {
                    let mut rest = buf.to_vec();
                    rest.extend_from_slice(&wire[fed..]);
                    return Ok((body, rest));
                }
                Decoded::More if fed < wire.len() => {
                    let next = (fed + step).min(wire.len());
                    buf.extend_from_slice(&wire[fed..next]);
                    fed = next;
                }
                Decoded::More => return Err(ResponseError::BadChunk("input ended")),
            }
        }
    }

    #[test]
    fn a_head_splits_off_and_leaves_the_body_in_the_buffer() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 302 Found\r\nLocation: /x\r\nContent-Length: 2\r\nX-A: 1\r\nX-A: 2\r\n\r\nok"[..],
        );
        let head = parse_head(&mut buf, &Method::GET, 2)
            .expect("valid")
            .expect("whole");
        assert_eq!(head.status, StatusCode::FOUND);
        assert_eq!(head.headers["location"], "/x");
        let both: Vec<_> = head.headers.get_all("x-a").iter().collect();
        assert_eq!(both, ["1", "2"]);
        assert!(matches!(head.framing, Framing::Length(2)));
        assert!(head.keep_alive);
        assert_eq!(&buf[..], b"ok");
    }

    #[test]
    fn a_partial_head_waits_for_more_and_an_endless_one_is_refused() {
        assert!(matches!(
            parse(b"HTTP/1.1 200 OK\r\nContent-Le", &Method::GET),
            Ok(None)
        ));
        let mut endless = b"HTTP/1.1 200 OK\r\n".to_vec();
        while endless.len() < MAX_HEAD {
            endless.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        assert!(matches!(
            parse(&endless, &Method::GET),
            Err(ResponseError::HeadTooLarge | ResponseError::TooManyHeaders)
        ));
    }

    #[test]
    fn garbage_and_bad_fields_are_refused_by_name() {
        assert!(matches!(
            parse(b"HTTX/1.1 200 OK\r\n\r\n", &Method::GET),
            Err(ResponseError::Malformed(_))
        ));
        assert!(matches!(
            parse(b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n", &Method::GET),
            Err(ResponseError::Malformed(_))
        ));
        for lengths in ["1, 2", "abc", "-1", "", "99999999999999999999"] {
            let text = format!("HTTP/1.1 200 OK\r\nContent-Length: {lengths}\r\n\r\n");
            assert!(
                matches!(
                    parse(text.as_bytes(), &Method::GET),
                    Err(ResponseError::BadLength)
                ),
                "{lengths:?} taken"
            );
        }
    }

    #[test]
    fn equal_repeated_lengths_are_one_length() {
        let head = head("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3, 3\r\n\r\n");
        assert!(matches!(head.framing, Framing::Length(3)));
    }

    #[test]
    fn responses_without_a_body_are_empty_whatever_their_length_says() {
        for (status, method) in [
            ("204 No Content", Method::GET),
            ("304 Not Modified", Method::GET),
            ("200 OK", Method::HEAD),
            ("100 Continue", Method::POST),
        ] {
            let text = format!("HTTP/1.1 {status}\r\nContent-Length: 10\r\n\r\n");
            let head = parse(text.as_bytes(), &method)
                .expect("valid")
                .expect("whole");
            assert!(matches!(head.framing, Framing::Empty), "{status} {method}");
            assert!(head.keep_alive);
        }
    }

    #[test]
    fn the_connection_is_kept_only_when_the_version_and_connection_allow() {
        for (text, keep) in [
            ("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", true),
            (
                "HTTP/1.1 200 OK\r\nConnection: x, Close\r\nContent-Length: 0\r\n\r\n",
                false,
            ),
            ("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false),
            (
                "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
                true,
            ),
            // A close anywhere wins over a keep-alive.
            (
                "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
                false,
            ),
            // Read to the close: nothing else can follow on the connection.
            ("HTTP/1.1 200 OK\r\n\r\n", false),
            // Both length and chunked: chunked wins, the connection goes.
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
                false,
            ),
            // A coding in HTTP/1.0: read, and the connection goes.
            (
                "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n",
                false,
            ),
        ] {
            assert_eq!(head(text).keep_alive, keep, "{text:?}");
        }
    }

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_stay_out_of_the_map() {
        let head = head(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Hop\r\nKeep-Alive: timeout=5\r\n\
             X-Hop: 1\r\nProxy-Connection: x\r\nTE: trailers\r\nTrailer: X-Sum\r\n\
             Upgrade: h2c\r\nTransfer-Encoding: chunked\r\nX-End: kept\r\nLocation: /x\r\n\r\n",
        );
        let mut names: Vec<&str> = head.headers.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["location", "x-end"]);
        assert!(matches!(head.framing, Framing::Chunked(_)));
        assert!(head.keep_alive);
    }

    #[test]
    fn chunked_wins_over_a_length_which_is_removed() {
        for version in ["1.1", "1.0"] {
            let head = head(&format!(
                "HTTP/{version} 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
            ));
            assert!(matches!(head.framing, Framing::Chunked(_)));
            assert!(!head.headers.contains_key(header::CONTENT_LENGTH));
            assert!(!head.keep_alive);
        }
    }

    #[test]
    fn a_coding_other_than_chunked_is_refused() {
        for codings in [
            "gzip",
            "gzip, chunked",
            "chunked, gzip",
            "chunked\r\nTransfer-Encoding: chunked",
            "identity",
            ",",
        ] {
            let text = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: {codings}\r\n\r\n");
            assert!(
                matches!(
                    parse(text.as_bytes(), &Method::GET),
                    Err(ResponseError::Coding)
                ),
                "{codings:?} taken"
            );
        }
    }

    #[test]
    fn empty_list_elements_of_the_codings_are_no_codings() {
        for codings in ["chunked,", ", chunked", " , chunked ,, ", "Chunked"] {
            let head = head(&format!(
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: {codings}\r\n\r\n"
            ));
            assert!(matches!(head.framing, Framing::Chunked(_)), "{codings:?}");
            assert!(head.keep_alive, "{codings:?}");
        }
    }

    #[test]
    fn a_length_named_by_connection_still_frames_the_body() {
        let head =
            head("HTTP/1.1 200 OK\r\nConnection: Content-Length\r\nContent-Length: 5\r\n\r\n");
        assert!(matches!(head.framing, Framing::Length(5)));
        assert!(head.keep_alive);
        assert!(!head.headers.contains_key(header::CONTENT_LENGTH));
    }

    #[test]
    fn a_length_is_any_number_of_digits_that_fits() {
        let head = head("HTTP/1.1 200 OK\r\nContent-Length: 000000000000000000000005\r\n\r\n");
        assert!(matches!(head.framing, Framing::Length(5)));
        assert!(matches!(
            parse(
                b"HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551616\r\n\r\n",
                &Method::GET
            ),
            Err(ResponseError::BadLength)
        ));
    }

    #[test]
    fn a_chunked_body_with_extensions_and_trailers_decodes() {
        let wire = b"5;ext=1\r\nhello\r\n1 \t;x\r\n \r\n0005\r\nworld\r\n0\r\nX-Sum: 1\r\nX-B: 2\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, wire.len()] {
            let (body, rest) =
                decode_all(Framing::Chunked(Chunked::default()), wire, step).expect("valid");
            assert_eq!(body, b"hello world", "step {step}");
            assert_eq!(rest, b"NEXT", "step {step}");
        }
    }

    #[test]
    fn malformed_chunks_are_errors_not_hangs() {
        for wire in [
            &b"z\r\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhelloXX0\r\n\r\n",
            b"fffffffffffffffffff\r\n",
            // An empty size line, a size line without digits.
            b"5\r\nhello\r\n\r\n",
            b"5\r\nhello\r\n;ext\r\n0\r\n\r\n",
            // A bare LF in an extension, or ending a size line.
            b"5;a\nb\r\nhello\r\n0\r\n\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            // Whitespace before the size, or inside it.
            b" 5\r\nhello\r\n0\r\n\r\n",
            b"5 5\r\nhello\r\n0\r\n\r\n",
            // A trailer line that is not a field; two fields on one line.
            b"5\r\nhello\r\n0\r\nnot a field\r\n\r\n",
            b"5\r\nhello\r\n0\r\nX: 1\nY: 2\r\n\r\n",
        ] {
            for step in [1, wire.len()] {
                let refused = decode_all(Framing::Chunked(Chunked::default()), wire, step);
                // Refused for what it holds, not for running out of input.
                assert!(
                    matches!(&refused, Err(ResponseError::BadChunk(why)) if *why != "input ended"),
                    "{:?}: {refused:?}",
                    String::from_utf8_lossy(wire)
                );
            }
        }
        let endless_size = vec![b'1'; MAX_CHUNK_LINE + 2];
        assert!(decode_all(Framing::Chunked(Chunked::default()), &endless_size, 64).is_err());
    }

    #[test]
    fn a_length_body_stops_at_its_length() {
        let (body, rest) = decode_all(Framing::Length(5), b"helloHTTP/1.1", 2).expect("valid");
        assert_eq!(body, b"hello");
        assert_eq!(rest, b"HTTP/1.1");
    }

    fn chunked_wire(body: &[u8], sizes: &[usize]) -> Vec<u8> {
        let mut wire = Vec::new();
        let mut at = 0;
        for &size in sizes.iter().cycle() {
            if at == body.len() {
                break;
            }
            let end = (at + size).min(body.len());
            wire.extend_from_slice(format!("{:x}\r\n", end - at).as_bytes());
            wire.extend_from_slice(&body[at..end]);
            wire.extend_from_slice(b"\r\n");
            at = end;
        }
        wire.extend_from_slice(b"0\r\n\r\n");
        wire
    }

    proptest! {
        /// Whatever the upstream sends, the map keeps every end-to-end
        /// header with its value, and nothing hop-by-hop: neither the fixed
        /// list nor what `Connection` names.
        #[test]
        fn the_map_is_the_end_to_end_headers_exactly(
            fields in proptest::collection::vec((
                prop_oneof![
                    Just("Connection"), Just("keep-alive"), Just("Proxy-Connection"),
                    Just("TE"), Just("Trailer"), Just("Transfer-Encoding"), Just("Upgrade"),
                    Just("X-A"), Just("x-b"), Just("Location"), Just("Set-Cookie"),
                    Just("close"),
                ],
                "[a-z0-9=;]([a-z0-9=;, -]{0,10}[a-z0-9=;])?",
            ), 0..14),
            options in proptest::collection::vec(
                prop_oneof![
                    Just("x-a"), Just("X-B"), Just("location"), Just("close"),
                    Just("keep-alive"), Just("te"),
                ],
                0..4,
            ),
            at in any::<prop::sample::Index>(),
        ) {
            let mut fields = fields;
            // One coding, `chunked`: any other is refused before the map
            // matters (`a_coding_other_than_chunked_is_refused`).
            let mut codings = 0;
            fields.retain_mut(|(name, value)| {
                if !name.eq_ignore_ascii_case("transfer-encoding") {
                    return true;
                }
                codings += 1;
                *value = "chunked".to_owned();
                codings == 1
            });
            if !options.is_empty() {
                // `Connection` naming headers of the message, anywhere in it.
                let at = at.index(fields.len() + 1);
                fields.insert(at, ("Connection", options.join(", ")));
            }
            let mut text = String::from("HTTP/1.1 200 OK\r\n");
            for (name, value) in &fields {
                text.push_str(&format!("{name}: {value}\r\n"));
            }
            text.push_str("\r\n");
            let head = parse(text.as_bytes(), &Method::GET)
                .expect("valid")
                .expect("whole");
            let named: Vec<String> = fields
                .iter()
                .filter(|(name, _)| name.eq_ignore_ascii_case("connection"))
                .flat_map(|(_, value)| value.split(','))
                .map(|token| token.trim().to_ascii_lowercase())
                .collect();
            let fixed = ["connection", "keep-alive", "proxy-connection", "te", "trailer",
                "transfer-encoding", "upgrade"];
            let mut expected: Vec<(String, String)> = fields
                .iter()
                .map(|(name, value)| (name.to_ascii_lowercase(), value.clone()))
                .filter(|(name, _)| !fixed.contains(&name.as_str()) && !named.contains(name))
                .collect();
            let mut kept: Vec<(String, String)> = head
                .headers
                .iter()
                .map(|(name, value)| {
                    (name.to_string(), value.to_str().expect("text").to_string())
                })
                .collect();
            expected.sort();
            kept.sort();
            prop_assert_eq!(kept, expected);
        }

        /// However the body is cut into chunks, and however the wire is cut
        /// into reads, the decoded body is the body.
        #[test]
        fn chunked_decoding_gives_back_the_body(
            body in proptest::collection::vec(any::<u8>(), 0..600),
            sizes in proptest::collection::vec(1usize..70, 1..8),
            step in 1usize..40,
        ) {
            let wire = chunked_wire(&body, &sizes);
            let (decoded, rest) = decode_all(Framing::Chunked(Chunked::default()), &wire, step)
                .expect("valid");
            prop_assert_eq!(decoded, body);
            prop_assert!(rest.is_empty());
        }
    }
}
