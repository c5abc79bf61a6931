//! The request path of the public listener: load the routing snapshot once,
//! pick the slot, rewrite the headers, send through the slot's pooled
//! client, and stream the answer back. A failed attempt says who caused it
//! and whether it may go again (`outcome::Failure`): once more on a new
//! connection when a pooled one turned out closed, once to the other slot
//! when nothing of an answer came back and a replay is safe. A request of
//! the release the guard watches (a canary, a new active slot in its bake)
//! that the upstream failed is charged to it and sent once to the stable
//! release, which answers the user. Nothing here blocks or buffers a body.

use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;

use crate::control::health::Monitor;
use crate::error::UpstreamError;
use crate::http::body::{PendingOutcome, ProxyBody};
use crate::http::deadline::{Alarm, Deadlines, Progress, Waited};
use crate::http::headers::{ClientAddr, Seen, X_REQUEST_ID, list_items, rewrite_request};
use crate::http::https::{self, Transport};
use crate::http::outcome::{Failure, FailureKind, Outcome, Retry, Source};
use crate::http::pool::{Pool, Tried};
use crate::http::routing::{Policy, Router};
use crate::http::tally::Tally;
use crate::http::traffic::Traffic;
use crate::http::upstream::request_body::{BodyLimits, BodyShared, RequestBody, Resend};
use crate::http::upstream::{Failed, InFlight, ResponseBody, SendError, Upstream};
use crate::metrics::Metrics;

/// Bytes of a request body kept for a resend (to the other slot, or on a
/// new connection); a larger body is streamed without a copy and never sent
/// again once read.
const REPLAY_LIMIT: u64 = 64 * 1024;

pub struct Forwarder {
    router: Arc<Router>,
    /// Where each request's outcome is counted; its body holds a reference
    /// to count it when the body ends.
    tally: Arc<Tally>,
    monitor: Arc<Monitor>,
    /// The response deadlines, and the cut when the grace period runs out.
    deadlines: Arc<Deadlines>,
}

/// One client connection: its address, and the alarm of its HTTP/1.1
/// requests' response deadlines (see `deadline`). It holds the forwarder
/// too, so that a request's future needs one counted reference, not two.
pub struct ClientConn {
    forwarder: Arc<Forwarder>,
    addr: ClientAddr,
    alarm: Arc<Alarm>,
    transport: Transport,
}

impl ClientConn {
    /// Answers one user request of this connection (see `Forwarder::handle`).
    pub async fn handle(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        self.forwarder.handle(req, self).await
    }
}

/// When an attempt began (its response deadline counts from there) and
/// the alarm that keeps that deadline.
#[derive(Clone, Copy)]
struct Clock<'a> {
    alarm: &'a Alarm,
    began: Instant,
}

/// One attempt's result: the response (with the request's count in flight
/// on the upstream, which the response body keeps until it ends), or why
/// there is none.
enum Attempt {
    Answered(Response<ResponseBody>, InFlight),
    /// A 5xx head of the watched release, handed back unanswered (nothing of
    /// it has passed to the client) with its request body to send again.
    ServerError(Response<ResponseBody>, InFlight, Resend),
    Failed(AttemptFailed),
}

/// How an attempt is sent.
#[derive(Clone, Copy)]
struct Sending {
    /// On a new connection, not a pooled one.
    fresh: bool,
    /// To the watched release, for a request the stable one may answer: a
    /// 5xx head is handed back (`Attempt::ServerError`) and a timed-out
    /// request keeps its body, when it is whole.
    answering: bool,
}

impl Sending {
    const POOLED: Sending = Sending {
        fresh: false,
        answering: false,
    };
}

/// The request went to the release the guard watches, and the stable one
/// may answer for it when the upstream fails it.
struct Watched<'a> {
    /// The other slot's pool, which can take over.
    stable: &'a Pool,
    /// The request's head, for a resend after a 5xx or a timeout (which give
    /// none back); kept only when a replay is safe.
    parts: Option<Box<Parts>>,
    /// When the request came in: the charged attempt's latency counts from it.
    started: Instant,
}

/// A failed attempt: what the client would be told, what went wrong and
/// whether it may go again, and what a resend needs (the request's head and
/// its body, when they can be had back).
struct AttemptFailed {
    error: UpstreamError,
    failure: Failure,
    body: Option<Resend>,
    parts: Option<Box<Parts>>,
}

impl AttemptFailed {
    fn without_resend(error: UpstreamError, kind: FailureKind) -> AttemptFailed {
        AttemptFailed {
            error,
            failure: Failure::never(kind),
            body: None,
            parts: None,
        }
    }
}

/// A member a request was sent to, and the pool it belongs to.
#[derive(Clone, Copy)]
struct Hop<'a> {
    at: &'a Arc<Upstream>,
    pool: &'a Pool,
}

/// Where a failed attempt may go next.
enum Next {
    /// The same member, on a new connection.
    Reconnect,
    /// Another member of the slot, else the other slot.
    Elsewhere,
    Stop,
}

/// `tried` with `member`'s index in `pool`.
fn tried_with(tried: Tried, pool: &Pool, member: &Arc<Upstream>) -> Tried {
    pool.index_of(member).map_or(tried, |at| tried.with(at))
}

/// How a request ended up: the response and the upstream that gave it, or
/// the last failure and the upstream it came from.
type Ended<'a> = (
    Result<(Response<ResponseBody>, InFlight), (UpstreamError, FailureKind)>,
    &'a Arc<Upstream>,
);

impl Forwarder {
    pub fn new(
        router: Arc<Router>,
        traffic: Arc<Traffic>,
        metrics: Arc<Metrics>,
        monitor: Arc<Monitor>,
    ) -> Forwarder {
        Forwarder {
            router,
            tally: Arc::new(Tally { traffic, metrics }),
            monitor,
            deadlines: Deadlines::new(),
        }
    }

    /// What the forwarder keeps for one client connection.
    pub fn client_conn(
        self: &Arc<Self>,
        peer: std::net::SocketAddr,
        transport: Transport,
    ) -> ClientConn {
        ClientConn {
            forwarder: Arc::clone(self),
            addr: ClientAddr::new(peer),
            alarm: self.deadlines.alarm(),
            transport,
        }
    }

    /// The grace period is over: every request still waiting for its
    /// upstream's answer gets a 504 now, so the connections can close.
    pub fn cut_in_flight(&self) {
        self.deadlines.cut();
    }

    /// Requests answered 504 by `cut_in_flight`.
    pub fn cut_requests(&self) -> usize {
        self.deadlines.cut_requests()
    }

    /// Answers one user request of the client connection `conn`; never
    /// fails, because every upstream problem becomes a short 4xx/5xx answer.
    pub async fn handle(&self, req: Request<Incoming>, conn: &ClientConn) -> Response<ProxyBody> {
        let started = Instant::now();
        let client = &conn.addr;
        // HTTP/2 requests of one connection wait at the same time, each in
        // its own task: each needs its own alarm.
        let own_alarm;
        let alarm: &Alarm = if req.version() == Version::HTTP_2 {
            own_alarm = self.deadlines.alarm();
            &own_alarm
        } else {
            &conn.alarm
        };
        let host = match request_host(&req) {
            Ok(host) => host,
            Err(e) => return local_error(&e, None),
        };
        let seen = Seen::scan(req.headers());
        if seen.transfer_encoding() && !plain_chunked(req.headers()) {
            return local_error(
                &UpstreamError::BadRequest("400 bad request: unsupported transfer coding\n"),
                None,
            );
        }
        let (mut parts, body) = req.into_parts();
        // The only read of routing state for this request. The request keeps
        // the whole snapshot (one reference count) rather than counted
        // references to three parts of it.
        let snap = self.router.load_full();
        let route = snap.route(&parts.headers);
        let pool = &**snap.pool(route.slot);
        let upstream = pool.pick();
        let other = route.slot.other();
        let alternate =
            (snap.policy.retry && snap.can_take_over(other)).then(|| &**snap.pool(other));
        let policy = &*snap.policy;
        // The release the guard watches is judged by its own answers, but a
        // user gets the stable release's when the upstream fails it.
        let stable = (policy.answer_from_stable
            && self.tally.traffic.watched() == Some(route.slot)
            && snap.can_take_over(other))
        .then(|| &**snap.pool(other));
        if seen.content_length()
            && let Some(length) = content_length(&parts)
            && length > policy.max_body_bytes
        {
            return local_error(&UpstreamError::TooLarge, None);
        }
        // Room for the forwarding headers and the request id at once, rather
        // than growing (and rehashing) the map once or twice on the way.
        parts.headers.reserve(5);
        let trusted = policy.trusted_hops.contains(&client.ip());
        let https = policy.https.as_deref();
        if let Some(to_https) = https::redirect(
            conn.transport,
            https,
            &parts,
            &host,
            &policy.canary.preview_header,
            trusted,
        ) {
            return to_https;
        }
        let request_id = rewrite_request(
            &mut parts.headers,
            seen,
            client,
            host.clone(),
            conn.transport.proto(),
            trusted,
        );
        // The upstream needs the host as `Host`: HTTP/2 carries it as
        // `:authority`, an absolute-form target in the target (which goes
        // upstream in origin form), and `Connection` may have named `Host`.
        parts.headers.insert(header::HOST, host);
        if parts.version == Version::HTTP_2 && seen.cookie() {
            join_cookies(&mut parts.headers);
        }
        parts.version = Version::HTTP_11;
        let answering = stable.is_some() && (parts.method.is_idempotent() || policy.retry_writes);
        let watched = stable.map(|stable| Watched {
            stable,
            parts: answering.then(|| Box::new(parts.clone())),
            started,
        });

        let first = self
            .attempt(
                upstream,
                parts,
                Resend::Unsent(body),
                policy,
                Clock {
                    alarm,
                    began: started,
                },
                Sending {
                    fresh: false,
                    answering,
                },
            )
            .await;
        let (result, answered_by): Ended<'_> = match first {
            Attempt::Answered(response, in_flight) => (Ok((response, in_flight)), upstream),
            // Boxed: inline, the rare resend's state would make every
            // request's future larger, and hyper moves that into place for
            // each request.
            Attempt::ServerError(response, in_flight, body) => {
                Box::pin(self.answer_5xx(
                    upstream,
                    (response, in_flight),
                    body,
                    watched,
                    policy,
                    alarm,
                ))
                .await
            }
            Attempt::Failed(failed) => {
                let from = Hop { at: upstream, pool };
                Box::pin(self.resend(from, alternate, watched, failed, policy, alarm)).await
            }
        };
        let finished = Instant::now();
        let latency = finished.saturating_duration_since(started);
        let answer = match result {
            Ok((response, in_flight)) => {
                let (mut parts, body) = response.into_parts();
                // Counted when the body ends: it may yet fail part-way.
                let outcome = PendingOutcome::new(
                    Arc::clone(&self.tally),
                    parts.status.as_u16(),
                    latency,
                    finished,
                );
                // The upstream client's parser kept the hop-by-hop headers out of the map.
                parts.headers.insert(&X_REQUEST_ID, request_id);
                Response::from_parts(parts, ProxyBody::upstream(body, in_flight, outcome))
            }
            Err((error, kind)) => {
                self.tally
                    .request(answered_by.slot, Outcome::Failed(kind), latency, finished);
                local_error(&error, Some(request_id))
            }
        };
        let answer = with_bucket_cookie(answer, route.new_bucket, &policy.canary.cookie);
        https::with_hsts(answer, conn.transport, https)
    }

    /// The watched release answered a replay-safe request with a 5xx head:
    /// the release is charged with it, its answer dropped unread, and the
    /// stable release answers the user (a 5xx included).
    async fn answer_5xx<'a>(
        &self,
        at: &'a Arc<Upstream>,
        (response, in_flight): (Response<ResponseBody>, InFlight),
        body: Resend,
        watched: Option<Watched<'a>>,
        policy: &Policy,
        alarm: &Alarm,
    ) -> Ended<'a> {
        // A 5xx is handed back only when the request is watched and its head kept.
        let Some(Watched {
            stable,
            parts: Some(parts),
            started,
        }) = watched
        else {
            return (Ok((response, in_flight)), at);
        };
        let status = response.status().as_u16();
        drop((response, in_flight));
        self.charge_watched(at.slot, Outcome::Answered(status), started);
        let pool = stable;
        let stable = pool.pick();
        tracing::info!(from = %at.slot, to = %stable.slot, member = %stable.addr, status, "the stable release answers for the watched one");
        self.tally.metrics.retried();
        let clock = Clock {
            alarm,
            began: Instant::now(),
        };
        match self
            .attempt(stable, *parts, body, policy, clock, Sending::POOLED)
            .await
        {
            Attempt::Answered(response, in_flight)
            | Attempt::ServerError(response, in_flight, _) => {
                self.answered_by_stable(at.slot);
                (Ok((response, in_flight)), stable)
            }
            // It may yet go once more on a new connection to the stable
            // slot, or to another of its members.
            Attempt::Failed(failed) => {
                let from = Hop { at: stable, pool };
                self.resend(from, None, None, failed, policy, alarm).await
            }
        }
    }

    /// After a failed first attempt on `from`: sends the request again as
    /// the failure allows (to the stable release when `from` is watched and
    /// the upstream failed it, once more on a new connection to the same
    /// member, to another healthy member of the same slot, once to
    /// `alternate` when none is left), until it is answered or may not go
    /// again.
    async fn resend<'a>(
        &self,
        from: Hop<'a>,
        alternate: Option<&'a Pool>,
        mut watched: Option<Watched<'a>>,
        mut failed: AttemptFailed,
        policy: &Policy,
        alarm: &Alarm,
    ) -> Ended<'a> {
        let Hop { mut at, mut pool } = from;
        let mut tried = tried_with(Tried::default(), pool, at);
        let mut reconnected = false;
        let mut moved = false;
        // Set once the request left the watched release for the stable one.
        let mut answering_for = None;
        // Each turn sends again or returns; a turn sets `reconnected` (once
        // per member), adds a member to `tried` (each member of a slot once)
        // or sets `moved` (once), so the attempts are bounded by the
        // members of the two slots.
        loop {
            let replay_safe = failed
                .parts
                .as_ref()
                .or(watched.as_ref().and_then(|w| w.parts.as_ref()))
                .is_some_and(|parts| parts.method.is_idempotent())
                || policy.retry_writes;
            if !moved
                && let Some(w) = watched.as_mut()
                && to_stable(&failed.failure, replay_safe)
                && let (Some(parts), Some(body)) = (
                    failed.parts.take().or_else(|| w.parts.take()),
                    failed.body.take(),
                )
            {
                self.record_failure(at, &failed);
                self.charge_watched(at.slot, Outcome::Failed(failed.failure.kind), w.started);
                pool = w.stable;
                let stable = pool.pick();
                tracing::info!(from = %at.slot, to = %stable.slot, member = %stable.addr, error = %failed.error, "the stable release answers for the watched one");
                self.tally.metrics.retried();
                answering_for = Some(at.slot);
                moved = true;
                reconnected = false;
                at = stable;
                tried = tried_with(Tried::default(), pool, at);
                watched = None;
                let clock = Clock {
                    alarm,
                    began: Instant::now(),
                };
                match self
                    .attempt(at, *parts, body, policy, clock, Sending::POOLED)
                    .await
                {
                    Attempt::Answered(response, in_flight)
                    | Attempt::ServerError(response, in_flight, _) => {
                        self.answered_by_stable(at.slot.other());
                        return (Ok((response, in_flight)), at);
                    }
                    Attempt::Failed(next_failed) => {
                        failed = next_failed;
                        continue;
                    }
                }
            }
            let elsewhere = match failed.failure.retry {
                Retry::Reconnect if replay_safe && !reconnected => Next::Reconnect,
                Retry::Unsent => Next::Elsewhere,
                Retry::Replayable if replay_safe => Next::Elsewhere,
                _ => Next::Stop,
            };
            let next = match elsewhere {
                Next::Reconnect => Some((at, true)),
                Next::Elsewhere if policy.retry => match pool.pick_untried(tried) {
                    Some((member, next)) => {
                        tried = tried.with(member);
                        Some((next, false))
                    }
                    None if !moved => alternate.map(|other| {
                        pool = other;
                        let next = other.pick();
                        tried = tried_with(Tried::default(), pool, next);
                        moved = true;
                        (next, false)
                    }),
                    None => None,
                },
                Next::Elsewhere | Next::Stop => None,
            };
            let (Some((next, fresh)), Some(parts), Some(body)) =
                (next, failed.parts.take(), failed.body.take())
            else {
                self.record_failure(at, &failed);
                return (Err((failed.error, failed.failure.kind)), at);
            };
            if fresh {
                // The upstream closed an idle connection as the request went
                // out on it: no failure of the slot.
                tracing::debug!(slot = %at.slot, member = %at.addr, error = %failed.error, "a pooled connection was closed under the request; sending it again on a new one");
                self.tally.metrics.reconnected(at.slot);
                reconnected = true;
            } else {
                self.record_failure(at, &failed);
                tracing::info!(from = %at.slot, from_member = %at.addr, to = %next.slot, to_member = %next.addr, error = %failed.error, "retrying elsewhere");
                self.tally.metrics.retried();
                reconnected = false;
            }
            at = next;
            let clock = Clock {
                alarm,
                began: Instant::now(),
            };
            let sending = Sending {
                fresh,
                answering: false,
            };
            match self.attempt(at, *parts, body, policy, clock, sending).await {
                Attempt::Answered(response, in_flight)
                | Attempt::ServerError(response, in_flight, _) => {
                    if let Some(watched) = answering_for {
                        self.answered_by_stable(watched);
                    }
                    return (Ok((response, in_flight)), at);
                }
                Attempt::Failed(next_failed) => failed = next_failed,
            }
        }
    }

    /// Charges the watched slot with a failed attempt the user does not
    /// see: the guard judges it all the same. Counted as the watched
    /// release's failure even when the guard stopped watching meanwhile:
    /// the request went to it while watched, and the stable release's
    /// answer is counted too.
    fn charge_watched(&self, slot: crate::slot::Slot, outcome: Outcome, started: Instant) {
        if !outcome.judges_release() {
            return;
        }
        let now = Instant::now();
        self.tally
            .traffic
            .charge(slot, outcome, now.saturating_duration_since(started), now);
        self.tally.metrics.watched_failure();
    }

    /// The stable release answered for a failed request of `watched`.
    fn answered_by_stable(&self, watched: crate::slot::Slot) {
        self.tally.metrics.answered_by_stable();
        self.tally.traffic.answered_by_stable(watched);
    }

    async fn attempt(
        &self,
        upstream: &Arc<Upstream>,
        parts: Parts,
        body: Resend,
        policy: &Policy,
        clock: Clock<'_>,
        sending: Sending,
    ) -> Attempt {
        let limits = BodyLimits {
            max_bytes: policy.max_body_bytes,
            timeout: policy.body_timeout,
            // Kept whenever a resend could need it: an idempotent request (a
            // PUT has a body too), or any with retry_writes.
            retain: if parts.method.is_idempotent() || policy.retry_writes {
                REPLAY_LIMIT
            } else {
                0
            },
        };
        let (body, shared) = RequestBody::new(body, limits);
        let in_flight = upstream.start_request();
        let progress = Progress::default();
        let send = std::pin::pin!(upstream.send(
            Request::from_parts(parts, body),
            clock.began,
            &progress,
            sending.fresh
        ));
        let sent = self
            .deadlines
            .within(
                clock.alarm,
                tokio::time::Instant::from_std(clock.began),
                policy.response_timeout,
                &progress,
                send,
            )
            .await;
        match sent {
            Waited::Done(Ok(response)) => {
                upstream.passive_success();
                if sending.answering
                    && response.status().is_server_error()
                    && let Some(body) = shared.take_for_resend()
                {
                    return Attempt::ServerError(response, in_flight, body);
                }
                Attempt::Answered(response, in_flight)
            }
            Waited::Done(Err(e)) => Attempt::Failed(classify(e, &shared)),
            Waited::TimedOut => Attempt::Failed(AttemptFailed {
                error: UpstreamError::Timeout,
                failure: Failure::never(FailureKind::Timeout),
                // The send was given up: its body, if whole, may go to the
                // stable release.
                body: if sending.answering {
                    shared.take_for_resend()
                } else {
                    None
                },
                parts: None,
            }),
            Waited::Cut => Attempt::Failed(AttemptFailed::without_resend(
                UpstreamError::ShuttingDown,
                FailureKind::ShuttingDown,
            )),
        }
    }

    /// Counts a failed attempt where attempts are counted: the upstream's
    /// failures in the metrics, and those that say it is down in passive
    /// health. (The request's one outcome is counted once it has ended.)
    fn record_failure(&self, upstream: &Upstream, failed: &AttemptFailed) {
        let kind = failed.failure.kind;
        if kind.source() != Source::Upstream {
            return;
        }
        tracing::warn!(slot = %upstream.slot, upstream = %upstream.addr, error = %failed.error, "upstream failed");
        self.tally
            .metrics
            .upstream_failure(upstream.slot, upstream.addr, kind);
        if kind.says_down() {
            let consecutive = upstream.passive_failure();
            self.monitor.passive_failure(
                upstream.slot,
                upstream.addr,
                consecutive,
                &failed.error.to_string(),
            );
        }
    }
}

/// Whether a failed attempt of the watched release may go to the stable
/// one: only a failure the upstream caused, and nothing of an answer came
/// back (a response that started is never sent again). A refused
/// connection never reached it; after a reset or a timeout the release may
/// have acted on the request, so only when a replay is safe. A pooled
/// connection found closed is first sent again on a new one (no failure of
/// the release).
fn to_stable(failure: &Failure, replay_safe: bool) -> bool {
    if failure.kind.source() != Source::Upstream {
        return false;
    }
    match failure.retry {
        Retry::Unsent => true,
        Retry::Replayable => replay_safe,
        Retry::Never => failure.kind == FailureKind::Timeout && replay_safe,
        Retry::Reconnect => false,
    }
}

/// Says who caused a failed attempt and whether it may go again. A refused
/// or unreadable client body is the client's fault; a refused connection
/// never reached the upstream (any method may go elsewhere); once a byte of
/// an answer came back the upstream has the request, and it never goes
/// again; otherwise a replay may be safe: on a new connection when a pooled
/// one turned out closed, else on the other slot.
fn classify(e: SendError, shared: &BodyShared) -> AttemptFailed {
    if shared.too_large() {
        return AttemptFailed::without_resend(UpstreamError::TooLarge, FailureKind::TooLarge);
    }
    if shared.timed_out() {
        return AttemptFailed::without_resend(
            UpstreamError::BodyTimeout,
            FailureKind::ClientTimeout,
        );
    }
    if shared.client_failed() {
        return AttemptFailed::without_resend(
            UpstreamError::BadRequest("400 bad request: malformed request body\n"),
            FailureKind::ClientBody,
        );
    }
    let body = shared.take_for_resend();
    match e {
        SendError::Connect { why, parts } => AttemptFailed {
            failure: Failure {
                kind: if why.is_handshake() {
                    FailureKind::Handshake
                } else {
                    FailureKind::Connect
                },
                retry: Retry::Unsent,
            },
            error: UpstreamError::Connect(why.to_string()),
            body,
            parts: Some(parts),
        },
        SendError::Failed(Failed {
            error,
            reused,
            responded,
            parts,
        }) => {
            let failure = match (responded, reused) {
                (true, _) => Failure::never(FailureKind::Malformed),
                (false, true) => Failure {
                    kind: FailureKind::Stale,
                    retry: Retry::Reconnect,
                },
                (false, false) => Failure {
                    kind: FailureKind::Reset,
                    retry: Retry::Replayable,
                },
            };
            AttemptFailed {
                error: UpstreamError::Failed(error_chain(&error)),
                failure,
                body,
                parts: Some(parts),
            }
        }
    }
}

/// Joins an HTTP/2 request's `cookie` fields into one, as RFC 9113 section
/// 8.2.3 asks before a request goes on over HTTP/1.1 (where a second
/// `Cookie` line is not allowed).
fn join_cookies(headers: &mut http::HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    let (Some(_), Some(_)) = (values.next(), values.next()) else {
        return;
    };
    let mut joined: Vec<u8> = Vec::new();
    for value in headers.get_all(header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(value.as_bytes());
    }
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, value);
    }
}

fn content_length(parts: &Parts) -> Option<u64> {
    parts
        .headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn with_bucket_cookie(
    mut response: Response<ProxyBody>,
    bucket: Option<u8>,
    name: &str,
) -> Response<ProxyBody> {
    if let Some(bucket) = bucket
        && let Ok(value) = HeaderValue::from_str(&format!(
            "{name}={bucket}; Path=/; Max-Age=2592000; HttpOnly; SameSite=Lax"
        ))
    {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

/// Whether the request's transfer codings are none or `chunked` alone. hyper
/// refuses a body whose last coding is not `chunked`; a coding before it
/// would be lost when the body is re-framed for the upstream, so such a
/// request is refused rather than passed on altered.
fn plain_chunked(headers: &http::HeaderMap) -> bool {
    let mut codings = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| list_items(v.as_bytes()));
    match (codings.next(), codings.next()) {
        (None, _) => true,
        (Some(only), None) => only.eq_ignore_ascii_case(b"chunked"),
        (Some(_), Some(_)) => false,
    }
}

/// The host the client addressed. At most one `Host` header, and a valid
/// one; then the authority of an absolute-form target (`GET
/// http://shop.example/ HTTP/1.1`), which wins over `Host` (RFC 9112 section
/// 3.2.2), or the `Host` header, or the HTTP/2 `:authority`. An HTTP/1.1
/// request without `Host` is refused whatever its target (section 3.2), as
/// is anything ambiguous.
fn request_host(req: &Request<Incoming>) -> Result<HeaderValue, UpstreamError> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let header = match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => {
            return Err(UpstreamError::BadRequest(
                "400 bad request: more than one Host header\n",
            ));
        }
        (header, _) => header,
    };
    if let Some(h) = header
        && !valid_host(h.as_bytes())
    {
        return Err(UpstreamError::BadRequest(
            "400 bad request: malformed Host header\n",
        ));
    }
    match (req.uri().authority(), header) {
        (Some(target), Some(_)) if absolute_form(req) => authority_host(target),
        (_, Some(h)) => Ok(h.clone()),
        (Some(target), None) if req.version() != Version::HTTP_11 => authority_host(target),
        _ => Err(UpstreamError::BadRequest(
            "400 bad request: missing Host header\n",
        )),
    }
}

/// A target's authority as a `Host` value, if it is a valid one (no userinfo).
fn authority_host(authority: &http::uri::Authority) -> Result<HeaderValue, UpstreamError> {
    HeaderValue::from_str(authority.as_str())
        .ok()
        .filter(|host| valid_host(host.as_bytes()))
        .ok_or(UpstreamError::BadRequest(
            "400 bad request: malformed authority\n",
        ))
}

/// Whether an HTTP/1 request's target is in absolute form: then its
/// authority, not the `Host` header, names the host. (An HTTP/2 request
/// always carries one, in `:authority`.)
fn absolute_form(req: &Request<Incoming>) -> bool {
    req.version() != Version::HTTP_2 && req.uri().authority().is_some()
}

/// Whether `host` is `host [ ":" port ]` as RFC 9110 allows in `Host`: a
/// registered name or an IPv4 address, or an IPv6 address in brackets, then
/// an optional port of 1 to 5 digits no larger than 65535. No userinfo, no
/// path, no named port. Checked on the bytes, once per request: parsing an
/// `Authority` would copy the header for nothing.
fn valid_host(host: &[u8]) -> bool {
    let (name, port) = if let Some(rest) = host.strip_prefix(b"[") {
        let Some(close) = rest.iter().position(|&b| b == b']') else {
            return false;
        };
        let literal = std::str::from_utf8(&rest[..close]).ok();
        if literal
            .and_then(|l| l.parse::<std::net::Ipv6Addr>().ok())
            .is_none()
        {
            return false;
        }
        (&[][..], &rest[close + 1..])
    } else {
        let end = host.iter().position(|&b| b == b':').unwrap_or(host.len());
        let name = &host[..end];
        if name.is_empty() {
            return false;
        }
        (name, &host[end..])
    };
    // RFC 3986 reg-name: unreserved, percent-encoded and sub-delimiters.
    let name_ok = name
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=".contains(&b));
    let port_ok = match port {
        [] => true,
        [b':', digits @ ..] => {
            (1..=5).contains(&digits.len())
                && digits.iter().all(u8::is_ascii_digit)
                && digits
                    .iter()
                    .fold(0u32, |n, d| n * 10 + u32::from(d - b'0'))
                    <= 65_535
        }
        _ => false,
    };
    name_ok && port_ok
}

pub fn local_error(e: &UpstreamError, request_id: Option<HeaderValue>) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::local(e.public_text()));
    *response.status_mut() = e.status_code();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if e.status_code() == StatusCode::PAYLOAD_TOO_LARGE
        || e.status_code() == StatusCode::REQUEST_TIMEOUT
    {
        // The rest of the client's body is unread: the connection cannot be reused.
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if let Some(id) = request_id {
        response.headers_mut().insert(&X_REQUEST_ID, id);
    }
    response
}

/// The error and its causes on one line, for the log.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::valid_host;

    #[test]
    fn hosts_with_an_optional_port_pass() {
        for host in [
            "shop.example",
            "shop.example:8080",
            "localhost:1",
            "127.0.0.1:65535",
            "[::1]",
            "[2001:db8::7]:443",
            "xn--bcher-kva.example",
            "under_score.example",
        ] {
            assert!(valid_host(host.as_bytes()), "{host} refused");
        }
    }

    #[test]
    fn anything_else_is_refused() {
        for host in [
            "",
            ":80",
            "shop example",
            "user@evil.example",
            "shop.example/admin",
            "shop.example:80:81",
            "shop.example:http",
            "shop.example:",
            "shop.example:99999",
            "shop.example:123456",
            "[::1",
            "[::1]x",
            "[::1]:",
            "[not-an-address]",
            "shop.example?q",
            "shop.example#f",
            "shöp.example",
        ] {
            assert!(!valid_host(host.as_bytes()), "{host:?} passed");
        }
    }
}
