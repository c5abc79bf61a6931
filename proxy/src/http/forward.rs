//! The request path of the public listener: load the routing snapshot once,
//! pick the slot, rewrite the headers, send through the slot's pooled
//! client, and stream the answer back; retry once on the other slot when
//! that is safe, and send a failed request of the release the guard watches
//! (a canary, a new active slot in its bake) once to the stable one, which
//! answers the user. Nothing here blocks or buffers a body.

use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;

use crate::control::health::Monitor;
use crate::error::UpstreamError;
use crate::http::body::ProxyBody;
use crate::http::deadline::{Alarm, Deadlines, Waited};
use crate::http::headers::{ClientAddr, Seen, X_REQUEST_ID, list_items, rewrite_request};
use crate::http::https::{self, Transport};
use crate::http::routing::{Policy, Router};
use crate::http::traffic::{FailureKind, Outcome, Traffic};
use crate::http::upstream::request_body::{BodyLimits, BodyShared, RequestBody, Resend};
use crate::http::upstream::{InFlight, ResponseBody, SendError, Upstream};
use crate::metrics::Metrics;

/// Bytes of a request body kept for a replay on the other slot; a larger
/// body is streamed without a copy and never replayed.
const REPLAY_LIMIT: u64 = 64 * 1024;

pub struct Forwarder {
    router: Arc<Router>,
    traffic: Arc<Traffic>,
    metrics: Arc<Metrics>,
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
/// there is none and whether the request may go to the other slot.
enum Attempt {
    Answered(Response<ResponseBody>, InFlight),
    /// A 5xx of the watched release that may be sent to the stable one:
    /// nothing of it has passed to the client, and its request body is
    /// here to send again.
    ServerError(Response<ResponseBody>, InFlight, Resend),
    Failed {
        error: UpstreamError,
        kind: Option<FailureKind>,
        body: Option<Resend>,
    },
}

impl Forwarder {
    pub fn new(
        router: Arc<Router>,
        traffic: Arc<Traffic>,
        metrics: Arc<Metrics>,
        monitor: Arc<Monitor>,
    ) -> Forwarder {
        Forwarder {
            router,
            traffic,
            metrics,
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
        let upstream = snap.upstream(route.slot);
        let other = route.slot.other();
        let policy = &*snap.policy;
        // The release the guard watches is judged by its own answers, but a
        // user gets the stable release's when it fails.
        let answer_for = policy.answer_from_stable
            && self.traffic.watched() == Some(route.slot)
            && snap.can_take_over(other);
        let alternate = ((policy.retry || answer_for) && snap.can_take_over(other))
            .then(|| snap.upstream(other));
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
        parts.version = Version::HTTP_11;
        // Kept only when a retry is possible: the attempt consumes `parts`.
        let retry_parts = alternate.as_ref().map(|_| parts.clone());
        let can_retry = retry_parts.is_some();
        let replay_safe = parts.method.is_idempotent() || policy.retry_writes;
        let answer_5xx = answer_for && can_retry && replay_safe;

        let (result, answered_by) = match self
            .attempt(
                upstream,
                parts,
                Resend::Unsent(body),
                policy,
                Resending {
                    may: can_retry,
                    server_error: answer_5xx,
                },
                Clock {
                    alarm,
                    began: started,
                },
            )
            .await
        {
            Attempt::Answered(response, in_flight) => (Ok((response, in_flight)), upstream),
            Attempt::ServerError(response, in_flight, body) => match (alternate, retry_parts) {
                (Some(other), Some(parts)) => {
                    let status = response.status().as_u16();
                    // Its answer is dropped unread: the user gets the stable one's.
                    drop((response, in_flight));
                    self.charge_watched(upstream.slot, Outcome::Answered(status), started);
                    tracing::info!(from = %upstream.slot, to = %other.slot, status, "the stable release answers for the watched one");
                    Box::pin(self.answer_for(other, parts, body, policy, alarm)).await
                }
                _ => (Ok((response, in_flight)), upstream),
            },
            Attempt::Failed { error, kind, body } => {
                self.record_failure(upstream, kind, &error);
                match (alternate, retry_parts, body) {
                    (Some(other), Some(parts), Some(body))
                        if answer_for && replay_safe_or_unsent(replay_safe, &error) =>
                    {
                        if let Some(kind) = kind {
                            self.charge_watched(upstream.slot, Outcome::Failed(kind), started);
                        }
                        tracing::info!(from = %upstream.slot, to = %other.slot, error = %error, "the stable release answers for the watched one");
                        Box::pin(self.answer_for(other, parts, body, policy, alarm)).await
                    }
                    (Some(other), Some(parts), Some(body))
                        if policy.retry && may_retry(&parts.method, &error, policy) =>
                    {
                        tracing::info!(from = %upstream.slot, to = %other.slot, error = %error, "retrying on the other slot");
                        self.metrics.retried();
                        // Boxed: inline, the rare retry's state would make every
                        // request's future larger, and hyper moves that into place
                        // for each request.
                        let retry = self.attempt(
                            other,
                            parts,
                            body,
                            policy,
                            Resending::NEVER,
                            Clock {
                                alarm,
                                began: Instant::now(),
                            },
                        );
                        match Box::pin(retry).await {
                            Attempt::Answered(response, in_flight)
                            | Attempt::ServerError(response, in_flight, _) => {
                                (Ok((response, in_flight)), other)
                            }
                            Attempt::Failed { error, kind, .. } => {
                                self.record_failure(other, kind, &error);
                                (Err((error, kind)), other)
                            }
                        }
                    }
                    _ => (Err((error, kind)), upstream),
                }
            }
        };
        let finished = Instant::now();
        let latency = finished.saturating_duration_since(started);
        let slot = answered_by.slot;
        let answer = match result {
            Ok((response, in_flight)) => {
                let (mut parts, body) = response.into_parts();
                let outcome = Outcome::Answered(parts.status.as_u16());
                if self.traffic.record(slot, outcome, latency, finished) {
                    self.metrics.watched_failure();
                }
                self.metrics.record(slot, outcome, latency.as_secs_f64());
                // The upstream client's parser kept the hop-by-hop headers out of the map.
                parts.headers.insert(&X_REQUEST_ID, request_id);
                Response::from_parts(parts, ProxyBody::upstream(body, in_flight))
            }
            Err((error, kind)) => {
                // A refused client body is the client's doing: not an upstream failure.
                if let Some(kind) = kind {
                    if self
                        .traffic
                        .record(slot, Outcome::Failed(kind), latency, finished)
                    {
                        self.metrics.watched_failure();
                    }
                    self.metrics
                        .record(slot, Outcome::Failed(kind), latency.as_secs_f64());
                }
                local_error(&error, Some(request_id))
            }
        };
        let answer = with_bucket_cookie(answer, route.new_bucket, &policy.canary.cookie);
        https::with_hsts(answer, conn.transport, https)
    }

    /// Charges the watched slot with a failed attempt the user does not
    /// see: the guard judges it all the same. Counted as the watched
    /// release's failure even when the guard stopped watching meanwhile:
    /// the request went to it while watched, and the stable release's
    /// answer is counted too.
    fn charge_watched(&self, slot: crate::slot::Slot, outcome: Outcome, started: Instant) {
        let now = Instant::now();
        self.traffic
            .charge(slot, outcome, now.saturating_duration_since(started), now);
        self.metrics.watched_failure();
    }

    /// Sends a failed request of the watched release once to the stable
    /// one, `stable`; whatever it answers (a 5xx too) is the user's answer.
    async fn answer_for<'a>(
        &self,
        stable: &'a Arc<Upstream>,
        parts: Parts,
        body: Resend,
        policy: &Policy,
        alarm: &Alarm,
    ) -> (
        Result<(Response<ResponseBody>, InFlight), (UpstreamError, Option<FailureKind>)>,
        &'a Arc<Upstream>,
    ) {
        self.metrics.retried();
        let clock = Clock {
            alarm,
            began: Instant::now(),
        };
        match self
            .attempt(stable, parts, body, policy, Resending::NEVER, clock)
            .await
        {
            Attempt::Answered(response, in_flight)
            | Attempt::ServerError(response, in_flight, _) => {
                self.metrics.answered_by_stable();
                self.traffic.answered_by_stable(stable.slot.other());
                (Ok((response, in_flight)), stable)
            }
            Attempt::Failed { error, kind, .. } => {
                self.record_failure(stable, kind, &error);
                (Err((error, kind)), stable)
            }
        }
    }

    async fn attempt(
        &self,
        upstream: &Arc<Upstream>,
        parts: Parts,
        body: Resend,
        policy: &Policy,
        resending: Resending,
        clock: Clock<'_>,
    ) -> Attempt {
        let may_resend = resending.may;
        let limits = BodyLimits {
            max_bytes: policy.max_body_bytes,
            timeout: policy.body_timeout,
            // Kept whenever `may_retry` could resend it after a reset: an
            // idempotent request (a PUT has a body too), or any with retry_writes.
            retain: if may_resend && (policy.retry_writes || parts.method.is_idempotent()) {
                REPLAY_LIMIT
            } else {
                0
            },
        };
        let (body, shared) = RequestBody::new(body, limits);
        let in_flight = upstream.start_request();
        let send = std::pin::pin!(upstream.send(Request::from_parts(parts, body), clock.began));
        let sent = self
            .deadlines
            .within(
                clock.alarm,
                tokio::time::Instant::from_std(clock.began),
                policy.response_timeout,
                send,
            )
            .await;
        match sent {
            Waited::Done(Ok(response)) => {
                upstream.passive_success();
                if resending.server_error
                    && response.status().is_server_error()
                    && let Some(body) = shared.take_for_resend()
                {
                    return Attempt::ServerError(response, in_flight, body);
                }
                Attempt::Answered(response, in_flight)
            }
            Waited::Done(Err(e)) => classify(&e, &shared),
            // The send was dropped: the body, if whole, may go elsewhere.
            Waited::TimedOut => Attempt::Failed {
                error: UpstreamError::Timeout,
                kind: Some(FailureKind::Timeout),
                body: if may_resend {
                    shared.take_for_resend()
                } else {
                    None
                },
            },
            Waited::Cut => Attempt::Failed {
                error: UpstreamError::ShuttingDown,
                kind: None,
                body: None,
            },
        }
    }

    fn record_failure(
        &self,
        upstream: &Upstream,
        kind: Option<FailureKind>,
        error: &UpstreamError,
    ) {
        tracing::warn!(slot = %upstream.slot, upstream = %upstream.addr, error = %error, "upstream failed");
        if matches!(kind, Some(FailureKind::Connect | FailureKind::Reset)) {
            self.metrics
                .upstream_failure(upstream.slot, kind.expect("matched above"));
            let consecutive = upstream.passive_failure();
            self.monitor.passive_failure(
                upstream.slot,
                upstream.addr,
                consecutive,
                &error.to_string(),
            );
        }
    }
}

/// Sorts a client error: a refused connection never reached the upstream
/// (the body is still unread, safe to resend anywhere); a reset before any
/// answer is retried for idempotent methods only; a refused or unreadable
/// client body is the client's fault, not the upstream's.
fn classify(e: &SendError, shared: &BodyShared) -> Attempt {
    if shared.too_large() {
        return Attempt::Failed {
            error: UpstreamError::TooLarge,
            kind: None,
            body: None,
        };
    }
    if shared.timed_out() {
        return Attempt::Failed {
            error: UpstreamError::BodyTimeout,
            kind: None,
            body: None,
        };
    }
    if shared.client_failed() {
        return Attempt::Failed {
            error: UpstreamError::BadRequest("400 bad request: malformed request body\n"),
            kind: None,
            body: None,
        };
    }
    let body = shared.take_for_resend();
    match e {
        SendError::Connect(why) => Attempt::Failed {
            error: UpstreamError::Connect(why.clone()),
            kind: Some(FailureKind::Connect),
            body,
        },
        SendError::Failed(e) => Attempt::Failed {
            error: UpstreamError::Failed(error_chain(e)),
            kind: Some(FailureKind::Reset),
            body,
        },
    }
}

/// What an attempt may leave to send again.
#[derive(Clone, Copy)]
struct Resending {
    /// Its body is kept (within `REPLAY_LIMIT`) for a resend.
    may: bool,
    /// A 5xx is not answered but handed back with the body to send again.
    server_error: bool,
}

impl Resending {
    const NEVER: Resending = Resending {
        may: false,
        server_error: false,
    };
}

/// Whether a failed attempt of the watched release may go to the stable
/// one: a refused connection never reached it; after a reset or a timeout
/// the release may have acted on the request, so only a replay-safe one.
fn replay_safe_or_unsent(replay_safe: bool, error: &UpstreamError) -> bool {
    match error {
        UpstreamError::Connect(_) => true,
        UpstreamError::Failed(_) | UpstreamError::Timeout => replay_safe,
        _ => false,
    }
}

fn may_retry(method: &Method, error: &UpstreamError, policy: &Policy) -> bool {
    match error {
        UpstreamError::Connect(_) => true,
        UpstreamError::Failed(_) => method.is_idempotent() || policy.retry_writes,
        _ => false,
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
