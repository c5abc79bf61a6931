//! The routes of the original Flask application: the form, the form post, the redirect.

use axum::extract::rejection::{FormRejection, PathRejection};
use axum::extract::{Path, State};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use http::header::{CACHE_CONTROL, LOCATION};
use http::{HeaderValue, StatusCode};
use serde::Deserialize;

use crate::code::Code;
use crate::error::AppError;
use crate::long_url::LongUrl;
use crate::page::{self, FormValues};
use crate::public_host::PublicOrigin;
use crate::state::AppState;
use crate::store::Link;
use crate::write_key::WriteKey;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(home))
        .route("/your-url", post(shorten).get(back_home))
        .route("/{code}", get(follow))
}

/// The form's fields. Unknown fields are ignored: during a cutover an older release may get a
/// newer page's post.
#[derive(Debug, Deserialize)]
struct ShortenForm {
    url: String,
    #[serde(default)]
    code: Option<String>,
}

async fn home() -> Html<String> {
    Html(page::form(FormValues::default(), None))
}

/// As in Flask: a `GET` of the form's target goes back to the form.
async fn back_home() -> Redirect {
    Redirect::to("/")
}

/// 200 with the short link, or the form again with the message and the error's status.
async fn shorten(
    State(state): State<AppState>,
    origin: PublicOrigin,
    key: WriteKey,
    form: Result<Form<ShortenForm>, FormRejection>,
) -> Response {
    let form = match form {
        Ok(Form(form)) => form,
        Err(rejection) => return form_again(AppError::from(rejection), FormValues::default()),
    };
    match create(&state, &origin, &form, key).await {
        Ok(link) => Html(page::created(&origin.short_url(&link.code), &link.url)).into_response(),
        Err(err) => {
            let values = FormValues {
                url: &form.url,
                code: form.code.as_deref().unwrap_or_default(),
            };
            form_again(err, values)
        }
    }
}

async fn create(
    state: &AppState,
    origin: &PublicOrigin,
    form: &ShortenForm,
    key: WriteKey,
) -> Result<Link, AppError> {
    state.faults.check_create()?;
    let url = LongUrl::parse(&form.url, &origin.own_hosts(&state.public_hosts))?;
    let code = Code::parse_optional(form.code.as_deref())?;
    Ok(state
        .store
        .insert(code, url, state.release.to_string(), key.0)
        .await?)
}

fn form_again(err: AppError, values: FormValues<'_>) -> Response {
    let status = err.status_code();
    (
        status,
        Html(page::form(values, Some(&err.client_message()))),
    )
        .into_response()
}

/// `302` to the stored URL, counting the click; an HTML 404 page for unknown codes.
async fn follow(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Response {
    redirect(&state, path)
        .await
        .unwrap_or_else(AppError::into_html)
}

async fn redirect(
    state: &AppState,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, AppError> {
    let Path(raw) = path?;
    // A string that is not a code was never stored: that is a 404, not a 400.
    let Ok(code) = Code::parse(&raw) else {
        return Err(AppError::LinkNotFound(raw));
    };
    if state.faults.refuses_foreign_links() {
        if let Some(link) = state.store.get(code.clone()).await? {
            state
                .faults
                .check_foreign(&link.release, state.release.as_str())?;
        }
    }
    let url = state
        .store
        .follow(code)
        .await?
        .ok_or(AppError::LinkNotFound(raw))?;
    let location = HeaderValue::try_from(url)
        .map_err(|err| AppError::Internal(format!("stored URL is not a valid Location: {err}")))?;
    // `no-store`: a cached redirect would never reach us, and the click would not be counted.
    let headers = [
        (LOCATION, location),
        (CACHE_CONTROL, HeaderValue::from_static("no-store")),
    ];
    Ok((StatusCode::FOUND, headers).into_response())
}
