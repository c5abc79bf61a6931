//! A hostile (or merely sloppy) upstream: a raw TCP server on an ephemeral loopback port that
//! answers each user request with scripted bytes, then keeps, closes or resets the connection,
//! for tests of how the proxy's own HTTP/1.1 client takes what such a server sends.
//!
//! Health checks (`GET /healthz`) are answered properly on any connection, so that the proxy
//! starts with the slot up and can gate it; every other request is a user request, numbered
//! from 0 in arrival order, and answered with the [`Reply`] the script gives for its number.
//! Each user request is recorded ([`Hostile::requests`]) with the connection it came on, so a
//! test can tell whether the proxy reused a connection.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// The path a proxy's health checks and gate probes use.
const HEALTH_PATH: &str = "/healthz";
const HEALTH_BODY: &str = r#"{"status":"ok","release":"hostile"}"#;
/// A request head larger than this ends the connection.
const MAX_HEAD: usize = 64 * 1024;

/// What the server does with one user request.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Whether the whole request body is read before the first write; otherwise the reply
    /// goes as soon as the head is in, and the body is left unread.
    pub read_body: bool,
    /// Written in order, each after its pause.
    pub writes: Vec<(Duration, Vec<u8>)>,
    /// What happens to the connection after the last write.
    pub then: Then,
}

/// The connection after a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// Read the next request on it.
    KeepOpen,
    /// Close it (a reset instead when request bytes are left unread, as the kernel does).
    Close,
    /// Close it with a reset (`SO_LINGER` 0).
    Reset,
    /// Wait this long for the next request, and close the connection if none has begun.
    IdleClose(Duration),
}

impl Reply {
    /// `bytes` at once after the whole request, then `then`.
    pub fn bytes(bytes: impl Into<Vec<u8>>, then: Then) -> Reply {
        Reply {
            read_body: true,
            writes: vec![(Duration::ZERO, bytes.into())],
            then,
        }
    }

    /// Nothing at all: the request is read and the connection goes as `then` says.
    pub fn nothing(then: Then) -> Reply {
        Reply {
            read_body: true,
            writes: Vec::new(),
            then,
        }
    }

    /// A well-formed `200` with a `Content-Length` body, on a kept connection.
    pub fn ok(body: &str) -> Reply {
        let text = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\ncontent-type: text/plain\r\n\r\n{body}",
            body.len()
        );
        Reply::bytes(text, Then::KeepOpen)
    }
}

/// One user request as the server read it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Which accepted connection it came on, counting from 0 (health checks' included).
    pub connection: usize,
    /// The request line, e.g. `POST /a HTTP/1.1`.
    pub request_line: String,
    /// In wire order, names lowercased, values trimmed.
    pub headers: Vec<(String, String)>,
    /// The body bytes read before the reply (de-chunked); empty when it was left unread.
    pub body: Vec<u8>,
}

impl Seen {
    /// Every value of a header, in wire order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The request target.
    pub fn target(&self) -> &str {
        self.request_line.split(' ').nth(1).unwrap_or_default()
    }
}

type Script = dyn Fn(usize) -> Reply + Send + Sync;

struct Shared {
    script: Box<Script>,
    requests: Mutex<Vec<Seen>>,
}

/// A running hostile upstream; stops when dropped.
pub struct Hostile {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// The accept loop; it owns the connection tasks, so aborting it ends them all.
    server: JoinHandle<()>,
    /// The listening socket (a second descriptor of it): shut down by `stop`, so that the
    /// port refuses connections at once, not once the aborted accept loop is next polled.
    listening: std::os::fd::OwnedFd,
}

impl std::fmt::Debug for Hostile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hostile").field("addr", &self.addr).finish()
    }
}

impl Hostile {
    /// Starts a server that answers user request `n` (from 0) with `script(n)`.
    ///
    /// # Panics
    /// When no loopback port can be bound.
    pub async fn start(script: impl Fn(usize) -> Reply + Send + Sync + 'static) -> Hostile {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding an ephemeral loopback port");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let listening = std::os::fd::AsFd::as_fd(&listener)
            .try_clone_to_owned()
            .expect("a listening socket's descriptor can be duplicated");
        let shared = Arc::new(Shared {
            script: Box::new(script),
            requests: Mutex::new(Vec::new()),
        });
        let state = Arc::clone(&shared);
        let server = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            let mut next = 0;
            // Ends when the Hostile drops (abort).
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                connections.spawn(serve(stream, next, Arc::clone(&state)));
                next += 1;
                // Reaps finished connections so that the set stays small.
                while connections.try_join_next().is_some() {}
            }
        });
        Hostile {
            addr,
            shared,
            server,
            listening,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the server as a killed process stops: the listener closes (connections are
    /// refused) and every connection with it, wherever it was.
    pub fn stop(&self) {
        let _ = socket2::SockRef::from(&self.listening).shutdown(std::net::Shutdown::Both);
        self.server.abort();
    }

    /// Every user request so far, in arrival order.
    pub fn requests(&self) -> Vec<Seen> {
        lock(&self.shared.requests).clone()
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        self.stop();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Serves one connection until the script ends it or the peer closes it.
async fn serve(mut stream: TcpStream, connection: usize, shared: Arc<Shared>) {
    let mut buf = Vec::new();
    loop {
        let Some(head_end) = read_head(&mut stream, &mut buf).await else {
            return;
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        buf.drain(..head_end + 4);
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or_default().to_owned();
        let headers: Vec<(String, String)> = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let seen = Seen {
            connection,
            request_line,
            headers,
            body: Vec::new(),
        };
        if seen.target() == HEALTH_PATH {
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-release: hostile\r\n\r\n{HEALTH_BODY}",
                HEALTH_BODY.len()
            );
            if stream.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
            continue;
        }
        let (n, reply) = {
            let mut requests = lock(&shared.requests);
            let n = requests.len();
            requests.push(seen.clone());
            (n, (shared.script)(n))
        };
        if reply.read_body {
            let Some(body) = read_body(&mut stream, &mut buf, &seen).await else {
                return;
            };
            lock(&shared.requests)[n].body = body;
        }
        for (pause, bytes) in &reply.writes {
            if !pause.is_zero() {
                tokio::time::sleep(*pause).await;
            }
            if stream.write_all(bytes).await.is_err() {
                return;
            }
        }
        match reply.then {
            Then::KeepOpen => {}
            Then::Close => return,
            Then::Reset => {
                let _ = stream.set_zero_linger();
                return;
            }
            Then::IdleClose(wait) => {
                if buf.is_empty() {
                    match tokio::time::timeout(wait, fill(&mut stream, &mut buf)).await {
                        Ok(true) => {}
                        Ok(false) | Err(_) => return,
                    }
                }
            }
        }
    }
}

/// Reads until `buf` holds a whole request head; where it ends, or `None` at the end of the
/// connection.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<usize> {
    loop {
        if let Some(at) = find(buf, b"\r\n\r\n") {
            return Some(at);
        }
        if buf.len() > MAX_HEAD || !fill(stream, buf).await {
            return None;
        }
    }
}

/// Reads the request body `seen`'s head announces (by length or in chunks); `None` when the
/// connection ends first.
async fn read_body(stream: &mut TcpStream, buf: &mut Vec<u8>, seen: &Seen) -> Option<Vec<u8>> {
    let chunked = seen
        .header_all("transfer-encoding")
        .iter()
        .any(|v| v.eq_ignore_ascii_case("chunked"));
    if !chunked {
        let length: usize = seen
            .header_all("content-length")
            .first()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < length {
            if !fill(stream, buf).await {
                return None;
            }
        }
        return Some(buf.drain(..length).collect());
    }
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(at) = find(buf, b"\r\n") {
                break at;
            }
            if !fill(stream, buf).await {
                return None;
            }
        };
        let line = String::from_utf8_lossy(&buf[..line_end]).into_owned();
        let size =
            usize::from_str_radix(line.split(';').next().unwrap_or_default().trim(), 16).ok()?;
        buf.drain(..line_end + 2);
        if size == 0 {
            loop {
                if let Some(at) = find(buf, b"\r\n") {
                    buf.drain(..at + 2);
                    if at == 0 {
                        return Some(body);
                    }
                } else if !fill(stream, buf).await {
                    return None;
                }
            }
        }
        while buf.len() < size + 2 {
            if !fill(stream, buf).await {
                return None;
            }
        }
        body.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
    }
}

/// Reads more bytes into `buf`; `false` at the end of the connection.
async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 16 * 1024];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
