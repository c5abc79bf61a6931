//! The public listener: accepts connections (bounded in number), serves
//! HTTP/1.1 and HTTP/2 on each through hyper (`conn`, which parks idle
//! HTTP/1.1 connections, with the header and idle deadlines of `idle`), and
//! on shutdown stops accepting and drains connections within the grace
//! period.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::config::Limits;
use crate::http::forward::Forwarder;
use crate::metrics::Metrics;

mod conn;
mod idle;

/// How long the 504s of a forced drain get to reach their clients.
const CUT_WRITE_TIME: Duration = Duration::from_secs(1);

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

/// Serves until `shutdown` resolves, then drains for at most `grace`.
pub async fn serve(
    listener: TcpListener,
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
        // request's headers still point into the old one (-850 instructions
        // per request, docs/performance.md).
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
    });
    let graceful = conn::DrainSignal::new();
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    tokio::pin!(shutdown);

    loop {
        // At the connection limit, stop accepting (the kernel backlog holds
        // new clients) rather than accept and drop them.
        let permit = tokio::select! {
            permit = Arc::clone(&permits).acquire_owned() => permit.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends pass; a short pause avoids a hot loop.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let conn = conn::serve(
            stream,
            peer,
            forwarder.client_conn(peer),
            Arc::clone(&settings),
            graceful.watcher(),
        );
        tokio::spawn(async move {
            conn.await;
            drop(permit);
        });
    }

    drop(listener);
    let open = graceful.count();
    tracing::info!(
        connections = open,
        grace_ms = grace.as_millis() as u64,
        "stopped accepting; draining"
    );
    let drained = graceful.shutdown();
    tokio::pin!(drained);
    if tokio::time::timeout(grace, &mut drained).await.is_ok() {
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

fn permits_in_use(permits: &Semaphore, max: usize) -> usize {
    max.saturating_sub(permits.available_permits())
}
