//! One client connection of the public listener, from its accept to its
//! close: HTTP/1.1 or HTTP/2 as its first bytes say, served by a hyper
//! connection while it has requests, and parked while an HTTP/1.1 one idles.
//!
//! Parked: once an HTTP/1.1 connection has had nothing in flight for
//! `PARK_AFTER`, its hyper connection is taken apart (`into_parts`) and
//! dropped with its buffers (8 KiB to read, 8 KiB for response heads), and
//! the bare socket waits until its next bytes arrive; a fresh hyper
//! connection serves them, after any bytes hyper had read and not used. A
//! just-accepted connection holds no hyper connection either until its first
//! bytes arrive. A parked client costs this task (under 1 KiB), its socket's
//! registration and what the forwarder keeps per connection: 2.6 KiB of
//! resident memory in all (docs/performance.md). HTTP/2 connections are never
//! parked: h2 keeps its buffers, and the header compression state that must
//! outlive them, for as long as the connection lives.

use std::convert::Infallible;
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::Request;
use http::header::{CONNECTION, HeaderValue};
use http_body::Body;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::{HttpService, service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use super::idle::{self, Activity, Protocol, TimedIo};
use crate::config::Limits;
use crate::http::body::ProxyBody;
use crate::http::forward::ClientConn;

/// How long an HTTP/1.1 connection with nothing in flight keeps its hyper
/// connection before it is parked. A client under load sends its next
/// request well within it, so a busy connection is never parked, and pays
/// only for its socket wrapper's alarm ringing once a second; one that comes
/// back after a longer pause pays for a new hyper connection (its
/// allocations) and one `recvfrom` more (the peek that wakes it).
pub const PARK_AFTER: Duration = Duration::from_secs(1);

/// The first bytes of every HTTP/2 prior-knowledge connection.
const H2_PREFACE_START: &[u8; 4] = b"PRI ";

/// How every connection of the listener is served.
pub struct Settings {
    pub http1: http1::Builder,
    pub http2: http2::Builder<TokioExecutor>,
    pub limits: Limits,
    /// Connections open, counted here from accept to close.
    pub open: Gauge,
    /// Connections parked, counted here while they are.
    pub parked: Gauge,
    /// Set when the drain starts: every HTTP/1 answer from then on closes its
    /// connection.
    pub draining: AtomicBool,
}

/// Counts one in a gauge until dropped.
struct Counted<'a>(&'a Gauge);

impl Counted<'_> {
    fn new(gauge: &Gauge) -> Counted<'_> {
        gauge.inc();
        Counted(gauge)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Tells every connection that the listener is draining, and counts those
/// still open: what hyper-util's `GracefulShutdown` does for a hyper
/// connection, for a connection that is sometimes a bare socket.
pub struct DrainSignal {
    tx: watch::Sender<()>,
}

/// A connection's end of `DrainSignal`: held from its accept to its close.
pub struct Watcher {
    rx: watch::Receiver<()>,
}

impl DrainSignal {
    pub fn new() -> DrainSignal {
        DrainSignal {
            tx: watch::channel(()).0,
        }
    }

    pub fn watcher(&self) -> Watcher {
        Watcher {
            rx: self.tx.subscribe(),
        }
    }

    /// Connections open.
    pub fn count(&self) -> usize {
        self.tx.receiver_count()
    }

    /// Tells every connection to finish: a parked or new one closes at
    /// once, a served one after its requests in flight (HTTP/1.1 with
    /// `Connection: close`, HTTP/2 with GOAWAY). Resolves once all have
    /// closed.
    pub async fn shutdown(self) {
        let _ = self.tx.send(());
        self.tx.closed().await;
    }
}

/// Serves `stream` until it closes.
///
/// The task's state is what a parked connection keeps, so everything that
/// lives only while a connection is new or served is in a boxed future of
/// its own: a task is sized for the largest state its future can be in.
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    client: ClientConn,
    settings: Arc<Settings>,
    mut drain: Watcher,
) {
    let _open = Counted::new(&settings.open);
    let Some((mut io, http2)) = Box::pin(first_bytes(stream, &settings.limits, &mut drain)).await
    else {
        return;
    };
    let activity = Arc::new(Activity::new());
    let mut service = service(client, &activity, &settings);
    if http2 {
        let ended = Box::pin(serve_http2(io, service, &activity, &settings, &mut drain)).await;
        if let Err(e) = ended {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
        return;
    }
    loop {
        let served = Box::pin(serve_http1(
            io,
            service,
            &activity,
            &settings,
            Some(PARK_AFTER),
            &mut drain,
        ))
        .await;
        (io, service) = match served {
            Served::Idle(io, service) => (io, service),
            Served::Ended(Ok(())) => return,
            Served::Ended(Err(e)) => {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
                return;
            }
        };
        let due = if io.unread.is_empty() {
            idle::later(activity.ended(), settings.limits.idle_timeout)
        } else {
            // The start of a request head, read with the last request (which
            // hyper parses first) and idle since: due as a head is, counted
            // from when it could first be read.
            idle::later(activity.ended(), settings.limits.header_read_timeout)
        };
        let _parked = Counted::new(&settings.parked);
        if !wait_parked(&io.stream, due, &mut drain).await {
            return;
        }
    }
}

/// Serves `io`, a connection that cannot be parked (TLS: its session's state
/// lives in the stream), until it closes.
pub async fn serve_unparked<T>(
    io: T,
    peer: SocketAddr,
    client: ClientConn,
    settings: Arc<Settings>,
    mut drain: Watcher,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let _open = Counted::new(&settings.open);
    let due = idle::later(Instant::now(), settings.limits.header_read_timeout);
    let mut io = io;
    let first = tokio::select! {
        _ = drain.rx.changed() => return,
        first = tokio::time::timeout_at(due, read_first_bytes(&mut io)) => first,
    };
    let Ok(Ok(Some((http2, unread)))) = first else {
        return;
    };
    let io = Prefixed { unread, stream: io };
    let activity = Arc::new(Activity::new());
    let service = service(client, &activity, &settings);
    let ended = if http2 {
        Box::pin(serve_http2(io, service, &activity, &settings, &mut drain)).await
    } else {
        match Box::pin(serve_http1(
            io, service, &activity, &settings, None, &mut drain,
        ))
        .await
        {
            Served::Ended(ended) => ended,
            Served::Idle(..) => unreachable!("a connection without `park_after` never parks"),
        }
    };
    if let Err(e) = ended {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// The service of one connection: the forwarder's answer, counted in flight
/// until its body ends, closing an HTTP/1 connection once the drain began.
fn service(
    client: ClientConn,
    activity: &Arc<Activity>,
    settings: &Arc<Settings>,
) -> impl HttpService<
    Incoming,
    ResBody = idle::Tracked<ProxyBody>,
    Error = Infallible,
    Future: Send + 'static,
> + Send
+ 'static {
    let client = Arc::new(client);
    let activity = Arc::clone(activity);
    let settings = Arc::clone(settings);
    service_fn(move |req: Request<Incoming>| {
        let client = Arc::clone(&client);
        let busy = activity.start();
        let http1 = req.version() < http::Version::HTTP_2;
        let settings = Arc::clone(&settings);
        async move {
            let mut response = client.handle(req).await;
            if http1 && settings.draining.load(Ordering::Relaxed) {
                response
                    .headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            Ok::<_, Infallible>(response.map(|body| idle::Tracked::new(body, busy)))
        }
    })
}

/// Waits, parked, for new bytes or the client's end (true: hyper reads
/// either, after any unread ones); false at `due`, on a failed socket, or
/// when the drain starts. Polled by hand, so that the wait holds a timer
/// and the drain's watch and no more: a peek future would keep a waiter of
/// its own.
async fn wait_parked(stream: &TcpStream, due: Instant, drain: &mut Watcher) -> bool {
    let mut changed = pin!(drain.rx.changed());
    let mut deadline = pin!(tokio::time::sleep_until(due));
    let mut probe = [0u8; 1];
    poll_fn(|cx| {
        if changed.as_mut().poll(cx).is_ready() {
            return Poll::Ready(false);
        }
        if let Poll::Ready(peeked) = stream.poll_peek(cx, &mut ReadBuf::new(&mut probe)) {
            return Poll::Ready(peeked.is_ok());
        }
        if deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(false);
        }
        Poll::Pending
    })
    .await
}

/// A new connection's first bytes, due with a request head: the socket with
/// the bytes taken from it, and whether it is HTTP/2; `None` if it closed,
/// failed or stayed silent first, or the drain began.
async fn first_bytes(
    mut stream: TcpStream,
    limits: &Limits,
    drain: &mut Watcher,
) -> Option<(Prefixed<TcpStream>, bool)> {
    let due = idle::later(Instant::now(), limits.header_read_timeout);
    let first = tokio::select! {
        _ = drain.rx.changed() => return None,
        first = tokio::time::timeout_at(due, sniff(&mut stream)) => first,
    };
    match first {
        Ok(Ok(Some((http2, unread)))) => Some((Prefixed { unread, stream }, http2)),
        Ok(Ok(None) | Err(_)) | Err(_) => None,
    }
}

/// Serves an HTTP/2 connection to its end; the drain sends it GOAWAY.
async fn serve_http2<T, S, B>(
    io: Prefixed<T>,
    service: S,
    activity: &Arc<Activity>,
    settings: &Settings,
    drain: &mut Watcher,
) -> Result<(), hyper::Error>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: HttpService<Incoming, ResBody = B>,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let limits = &settings.limits;
    let timed = TimedIo::new(
        io,
        Protocol::Http2,
        Arc::clone(activity),
        limits.idle_timeout,
        limits.header_read_timeout,
        None,
    );
    let conn = settings
        .http2
        .serve_connection(TokioIo::new(timed), service);
    let mut conn = pin!(conn);
    let mut changed = pin!(drain.rx.changed());
    let mut draining = false;
    poll_fn(|cx| {
        if !draining && changed.as_mut().poll(cx).is_ready() {
            draining = true;
            conn.as_mut().graceful_shutdown();
        }
        conn.as_mut().poll(cx)
    })
    .await
}

/// How a served HTTP/1.1 connection stopped being served.
enum Served<T, S> {
    /// Closed; with the error that closed it.
    Ended(Result<(), hyper::Error>),
    /// Idle, to be parked: the socket with the bytes hyper had read and not
    /// used in front, and the service.
    Idle(Prefixed<T>, S),
}

/// Serves an HTTP/1.1 connection until it ends or, with `park_after`,
/// `TimedIo` says it may be parked; then takes hyper's connection apart. The
/// drain, when it comes, ends keep-alive (or closes the connection if idle).
async fn serve_http1<T, S, B>(
    io: Prefixed<T>,
    service: S,
    activity: &Arc<Activity>,
    settings: &Settings,
    park_after: Option<Duration>,
    drain: &mut Watcher,
) -> Served<T, S>
where
    T: AsyncRead + AsyncWrite + Unpin,
    S: HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let limits = &settings.limits;
    let timed = TimedIo::new(
        io,
        Protocol::Http1,
        Arc::clone(activity),
        limits.idle_timeout,
        limits.header_read_timeout,
        park_after,
    );
    let mut conn = settings
        .http1
        .serve_connection(TokioIo::new(timed), service);
    let idle = {
        let mut changed = pin!(drain.rx.changed());
        let mut draining = false;
        poll_fn(|cx| {
            if !draining && changed.as_mut().poll(cx).is_ready() {
                draining = true;
                Pin::new(&mut conn).graceful_shutdown();
            }
            match Pin::new(&mut conn).poll(cx) {
                Poll::Ready(ended) => Poll::Ready(Some(ended)),
                // Asked for during this poll, which left hyper waiting for
                // bytes with none unread and nothing left to write.
                Poll::Pending if activity.take_park() && !draining => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    };
    if let Some(ended) = idle {
        return Served::Ended(ended);
    }
    let parts = conn.into_parts();
    let mut io = parts.io.into_inner().into_inner();
    io.put_back(&parts.read_buf);
    Served::Idle(io, parts.service)
}

/// Reads just enough of a new connection to tell HTTP/2 with prior
/// knowledge ("PRI ") from HTTP/1.1: whether it is HTTP/2, and the bytes
/// taken from the socket to tell (none, usually: a peek tells). `None` if
/// the client closed first.
async fn sniff(stream: &mut TcpStream) -> io::Result<Option<(bool, Bytes)>> {
    let mut head = [0u8; 4];
    let peeked = stream.peek(&mut head).await?;
    if peeked == 0 {
        return Ok(None);
    }
    if head[..peeked] != H2_PREFACE_START[..peeked] {
        return Ok(Some((false, Bytes::new())));
    }
    if peeked == 4 {
        return Ok(Some((true, Bytes::new())));
    }
    // A start of "PRI " in fewer than four bytes: a peek would see the same
    // bytes again at once, so take them and wait for the rest.
    read_first_bytes(stream).await
}

/// Reads just enough of a stream that cannot be peeked at (TLS) to tell
/// HTTP/2 with prior knowledge from HTTP/1.1: whether it is HTTP/2, and the
/// bytes read. `None` if the client closed first.
async fn read_first_bytes<T: AsyncRead + Unpin>(
    stream: &mut T,
) -> io::Result<Option<(bool, Bytes)>> {
    let mut head = [0u8; 4];
    let mut len = 0;
    while len < 4 {
        let n = stream.read(&mut head[len..]).await?;
        if n == 0 {
            break;
        }
        len += n;
        if head[..len] != H2_PREFACE_START[..len] {
            break;
        }
    }
    if len == 0 {
        return Ok(None);
    }
    let http2 = head[..len] == H2_PREFACE_START[..];
    Ok(Some((http2, Bytes::copy_from_slice(&head[..len]))))
}

/// A client socket with bytes already taken from it in front: what hyper
/// had read and not used when the connection was parked, or the first bytes
/// read to tell the protocol. Usually none.
pub struct Prefixed<T> {
    unread: Bytes,
    stream: T,
}

impl<T> Prefixed<T> {
    /// Puts a copy of `bytes` in front of the unread ones: a copy, so that
    /// the buffer hyper read them into (8 KiB) is not kept while parked.
    fn put_back(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let mut joined = BytesMut::with_capacity(bytes.len() + self.unread.len());
        joined.extend_from_slice(bytes);
        joined.extend_from_slice(&self.unread);
        self.unread = joined.freeze();
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.unread.is_empty() {
            return Pin::new(&mut this.stream).poll_read(cx, buf);
        }
        let n = this.unread.len().min(buf.remaining());
        buf.put_slice(&this.unread[..n]);
        this.unread.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt as _;
    use tokio::net::TcpListener;

    use super::*;

    /// What `sniff` tells of a connection whose client sends `parts` one
    /// write after another, with the bytes it took, and what the socket
    /// still holds after them.
    async fn sniffed(parts: &[&'static [u8]]) -> (bool, Vec<u8>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let parts = parts.to_vec();
        let client = tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            for part in parts {
                stream.write_all(part).await.expect("write");
                stream.flush().await.expect("flush");
                tokio::task::yield_now().await;
            }
            stream.shutdown().await.expect("shutdown");
        });
        let (mut server, _) = listener.accept().await.expect("accept");
        let (http2, taken) = sniff(&mut server)
            .await
            .expect("no error")
            .expect("bytes came");
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.expect("read the rest");
        client.await.expect("the client ran");
        let mut all = taken.to_vec();
        all.extend_from_slice(&rest);
        (http2, all)
    }

    #[tokio::test]
    async fn the_http2_preface_is_told_whole_or_in_pieces_and_no_byte_is_lost() {
        let preface: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        for parts in [&[preface][..], &[b"PR", b"I * HTTP/2.0\r\n\r\nSM\r\n\r\n"]] {
            assert_eq!(sniffed(parts).await, (true, preface.to_vec()), "{parts:?}");
        }
    }

    #[tokio::test]
    async fn http1_is_told_even_when_it_starts_like_the_preface_and_no_byte_is_lost() {
        let request: &[u8] = b"PUT / HTTP/1.1\r\nhost: a\r\n\r\n";
        for parts in [&[request][..], &[b"P", b"UT / HTTP/1.1\r\nhost: a\r\n\r\n"]] {
            assert_eq!(sniffed(parts).await, (false, request.to_vec()), "{parts:?}");
        }
    }
}
