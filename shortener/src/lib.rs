//! A URL shortener, the application the blue-green proxy protects: the routes of the original
//! Flask tutorial (`/`, `/your-url`, `/{code}`), a JSON API, `/healthz`, and fault injection for
//! release drills. Blue and green run as two processes on one database: a SQLite file on one
//! machine, or PostgreSQL for releases on several hosts.
//!
//! A request passes these layers, outermost first, before its route:
//!
//! ```text
//! access_log -> release::stamp -> fault::inject -> body_limit -> routes (html | api | health)
//!  (one line)   (x-release)      (fail-after,      (413)          -> store (SQLite | PostgreSQL)
//!                                  latency)
//! ```
//!
//! `x-release` is outside the faults and the body limit, so their answers carry it too.

pub mod cli;
pub mod code;
pub mod error;
pub mod fault;
pub mod long_url;
pub mod public_host;
pub mod release;
pub mod state;
pub mod store;
pub mod write_key;

mod access_log;
mod body_limit;
mod page;
mod routes;

use std::future::{Future, IntoFuture};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::middleware::{from_fn, from_fn_with_state};
use tokio::net::TcpListener;
use tokio::sync::Notify;

pub use cli::Args;
pub use error::StartError;
pub use state::AppState;

/// How long in-flight requests may run after the shutdown signal before we stop anyway.
pub const DRAIN_GRACE: Duration = Duration::from_secs(30);

/// The whole application as a `Router`, for `run` and for tests that drive it directly.
pub fn app(state: AppState) -> Router {
    // `layer` wraps everything added before it: the last layer here is the outermost.
    routes::router()
        .layer(body_limit::extractor_limit())
        .layer(from_fn(body_limit::refuse_oversized))
        .layer(from_fn_with_state(Arc::clone(&state.faults), fault::inject))
        .layer(from_fn_with_state(state.release.clone(), release::stamp))
        .layer(from_fn(access_log::log))
        .with_state(state)
}

/// Serves `app(state)` on `listener` until `shutdown` completes, then stops accepting and lets
/// in-flight requests finish, for at most [`DRAIN_GRACE`].
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    let draining = Arc::new(Notify::new());
    let signal = {
        let draining = Arc::clone(&draining);
        async move {
            shutdown.await;
            tracing::info!("shutting down: no new connections, draining in-flight requests");
            draining.notify_one();
        }
    };
    let server = axum::serve(listener, app(state))
        .with_graceful_shutdown(signal)
        .into_future();
    let deadline = async {
        draining.notified().await;
        tokio::time::sleep(DRAIN_GRACE).await;
    };
    tokio::select! {
        served = server => {
            served.map_err(StartError::Serve)?;
            tracing::info!("stopped gracefully");
        }
        () = deadline => {
            tracing::warn!(grace_s = DRAIN_GRACE.as_secs(), "drain grace period over; stopping with requests in flight");
        }
    }
    Ok(())
}
