//! The response body type of the public listener: an upstream's body
//! streamed through untouched, or a short body the proxy wrote itself. An
//! enum rather than a boxed trait object, so no allocation per response.
//! An upstream's body counts its request's outcome when it ends: answered
//! when it ends whole (or the client stops reading it), failed by the
//! upstream when it breaks off part-way.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;

use crate::http::outcome::{FailureKind, Outcome};
use crate::http::tally::Tally;
use crate::http::upstream::{InFlight, ResponseBody, ResponseBodyError};

pub enum ProxyBody {
    /// Streams the upstream's body; the request counts as in flight until
    /// this is finished or dropped. The connection goes back to its pool
    /// as soon as the body has been read to its end, and is closed when the
    /// body is dropped before that (HTTP/1.1 cannot reuse a connection with
    /// a response half read).
    Upstream {
        body: ResponseBody,
        in_flight: InFlight,
        outcome: PendingOutcome,
    },
    Local(Full<Bytes>),
}

/// A request's outcome, counted once (`tally` taken) when its response
/// body ends, fails, or is dropped.
pub struct PendingOutcome {
    tally: Option<Arc<Tally>>,
    status: u16,
    /// Time to the response head.
    latency: Duration,
    /// When the head came: the outcome's second, unless the body fails.
    at: Instant,
}

impl PendingOutcome {
    pub fn new(tally: Arc<Tally>, status: u16, latency: Duration, at: Instant) -> PendingOutcome {
        PendingOutcome {
            tally: Some(tally),
            status,
            latency,
            at,
        }
    }

    fn answered(&mut self, in_flight: &InFlight) {
        if let Some(tally) = self.tally.take() {
            let slot = in_flight.upstream().slot;
            tally.request(slot, Outcome::Answered(self.status), self.latency, self.at);
        }
    }

    fn failed(&mut self, in_flight: &InFlight, error: &ResponseBodyError) {
        if let Some(tally) = self.tally.take() {
            let upstream = in_flight.upstream();
            let kind = match error {
                ResponseBodyError::Stalled(_) => FailureKind::Stalled,
                ResponseBodyError::Read(_)
                | ResponseBodyError::Truncated
                | ResponseBodyError::Decode(_) => FailureKind::Body,
            };
            tracing::warn!(slot = %upstream.slot, upstream = %upstream.addr, status = self.status, %error, "the response body broke off");
            tally
                .metrics
                .upstream_failure(upstream.slot, upstream.addr, kind);
            tally.request(
                upstream.slot,
                Outcome::Failed(kind),
                self.latency,
                Instant::now(),
            );
        }
    }
}

fn release(body: &mut ResponseBody, in_flight: &InFlight) {
    if let Some(conn) = body.take_reusable() {
        in_flight.upstream().checkin(conn);
    }
}

impl ProxyBody {
    pub fn upstream(
        mut body: ResponseBody,
        in_flight: InFlight,
        mut outcome: PendingOutcome,
    ) -> ProxyBody {
        // No body (HEAD, 204, 304, length 0): nothing will poll it.
        release(&mut body, &in_flight);
        if body.is_end_stream() {
            outcome.answered(&in_flight);
        }
        ProxyBody::Upstream {
            body,
            in_flight,
            outcome,
        }
    }

    pub fn local(text: impl Into<Bytes>) -> ProxyBody {
        ProxyBody::Local(Full::new(text.into()))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = ResponseBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ResponseBodyError>>> {
        match self.get_mut() {
            ProxyBody::Upstream {
                body,
                in_flight,
                outcome,
            } => {
                let polled = Pin::new(&mut *body).poll_frame(cx);
                match &polled {
                    // The server stops polling once `is_end_stream` says so.
                    Poll::Ready(Some(Ok(_))) => {
                        release(body, in_flight);
                        if body.is_end_stream() {
                            outcome.answered(in_flight);
                        }
                    }
                    Poll::Ready(None) => {
                        release(body, in_flight);
                        outcome.answered(in_flight);
                    }
                    Poll::Ready(Some(Err(e))) => outcome.failed(in_flight, e),
                    Poll::Pending => {}
                }
                polled
            }
            ProxyBody::Local(full) => Pin::new(full)
                .poll_frame(cx)
                .map_err(|never| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream { body, .. } => body.is_end_stream(),
            ProxyBody::Local(full) => full.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream { body, .. } => body.size_hint(),
            ProxyBody::Local(full) => full.size_hint(),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        // Dropped before its end: the client went away or stopped reading.
        // What the upstream sent so far was fine; the rest is not its doing.
        if let ProxyBody::Upstream {
            in_flight, outcome, ..
        } = self
        {
            outcome.answered(in_flight);
        }
    }
}
