//! A raw TCP upstream that keeps exactly the bytes it received and how it framed them, for
//! tests of what the proxy passes on at the byte level (request smuggling, limits, drains);
//! a proxy in front of it ([`RecorderStack`]); and a raw keep-alive client connection
//! ([`RawConnection`]) for tests that need several requests on one connection.
//!
//! Each connection's bytes are kept as they arrived. The recorder frames requests strictly,
//! as a careful HTTP/1.1 origin would: a request with both `Content-Length` and
//! `Transfer-Encoding`, two `Content-Length`s, a transfer coding other than `chunked` or a
//! malformed chunk is recorded with a [`Received::problem`] and the connection closed. Every
//! complete request gets a fixed `200` with a `Content-Length`:
//!
//! - `GET /healthz` answers `{"status":"ok","release":"recorder"}`, so a proxy may probe it;
//! - a target starting with `/slow/{ms}` is answered after `ms` milliseconds;
//! - anything else answers `recorded` at once;
//! - except on a recorder from [`Recorder::start_resetting`], which closes the connection
//!   instead of answering anything but a health check.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tempfile::TempDir;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use crate::proxy::{Proxy, ProxyBuilder};

/// The health path a proxy probes; requests to it are not user requests.
pub const HEALTH_PATH: &str = "/healthz";
/// A request head larger than this is recorded as a problem.
const MAX_HEAD: usize = 256 * 1024;
/// How every problem of a request cut short begins.
const TRUNCATED: &str = "the connection ended";
/// A `/slow/{ms}` request waits at most this long.
const MAX_DELAY_MS: u64 = 60_000;

/// One request as the recorder framed it.
#[derive(Debug, Clone)]
pub struct Received {
    /// Which accepted connection it came on, counting from 0.
    pub connection: usize,
    /// The request line, e.g. `POST /a HTTP/1.1`.
    pub request_line: String,
    /// In wire order, names lowercased, values trimmed.
    pub headers: Vec<(String, String)>,
    /// The body after de-chunking.
    pub body: Vec<u8>,
    /// Why the request could not be framed cleanly; `None` for a clean request.
    pub problem: Option<String>,
}

impl Received {
    /// The request target (path and query).
    pub fn target(&self) -> &str {
        self.request_line.split(' ').nth(1).unwrap_or_default()
    }

    /// Every value of a header, in wire order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Whether the sender stopped in the middle of it: a forward the proxy abandoned, never
    /// an ambiguous one.
    pub fn is_truncated(&self) -> bool {
        self.problem
            .as_deref()
            .is_some_and(|p| p.starts_with(TRUNCATED))
    }

    /// Whether this is a proxy's health check rather than a forwarded user request.
    pub fn is_health_check(&self) -> bool {
        self.target() == HEALTH_PATH
    }
}

/// Which requests the recorder answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Always,
    /// Any other request has its connection closed once it is read.
    HealthChecksOnly,
}

/// What the recorder has seen so far; shared with the connection tasks.
#[derive(Debug, Default)]
struct Log {
    /// The raw bytes of each connection, indexed by connection number.
    raw: Vec<Vec<u8>>,
    requests: Vec<Received>,
}

/// A running recorder on an ephemeral loopback port; stops when dropped.
#[derive(Debug)]
pub struct Recorder {
    addr: SocketAddr,
    log: Arc<Mutex<Log>>,
    /// The accept loop; it owns the connection tasks, so aborting it ends them all.
    server: JoinHandle<()>,
    /// The listening socket (a second descriptor of it): shut down on drop, so that the port
    /// refuses connections at once, not only once the aborted accept loop is next polled (a
    /// connection accepted meanwhile would be reset, not refused).
    listening: std::os::fd::OwnedFd,
}

impl Recorder {
    /// # Panics
    /// When no loopback port can be bound.
    pub async fn start() -> Recorder {
        Recorder::spawn(Answer::Always).await
    }

    /// A recorder that closes the connection after each request it frames, answering
    /// nothing: an upstream that dies between reading a request and answering it. Health
    /// checks are still answered, so it stays healthy.
    ///
    /// # Panics
    /// When no loopback port can be bound.
    pub async fn start_resetting() -> Recorder {
        Recorder::spawn(Answer::HealthChecksOnly).await
    }

    async fn spawn(answer: Answer) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding an ephemeral loopback port");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let listening = std::os::fd::AsFd::as_fd(&listener)
            .try_clone_to_owned()
            .expect("a listening socket's descriptor can be duplicated");
        let log = Arc::new(Mutex::new(Log::default()));
        let shared = Arc::clone(&log);
        let server = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            // Ends when the Recorder drops (abort).
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let id = {
                    let mut log = lock(&shared);
                    log.raw.push(Vec::new());
                    log.raw.len() - 1
                };
                connections.spawn(serve(stream, id, Arc::clone(&shared), answer));
                // Reaps finished connections so that the set stays small.
                while connections.try_join_next().is_some() {}
            }
        });
        Recorder {
            addr,
            log,
            server,
            listening,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request framed so far, health checks included, in arrival order.
    pub fn requests(&self) -> Vec<Received> {
        lock(&self.log).requests.clone()
    }

    /// The requests framed so far that are not health checks.
    pub fn user_requests(&self) -> Vec<Received> {
        self.requests()
            .into_iter()
            .filter(|r| !r.is_health_check())
            .collect()
    }

    /// The bytes each connection delivered, exactly as received.
    pub fn raw(&self) -> Vec<Vec<u8>> {
        lock(&self.log).raw.clone()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let _ = socket2::SockRef::from(&self.listening).shutdown(std::net::Shutdown::Both);
        self.server.abort();
    }
}

fn lock(log: &Mutex<Log>) -> std::sync::MutexGuard<'_, Log> {
    // A panic under the lock is a bug in this file; the data is still worth reading.
    log.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Reads, records and answers requests on one connection until it closes or a request cannot
/// be framed.
async fn serve(mut stream: TcpStream, id: usize, log: Arc<Mutex<Log>>, mode: Answer) {
    let mut buf = Vec::new();
    loop {
        let framed = frame(&mut stream, &mut buf, id, &log).await;
        let Some(request) = framed else { return };
        let clean =
            request.problem.is_none() && (mode == Answer::Always || request.is_health_check());
        let delay = slow_delay(request.target());
        let answer = if request.is_health_check() {
            r#"{"status":"ok","release":"recorder"}"#
        } else {
            "recorded"
        };
        lock(&log).requests.push(request);
        if !clean {
            return;
        }
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncontent-type: text/plain\r\nx-release: recorder\r\n\r\n{answer}",
            answer.len()
        );
        if stream.write_all(response.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn slow_delay(target: &str) -> Option<Duration> {
    let ms = target.strip_prefix("/slow/")?;
    let ms: u64 = ms.split(['/', '?']).next()?.parse().ok()?;
    Some(Duration::from_millis(ms.min(MAX_DELAY_MS)))
}

/// Reads more bytes into `buf`, recording them; `false` at the end of the connection.
async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>, id: usize, log: &Mutex<Log>) -> bool {
    let mut chunk = [0u8; 16 * 1024];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            lock(log).raw[id].extend_from_slice(&chunk[..n]);
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

/// Frames the next request of a connection; `None` when it closed cleanly between requests.
/// A request that cannot be framed comes back with its `problem` set.
async fn frame(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    id: usize,
    log: &Mutex<Log>,
) -> Option<Received> {
    let head_end = loop {
        if let Some(at) = find(buf, b"\r\n\r\n") {
            break at;
        }
        if buf.len() > MAX_HEAD || !fill(stream, buf, id, log).await {
            if buf.is_empty() {
                return None;
            }
            let text = String::from_utf8_lossy(buf).into_owned();
            return Some(broken(
                id,
                &text,
                "the connection ended inside a request head",
            ));
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    buf.drain(..head_end + 4);
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_owned();
    let mut headers = Vec::new();
    let mut problem = None;
    for line in lines {
        match line.split_once(':') {
            Some((name, value))
                if !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic()) =>
            {
                headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
            }
            _ => problem = Some(format!("malformed header line {line:?}")),
        }
    }
    let mut request = Received {
        connection: id,
        request_line,
        headers,
        body: Vec::new(),
        problem,
    };
    if request.problem.is_some() {
        return Some(request);
    }
    let lengths = request.header_all("content-length").len();
    let codings = request.header_all("transfer-encoding").join(",");
    if lengths > 0 && !codings.is_empty() {
        request.problem = Some("both Content-Length and Transfer-Encoding".to_owned());
        return Some(request);
    }
    if lengths > 1 {
        request.problem = Some("more than one Content-Length".to_owned());
        return Some(request);
    }
    if !codings.is_empty() {
        if !codings.trim().eq_ignore_ascii_case("chunked") {
            request.problem = Some(format!("transfer coding {codings:?}"));
            return Some(request);
        }
        match read_chunked(stream, buf, id, log).await {
            Ok(body) => request.body = body,
            Err(why) => request.problem = Some(why),
        }
        return Some(request);
    }
    if let Some(text) = request.header_all("content-length").first() {
        let Some(length) = text
            .bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| text.parse::<usize>().ok())
            .flatten()
        else {
            request.problem = Some(format!("malformed Content-Length {text:?}"));
            return Some(request);
        };
        while buf.len() < length {
            if !fill(stream, buf, id, log).await {
                request.problem = Some(format!(
                    "the connection ended after {} of {length} body bytes",
                    buf.len()
                ));
                return Some(request);
            }
        }
        request.body = buf.drain(..length).collect();
    }
    Some(request)
}

fn broken(id: usize, text: &str, why: &str) -> Received {
    Received {
        connection: id,
        request_line: text.lines().next().unwrap_or_default().to_owned(),
        headers: Vec::new(),
        body: Vec::new(),
        problem: Some(why.to_owned()),
    }
}

/// De-chunks a body strictly: hex sizes only, CRLF after every chunk, no trailers kept.
async fn read_chunked(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    id: usize,
    log: &Mutex<Log>,
) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(at) = find(buf, b"\r\n") {
                break at;
            }
            if buf.len() > MAX_HEAD || !fill(stream, buf, id, log).await {
                return Err("the connection ended inside a chunk size".to_owned());
            }
        };
        let line = String::from_utf8_lossy(&buf[..line_end]).into_owned();
        let size_text = line.split(';').next().unwrap_or_default();
        let size = (!size_text.is_empty() && size_text.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| usize::from_str_radix(size_text, 16).ok())
            .flatten()
            .ok_or_else(|| format!("malformed chunk size {line:?}"))?;
        buf.drain(..line_end + 2);
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                if let Some(at) = find(buf, b"\r\n") {
                    buf.drain(..at + 2);
                    if at == 0 {
                        return Ok(body);
                    }
                } else if !fill(stream, buf, id, log).await {
                    return Err("the connection ended inside the trailers".to_owned());
                }
            }
        }
        while buf.len() < size + 2 {
            if !fill(stream, buf, id, log).await {
                return Err("the connection ended inside a chunk".to_owned());
            }
        }
        if &buf[size..size + 2] != b"\r\n" {
            return Err("a chunk is longer than its size".to_owned());
        }
        body.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A proxy whose two slots both point at one [`Recorder`], for tests of what reaches the
/// upstream. Fields drop in order: the proxy first, the temp dir last.
#[derive(Debug)]
pub struct RecorderStack {
    pub proxy: Proxy,
    pub recorder: Recorder,
    /// Holds the config, the proxy's data dir and its log.
    pub dir: TempDir,
}

impl RecorderStack {
    /// Starts a recorder and a proxy configured by `configure` (the slot addresses are set
    /// here).
    ///
    /// # Panics
    /// When the proxy binary is missing or does not become ready.
    pub async fn start(configure: impl FnOnce(ProxyBuilder) -> ProxyBuilder) -> RecorderStack {
        let recorder = Recorder::start().await;
        let dir = tempfile::Builder::new()
            .prefix("e2e-recorder-")
            .tempdir()
            .expect("a temp dir can be created");
        let proxy = configure(Proxy::builder())
            .blue(recorder.addr())
            .green(recorder.addr())
            .start(dir.path())
            .await;
        RecorderStack {
            proxy,
            recorder,
            dir,
        }
    }
}

/// One client connection kept open across requests (keep-alive), read and written byte for
/// byte. Responses are framed by `Content-Length` or the end of the connection; the proxy
/// frames every response it writes itself, and the recorder's, that way.
#[derive(Debug)]
pub struct RawConnection {
    stream: TcpStream,
    /// Bytes read past the last response.
    buf: Vec<u8>,
}

/// A response read by a [`RawConnection`].
#[derive(Debug, Clone)]
pub struct RawAnswer {
    pub status: u16,
    /// In wire order, names lowercased, values trimmed.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawAnswer {
    /// Every value of a header, in wire order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

impl RawConnection {
    pub async fn connect(addr: SocketAddr) -> std::io::Result<RawConnection> {
        Ok(RawConnection {
            stream: TcpStream::connect(addr).await?,
            buf: Vec::new(),
        })
    }

    /// Writes bytes as they are.
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Reads one response; an error when the connection ends first or `timeout` passes.
    pub async fn read_answer(&mut self, timeout: Duration) -> Result<RawAnswer, String> {
        tokio::time::timeout(timeout, self.read_answer_inner())
            .await
            .map_err(|_| format!("no complete response within {timeout:?}"))?
    }

    async fn read_answer_inner(&mut self) -> Result<RawAnswer, String> {
        let head_end = loop {
            if let Some(at) = find(&self.buf, b"\r\n\r\n") {
                break at;
            }
            if !self.read_more().await? {
                return Err(format!(
                    "the connection ended inside a response head: {:?}",
                    String::from_utf8_lossy(&self.buf)
                ));
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        self.buf.drain(..head_end + 4);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {status_line:?}"))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let mut answer = RawAnswer {
            status,
            headers,
            body: Vec::new(),
        };
        let length = answer
            .header_all("content-length")
            .first()
            .and_then(|v| v.parse::<usize>().ok());
        match length {
            Some(length) => {
                while self.buf.len() < length {
                    if !self.read_more().await? {
                        return Err("the connection ended inside a response body".to_owned());
                    }
                }
                answer.body = self.buf.drain(..length).collect();
            }
            None if status == 204 || status == 304 || (100..200).contains(&status) => {}
            None => {
                while self.read_more().await? {}
                answer.body = std::mem::take(&mut self.buf);
            }
        }
        Ok(answer)
    }

    /// Waits up to `timeout` for the peer to close the connection, discarding what it sends;
    /// whether it closed.
    pub async fn closed_within(&mut self, timeout: Duration) -> bool {
        let closed = tokio::time::timeout(timeout, async {
            loop {
                match self.read_more().await {
                    Ok(true) => {}
                    Ok(false) | Err(_) => return,
                }
            }
        })
        .await;
        closed.is_ok()
    }

    /// The bytes received and not yet read as a response.
    pub fn unread(&self) -> &[u8] {
        &self.buf
    }

    /// `false` at the end of the connection; a reset is an end too.
    async fn read_more(&mut self) -> Result<bool, String> {
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk).await {
            Ok(0) => Ok(false),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(false),
            Err(e) => Err(format!("read: {e}")),
        }
    }
}
