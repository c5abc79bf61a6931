//! The proxy's errors: why it could not start, and why a user request could
//! not be answered by an upstream, each mapped to its status in one place.

use std::path::PathBuf;

use http::StatusCode;

use crate::config::ConfigError;

/// Why the proxy could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("state file {path}: {reason}")]
    State { path: PathBuf, reason: String },
    #[error("admin token: {0}")]
    Token(String),
    #[error("{what} {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("takeover: {0}")]
    Takeover(String),
    #[error("{0}")]
    Cluster(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Why a forwarded request got no upstream response. Internal causes are
/// logged; the client sees only the status and a short text.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("could not connect to the upstream: {0}")]
    Connect(String),
    #[error("the upstream did not answer in time")]
    Timeout,
    #[error("the upstream failed: {0}")]
    Failed(String),
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("the request body is too large")]
    TooLarge,
    #[error("the request body did not arrive in time")]
    BodyTimeout,
    #[error("the proxy is shutting down and the grace period is over")]
    ShuttingDown,
}

impl UpstreamError {
    pub fn status_code(&self) -> StatusCode {
        match self {
            UpstreamError::Connect(_) | UpstreamError::Failed(_) => StatusCode::BAD_GATEWAY,
            UpstreamError::Timeout | UpstreamError::ShuttingDown => StatusCode::GATEWAY_TIMEOUT,
            UpstreamError::BadRequest(_) => StatusCode::BAD_REQUEST,
            UpstreamError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            UpstreamError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// What the client reads: no internal detail.
    pub fn public_text(&self) -> &'static str {
        match self {
            UpstreamError::Connect(_) | UpstreamError::Failed(_) => {
                "502 bad gateway: the service is unavailable\n"
            }
            UpstreamError::Timeout => "504 gateway timeout: the service did not answer in time\n",
            UpstreamError::BadRequest(why) => why,
            UpstreamError::TooLarge => "413 payload too large\n",
            UpstreamError::ShuttingDown => {
                "504 gateway timeout: the proxy is restarting; try again\n"
            }
            UpstreamError::BodyTimeout => "408 request timeout: the body did not arrive in time\n",
        }
    }
}
