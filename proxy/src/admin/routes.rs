//! The admin API on its own listener: status, switch, rollback, slot
//! addresses, events. JSON in, JSON out; every request needs the bearer token;
//! errors are `{"error": "..."}` with a 4xx.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Path, RawQuery, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::admin::auth::AdminToken;
use crate::config::Change;
use crate::control::controller::{ControlError, Controller, GuardView, Override, ProbeReport};
use crate::control::reload;
use crate::http::pool::MAX_MEMBERS;
use crate::http::routing::Snapshot;
use crate::ops::budget::{Budget, BudgetView};
use crate::ops::events::Event;
use crate::slot::Slot;
use crate::tls::certs::TlsView;

#[derive(Clone)]
pub struct AdminState {
    pub controller: Arc<Controller>,
    pub token: Arc<AdminToken>,
    /// The file `POST /reload` reads.
    pub config_path: Arc<std::path::PathBuf>,
    /// The SLA's error budget, shown in the status.
    pub budget: Arc<Budget>,
    /// Starts the takeover of a reload that changed what only a start reads.
    pub succession: Arc<crate::takeover::Succession>,
}

pub fn app(state: AdminState) -> Router {
    Router::new()
        .route("/status", get(status))
        .route("/switch", post(switch))
        .route("/rollback", post(rollback))
        .route("/slots/{slot}", put(put_slot))
        .route("/canary", post(canary))
        .route("/promote", post(promote))
        .route("/abort", post(abort))
        .route("/reload", post(reload))
        .route("/metrics", get(metrics))
        .route("/events", get(events))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such admin endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this endpoint",
            )
        })
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            events_on_disk,
        ))
        .with_state(state)
}

/// An admin answer waits until the events recorded before it are in the
/// log file: a change it reports, or an event `GET /events` shows, survives
/// a crash right after.
async fn events_on_disk(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    state.controller.events().flushed().await;
    response
}

async fn require_token(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
    match presented {
        Some(token) if state.token.matches(token) => next.run(request).await,
        _ => {
            let mut response =
                ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong bearer token")
                    .into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            response
        }
    }
}

/// A JSON error answer.
pub struct ApiError {
    status: StatusCode,
    body: serde_json::Value,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: json!({ "error": message.into() }),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> ApiError {
        match e {
            ControlError::Refused(failure) => ApiError {
                status: StatusCode::CONFLICT,
                body: json!({ "error": format!("probe failed: {failure}"), "failure": failure }),
            },
            ControlError::Conflict(why) => ApiError::new(StatusCode::CONFLICT, why),
            e @ (ControlError::HandedOver | ControlError::Unavailable(_)) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
            }
            ControlError::Persist(e) => {
                tracing::error!(error = %e, "could not persist the routing state; nothing changed");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "could not persist the routing state; nothing changed",
                )
            }
        }
    }
}

/// An optional JSON body: empty means `T::default()`.
pub struct OptionalJson<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Default> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(T::default()));
        }
        serde_json::from_slice(&bytes)
            .map(OptionalJson)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("malformed JSON: {e}")))
    }
}

/// `Json` whose rejections answer 400 with our error shape instead of
/// axum's plain-text 415/422.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(JsonBody(value)),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "expected a JSON body with content-type: application/json",
            )),
            Err(e) => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("malformed JSON: {}", e.body_text()),
            )),
        }
    }
}

#[derive(Serialize)]
pub struct StatusView {
    pub active: Slot,
    /// Where user requests go now: differs from `active` while it is down.
    pub serving: Slot,
    pub previous: Option<Slot>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_switch: Option<time::OffsetDateTime>,
    pub canary: Option<CanaryView>,
    pub guard: GuardView,
    pub slots: SlotsView,
    pub error_budget: BudgetView,
    /// The TLS listener's certificates; null without one.
    pub tls: Option<TlsView>,
    /// The generation served and each proxy's last-seen one; only with `[cluster]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<crate::cluster::ClusterView>,
}

#[derive(Serialize)]
pub struct CanaryView {
    pub slot: Slot,
    pub percent: u8,
}

#[derive(Serialize)]
pub struct SlotsView {
    pub blue: SlotView,
    pub green: SlotView,
}

/// A slot as a whole (its first member's address, up while any member is,
/// the requests in flight on all of them) and each of its members.
#[derive(Serialize)]
pub struct SlotView {
    pub addr: SocketAddr,
    pub release: Option<String>,
    pub healthy: bool,
    pub in_flight: usize,
    pub last_probe: Option<ProbeReport>,
    pub last_error: Option<String>,
    pub members: Vec<MemberView>,
}

#[derive(Serialize)]
pub struct MemberView {
    pub addr: SocketAddr,
    pub release: Option<String>,
    pub healthy: bool,
    pub in_flight: usize,
    pub last_error: Option<String>,
}

pub fn status_view(state: &AdminState, snap: &Snapshot) -> StatusView {
    let controller = &state.controller;
    let slot = |s: Slot| {
        let health = controller.health().get(s);
        let pool = snap.pool(s);
        let members: Vec<MemberView> = pool
            .members()
            .iter()
            .enumerate()
            .map(|(at, member)| {
                let checked = health.members.iter().find(|m| m.addr == member.addr);
                MemberView {
                    addr: member.addr,
                    release: checked.and_then(|m| m.release.clone()),
                    healthy: pool.member_healthy(at),
                    in_flight: member.in_flight(),
                    last_error: checked.and_then(|m| m.last_error.clone()),
                }
            })
            .collect();
        SlotView {
            addr: pool.first().addr,
            release: health.release,
            healthy: snap.is_healthy(s),
            in_flight: members.iter().map(|m| m.in_flight).sum(),
            last_probe: controller.last_probe(s),
            last_error: health.last_error,
            members,
        }
    };
    StatusView {
        active: snap.active,
        serving: snap.serving(),
        previous: snap.previous,
        last_switch: snap.last_switch,
        canary: snap.canary.map(|c| CanaryView {
            slot: c.slot,
            percent: c.percent,
        }),
        guard: controller.guard_view(),
        slots: SlotsView {
            blue: slot(Slot::Blue),
            green: slot(Slot::Green),
        },
        error_budget: state.budget.view(),
        tls: snap
            .policy
            .https
            .as_ref()
            .map(|h| h.certificates.view(time::OffsetDateTime::now_utc())),
        cluster: controller.cluster_view(),
    }
}

async fn status(State(state): State<AdminState>) -> Json<StatusView> {
    let snap = state.controller.router().load_full();
    Json(status_view(&state, &snap))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SwitchRequest {
    to: Slot,
    #[serde(default)]
    override_guard: bool,
}

async fn switch(
    State(state): State<AdminState>,
    JsonBody(req): JsonBody<SwitchRequest>,
) -> Result<Json<StatusView>, ApiError> {
    let over = Override {
        guard: req.override_guard,
    };
    let snap = state.controller.switch_to(req.to, over).await?;
    Ok(Json(status_view(&state, &snap)))
}

async fn rollback(State(state): State<AdminState>) -> Result<Json<StatusView>, ApiError> {
    let snap = state.controller.rollback().await?;
    Ok(Json(status_view(&state, &snap)))
}

/// One upstream in `addr`, or a pool in `addrs`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SlotRequest {
    addr: Option<String>,
    addrs: Option<Vec<String>>,
}

impl SlotRequest {
    /// The members asked for: one or more distinct socket addresses.
    fn members(self) -> Result<Vec<SocketAddr>, ApiError> {
        let bad = |message: String| ApiError::new(StatusCode::BAD_REQUEST, message);
        let (key, texts) = match (self.addr, self.addrs) {
            (Some(one), None) => ("addr", vec![one]),
            (None, Some(list)) => ("addrs", list),
            (Some(_), Some(_)) => {
                return Err(bad(
                    "give addr (one upstream) or addrs (a pool), not both".into()
                ));
            }
            (None, None) => {
                return Err(bad(
                    "give addr (one upstream) or addrs (a pool of upstreams)".into(),
                ));
            }
        };
        if texts.is_empty() {
            return Err(bad("addrs lists no address".into()));
        }
        if texts.len() > MAX_MEMBERS {
            return Err(bad(format!(
                "addrs lists {} addresses; a slot takes at most {MAX_MEMBERS}",
                texts.len()
            )));
        }
        let mut addrs = Vec::with_capacity(texts.len());
        for text in &texts {
            let addr: SocketAddr = text
                .parse()
                .map_err(|_| bad(format!("{key} {text:?} is not an IP address with a port")))?;
            if addrs.contains(&addr) {
                return Err(bad(format!("{text:?} is listed twice")));
            }
            addrs.push(addr);
        }
        Ok(addrs)
    }
}

async fn put_slot(
    State(state): State<AdminState>,
    Path(slot): Path<String>,
    JsonBody(req): JsonBody<SlotRequest>,
) -> Result<Json<StatusView>, ApiError> {
    let slot: Slot = slot
        .parse()
        .map_err(|e: String| ApiError::new(StatusCode::NOT_FOUND, e))?;
    let addrs = req.members()?;
    let snap = state.controller.set_addrs(slot, addrs).await?;
    Ok(Json(status_view(&state, &snap)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CanaryRequest {
    slot: Slot,
    percent: u8,
    #[serde(default)]
    override_guard: bool,
}

async fn canary(
    State(state): State<AdminState>,
    JsonBody(req): JsonBody<CanaryRequest>,
) -> Result<Json<StatusView>, ApiError> {
    if req.percent > 100 {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "percent is 0 to 100",
        ));
    }
    let over = Override {
        guard: req.override_guard,
    };
    let snap = state.controller.canary(req.slot, req.percent, over).await?;
    Ok(Json(status_view(&state, &snap)))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PromoteRequest {
    #[serde(default)]
    override_guard: bool,
}

async fn promote(
    State(state): State<AdminState>,
    OptionalJson(req): OptionalJson<PromoteRequest>,
) -> Result<Json<StatusView>, ApiError> {
    let snap = state
        .controller
        .promote(Override {
            guard: req.override_guard,
        })
        .await?;
    Ok(Json(status_view(&state, &snap)))
}

async fn abort(State(state): State<AdminState>) -> Result<Json<StatusView>, ApiError> {
    let snap = state.controller.abort().await?;
    Ok(Json(status_view(&state, &snap)))
}

/// `POST /reload`'s answer: the status, and how each changed key took effect.
#[derive(Serialize)]
struct ReloadView {
    #[serde(flatten)]
    status: StatusView,
    changes: Vec<Change>,
    /// The pid of the process that took over, when one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    took_over: Option<u32>,
}

async fn reload(State(state): State<AdminState>) -> Result<Json<ReloadView>, ApiError> {
    // The file and its certificates are read off the runtime's threads (`reload::reload`).
    let reloaded = reload::reload(&state.controller, &state.succession, &state.config_path)
        .await
        .map_err(|e| ApiError {
        status: StatusCode::BAD_REQUEST,
        body: json!({
            "error": e.to_string(),
            "problems": e.problems.iter().map(|p| json!({ "key": p.key, "line": p.line, "message": p.message })).collect::<Vec<_>>(),
        }),
    })?;
    let took_over = match reloaded.takeover {
        reload::Takeover::NotNeeded => None,
        reload::Takeover::HandedOver(pid) => Some(pid),
        reload::Takeover::Failed(why) => {
            return Err(ApiError {
                status: StatusCode::INTERNAL_SERVER_ERROR,
                body: json!({
                    "error": format!("the live keys were applied, but the new process for the others did not take over: {why}"),
                    "changes": reloaded.changes,
                }),
            });
        }
    };
    let snap = state.controller.router().load_full();
    Ok(Json(ReloadView {
        status: status_view(&state, &snap),
        changes: reloaded.changes,
        took_over,
    }))
}

async fn metrics(State(state): State<AdminState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.controller.metrics().encode(),
    )
        .into_response()
}

/// `GET /events` answers at most this many events by default ...
const EVENTS_LIMIT: usize = 100;
/// ... and never more than this.
const EVENTS_MAX: usize = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    since: Option<String>,
    limit: Option<String>,
}

#[derive(Serialize)]
struct EventsView {
    events: Vec<Event>,
}

/// `GET /events?since=<seq>&limit=<n>`: the events after `since`, oldest first.
async fn events(
    State(state): State<AdminState>,
    RawQuery(query): RawQuery,
) -> Result<Json<EventsView>, ApiError> {
    let bad = |message: String| ApiError::new(StatusCode::BAD_REQUEST, message);
    let query: EventsQuery = serde_urlencoded::from_str(query.as_deref().unwrap_or(""))
        .map_err(|e| bad(format!("bad query: {e}; expected since=<seq>&limit=<n>")))?;
    let since = match query.since.as_deref() {
        None | Some("") => 0,
        Some(text) => text
            .parse::<u64>()
            .map_err(|_| bad(format!("since={text:?} is not an event sequence number")))?,
    };
    let limit = match query.limit.as_deref() {
        None | Some("") => EVENTS_LIMIT,
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=EVENTS_MAX).contains(&n) => n,
            _ => {
                return Err(bad(format!(
                    "limit={text:?} is not a number from 1 to {EVENTS_MAX}"
                )));
            }
        },
    };
    Ok(Json(EventsView {
        events: state.controller.events().since(since, limit),
    }))
}
