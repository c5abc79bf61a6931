//! The JSON API under `/api/links`: create, read, delete, list.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::StatusCode;
use http::header::LOCATION;
use serde::{Deserialize, Serialize};

use crate::code::Code;
use crate::error::AppError;
use crate::long_url::LongUrl;
use crate::public_host::PublicOrigin;
use crate::state::AppState;
use crate::store::Link;
use crate::write_key::WriteKey;

/// Links per page when `limit` is not given.
const DEFAULT_LIMIT: u32 = 50;
/// Largest `limit` accepted; more is a 400, not silently clamped.
const MAX_LIMIT: u32 = 500;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/links", post(create).get(list))
        .route("/api/links/{code}", get(show).delete(remove))
}

/// Unknown fields are ignored: during a cutover an older release may get a newer client's body.
#[derive(Debug, Deserialize)]
struct CreateRequest {
    url: String,
    #[serde(default)]
    code: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    limit: Option<String>,
    after: Option<String>,
}

/// The answer to a create.
#[derive(Debug, Serialize)]
struct Created {
    code: String,
    short_url: String,
    url: String,
    created_at: String,
}

/// A stored link as the API shows it.
#[derive(Debug, Serialize)]
struct LinkView {
    code: String,
    short_url: String,
    url: String,
    created_at: String,
    clicks: i64,
    release: String,
}

#[derive(Debug, Serialize)]
struct LinkPage {
    links: Vec<LinkView>,
    /// The `after` of the next page; `null` on the last page.
    next: Option<String>,
}

impl LinkView {
    fn new(link: Link, origin: &PublicOrigin) -> Self {
        Self {
            short_url: origin.short_url(&link.code),
            code: link.code,
            url: link.url,
            created_at: link.created_at,
            clicks: link.clicks,
            release: link.release,
        }
    }
}

/// `201` with the link and a `Location` of its API resource.
async fn create(
    State(state): State<AppState>,
    origin: PublicOrigin,
    key: WriteKey,
    body: Result<Json<CreateRequest>, JsonRejection>,
) -> Result<Response, AppError> {
    let Json(body) = body?;
    state.faults.check_create()?;
    let url = LongUrl::parse(&body.url, &origin.own_hosts(&state.public_hosts))?;
    let code = Code::parse_optional(body.code.as_deref())?;
    let link = state
        .store
        .insert(code, url, state.release.to_string(), key.0)
        .await?;
    let location = format!("/api/links/{}", link.code);
    let created = Created {
        short_url: origin.short_url(&link.code),
        code: link.code,
        url: link.url,
        created_at: link.created_at,
    };
    Ok((StatusCode::CREATED, [(LOCATION, location)], Json(created)).into_response())
}

async fn show(
    State(state): State<AppState>,
    origin: PublicOrigin,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<LinkView>, AppError> {
    let code = code_in_path(path)?;
    let link = state.store.get(code.clone()).await?;
    let link = link.ok_or_else(|| AppError::LinkNotFound(code.to_string()))?;
    Ok(Json(LinkView::new(link, &origin)))
}

async fn remove(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, AppError> {
    let code = code_in_path(path)?;
    if state.store.delete(code.clone()).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(AppError::LinkNotFound(code.to_string()))
    }
}

/// A page of links ordered by code; `next` is the cursor for `after`.
async fn list(
    State(state): State<AppState>,
    origin: PublicOrigin,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<LinkPage>, AppError> {
    let Query(query) = query?;
    let limit = parse_limit(query.limit.as_deref())?;
    let after = Code::parse_optional(query.after.as_deref())
        .map_err(|err| AppError::BadRequest(format!("after must be a code from `next`: {err}")))?;
    // One row more than asked tells whether there is a next page.
    let mut links = state.store.list(after, limit + 1).await?;
    let next = if links.len() > limit as usize {
        links.truncate(limit as usize);
        links.last().map(|link| link.code.clone())
    } else {
        None
    };
    let links = links
        .into_iter()
        .map(|link| LinkView::new(link, &origin))
        .collect();
    Ok(Json(LinkPage { links, next }))
}

/// A path segment that is not a code was never stored: 404, like an unknown code.
fn code_in_path(path: Result<Path<String>, PathRejection>) -> Result<Code, AppError> {
    let Path(raw) = path?;
    Code::parse(&raw).map_err(|_| AppError::LinkNotFound(raw))
}

fn parse_limit(raw: Option<&str>) -> Result<u32, AppError> {
    match raw.map(str::trim) {
        None | Some("") => Ok(DEFAULT_LIMIT),
        Some(raw) => raw
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                AppError::BadRequest(format!(
                    "limit must be a whole number from 1 to {MAX_LIMIT}, got `{raw}`"
                ))
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_defaults_and_bounds() {
        assert_eq!(parse_limit(None).ok(), Some(DEFAULT_LIMIT));
        assert_eq!(parse_limit(Some("")).ok(), Some(DEFAULT_LIMIT));
        assert_eq!(parse_limit(Some("1")).ok(), Some(1));
        assert_eq!(parse_limit(Some("500")).ok(), Some(MAX_LIMIT));
        for bad in ["0", "501", "-1", "ten", "1.5"] {
            assert!(parse_limit(Some(bad)).is_err(), "{bad}");
        }
    }
}
