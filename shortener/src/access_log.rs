//! The access log: one line per request with method, path, status and latency.

use std::time::{Duration, Instant};

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;

/// Middleware, outermost, so the latency includes every other layer (injected latency too).
pub async fn log(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    // The path only: query strings may carry whatever users paste, and never help debugging.
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    tracing::info!(
        %method,
        path,
        status = response.status().as_u16(),
        latency_ms = round_ms(started.elapsed()),
        "request"
    );
    response
}

/// Milliseconds to the microsecond: enough to read, short in the log.
fn round_ms(elapsed: Duration) -> f64 {
    (elapsed.as_secs_f64() * 1e6).round() / 1e3
}
