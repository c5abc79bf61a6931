//! Fault injection for release drills: the `--fault` kinds, and the middleware and checks that
//! make a healthy build behave like a broken release. Off unless a `--fault` is given.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::error::AppError;

/// One `--fault KIND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Creating a link (form or API) answers 500; reading and redirecting still work.
    Create500,
    /// `GET /{code}` answers 500 for rows written by another release.
    ForeignLinks500,
    /// After the first N requests (any route), every request answers 500.
    FailAfter(u64),
    /// Every response is held back this long.
    Latency(Duration),
}

/// Why a `--fault` value is not a fault kind.
#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    #[error(
        "unknown fault kind `{0}`; expected create-500, foreign-links-500, fail-after=N or latency=MS"
    )]
    Unknown(String),
    #[error("fault `{kind}` needs a whole number, got `{value}`")]
    NotANumber { kind: &'static str, value: String },
}

impl FromStr for Fault {
    type Err = FaultError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let number = |kind: &'static str, value: &str| {
            value.parse::<u64>().map_err(|_| FaultError::NotANumber {
                kind,
                value: value.to_owned(),
            })
        };
        match s.trim().split_once('=') {
            None if s.trim() == "create-500" => Ok(Self::Create500),
            None if s.trim() == "foreign-links-500" => Ok(Self::ForeignLinks500),
            Some(("fail-after", n)) => number("fail-after", n).map(Self::FailAfter),
            Some(("latency", ms)) => {
                number("latency", ms).map(|ms| Self::Latency(Duration::from_millis(ms)))
            }
            _ => Err(FaultError::Unknown(s.to_owned())),
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Create500 => f.write_str("create-500"),
            Self::ForeignLinks500 => f.write_str("foreign-links-500"),
            Self::FailAfter(n) => write!(f, "fail-after={n}"),
            Self::Latency(d) => write!(f, "latency={}", d.as_millis()),
        }
    }
}

/// The active faults of this instance. When a kind is given twice, the last one wins.
#[derive(Debug, Default)]
pub struct Faults {
    /// `create-500`: read by the two create handlers.
    create_500: bool,
    /// `foreign-links-500`: read by the redirect.
    foreign_links_500: bool,
    /// `fail-after=N`: read by [`inject`].
    fail_after: Option<u64>,
    /// `latency=MS`: read by [`inject`].
    latency: Option<Duration>,
    /// Requests seen so far; written only by [`inject`], one increment per request.
    seen: AtomicU64,
}

impl Faults {
    pub fn new(faults: &[Fault]) -> Self {
        let mut active = Self::default();
        for fault in faults {
            match *fault {
                Fault::Create500 => active.create_500 = true,
                Fault::ForeignLinks500 => active.foreign_links_500 = true,
                Fault::FailAfter(n) => active.fail_after = Some(n),
                Fault::Latency(d) => active.latency = Some(d),
            }
        }
        active
    }

    /// Called by both create handlers before they touch the store.
    pub fn check_create(&self) -> Result<(), AppError> {
        if self.create_500 {
            return Err(AppError::Injected(Fault::Create500));
        }
        Ok(())
    }

    /// Whether redirects must look at the row's release first (only to honor the fault).
    pub fn refuses_foreign_links(&self) -> bool {
        self.foreign_links_500
    }

    /// Called by the redirect with the release that wrote the row.
    pub fn check_foreign(&self, row_release: &str, own_release: &str) -> Result<(), AppError> {
        if self.foreign_links_500 && row_release != own_release {
            return Err(AppError::Injected(Fault::ForeignLinks500));
        }
        Ok(())
    }
}

/// Middleware for the faults that hit every route: `fail-after=N` and `latency=MS`.
pub async fn inject(State(faults): State<Arc<Faults>>, request: Request, next: Next) -> Response {
    // Counted on arrival, so "the first N requests" means the first N to reach us.
    let failing = match faults.fail_after {
        Some(limit) if faults.seen.fetch_add(1, Ordering::Relaxed) >= limit => Some(limit),
        _ => None,
    };
    if let Some(latency) = faults.latency {
        tracing::debug!(
            latency_ms = latency.as_millis(),
            "fault latency: holding the response"
        );
        tokio::time::sleep(latency).await;
    }
    match failing {
        Some(limit) => AppError::Injected(Fault::FailAfter(limit)).render_for(request.uri().path()),
        None => next.run(request).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind_and_prints_it_back() {
        for kind in [
            "create-500",
            "foreign-links-500",
            "fail-after=3",
            "latency=250",
        ] {
            let fault: Fault = kind.parse().expect("a valid kind");
            assert_eq!(fault.to_string(), kind);
        }
    }

    #[test]
    fn unknown_kinds_are_named() {
        let err = "explode".parse::<Fault>().expect_err("not a kind");
        assert!(err.to_string().contains("`explode`"), "{err}");
        let err = "latency=soon".parse::<Fault>().expect_err("not a number");
        assert!(err.to_string().contains("`soon`"), "{err}");
        assert!("fail-after".parse::<Fault>().is_err());
        assert!("create-500=1".parse::<Fault>().is_err());
    }
}
