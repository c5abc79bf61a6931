//! One upstream: a slot's address, its pool of idle keep-alive HTTP/1.1
//! connections, and the count of requests in flight on it.
//!
//! The pool is hyper's connection API under a small idle stack rather than
//! hyper-util's general `Client`: one upstream is one address, so there is
//! no pool key to hash, no URI to parse per request, and a connection goes
//! back to the stack when its response body ends instead of through a task
//! spawned per request to wait for that.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use http::uri::{Authority, Uri};
use http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::AbortHandle;

use crate::body::RequestBody;
use crate::config::Timeouts;
use crate::slot::Slot;

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
    connect_timeout: Duration,
    /// How long a connection may sit idle and still be reused.
    idle_timeout: Duration,
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
    /// Connect failures and resets on user requests since the last success;
    /// written by the forwarder, for passive down-marking.
    passive_failures: AtomicU32,
}

struct Idle {
    sender: SendRequest<RequestBody>,
    since: Instant,
}

/// Why a request got no response from an upstream.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be opened: nothing of the request was sent.
    Connect(String),
    /// The exchange failed once the request was on its way (or its body
    /// could not be read): some of it may have reached the upstream.
    Failed(hyper::Error),
}

/// A response and the connection it came on, which goes back to the pool
/// once the response body has been read to its end.
pub struct Answer {
    pub response: Response<Incoming>,
    pub conn: SendRequest<RequestBody>,
}

impl Upstream {
    pub fn new(slot: Slot, addr: SocketAddr, timeouts: &Timeouts) -> Arc<Upstream> {
        let authority = Authority::try_from(addr.to_string().as_str())
            .expect("a socket address is a valid authority");
        Arc::new(Upstream {
            slot,
            addr,
            authority,
            connect_timeout: timeouts.connect,
            idle_timeout: timeouts.upstream_idle,
            idle: Mutex::new(Vec::new()),
            sweeper: OnceLock::new(),
            in_flight: AtomicUsize::new(0),
            passive_failures: AtomicU32::new(0),
        })
    }

    /// Sends `req` on an idle connection, or on a new one when none is
    /// idle. A pooled connection that turns out closed before the request
    /// went out (the upstream ended it while idle) is skipped and the
    /// request tried on the next; a failure on a new connection is final.
    /// `now` is the caller's reading of the clock, for the idle check.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<RequestBody>,
        now: Instant,
    ) -> Result<Answer, SendError> {
        let uri = std::mem::take(req.uri_mut());
        *req.uri_mut() = self.request_target(req.method(), uri);
        loop {
            let (mut conn, reused) = match self.checkout(now) {
                Some(conn) => (conn, true),
                None => (self.connect().await?, false),
            };
            // A reused connection may still be finishing the previous
            // exchange; a new one takes its first request before it is polled.
            if reused && conn.ready().await.is_err() {
                continue;
            }
            match conn.try_send_request(req).await {
                Ok(response) => return Ok(Answer { response, conn }),
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(SendError::Failed(e.into_error())),
                },
            }
        }
    }

    /// The request target for the upstream: the origin form (`/path?query`)
    /// the client sent, or made from an absolute URI; a `CONNECT` names the
    /// upstream itself.
    fn request_target(&self, method: &Method, uri: Uri) -> Uri {
        if method == Method::CONNECT {
            return Uri::from(self.authority.clone());
        }
        if uri.scheme().is_none() && uri.authority().is_none() {
            return uri;
        }
        uri.path_and_query()
            .map_or_else(|| Uri::from_static("/"), |p| Uri::from(p.clone()))
    }

    fn checkout(&self, now: Instant) -> Option<SendRequest<RequestBody>> {
        let mut idle = self.idle.lock().expect("pool lock is never poisoned");
        while let Some(Idle { sender, since }) = idle.pop() {
            if now.saturating_duration_since(since) >= self.idle_timeout {
                // The rest is older still.
                idle.clear();
                return None;
            }
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    /// Returns a connection whose last response was read to the end.
    pub fn checkin(&self, sender: SendRequest<RequestBody>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().expect("pool lock is never poisoned");
        if idle.len() < MAX_IDLE {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    async fn connect(self: &Arc<Self>) -> Result<SendRequest<RequestBody>, SendError> {
        self.sweeper.get_or_init(|| {
            tokio::spawn(sweep(Arc::downgrade(self), self.idle_timeout)).abort_handle()
        });
        let stream =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(self.addr)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return Err(SendError::Connect(format!("tcp connect error: {e}"))),
                Err(_) => return Err(SendError::Connect("tcp connect timed out".to_string())),
            };
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| SendError::Connect(format!("handshake: {e}")))?;
        let (slot, addr) = (self.slot, self.addr);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%slot, %addr, error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// Closes the idle connections that waited longer than the idle timeout.
    fn sweep_idle(&self) {
        let mut idle = self.idle.lock().expect("pool lock is never poisoned");
        let fresh = idle.partition_point(|c| c.since.elapsed() >= self.idle_timeout);
        idle.drain(..fresh);
        idle.retain(|c| !c.sender.is_closed());
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a connect failure or reset; returns the consecutive count.
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

    use super::*;
    use crate::body::{BodyLimits, Resend};

    const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

    /// An upstream on 127.0.0.1:0 that answers every request with `ANSWER`
    /// and closes each connection after `per_conn` answers; counts the
    /// connections it accepted.
    async fn upstream_server(per_conn: usize) -> (SocketAddr, Arc<AtomicUsize>) {
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
                            if socket.write_all(ANSWER).await.is_err() {
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
            shutdown_grace: Duration::from_secs(1),
        };
        Upstream::new(Slot::Blue, addr, &timeouts)
    }

    fn get() -> Request<RequestBody> {
        let limits = BodyLimits {
            max_bytes: 1024,
            timeout: Duration::from_secs(5),
            retain: 0,
        };
        let (body, _) = RequestBody::new(Resend::Replay(Vec::new()), limits);
        let mut req = Request::new(body);
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
        let Answer { response, conn } = upstream
            .send(get(), Instant::now())
            .await
            .expect("an answer");
        let body = response.into_body().collect().await.expect("the body");
        upstream.checkin(conn);
        body.to_bytes()
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
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let head = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.expect("accept");
            let mut buf = vec![0u8; 4096];
            let n = socket.read(&mut buf).await.expect("read");
            socket.write_all(ANSWER).await.expect("write");
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        let upstream = upstream(addr, Duration::from_secs(60));
        assert_eq!(exchange(&upstream).await, "ok");
        let head = head.await.expect("the server task");
        assert!(head.starts_with("GET /path?q=1 HTTP/1.1\r\n"), "{head}");
        assert!(head.contains("host: client.example\r\n"), "{head}");
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        drop(listener);
        let upstream = upstream(addr, Duration::from_secs(60));
        let Err(error) = upstream.send(get(), Instant::now()).await else {
            panic!("a closed port answered");
        };
        assert!(matches!(error, SendError::Connect(_)), "{error:?}");
    }
}
