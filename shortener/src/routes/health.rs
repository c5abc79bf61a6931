//! `GET /healthz`: whether this instance can serve, judged by a query on the store.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use http::StatusCode;
use serde_json::json;

use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/healthz", get(healthz))
}

/// 200 only when the store answers a query on the links table; 503 with the cause otherwise.
/// The cause is sent (not only logged) because operators and the proxy's gate read this route.
async fn healthz(State(state): State<AppState>) -> Response {
    let release = state.release.as_str();
    match state.store.ping().await {
        Ok(()) => Json(json!({ "status": "ok", "release": release })).into_response(),
        Err(err) => {
            tracing::warn!(error = %err, "health check failed");
            let body =
                json!({ "status": "unavailable", "release": release, "error": err.to_string() });
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}
