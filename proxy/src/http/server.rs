//! The public listeners, plain and TLS (`tls`: the handshake): accept
//! connections (bounded in number, both together), serve HTTP/1.1 and HTTP/2
//! on each through hyper-util (with the header and idle deadlines of `idle`),
//! and on shutdown stop accepting and drain connections within the grace
//! period.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::header::{CONNECTION, HeaderValue};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::config::Limits;
use crate::http::forward::{ClientConn, Forwarder};
use crate::http::https::Transport;

mod idle;
pub mod tls;

pub use tls::{Handshake, TlsListener};

/// How long the 504s of a forced drain get to reach their clients.
const CUT_WRITE_TIME: Duration = Duration::from_secs(1);
/// At most how long a drain lets HTTP/1 keep-alive connections end by
/// themselves (their next answer carries `Connection: close`) before it
/// closes the idle ones and sends HTTP/2 clients GOAWAY: closing an idle
/// keep-alive connection races the request its client may be sending.
const LINGER: Duration = Duration::from_secs(1);
/// How often the linger looks whether every connection has ended.
const LINGER_POLL: Duration = Duration::from_millis(10);

/// How the drain ended, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drain {
    Graceful,
    /// Connections still open when the grace period ran out.
    Forced {
        connections: usize,
        /// Requests answered 504 because they were still waiting.
        cut_requests: usize,
    },
}

/// Serves until `shutdown` resolves, then drains for at most `grace`: the plain
/// `listener`, and the TLS one when there is one. Both share the connection limit, the
/// drain and the serve path; a TLS connection holds its permit from its accept, through its
/// handshake.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsListener>,
    forwarder: Arc<Forwarder>,
    limits: Limits,
    grace: Duration,
    shutdown: impl Future<Output = ()>,
) -> Drain {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // Both the header and the idle deadline are `idle::TimedIo`'s: hyper's
        // would start at the end of the previous response and cut idle
        // keep-alive connections at the header timeout.
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true)
        // A client that shuts down its sending side after the request still
        // gets its answer (RFC 9112 section 9.6), and the request runs to its
        // end, bounded by the response deadline, if the client goes away: as
        // HAProxy does by default. Without it hyper reads the socket while
        // each request is in flight, to notice the client leaving, and that
        // read makes it allocate a new 8 KiB buffer per request while the
        // request's headers still point into the old one.
        .half_close(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let https_port = tls
        .as_ref()
        .and_then(|t| t.listener.local_addr().ok())
        .map(|addr| addr.port());
    // Set when the drain starts: every HTTP/1 answer from then on closes its
    // connection, so its client opens the next one where the listener is
    // accepted (after a takeover, in the new process).
    let draining = Arc::new(AtomicBool::new(false));
    tokio::pin!(shutdown);

    loop {
        // At the connection limit, stop accepting (the kernel backlog holds
        // new clients) rather than accept and drop them.
        let permit = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => permit.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted.map(|(stream, peer)| (stream, peer, Transport::Plain { https_port })),
            accepted = accept_tls(tls.as_ref()) => accepted.map(|(stream, peer)| (stream, peer, Transport::Tls)),
            () = &mut shutdown => break,
        };
        let (stream, peer, transport) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and friends pass; a short pause avoids a hot loop.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let conn = Conn {
            builder: Arc::clone(&builder),
            client: forwarder.client_conn(peer, transport),
            limits,
            watcher: graceful.watcher(),
            peer,
            draining: Arc::clone(&draining),
        };
        match (transport, &tls) {
            (Transport::Tls, Some(tls)) => {
                let handshake = tls.handshake.clone();
                tokio::spawn(async move {
                    if let Some(stream) = handshake.run(stream, peer).await {
                        conn.serve(stream).await;
                    }
                    drop(permit);
                });
            }
            _ => {
                tokio::spawn(async move {
                    conn.serve(stream).await;
                    drop(permit);
                });
            }
        }
    }

    drop(tls);
    drop(listener);
    draining.store(true, Ordering::Relaxed);
    let open = graceful.count();
    tracing::info!(
        connections = open,
        grace_ms = grace.as_millis() as u64,
        "stopped accepting; draining"
    );
    let started = tokio::time::Instant::now();
    let linger_until = started + LINGER.min(grace);
    while graceful.count() > 0 && tokio::time::Instant::now() < linger_until {
        tokio::time::sleep(LINGER_POLL).await;
    }
    let drained = graceful.shutdown();
    tokio::pin!(drained);
    if tokio::time::timeout_at(started + grace, &mut drained)
        .await
        .is_ok()
    {
        return Drain::Graceful;
    }
    let connections = permits_in_use(&permits, limits.max_connections);
    forwarder.cut_in_flight();
    // Time to write the 504s; a connection still open after it is dropped.
    let _ = tokio::time::timeout(CUT_WRITE_TIME, &mut drained).await;
    Drain::Forced {
        connections,
        cut_requests: forwarder.cut_requests(),
    }
}

/// The next connection of the TLS listener; never, without one.
async fn accept_tls(
    tls: Option<&TlsListener>,
) -> std::io::Result<(tokio::net::TcpStream, SocketAddr)> {
    match tls {
        Some(tls) => tls.listener.accept().await,
        None => std::future::pending().await,
    }
}

/// One accepted connection, ready to be served once its bytes are readable as HTTP (at
/// once in plain text, after the handshake over TLS).
struct Conn {
    builder: Arc<Builder<TokioExecutor>>,
    client: ClientConn,
    limits: Limits,
    /// Counts the connection in the drain from its accept.
    watcher: Watcher,
    peer: SocketAddr,
    /// The server's drain flag (see `serve`).
    draining: Arc<AtomicBool>,
}

impl Conn {
    /// Serves its requests until it closes, with the header and idle deadlines.
    async fn serve<I>(self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let activity = Arc::new(idle::Activity::new());
        let io = idle::TimedIo::new(
            io,
            Arc::clone(&activity),
            self.limits.idle_timeout,
            self.limits.header_read_timeout,
        );
        let client = Arc::new(self.client);
        let draining = self.draining;
        let service = service_fn(move |req| {
            let client = Arc::clone(&client);
            let busy = activity.start();
            let http1 = req.version() < http::Version::HTTP_2;
            let draining = Arc::clone(&draining);
            async move {
                let mut response = client.handle(req).await;
                if http1 && draining.load(Ordering::Relaxed) {
                    response
                        .headers_mut()
                        .insert(CONNECTION, HeaderValue::from_static("close"));
                }
                Ok::<_, Infallible>(response.map(|body| idle::Tracked::new(body, busy)))
            }
        });
        let conn = self
            .builder
            .serve_connection(TokioIo::new(io), service)
            .into_owned();
        if let Err(e) = self.watcher.watch(conn).await {
            tracing::debug!(peer = %self.peer, error = %e, "connection ended with an error");
        }
    }
}

fn permits_in_use(permits: &Semaphore, max: usize) -> usize {
    max.saturating_sub(permits.available_permits())
}
