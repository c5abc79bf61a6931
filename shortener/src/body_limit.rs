//! The 16 KiB cap on request bodies, on every route.

use axum::extract::{DefaultBodyLimit, Request};
use axum::middleware::Next;
use axum::response::Response;
use http::header::CONTENT_LENGTH;

use crate::error::AppError;

/// Largest request body accepted. A link is at most a 2 KiB URL and a 64-byte code; the rest is
/// room for encoding overhead, not for payloads.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// The cap for extractors that read a body (`Json`, `Form`): catches chunked bodies that
/// announce no length. They report it as a 413 rejection, which `AppError` keeps.
pub fn extractor_limit() -> DefaultBodyLimit {
    DefaultBodyLimit::max(MAX_BODY_BYTES)
}

/// Middleware: a body that announces more than the cap is refused before any handler runs, on
/// every route, so even a route that ignores its body answers 413 the same way.
pub async fn refuse_oversized(request: Request, next: Next) -> Response {
    let announced = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match announced {
        Some(len) if len > MAX_BODY_BYTES as u64 => {
            AppError::PayloadTooLarge.render_for(request.uri().path())
        }
        _ => next.run(request).await,
    }
}
