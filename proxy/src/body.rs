//! The response body type of the public listener: an upstream's body
//! streamed through untouched, or a short body the proxy wrote itself. An
//! enum rather than a boxed trait object, so no allocation per response.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;

use crate::upstream::InFlight;

pub enum ProxyBody {
    /// Streams the upstream's body; the request counts as in flight until
    /// this is finished or dropped.
    Upstream {
        body: Incoming,
        _in_flight: InFlight,
    },
    Local(Full<Bytes>),
}

impl ProxyBody {
    pub fn local(text: impl Into<Bytes>) -> ProxyBody {
        ProxyBody::Local(Full::new(text.into()))
    }

    pub fn empty() -> ProxyBody {
        ProxyBody::Local(Full::new(Bytes::new()))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Upstream { body, .. } => Pin::new(body).poll_frame(cx),
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

/// What the request body's reader learned, shared with the forwarder so it
/// can tell a refused body from a failed upstream, and take an unread body
/// back to send it to the other slot.
#[derive(Default)]
pub struct BodyShared {
    /// The client's body until the upstream connection first reads it.
    /// Still here after a failure means nothing of it was sent.
    pending: std::sync::Mutex<Option<Incoming>>,
    too_large: std::sync::atomic::AtomicBool,
    timed_out: std::sync::atomic::AtomicBool,
}

impl BodyShared {
    /// Takes the unread body back, for a retry.
    pub fn take_unsent(&self) -> Option<Incoming> {
        self.pending
            .lock()
            .expect("body lock is never poisoned")
            .take()
    }

    pub fn too_large(&self) -> bool {
        self.too_large.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn timed_out(&self) -> bool {
        self.timed_out.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Why the proxy stopped reading a request body.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    #[error("the request body is larger than {0} bytes")]
    TooLarge(u64),
    #[error("the request body did not arrive in time")]
    TimedOut,
    #[error(transparent)]
    Client(#[from] hyper::Error),
}

/// The request body sent upstream: streams the client's body, enforcing the
/// size limit and the deadline for receiving it.
pub struct RequestBody {
    shared: std::sync::Arc<BodyShared>,
    body: Option<Incoming>,
    received: u64,
    limit: u64,
    timeout: std::time::Duration,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl RequestBody {
    pub fn new(
        body: Incoming,
        limit: u64,
        timeout: std::time::Duration,
    ) -> (RequestBody, std::sync::Arc<BodyShared>) {
        let shared = std::sync::Arc::new(BodyShared {
            pending: std::sync::Mutex::new(Some(body)),
            ..BodyShared::default()
        });
        let body = RequestBody {
            shared: std::sync::Arc::clone(&shared),
            body: None,
            received: 0,
            limit,
            timeout,
            deadline: None,
        };
        (body, shared)
    }

    fn with_pending<T>(&self, f: impl FnOnce(Option<&Incoming>) -> T) -> T {
        match &self.body {
            Some(body) => f(Some(body)),
            None => f(self
                .shared
                .pending
                .lock()
                .expect("body lock is never poisoned")
                .as_ref()),
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        use std::sync::atomic::Ordering;
        let this = self.get_mut();
        if this.body.is_none() {
            match this.shared.take_unsent() {
                Some(body) => this.body = Some(body),
                None => return Poll::Ready(None),
            }
        }
        let deadline = this
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(this.timeout)));
        if deadline.as_mut().poll(cx).is_ready() {
            this.shared.timed_out.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err(RequestBodyError::TimedOut)));
        }
        let body = this.body.as_mut().expect("taken above");
        match Pin::new(body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received += data.len() as u64;
                    if this.received > this.limit {
                        this.shared.too_large.store(true, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(RequestBodyError::TooLarge(this.limit))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.with_pending(|b| b.is_none_or(Body::is_end_stream))
    }

    fn size_hint(&self) -> SizeHint {
        self.with_pending(|b| b.map_or_else(|| SizeHint::with_exact(0), Body::size_hint))
    }
}
