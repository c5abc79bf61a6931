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
//! bytes arrive. An idle HTTP/1.1 client costs its socket and this task's
//! state, about 1 KiB; HTTP/2 connections are never parked (their header
//! compression state lives as long as they do).

use std::convert::Infallible;
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use super::idle::{self, Activity, TimedIo};
use crate::config::Limits;
use crate::http::forward::ClientConn;

/// How long an HTTP/1.1 connection with nothing in flight keeps its hyper
/// connection before it is parked. A client under load sends its next
/// request well within it, so a busy connection is never parked; one that
/// comes back after a longer pause pays for a new hyper connection (a few
/// hundred instructions and two allocations) and one `recvfrom` more.
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
pub struct Drain {
    tx: watch::Sender<()>,
}

/// A connection's end of `Drain`: held from its accept to its close.
pub struct Watcher {
    rx: watch::Receiver<()>,
}

impl Drain {
    pub fn new() -> Drain {
        Drain {
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
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    client: ClientConn,
    settings: Arc<Settings>,
    mut drain: Watcher,
) {
    let _open = Counted::new(&settings.open);
    let limits = settings.limits;
    let activity = Arc::new(Activity::new());
    let client = Arc::new(client);
    let service = {
        let activity = Arc::clone(&activity);
        service_fn(move |req| {
            let client = Arc::clone(&client);
            let busy = activity.start();
            async move {
                let response = client.handle(req).await;
                Ok::<_, Infallible>(response.map(|body| idle::Tracked::new(body, busy)))
            }
        })
    };

    // Nothing but the socket until the first bytes, due with a request head.
    let due = idle::later(Instant::now(), limits.header_read_timeout);
    let mut stream = stream;
    let first = tokio::select! {
        _ = drain.rx.changed() => return,
        first = tokio::time::timeout_at(due, first_bytes(&mut stream)) => first,
    };
    let (http2, unread) = match first {
        Ok(Ok(Some(first))) => first,
        // Closed before a byte, failed, or silent until its head was due.
        Ok(Ok(None) | Err(_)) | Err(_) => return,
    };
    let mut io = Prefixed { unread, stream };

    if http2 {
        let timed = TimedIo::new(
            io,
            Arc::clone(&activity),
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
        let ended = poll_fn(|cx| {
            if !draining && changed.as_mut().poll(cx).is_ready() {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            conn.as_mut().poll(cx)
        })
        .await;
        if let Err(e) = ended {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
        return;
    }

    let mut service = service;
    loop {
        let timed = TimedIo::new(
            io,
            Arc::clone(&activity),
            limits.idle_timeout,
            limits.header_read_timeout,
            Some(PARK_AFTER),
        );
        // Boxed, so that a parked connection's task is small: the
        // connection and its buffers exist only while it is served.
        let mut conn = Box::new(
            settings
                .http1
                .serve_connection(TokioIo::new(timed), service),
        );
        let served = {
            let mut changed = pin!(drain.rx.changed());
            let mut draining = false;
            poll_fn(|cx| {
                if !draining && changed.as_mut().poll(cx).is_ready() {
                    draining = true;
                    Pin::new(&mut *conn).graceful_shutdown();
                }
                match Pin::new(&mut *conn).poll(cx) {
                    Poll::Ready(ended) => Poll::Ready(Served::Ended(ended)),
                    // Asked for during this poll, which left hyper waiting
                    // for bytes with none unread and nothing left to write.
                    Poll::Pending if activity.take_park() && !draining => Poll::Ready(Served::Idle),
                    Poll::Pending => Poll::Pending,
                }
            })
            .await
        };
        match served {
            Served::Ended(Ok(())) => return,
            Served::Ended(Err(e)) => {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
                return;
            }
            Served::Idle => {}
        }
        let parts = conn.into_parts();
        service = parts.service;
        io = parts.io.into_inner().into_inner();
        io.put_back(&parts.read_buf);
        drop(parts.read_buf);
        let due = if io.unread.is_empty() {
            idle::later(activity.ended(), limits.idle_timeout)
        } else {
            // The start of a request head, read with the last request (which
            // hyper parses first) and idle since: due as a head is, counted
            // from when it could first be read.
            idle::later(activity.ended(), limits.header_read_timeout)
        };
        let mut probe = [0u8; 1];
        let _parked = Counted::new(&settings.parked);
        tokio::select! {
            _ = drain.rx.changed() => return,
            woken = tokio::time::timeout_at(due, io.stream.peek(&mut probe)) => match woken {
                // New bytes, or the client's end: hyper reads either, after
                // any unread ones.
                Ok(Ok(_)) => {}
                // The idle timeout, or a failed socket.
                Ok(Err(_)) | Err(_) => return,
            },
        }
    }
}

/// How a served HTTP/1.1 connection stopped being served.
enum Served {
    /// Closed; with the error that closed it.
    Ended(Result<(), hyper::Error>),
    /// Idle, to be parked.
    Idle,
}

/// Reads just enough of a new connection to tell HTTP/2 with prior
/// knowledge ("PRI ") from HTTP/1.1: whether it is HTTP/2, and the bytes
/// taken from the socket to tell (none, usually: a peek tells). `None` if
/// the client closed first.
async fn first_bytes(stream: &mut TcpStream) -> io::Result<Option<(bool, Bytes)>> {
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
    let http2 = head[..len] == H2_PREFACE_START[..];
    Ok(Some((http2, Bytes::copy_from_slice(&head[..len]))))
}

/// A client socket with bytes already taken from it in front: what hyper
/// had read and not used when the connection was parked, or the first bytes
/// read to tell the protocol. Usually none.
pub struct Prefixed {
    unread: Bytes,
    stream: TcpStream,
}

impl Prefixed {
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

impl AsyncRead for Prefixed {
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

impl AsyncWrite for Prefixed {
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
