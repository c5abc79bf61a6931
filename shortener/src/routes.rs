//! The HTTP surface: which handler answers which path, and what answers everything else.

mod api;
mod health;
mod html;

use axum::Router;
use axum::response::Response;
use http::{Method, Uri};

use crate::error::AppError;
use crate::state::AppState;

/// Every route, with JSON or HTML 404s and 405s for the rest.
pub fn router() -> Router<AppState> {
    Router::new()
        .merge(html::routes())
        .merge(api::routes())
        .merge(health::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

async fn not_found(uri: Uri) -> Response {
    AppError::RouteNotFound(uri.path().to_owned()).render_for(uri.path())
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    AppError::MethodNotAllowed(method).render_for(uri.path())
}
