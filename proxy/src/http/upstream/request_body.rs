//! The client's request body on its way to an upstream: read as the upstream
//! connection writes it, bounded in size and time, and kept (by reference)
//! while it may still be sent again. What the reader learned (refused, timed
//! out, the client's fault) is shared with the forwarder through
//! `BodyShared`. A body dropped before any of it was read goes back to be
//! sent again whole; one dropped part-way (the upstream answered or failed
//! first) is read to its end and discarded, within its limits, as nginx
//! discards it, so that the client reads its answer rather than a reset.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// What the request body's reader learned, shared with the forwarder so it
/// can tell a refused body from a failed upstream, and get the body back to
/// send it to the other slot.
#[derive(Default)]
pub struct BodyShared {
    /// The client's body until the upstream connection first reads it (or
    /// until it gives it back unread). Here after a failure means nothing of
    /// it was sent.
    pending: std::sync::Mutex<Option<Incoming>>,
    /// Copies (reference-counted, not copied bytes) of the chunks sent so
    /// far, kept only while a replay is allowed and under the retain limit.
    retained: std::sync::Mutex<Option<Vec<Bytes>>>,
    complete: std::sync::atomic::AtomicBool,
    too_large: std::sync::atomic::AtomicBool,
    timed_out: std::sync::atomic::AtomicBool,
    /// The client's body could not be read (malformed chunks, a connection
    /// closed mid-body): the client's fault, never the upstream's.
    client_failed: std::sync::atomic::AtomicBool,
}

/// A request body that can be sent again.
pub enum Resend {
    /// Never read: nothing of it reached the upstream.
    Unsent(Incoming),
    /// Read to the end and kept: the whole body, to send again.
    Replay(Vec<Bytes>),
}

impl BodyShared {
    fn take_pending(&self) -> Option<Incoming> {
        self.pending
            .lock()
            .expect("body lock is never poisoned")
            .take()
    }

    /// The body to send again, if it can be: unread, or read whole and kept.
    pub fn take_for_resend(&self) -> Option<Resend> {
        if let Some(body) = self.take_pending() {
            return Some(Resend::Unsent(body));
        }
        if !self.complete.load(std::sync::atomic::Ordering::Acquire) {
            return None;
        }
        self.retained
            .lock()
            .expect("body lock is never poisoned")
            .take()
            .map(Resend::Replay)
    }

    pub fn too_large(&self) -> bool {
        self.too_large.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn timed_out(&self) -> bool {
        self.timed_out.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn client_failed(&self) -> bool {
        self.client_failed
            .load(std::sync::atomic::Ordering::Relaxed)
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

/// Where a request body's bytes come from.
enum Source {
    /// Not yet taken from `BodyShared::pending`.
    Pending,
    Client(Incoming),
    Replay(std::collections::VecDeque<Bytes>),
}

/// The request body sent upstream: streams the client's body, enforcing the
/// size limit and the deadline for receiving it, and keeping what it sent
/// when a replay may be needed.
pub struct RequestBody {
    shared: std::sync::Arc<BodyShared>,
    source: Source,
    received: u64,
    limit: u64,
    /// Bytes kept for a replay at most; 0 keeps nothing.
    retain: u64,
    timeout: std::time::Duration,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// A frame of the client's body has been handed to the upstream
    /// connection.
    yielded: bool,
}

/// Limits of one request body.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    pub max_bytes: u64,
    pub timeout: std::time::Duration,
    /// Keep up to this many bytes for a replay (0: never replay).
    pub retain: u64,
}

impl RequestBody {
    pub fn new(resend: Resend, limits: BodyLimits) -> (RequestBody, std::sync::Arc<BodyShared>) {
        let (pending, source, retained, complete) = match resend {
            Resend::Unsent(body) => (
                Some(body),
                Source::Pending,
                (limits.retain > 0).then(Vec::new),
                false,
            ),
            // Whole from the start, and kept whole (reference counts, not
            // copies) for a further resend, whether or not it is sent.
            Resend::Replay(chunks) => (
                None,
                Source::Replay(chunks.iter().cloned().collect()),
                Some(chunks),
                true,
            ),
        };
        let shared = std::sync::Arc::new(BodyShared {
            pending: std::sync::Mutex::new(pending),
            retained: std::sync::Mutex::new(retained),
            complete: std::sync::atomic::AtomicBool::new(complete),
            ..BodyShared::default()
        });
        let body = RequestBody {
            shared: std::sync::Arc::clone(&shared),
            source,
            received: 0,
            limit: limits.max_bytes,
            retain: limits.retain,
            timeout: limits.timeout,
            deadline: None,
            yielded: false,
        };
        (body, shared)
    }

    fn keep(&self, data: &Bytes) {
        if self.retain == 0 {
            return;
        }
        let mut retained = self
            .shared
            .retained
            .lock()
            .expect("body lock is never poisoned");
        if self.received > self.retain {
            *retained = None;
        } else if let Some(chunks) = retained.as_mut() {
            chunks.push(data.clone());
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
        if matches!(this.source, Source::Pending) {
            match this.shared.take_pending() {
                Some(body) => this.source = Source::Client(body),
                None => return Poll::Ready(None),
            }
        }
        let body = match &mut this.source {
            Source::Replay(chunks) => {
                return Poll::Ready(chunks.pop_front().map(|data| Ok(Frame::data(data))));
            }
            Source::Client(body) => body,
            Source::Pending => unreachable!("taken above"),
        };
        let deadline = this
            .deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(this.timeout)));
        if deadline.as_mut().poll(cx).is_ready() {
            this.shared.timed_out.store(true, Ordering::Relaxed);
            return Poll::Ready(Some(Err(RequestBodyError::TimedOut)));
        }
        match Pin::new(&mut *body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                // hyper stops polling a body once it says it has ended (a
                // Content-Length body after its last byte): then this frame
                // is the last one read.
                let ended = body.is_end_stream();
                if let Some(data) = frame.data_ref() {
                    this.received += data.len() as u64;
                    if this.received > this.limit {
                        this.shared.too_large.store(true, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(RequestBodyError::TooLarge(this.limit))));
                    }
                    this.keep(data);
                }
                if ended {
                    this.shared.complete.store(true, Ordering::Release);
                }
                this.yielded = true;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.shared.client_failed.store(true, Ordering::Relaxed);
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                this.shared.complete.store(true, Ordering::Release);
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::Pending => self
                .shared
                .pending
                .lock()
                .expect("body lock is never poisoned")
                .as_ref()
                .is_none_or(Body::is_end_stream),
            Source::Client(body) => body.is_end_stream(),
            Source::Replay(chunks) => chunks.is_empty(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Pending => self
                .shared
                .pending
                .lock()
                .expect("body lock is never poisoned")
                .as_ref()
                .map_or_else(|| SizeHint::with_exact(0), Body::size_hint),
            Source::Client(body) => body.size_hint(),
            Source::Replay(chunks) => {
                SizeHint::with_exact(chunks.iter().map(|c| c.len() as u64).sum())
            }
        }
    }
}

impl Drop for RequestBody {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering;
        let Source::Client(body) = std::mem::replace(&mut self.source, Source::Pending) else {
            return;
        };
        if !self.yielded {
            // Nothing of it reached the upstream: it can be sent again whole.
            *self
                .shared
                .pending
                .lock()
                .expect("body lock is never poisoned") = Some(body);
            return;
        }
        let shared = &self.shared;
        if body.is_end_stream()
            || shared.complete.load(Ordering::Acquire)
            || shared.too_large()
            || shared.timed_out()
            || shared.client_failed()
        {
            return;
        }
        let left = self.limit.saturating_sub(self.received);
        let deadline = self
            .deadline
            .take()
            .unwrap_or_else(|| Box::pin(tokio::time::sleep(self.timeout)));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(discard(body, left, deadline));
        }
    }
}

/// Reads the rest of a client's body and drops it: at most `left` bytes,
/// until `deadline`.
async fn discard(mut body: Incoming, left: u64, deadline: Pin<Box<tokio::time::Sleep>>) {
    use http_body_util::BodyExt as _;
    let read = async {
        let mut left = left;
        while let Some(Ok(frame)) = body.frame().await {
            let n = frame.data_ref().map_or(0, |data| data.len() as u64);
            match left.checked_sub(n) {
                Some(rest) => left = rest,
                None => return,
            }
        }
    };
    tokio::select! {
        () = read => {}
        () = deadline => {}
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt as _;

    use super::*;

    fn limits() -> BodyLimits {
        BodyLimits {
            max_bytes: u64::MAX,
            timeout: std::time::Duration::from_secs(5),
            retain: 1024,
        }
    }

    #[tokio::test]
    async fn a_replayed_body_can_be_had_back_whole_sent_or_not() {
        let chunks = vec![Bytes::from_static(b"pay"), Bytes::from_static(b"load")];
        // Never sent: the connection was refused before it was read.
        let (unsent, shared) = RequestBody::new(Resend::Replay(chunks.clone()), limits());
        drop(unsent);
        assert!(matches!(shared.take_for_resend(), Some(Resend::Replay(again)) if again == chunks));
        // Sent whole.
        let (sent, shared) = RequestBody::new(Resend::Replay(chunks.clone()), limits());
        let read = sent.collect().await.expect("a body").to_bytes();
        assert_eq!(&read[..], b"payload");
        assert!(matches!(shared.take_for_resend(), Some(Resend::Replay(again)) if again == chunks));
    }
}
