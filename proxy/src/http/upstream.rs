//! One upstream: a slot's address, its pool of idle keep-alive HTTP/1.1
//! connections, and the count of requests in flight on it.
//!
//! The connections are the proxy's own HTTP/1.1 client (`conn`, reading
//! responses with `response`, over what `connector` opened: TCP, or TLS over
//! it) under a small idle stack: one upstream is one
//! address, so there is no pool key to hash, no URI to parse per request,
//! and a connection goes back to the stack when its response body ends.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use http::request::Parts;
use http::uri::{Authority, Uri};
use http::{Method, Request, Response};
use tokio::task::AbortHandle;

use crate::config::Timeouts;
use crate::http::deadline::Progress;
use crate::slot::Slot;
use request_body::RequestBody;

mod conn;
mod connector;
#[cfg(test)]
mod differential;
pub mod request_body;
mod response;

pub use conn::{Conn, Failed, ResponseBody, ResponseBodyError};
#[cfg(test)]
use connector::Stream;
pub use connector::{ConnectError, Connector};

/// Idle connections kept per upstream at most; more are closed when they
/// become idle.
const MAX_IDLE: usize = 1024;

/// The shortest pause between two sweeps of expired idle connections.
const MIN_SWEEP: Duration = Duration::from_millis(100);

/// The pooled connections of one upstream. A new address gets a new
/// `Upstream` (and so a new pool); requests in flight keep the old one alive
/// through their `Arc` until they finish, and its idle connections close
/// when it is dropped.
pub struct Upstream {
    pub slot: Slot,
    pub addr: SocketAddr,
    /// The address as a URI authority, for a `CONNECT` request's target.
    authority: Authority,
    /// How connections are opened: the slot's, for as long as the process runs.
    pub connector: Connector,
    connect_timeout: Duration,
    /// How long a connection may sit idle and still be reused.
    idle_timeout: Duration,
    /// How long a response body may go without a byte.
    read_timeout: Duration,
    /// Idle connections, the most recently used last. Pushed when a response
    /// body ends, popped by the next request; a std mutex held for one push
    /// or pop, never across an `.await`.
    idle: Mutex<Vec<Idle>>,
    /// The sweeper of expired idle connections, started with the first
    /// connection and stopped when the upstream is dropped.
    sweeper: OnceLock<AbortHandle>,
    /// Requests sent and not yet finished (the response body streamed to the
    /// end or dropped). Written only through `InFlight`.
    in_flight: AtomicUsize,
    /// Connect failures and resets (on new connections) of user requests
    /// since the last success; written by the forwarder, for passive
    /// down-marking.
    passive_failures: AtomicU32,
}

struct Idle {
    conn: Box<Conn>,
    since: Instant,
}

/// Why a request got no response from an upstream.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be opened: nothing of the request was sent, and
    /// here is its head to send elsewhere (its body stayed unread).
    Connect {
        why: ConnectError,
        parts: Box<Parts>,
    },
    /// The exchange failed once the request was on its way (or its body
    /// could not be read): some of it may have reached the upstream.
    Failed(Failed),
}

impl Upstream {
    pub fn new(
        slot: Slot,
        addr: SocketAddr,
        timeouts: &Timeouts,
        connector: Connector,
    ) -> Arc<Upstream> {
        let authority = Authority::try_from(addr.to_string().as_str())
            .expect("a socket address is a valid authority");
        Arc::new(Upstream {
            slot,
            addr,
            authority,
            connector,
            connect_timeout: timeouts.connect,
            idle_timeout: timeouts.upstream_idle,
            read_timeout: timeouts.upstream_read,
            idle: Mutex::new(Vec::new()),
            sweeper: OnceLock::new(),
            in_flight: AtomicUsize::new(0),
            passive_failures: AtomicU32::new(0),
        })
    }

    /// Sends `req` on an idle connection (unless `fresh` asks for a new
    /// one), or on a new one when none is idle; the response's body holds
    /// the connection until it ends. A pooled connection the upstream closed
    /// while it was idle is skipped (`checkout`); one it closes as the
    /// request arrives fails it, saying it was reused (`Failed`), and the
    /// caller decides about a resend. `began` is the caller's reading of the
    /// clock, for the idle check and `progress` (see `Conn::send`).
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<RequestBody>,
        began: Instant,
        progress: &Progress,
        fresh: bool,
    ) -> Result<Response<ResponseBody>, SendError> {
        if req.method() == Method::CONNECT {
            *req.uri_mut() = Uri::from(self.authority.clone());
        }
        let pooled = if fresh { None } else { self.checkout(began) };
        let conn = match pooled {
            Some(conn) => conn,
            None => match self.connect().await {
                Ok(conn) => conn,
                Err(why) => {
                    let (parts, _unread) = req.into_parts();
                    return Err(SendError::Connect {
                        why,
                        parts: Box::new(parts),
                    });
                }
            },
        };
        conn.send(req, progress, began)
            .await
            .map_err(SendError::Failed)
    }

    fn checkout(&self, now: Instant) -> Option<Box<Conn>> {
        let mut idle = self.idle.lock().expect("pool lock is never poisoned");
        // Bounded by the stack, which only shrinks here.
        while let Some(Idle { mut conn, since }) = idle.pop() {
            if now.saturating_duration_since(since) >= self.idle_timeout {
                // The rest is older still.
                idle.clear();
                return None;
            }
            if conn.is_usable() {
                return Some(conn);
            }
        }
        None
    }

    /// Returns a connection whose last response was read to the end.
    pub fn checkin(&self, conn: Box<Conn>) {
        let mut idle = self.idle.lock().expect("pool lock is never poisoned");
        if idle.len() < MAX_IDLE {
            idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    async fn connect(self: &Arc<Self>) -> Result<Box<Conn>, ConnectError> {
        self.sweeper.get_or_init(|| {
            tokio::spawn(sweep(Arc::downgrade(self), self.idle_timeout)).abort_handle()
        });
        let stream = self
            .connector
            .connect(self.addr, self.connect_timeout)
            .await?;
        Ok(Conn::new(stream, self.read_timeout))
    }

    /// Closes the idle connections that waited longer than the idle timeout.
    fn sweep_idle(&self) {
        let mut idle = self.idle.lock().expect("pool lock is never poisoned");
        let fresh = idle.partition_point(|c| c.since.elapsed() >= self.idle_timeout);
        idle.drain(..fresh);
        idle.retain_mut(|c| c.conn.is_usable());
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a failure that says the upstream may be down; returns the
    /// consecutive count.
    pub fn passive_failure(&self) -> u32 {
        self.passive_failures.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn passive_success(&self) {
        // A load first: the common case (no failures) then writes nothing,
        // so busy upstreams do not bounce a cache line between cores.
        if self.passive_failures.load(Ordering::Relaxed) != 0 {
            self.passive_failures.store(0, Ordering::Relaxed);
        }
    }

    pub fn start_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(sweeper) = self.sweeper.get() {
            sweeper.abort();
        }
    }
}

/// Sweeps `upstream`'s expired idle connections until it is dropped.
async fn sweep(upstream: Weak<Upstream>, idle_timeout: Duration) {
    let mut every = tokio::time::interval((idle_timeout / 2).max(MIN_SWEEP));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        every.tick().await;
        match upstream.upgrade() {
            Some(upstream) => upstream.sweep_idle(),
            None => return,
        }
    }
}

/// Counts one request in flight until dropped.
pub struct InFlight(Arc<Upstream>);

impl InFlight {
    pub fn upstream(&self) -> &Upstream {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use bytes::Bytes;
    use http_body_util::BodyExt as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    use super::request_body::{BodyLimits, Resend};
    use super::*;

    const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

    /// An upstream on 127.0.0.1:0 that answers every request with `ANSWER`
    /// and closes each connection after `per_conn` answers; counts the
    /// connections it accepted.
    async fn upstream_server(per_conn: usize) -> (SocketAddr, Arc<AtomicUsize>) {
        scripted_server(ANSWER, per_conn).await
    }

    /// The same with `answer` as the answer to each request head (request
    /// bodies are not read).
    async fn scripted_server(
        answer: &'static [u8],
        per_conn: usize,
    ) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let mut seen = Vec::new();
                    let mut answered = 0;
                    while answered < per_conn {
                        let Ok(n) = socket.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        seen.extend_from_slice(&buf[..n]);
                        while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                            seen.drain(..end + 4);
                            if socket.write_all(answer).await.is_err() {
                                return;
                            }
                            answered += 1;
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    fn upstream(addr: SocketAddr, idle: Duration) -> Arc<Upstream> {
        let timeouts = Timeouts {
            connect: Duration::from_secs(1),
            response_header: Duration::from_secs(5),
            upstream_idle: idle,
            upstream_read: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(1),
        };
        Upstream::new(Slot::Blue, addr, &timeouts, Connector::Plain)
    }

    fn get() -> Request<RequestBody> {
        request(Method::GET, Vec::new())
    }

    /// A request whose body is `chunks`, sent with its length.
    fn request(method: Method, chunks: Vec<Bytes>) -> Request<RequestBody> {
        let limits = BodyLimits {
            max_bytes: u64::MAX,
            timeout: Duration::from_secs(5),
            retain: 0,
        };
        let (body, _) = RequestBody::new(Resend::Replay(chunks), limits);
        let mut req = Request::new(body);
        *req.method_mut() = method;
        *req.uri_mut() = Uri::from_static("http://client.example/path?q=1");
        req.headers_mut().insert(
            http::header::HOST,
            http::HeaderValue::from_static("client.example"),
        );
        req
    }

    /// Sends one request, reads the body to the end and returns the
    /// connection to the pool, as the response body does in the proxy.
    async fn exchange(upstream: &Arc<Upstream>) -> Bytes {
        let (status, body) = exchange_with(upstream, get()).await.expect("an answer");
        assert_eq!(status, http::StatusCode::OK);
        body
    }

    /// Sends `req`; the status and the whole body, or what went wrong.
    async fn exchange_with(
        upstream: &Arc<Upstream>,
        req: Request<RequestBody>,
    ) -> Result<(http::StatusCode, Bytes), String> {
        let response = upstream
            .send(req, Instant::now(), &Progress::default(), false)
            .await
            .map_err(|e| format!("{e:?}"))?;
        let status = response.status();
        let mut body = response.into_body();
        let mut data = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| e.to_string())?;
            data.extend_from_slice(&frame.into_data().expect("data"));
        }
        if let Some(conn) = body.take_reusable() {
            upstream.checkin(conn);
        }
        Ok((status, Bytes::from(data)))
    }

    /// Sends two GETs to a `scripted_server(answer, per_conn)`, checks that
    /// each body read is `body`, and returns the connections it accepted.
    async fn connections_for_two(answer: &'static [u8], per_conn: usize, body: &str) -> usize {
        let (addr, accepted) = scripted_server(answer, per_conn).await;
        let upstream = upstream(addr, Duration::from_secs(60));
        for _ in 0..2 {
            assert_eq!(exchange(&upstream).await, body);
        }
        accepted.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn a_refused_body_costs_its_connection_and_a_refused_get_does_not() {
        // Arrange: an upstream that answers 413 to everything and says
        // nothing about closing, as hyper's server does before it closes.
        let answer = b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 0\r\n\r\n";
        let (addr, accepted) = scripted_server(answer, usize::MAX).await;
        let upstream = upstream(addr, Duration::from_secs(60));
        let post = || request(Method::POST, vec![Bytes::from_static(b"{}")]);

        // Act
        for req in [post(), post(), get(), get()] {
            let (status, _) = exchange_with(&upstream, req).await.expect("an answer");
            assert_eq!(status, http::StatusCode::PAYLOAD_TOO_LARGE);
        }

        // Assert: each refused POST left its connection; the GETs shared one.
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_chunked_response_is_decoded_and_its_connection_reused() {
        let answer = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\no\r\n1;x=y\r\nk\r\n0\r\n\r\n";
        assert_eq!(connections_for_two(answer, usize::MAX, "ok").await, 1);
    }

    #[tokio::test]
    async fn a_body_without_a_length_ends_with_the_close_and_its_connection_goes() {
        let answer = b"HTTP/1.1 200 OK\r\n\r\nuntil the end";
        assert_eq!(connections_for_two(answer, 1, "until the end").await, 2);
    }

    #[tokio::test]
    async fn an_upstream_saying_close_gets_no_second_request_on_that_connection() {
        // The server would take more: the client must not offer them.
        let answer = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok";
        assert_eq!(connections_for_two(answer, usize::MAX, "ok").await, 2);
    }

    #[tokio::test]
    async fn informational_responses_are_skipped_for_the_final_one() {
        let answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        assert_eq!(connections_for_two(answer, usize::MAX, "ok").await, 1);
    }

    #[tokio::test]
    async fn the_answer_to_head_has_no_body_whatever_its_length_says() {
        let (addr, accepted) = scripted_server(
            b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n",
            usize::MAX,
        )
        .await;
        let upstream = upstream(addr, Duration::from_secs(60));
        for _ in 0..2 {
            let (status, body) = exchange_with(&upstream, request(Method::HEAD, Vec::new()))
                .await
                .expect("an answer");
            assert_eq!((status, body.len()), (http::StatusCode::OK, 0));
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_body_cut_short_by_the_upstream_is_an_error_not_an_end() {
        let (addr, _) =
            scripted_server(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc", 1).await;
        let upstream = upstream(addr, Duration::from_secs(60));
        let error = exchange_with(&upstream, get())
            .await
            .expect_err("a short body");
        assert!(error.contains("middle of the body"), "{error}");
    }

    #[tokio::test]
    async fn garbage_or_an_early_close_is_a_failed_exchange() {
        for (answer, expected) in [
            (&b"SSH-2.0-OpenSSH_9.6\r\n\r\n"[..], "Malformed"),
            (b"", "Closed"),
            (b"HTTP/1.1 200 OK\r\ncontent-le", "Truncated"),
            (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", "Switched"),
        ] {
            let (addr, _) = scripted_server(answer, 1).await;
            let upstream = upstream(addr, Duration::from_secs(60));
            let error = exchange_with(&upstream, get())
                .await
                .expect_err("no answer");
            assert!(error.contains(expected), "{error} for {answer:?}");
        }
    }

    /// Accepts one connection, reads the request head and its body of the
    /// length given, and answers `ANSWER`; returns the raw request.
    async fn recording_server() -> (SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut seen = Vec::new();
            let mut buf = vec![0u8; 4096];
            loop {
                let n = socket.read(&mut buf).await.expect("read");
                assert!(n > 0, "closed before a whole request");
                seen.extend_from_slice(&buf[..n]);
                if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&seen[..end]).to_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .map_or(0, |v| v.trim().parse().expect("a length"));
                    if seen.len() >= end + 4 + length {
                        break;
                    }
                }
            }
            socket.write_all(ANSWER).await.expect("write");
            seen
        });
        (addr, task)
    }

    #[tokio::test]
    async fn a_body_goes_with_its_length_once_whatever_the_client_said() {
        let (addr, recorded) = recording_server().await;
        let upstream = upstream(addr, Duration::from_secs(60));
        let mut req = request(
            Method::POST,
            vec![Bytes::from_static(b"hel"), Bytes::from_static(b"lo")],
        );
        // The client's own framing headers are not passed on as they came.
        req.headers_mut().insert(
            http::header::CONTENT_LENGTH,
            http::HeaderValue::from_static("005"),
        );
        let (status, _) = exchange_with(&upstream, req).await.expect("an answer");
        assert_eq!(status, http::StatusCode::OK);
        let raw = String::from_utf8(recorded.await.expect("the server")).expect("text");
        assert!(raw.starts_with("POST /path?q=1 HTTP/1.1\r\n"), "{raw}");
        assert_eq!(raw.matches("content-length").count(), 1, "{raw}");
        assert!(raw.ends_with("content-length: 5\r\n\r\nhello"), "{raw}");
    }

    #[tokio::test]
    async fn a_post_without_a_body_says_its_length_is_zero() {
        let (addr, recorded) = recording_server().await;
        let upstream = upstream(addr, Duration::from_secs(60));
        exchange_with(&upstream, request(Method::POST, Vec::new()))
            .await
            .expect("an answer");
        let raw = String::from_utf8(recorded.await.expect("the server")).expect("text");
        assert!(raw.ends_with("content-length: 0\r\n\r\n"), "{raw}");
    }

    #[tokio::test]
    async fn an_upstream_answering_as_it_reads_gets_the_rest_of_the_body() {
        // An echo that streams: the head first, then each piece of the body
        // as it arrives. The body is larger than the socket buffers, so the
        // rest of it must go out while the answer is read.
        const LENGTH: usize = 8 << 20;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut buf = vec![0u8; 64 * 1024];
            let mut seen = Vec::new();
            let body_start = loop {
                let n = socket.read(&mut buf).await.expect("read");
                assert!(n > 0, "closed before the head");
                seen.extend_from_slice(&buf[..n]);
                if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                    break end + 4;
                }
            };
            socket
                .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                .await
                .expect("write");
            let mut echoed = 0;
            let mut pending = seen.split_off(body_start);
            loop {
                if !pending.is_empty() {
                    let chunk = format!("{:x}\r\n", pending.len());
                    socket.write_all(chunk.as_bytes()).await.expect("write");
                    socket.write_all(&pending).await.expect("write");
                    socket.write_all(b"\r\n").await.expect("write");
                    echoed += pending.len();
                }
                if echoed >= LENGTH {
                    break;
                }
                let n = socket.read(&mut buf).await.expect("read");
                assert!(n > 0, "closed mid-body");
                pending = buf[..n].to_vec();
            }
            socket.write_all(b"0\r\n\r\n").await.expect("write");
        });
        let upstream = upstream(addr, Duration::from_secs(60));
        let chunks: Vec<Bytes> = (0..LENGTH / 65_536)
            .map(|i| Bytes::from(vec![(i % 251) as u8; 65_536]))
            .collect();
        let sent: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        let echoed = tokio::time::timeout(
            Duration::from_secs(20),
            exchange_with(&upstream, request(Method::POST, chunks)),
        )
        .await
        .expect("the exchange never ended")
        .expect("an answer");
        assert_eq!(echoed.0, http::StatusCode::OK);
        assert!(echoed.1 == sent, "the echo differs from the body");
        assert_eq!(upstream.idle.lock().expect("pool lock").len(), 1);
    }

    #[tokio::test]
    async fn an_answer_before_the_body_is_read_is_taken_not_waited_past() {
        // The upstream answers after the head and never reads the body, which
        // is larger than the socket buffers: writing it all first would wait
        // forever.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut buf = vec![0u8; 1024];
            let _ = socket.read(&mut buf).await.expect("read");
            socket
                .write_all(b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 0\r\n\r\n")
                .await
                .expect("write");
            // Held open, unread, until the test ends.
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(socket);
        });
        let upstream = upstream(addr, Duration::from_secs(60));
        let chunks = vec![Bytes::from(vec![b'x'; 1 << 20]); 64];
        let (status, _) = exchange_with(&upstream, request(Method::POST, chunks))
            .await
            .expect("an answer");
        assert_eq!(status, http::StatusCode::PAYLOAD_TOO_LARGE);
        // Half a body went out: the connection is not offered again.
        assert!(upstream.idle.lock().expect("pool lock").is_empty());
        server.abort();
    }

    #[tokio::test]
    async fn an_early_answer_then_a_reset_is_the_answer() {
        // The upstream answers after the head and closes with the upload
        // unread, which resets the connection: the write fails at once,
        // while the answer may wait for the reactor's next turn.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buf = vec![0u8; 1024];
                let _ = socket.read(&mut buf).await;
                let _ = socket
                    .write_all(b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 4\r\n\r\nbig!")
                    .await;
            }
        });
        let upstream = upstream(addr, Duration::from_secs(60));
        // Larger than the socket buffers, so the write is still going on.
        let chunk = Bytes::from(vec![b'x'; 1 << 20]);
        for _ in 0..10 {
            let chunks = vec![chunk.clone(); 32];
            let (status, body) = exchange_with(&upstream, request(Method::POST, chunks))
                .await
                .expect("the upstream's answer");
            assert_eq!(
                (status, &body[..]),
                (http::StatusCode::PAYLOAD_TOO_LARGE, &b"big!"[..])
            );
        }
    }

    #[tokio::test]
    async fn sequential_requests_reuse_one_keep_alive_connection() {
        let (addr, accepted) = upstream_server(usize::MAX).await;
        let upstream = upstream(addr, Duration::from_secs(60));
        for _ in 0..5 {
            assert_eq!(exchange(&upstream).await, "ok");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_while_idle_is_skipped_not_failed() {
        let (addr, accepted) = upstream_server(1).await;
        let upstream = upstream(addr, Duration::from_secs(60));
        for _ in 0..3 {
            assert_eq!(exchange(&upstream).await, "ok");
            // Time for the close to reach the idle connection.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_connection_idle_longer_than_the_idle_timeout_is_not_reused() {
        let (addr, accepted) = upstream_server(usize::MAX).await;
        let upstream = upstream(addr, Duration::from_millis(50));
        assert_eq!(exchange(&upstream).await, "ok");
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(exchange(&upstream).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert!(
            upstream.idle.lock().expect("pool lock").len() <= 1,
            "the expired connection was not kept"
        );
    }

    #[tokio::test]
    async fn the_upstream_gets_the_origin_form_of_an_absolute_target() {
        let (addr, recorded) = recording_server().await;
        let upstream = upstream(addr, Duration::from_secs(60));
        assert_eq!(exchange(&upstream).await, "ok");
        let head = String::from_utf8(recorded.await.expect("the server")).expect("text");
        assert!(head.starts_with("GET /path?q=1 HTTP/1.1\r\n"), "{head}");
        assert!(head.contains("host: client.example\r\n"), "{head}");
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        drop(listener);
        let upstream = upstream(addr, Duration::from_secs(60));
        let Err(error) = upstream
            .send(get(), Instant::now(), &Progress::default(), false)
            .await
        else {
            panic!("a closed port answered");
        };
        assert!(matches!(error, SendError::Connect { .. }), "{error:?}");
    }
}
