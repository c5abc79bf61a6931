//! The request path of the public listener: load the routing snapshot once,
//! pick the upstream, rewrite the headers, send through the slot's pooled
//! client, and stream the answer back. Nothing here blocks or buffers a body.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderValue};
use http::{Request, Response, Version};
use hyper::body::Incoming;

use crate::body::ProxyBody;
use crate::error::UpstreamError;
use crate::headers::{X_REQUEST_ID, ensure_request_id, set_forwarded, strip_hop_by_hop};
use crate::routing::Router;

pub struct Forwarder {
    router: Arc<Router>,
    response_timeout: Duration,
}

impl Forwarder {
    pub fn new(router: Arc<Router>, response_timeout: Duration) -> Forwarder {
        Forwarder {
            router,
            response_timeout,
        }
    }

    /// Answers one user request; never fails, because every upstream
    /// problem becomes a short 502/504 answer.
    pub async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<ProxyBody> {
        let started = Instant::now();
        let host = match request_host(&req) {
            Ok(host) => host,
            Err(e) => return local_error(&e, None),
        };
        let (mut parts, body) = req.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        let request_id = ensure_request_id(&mut parts.headers);
        set_forwarded(
            &mut parts.headers,
            peer.ip(),
            Some(host.clone()),
            "http",
            true,
        );
        // HTTP/2 carries the host as `:authority`; the HTTP/1.1 upstream needs it as `Host`.
        parts.headers.entry(header::HOST).or_insert(host);

        // The only read of routing state for this request.
        let upstream = {
            let snapshot = self.router.load();
            Arc::clone(snapshot.upstream(snapshot.serving()))
        };
        parts.uri = upstream.uri_for(parts.uri.path_and_query());
        parts.version = Version::HTTP_11;
        let in_flight = upstream.start_request();
        let method = parts.method.clone();
        let sent = tokio::time::timeout(
            self.response_timeout,
            upstream.client().request(Request::from_parts(parts, body)),
        )
        .await;

        let result = match sent {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) if e.is_connect() => Err(UpstreamError::Connect(error_chain(&e))),
            Ok(Err(e)) => Err(UpstreamError::Failed(error_chain(&e))),
            Err(_) => Err(UpstreamError::Timeout),
        };
        match result {
            Ok(response) => {
                let (mut parts, body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                parts.headers.insert(&X_REQUEST_ID, request_id);
                tracing::debug!(
                    slot = %upstream.slot, %method, status = parts.status.as_u16(),
                    latency_ms = started.elapsed().as_millis() as u64, "forwarded"
                );
                Response::from_parts(
                    parts,
                    ProxyBody::Upstream {
                        body,
                        _in_flight: in_flight,
                    },
                )
            }
            Err(e) => {
                tracing::warn!(slot = %upstream.slot, upstream = %upstream.addr, %method, error = %e, "upstream failed");
                local_error(&e, Some(request_id))
            }
        }
    }
}

/// The host the client addressed: exactly one valid `Host` header, or the
/// HTTP/2 `:authority`. Anything else is ambiguous and refused.
fn request_host(req: &Request<Incoming>) -> Result<HeaderValue, UpstreamError> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => {
            return Err(UpstreamError::BadRequest(
                "400 bad request: more than one Host header\n",
            ));
        }
        (Some(h), None) => h.clone(),
        (None, _) => match req.uri().authority() {
            Some(a) if req.version() == Version::HTTP_2 => HeaderValue::from_str(a.as_str())
                .map_err(|_| UpstreamError::BadRequest("400 bad request: malformed authority\n"))?,
            _ => {
                return Err(UpstreamError::BadRequest(
                    "400 bad request: missing Host header\n",
                ));
            }
        },
    };
    let valid = host
        .to_str()
        .ok()
        .filter(|h| !h.is_empty())
        .and_then(|h| h.parse::<http::uri::Authority>().ok())
        .is_some_and(|a| a.as_str().find('@').is_none());
    if valid {
        Ok(host)
    } else {
        Err(UpstreamError::BadRequest(
            "400 bad request: malformed Host header\n",
        ))
    }
}

pub fn local_error(e: &UpstreamError, request_id: Option<HeaderValue>) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::local(e.public_text()));
    *response.status_mut() = e.status_code();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
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
