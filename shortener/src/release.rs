//! The release label this instance runs as, and the `x-release` header every response carries.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::{HeaderName, HeaderValue};

/// The header naming the release that answered: how operators and probes tell blue from green.
pub const X_RELEASE: HeaderName = HeaderName::from_static("x-release");

/// Longest label accepted.
const MAX_LEN: usize = 64;

/// A release label such as `v1` or `2.3.0-rc1`: 1 to 64 characters of `A-Z a-z 0-9 . _ + -`,
/// so it is always a valid header value and safe to print in HTML and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    label: Arc<str>,
    /// The label as a header value, built once: every response carries it.
    header: HeaderValue,
}

/// Why a string is not a release label.
#[derive(Debug, thiserror::Error)]
#[error(
    "release label `{0}` must be 1 to {MAX_LEN} characters of letters, digits, `.`, `_`, `+` and `-`"
)]
pub struct ReleaseError(String);

impl Release {
    pub fn as_str(&self) -> &str {
        &self.label
    }
}

impl FromStr for Release {
    type Err = ReleaseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let valid = !s.is_empty()
            && s.len() <= MAX_LEN
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-'));
        let header = HeaderValue::from_str(s).ok().filter(|_| valid);
        match header {
            Some(header) => Ok(Self {
                label: Arc::from(s),
                header,
            }),
            None => Err(ReleaseError(s.to_owned())),
        }
    }
}

impl fmt::Display for Release {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label)
    }
}

/// Middleware: stamps `x-release` on every response, errors and fallbacks included.
pub async fn stamp(State(release): State<Release>, request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    response
        .headers_mut()
        .insert(X_RELEASE, release.header.clone());
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_version_like_labels() {
        for label in ["v1", "green", "2.3.0-rc1+build_7"] {
            assert_eq!(
                label.parse::<Release>().map(|r| r.to_string()).ok(),
                Some(label.to_owned())
            );
        }
    }

    #[test]
    fn refuses_labels_that_are_not_safe_everywhere() {
        for label in ["", "v 1", "v1\n", "<b>", &"v".repeat(MAX_LEN + 1)] {
            assert!(label.parse::<Release>().is_err(), "{label:?}");
        }
    }
}
