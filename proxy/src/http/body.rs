//! The response body type of the public listener: an upstream's body
//! streamed through untouched, or a short body the proxy wrote itself. An
//! enum rather than a boxed trait object, so no allocation per response.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;

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
    },
    Local(Full<Bytes>),
}

fn release(body: &mut ResponseBody, in_flight: &InFlight) {
    if let Some(conn) = body.take_reusable() {
        in_flight.upstream().checkin(conn);
    }
}

impl ProxyBody {
    pub fn upstream(mut body: ResponseBody, in_flight: InFlight) -> ProxyBody {
        // No body (HEAD, 204, 304, length 0): nothing will poll it.
        release(&mut body, &in_flight);
        ProxyBody::Upstream { body, in_flight }
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
            ProxyBody::Upstream { body, in_flight } => {
                let polled = Pin::new(&mut *body).poll_frame(cx);
                // The server stops polling once `is_end_stream` says so.
                if matches!(polled, Poll::Ready(None | Some(Ok(_)))) {
                    release(body, in_flight);
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
