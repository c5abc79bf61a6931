//! One upstream: a slot's address and its own pool of keep-alive
//! connections, plus the count of requests in flight on it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use http::Uri;
use http::uri::{Authority, PathAndQuery, Scheme};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::RequestBody;
use crate::config::Timeouts;
use crate::slot::Slot;

/// The pooled client of one upstream. A new address gets a new `Upstream`
/// (and so a new pool); requests in flight keep the old one alive through
/// their `Arc` until they finish.
pub struct Upstream {
    pub slot: Slot,
    pub addr: SocketAddr,
    authority: Authority,
    client: Client<HttpConnector, RequestBody>,
    /// Requests sent and not yet finished (the response body streamed to the
    /// end or dropped). Written only through `InFlight`.
    in_flight: AtomicUsize,
    /// Connect failures and resets on user requests since the last success;
    /// written by the forwarder, for passive down-marking.
    passive_failures: AtomicU32,
}

impl Upstream {
    pub fn new(slot: Slot, addr: SocketAddr, timeouts: &Timeouts) -> Arc<Upstream> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(timeouts.connect));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(timeouts.upstream_idle)
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_max_idle_per_host(1024)
            .build(connector);
        let authority = Authority::try_from(addr.to_string().as_str())
            .expect("a socket address is a valid authority");
        Arc::new(Upstream {
            slot,
            addr,
            authority,
            client,
            in_flight: AtomicUsize::new(0),
            passive_failures: AtomicU32::new(0),
        })
    }

    pub fn client(&self) -> &Client<HttpConnector, RequestBody> {
        &self.client
    }

    /// The absolute URI the pooled client needs to pick the connection; it
    /// still sends the origin form (`/path?query`) on the wire.
    pub fn uri_for(&self, path_and_query: Option<&PathAndQuery>) -> Uri {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(
            path_and_query
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        );
        Uri::from_parts(parts).expect("scheme, authority and path make a valid URI")
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a connect failure or reset; returns the consecutive count.
    pub fn passive_failure(&self) -> u32 {
        self.passive_failures.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub fn passive_success(&self) {
        // A load first: the common case (no failures) then writes nothing,
        // so busy upstreams do not bounce a cache line between cores.
        if self.passive_failures.load(Ordering::Relaxed) != 0 {
            self.passive_failures.store(0, Ordering::Relaxed);
        }
    }

    pub fn start_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }
}

/// Counts one request in flight until dropped.
pub struct InFlight(Arc<Upstream>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
