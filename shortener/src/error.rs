//! The crate's errors: `AppError` for everything a request can run into, with the one mapping to
//! HTTP statuses and the JSON and HTML renderings; `StoreError` for the database (either engine),
//! and which of its failures are worth a retry; `StartError` for startup. Internal causes are
//! logged here and never sent to clients.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::{FormRejection, JsonRejection, PathRejection, QueryRejection};
use axum::response::{Html, IntoResponse, Response};
use http::StatusCode;
use serde_json::json;

use crate::code::CodeError;
use crate::fault::Fault;
use crate::long_url::UrlError;
use crate::store::Database;
use crate::{body_limit, page};

/// What a client sees instead of an internal cause.
const INTERNAL_MESSAGE: &str = "internal error; the cause is in the server log";
/// What a client sees when the database is busy or unreachable for a moment (a 503).
const UNAVAILABLE_MESSAGE: &str = "the database is unavailable (busy or unreachable); try again";

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    InvalidUrl(#[from] UrlError),
    #[error(transparent)]
    InvalidCode(#[from] CodeError),
    /// Malformed JSON, form data or query string; the message says what was wrong.
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("request body is larger than {} bytes", body_limit::MAX_BODY_BYTES)]
    PayloadTooLarge,
    #[error("code `{0}` is already taken; choose another")]
    CodeTaken(String),
    #[error("no link with code `{0}`")]
    LinkNotFound(String),
    #[error("nothing at {0}")]
    RouteNotFound(String),
    #[error("no free code found after {0} random tries; try again")]
    CodeSpaceExhausted(u32),
    #[error("method {0} is not allowed here")]
    MethodNotAllowed(http::Method),
    #[error("injected fault `{0}`")]
    Injected(Fault),
    /// A bug or bad data on our side; the message is logged, not sent.
    #[error("{0}")]
    Internal(String),
    #[error(transparent)]
    Store(StoreError),
}

impl AppError {
    /// The one mapping from errors to HTTP statuses.
    pub fn status_code(&self) -> StatusCode {
        match self {
            Self::InvalidUrl(_) | Self::InvalidCode(_) | Self::BadRequest(_) => {
                StatusCode::BAD_REQUEST
            }
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::CodeTaken(_) => StatusCode::CONFLICT,
            Self::LinkNotFound(_) | Self::RouteNotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::CodeSpaceExhausted(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Store(cause) if cause.is_transient() => StatusCode::SERVICE_UNAVAILABLE,
            Self::Injected(_) | Self::Internal(_) | Self::Store(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// The message for the client. An internal cause is logged here, and replaced.
    pub fn client_message(&self) -> String {
        match self {
            Self::Store(cause) if cause.is_transient() => {
                tracing::warn!(error = %cause, "database unavailable");
                UNAVAILABLE_MESSAGE.to_owned()
            }
            Self::Store(cause) => {
                tracing::error!(error = %cause, "store failure");
                INTERNAL_MESSAGE.to_owned()
            }
            Self::Internal(cause) => {
                tracing::error!(error = %cause, "internal error");
                INTERNAL_MESSAGE.to_owned()
            }
            other => other.to_string(),
        }
    }

    /// `{"error": "..."}` with the status.
    pub fn into_json(self) -> Response {
        let body = Json(json!({ "error": self.client_message() }));
        (self.status_code(), body).into_response()
    }

    /// A small HTML error page with the status.
    pub fn into_html(self) -> Response {
        let status = self.status_code();
        (status, Html(page::error(status, &self.client_message()))).into_response()
    }

    /// JSON for the API and `/healthz`, HTML for the pages: for errors raised outside a handler
    /// (middleware, fallback), which only know the path.
    pub fn render_for(self, path: &str) -> Response {
        if path == "/api" || path.starts_with("/api/") || path == "/healthz" {
            self.into_json()
        } else {
            self.into_html()
        }
    }

    /// axum's rejections carry a good message but statuses we don't all want (422 for a JSON
    /// body of the wrong shape): keep 413 and 415, make everything else a 400.
    fn from_rejection(status: StatusCode, message: String) -> Self {
        match status {
            StatusCode::PAYLOAD_TOO_LARGE => Self::PayloadTooLarge,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Self::UnsupportedMediaType(message),
            _ => Self::BadRequest(message),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        self.into_json()
    }
}

impl From<StoreError> for AppError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::CodeTaken(code) => Self::CodeTaken(code),
            StoreError::CodeSpaceExhausted(tries) => Self::CodeSpaceExhausted(tries),
            other => Self::Store(other),
        }
    }
}

impl From<JsonRejection> for AppError {
    fn from(rejection: JsonRejection) -> Self {
        Self::from_rejection(rejection.status(), rejection.body_text())
    }
}

impl From<FormRejection> for AppError {
    fn from(rejection: FormRejection) -> Self {
        Self::from_rejection(rejection.status(), rejection.body_text())
    }
}

impl From<QueryRejection> for AppError {
    fn from(rejection: QueryRejection) -> Self {
        Self::from_rejection(rejection.status(), rejection.body_text())
    }
}

impl From<PathRejection> for AppError {
    fn from(rejection: PathRejection) -> Self {
        Self::from_rejection(rejection.status(), rejection.body_text())
    }
}

/// What the store can fail with, on either engine.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("code `{0}` is already taken")]
    CodeTaken(String),
    #[error("no free code found after {0} random tries")]
    CodeSpaceExhausted(u32),
    #[error("cannot create the database folder {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "database journal mode is `{0}`, not `wal`; two processes cannot share this file safely"
    )]
    NotWal(String),
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database worker thread failed: {0}")]
    Worker(#[from] tokio::task::JoinError),
    #[error("cannot start the database writer thread: {0}")]
    WriterThread(std::io::Error),
    #[error("the database writer thread has stopped")]
    WriterGone,
    #[error("a database write panicked; it was rolled back")]
    WritePanicked,
    /// The transaction a write shared with others failed; the cause, as text.
    #[error("{0}")]
    BatchFailed(String),
    #[error("postgres: {}", postgres_text(.0))]
    Postgres(#[from] tokio_postgres::Error),
    /// A bounded wait on PostgreSQL ran out: for a free connection, a new one, or an answer.
    #[error("postgres: {what} took longer than {after:?}")]
    TimedOut { what: &'static str, after: Duration },
    /// The connection pool itself failed (closed, or misbuilt): a bug, not an outage.
    #[error("postgres connection pool: {0}")]
    Pool(String),
}

impl StoreError {
    /// Worth a retry, so the client gets a 503 rather than a 500: SQLite's other process held
    /// the write lock past its busy timeout, or PostgreSQL is unreachable, restarting, or did
    /// not answer in time. Nothing was stored, or the write may be sent again (a create with its
    /// `x-request-id` is stored once).
    pub fn is_transient(&self) -> bool {
        use rusqlite::ErrorCode::{DatabaseBusy, DatabaseLocked};
        match self {
            Self::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => {
                matches!(e.code, DatabaseBusy | DatabaseLocked)
            }
            Self::Postgres(e) => postgres_is_transient(e),
            Self::TimedOut { .. } => true,
            _ => false,
        }
    }

    /// The same failure again, for each write of a batch that failed as a whole. SQLite's
    /// own failures keep their code, so a busy database still answers 503 to every one.
    pub fn duplicate(&self) -> Self {
        match self {
            Self::Sqlite(rusqlite::Error::SqliteFailure(e, message)) => {
                Self::Sqlite(rusqlite::Error::SqliteFailure(*e, message.clone()))
            }
            other => Self::BatchFailed(other.to_string()),
        }
    }
}

/// SQLSTATEs of a server that is going away, coming back, overloaded, or that gave up on a
/// statement: the same request can succeed a moment later.
fn postgres_is_transient(err: &tokio_postgres::Error) -> bool {
    let Some(db) = err.as_db_error() else {
        // Not an answer of the server: the connection was refused, closed or timed out, unless
        // the client itself refused the data (a bug: a 500).
        return err.is_closed()
            || std::error::Error::source(err).is_some_and(|s| s.is::<std::io::Error>())
            || err.to_string().starts_with("timeout");
    };
    let code = db.code().code();
    // 08: connection exception; 53: insufficient resources (too many connections).
    code.starts_with("08")
        || code.starts_with("53")
        || matches!(
            code,
            // admin_shutdown, crash_shutdown, cannot_connect_now (starting up, shutting down)
            "57P01" | "57P02" | "57P03"
            // query_canceled (statement_timeout), lock_not_available (lock_timeout)
            | "57014" | "55P03"
            // serialization_failure, deadlock_detected
            | "40001" | "40P01"
        )
}

/// The server's own message when there is one (tokio-postgres says only "db error").
fn postgres_text(err: &tokio_postgres::Error) -> String {
    match (err.as_db_error(), std::error::Error::source(err)) {
        (Some(db), _) => format!("{} {}: {}", db.severity(), db.code().code(), db.message()),
        (None, Some(source)) => format!("{err}: {source}"),
        (None, None) => err.to_string(),
    }
}

/// Why the process could not start or keep serving.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the database {db}: {source}")]
    Store { db: Database, source: StoreError },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot install the signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("cannot print the readiness line: {0}")]
    Announce(std::io::Error),
    #[error("server failed: {0}")]
    Serve(std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite(code: std::ffi::c_int) -> AppError {
        let err = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None);
        AppError::from(StoreError::Sqlite(err))
    }

    #[test]
    fn a_busy_database_is_a_retryable_503_other_failures_a_500() {
        assert_eq!(
            sqlite(rusqlite::ffi::SQLITE_BUSY).status_code(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            sqlite(rusqlite::ffi::SQLITE_CORRUPT).status_code(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }

    #[test]
    fn store_conflicts_become_client_errors() {
        let taken = AppError::from(StoreError::CodeTaken("x".into()));
        assert_eq!(taken.status_code(), StatusCode::CONFLICT);
        assert!(taken.client_message().contains("`x`"));
    }

    /// Every write of a batch that failed as a whole gets the batch's error: a busy database
    /// is still a 503 for each, anything else still a 500.
    #[test]
    fn a_duplicated_failure_keeps_its_status() {
        let busy = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            Some("database is locked".into()),
        );
        let again = StoreError::Sqlite(busy).duplicate();
        assert!(again.is_transient());
        assert!(again.to_string().contains("database is locked"), "{again}");
        let gone = AppError::from(StoreError::WriterGone.duplicate());
        assert_eq!(gone.status_code(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn internal_causes_are_not_sent() {
        let message = sqlite(rusqlite::ffi::SQLITE_CORRUPT).client_message();
        assert_eq!(message, INTERNAL_MESSAGE);
    }
}
