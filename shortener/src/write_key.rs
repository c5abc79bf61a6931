//! The idempotency key of a create: the `x-request-id` the proxy puts on
//! every request. When the proxy sends one create to the other slot because
//! the first died before answering, both carry the same key, and the link is
//! stored once.

use axum::extract::FromRequestParts;
use http::request::Parts;

/// Longest key kept; anything longer is not a request id.
const MAX_KEY: usize = 200;

pub struct WriteKey(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for WriteKey {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let key = parts
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|k| !k.is_empty() && k.len() <= MAX_KEY)
            .map(str::to_string);
        Ok(WriteKey(key))
    }
}
