//! The public listeners, plain and TLS (`tls`: the handshake): accept
//! connections (bounded in number, both together), serve HTTP/1.1 and HTTP/2
//! on each through hyper (`conn`, which parks idle plain HTTP/1.1
//! connections, with the header and idle deadlines of `idle`), and on
//! shutdown stop accepting and drain connections within the grace period.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::config::Limits;
use crate::http::forward::Forwarder;
use crate::http::https::Transport;
use crate::metrics::Metrics;

mod conn;
mod idle;
pub mod tls;

pub use tls::{Handshake, TlsListener};

/// How long the 504s of a forced drain get to reach their clients.
const CUT_WRITE_TIME: Duration = Duration::from_secs(1);
/// At most how long a drain lets HTTP/1 keep-alive connections end by
/// themselves (their next answer carries `Connection: close`) before it
/// closes the idle ones and sends HTTP/2 clients GOAWAY: closing an idle
/// keep-alive connection races the request its client may be sending. The
/// admin and status listeners linger as long (`takeover::side_listeners`).
pub const LINGER: Duration = Duration::from_secs(1);
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
    metrics: &Metrics,
    limits: Limits,
    grace: Duration,
    shutdown: impl Future<Output = ()>,
) -> Drain {
    let mut http1 = http1::Builder::new();
    http1
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
    let mut http2 = http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    let settings = Arc::new(conn::Settings {
        http1,
        http2,
        limits,
        open: metrics.client_connections.clone(),
        parked: metrics.parked_connections.clone(),
        draining: AtomicBool::new(false),
    });
    let graceful = conn::DrainSignal::new();
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let https_port = tls
        .as_ref()
        .and_then(|t| t.listener.local_addr().ok())
        .map(|addr| addr.port());
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
        let client = forwarder.client_conn(peer, transport);
        let settings = Arc::clone(&settings);
        let watcher = graceful.watcher();
        match (transport, &tls) {
            (Transport::Tls, Some(tls)) => {
                let handshake = tls.handshake.clone();
                tokio::spawn(async move {
                    if let Some(stream) = handshake.run(stream, peer).await {
                        conn::serve_unparked(stream, peer, client, settings, watcher).await;
                    }
                    drop(permit);
                });
            }
            _ => {
                tokio::spawn(async move {
                    conn::serve(stream, peer, client, settings, watcher).await;
                    drop(permit);
                });
            }
        }
    }

    drop(tls);
    drop(listener);
    // Every HTTP/1 answer from now on closes its connection, so its client
    // opens the next one where the listener is accepted (after a takeover, in
    // the new process).
    settings.draining.store(true, Ordering::Relaxed);
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

fn permits_in_use(permits: &Semaphore, max: usize) -> usize {
    max.saturating_sub(permits.available_permits())
}
