//! How a user request ended, as data. Every attempt that fails says what
//! went wrong (`FailureKind`), who caused it (`Source`: the client, the
//! upstream or the proxy, as pingora's errors carry their source) and
//! whether the request may be sent again (`Retry`); every request ends in
//! one `Outcome`, which `tally` counts in the guard's windows and the totals
//! (`traffic`) and in the metrics. Those, and passive health, read these
//! and nothing else, so a client's fault never counts against a release.

/// Who caused a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The client: its body late, too large or malformed.
    Client,
    /// The upstream: no connection, no answer in time, a reset, a malformed
    /// or cut-short response.
    Upstream,
    /// The proxy itself: its shutdown's grace period ran out.
    Proxy,
}

/// What went wrong with an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// No connection could be opened.
    Connect,
    /// The TLS handshake with the upstream failed (its certificate did not
    /// verify, or TLS found nothing in common): nothing of the request was
    /// sent. It says how the slot is reached (its certificate, the proxy's
    /// trust), not how the release behaves.
    Handshake,
    /// No response head within the response timeout.
    Timeout,
    /// A new connection closed or reset before any response came back.
    Reset,
    /// A pooled connection closed or reset before any response came back:
    /// the upstream closed it while idle, as the request went out.
    Stale,
    /// The response head was malformed, cut short, or framed in a way the
    /// proxy refuses.
    Malformed,
    /// The response body failed part-way: cut short, reset or malformed.
    Body,
    /// The response body went `timeouts.upstream_read_ms` without a byte.
    Stalled,
    /// The client's body did not arrive within `limits.body_timeout_ms`.
    ClientTimeout,
    /// The client's body was larger than `limits.max_body_bytes`.
    TooLarge,
    /// The client's body could not be read (malformed, or cut short).
    ClientBody,
    /// The shutdown's grace period ended while the request waited.
    ShuttingDown,
}

impl FailureKind {
    /// Every kind, for the metrics' label sets.
    pub const ALL: [FailureKind; 12] = [
        FailureKind::Connect,
        FailureKind::Handshake,
        FailureKind::Timeout,
        FailureKind::Reset,
        FailureKind::Stale,
        FailureKind::Malformed,
        FailureKind::Body,
        FailureKind::Stalled,
        FailureKind::ClientTimeout,
        FailureKind::TooLarge,
        FailureKind::ClientBody,
        FailureKind::ShuttingDown,
    ];

    pub fn source(self) -> Source {
        match self {
            FailureKind::Connect
            | FailureKind::Handshake
            | FailureKind::Timeout
            | FailureKind::Reset
            | FailureKind::Stale
            | FailureKind::Malformed
            | FailureKind::Body
            | FailureKind::Stalled => Source::Upstream,
            FailureKind::ClientTimeout | FailureKind::TooLarge | FailureKind::ClientBody => {
                Source::Client
            }
            FailureKind::ShuttingDown => Source::Proxy,
        }
    }

    /// Whether it says the upstream may be down, for passive health: it
    /// refused a connection or a handshake, or dropped a new connection
    /// without answering. A stale pooled connection, a bad answer or a slow
    /// one say it is up.
    pub fn says_down(self) -> bool {
        matches!(
            self,
            FailureKind::Connect | FailureKind::Handshake | FailureKind::Reset
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Connect => "connect",
            FailureKind::Handshake => "tls_handshake",
            FailureKind::Timeout => "timeout",
            FailureKind::Reset => "reset",
            FailureKind::Stale => "stale",
            FailureKind::Malformed => "malformed",
            FailureKind::Body => "body",
            FailureKind::Stalled => "stalled",
            FailureKind::ClientTimeout => "body_timeout",
            FailureKind::TooLarge => "too_large",
            FailureKind::ClientBody => "bad_body",
            FailureKind::ShuttingDown => "shutting_down",
        }
    }
}

/// Whether a failed attempt may be sent again, and where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Never: a byte of a response came back (the upstream has the request
    /// and answered it, however badly), the client is at fault, or the time
    /// is up.
    Never,
    /// Nothing of the request reached the upstream: to the other slot, for
    /// any method.
    Unsent,
    /// It went out on a new connection and nothing came back: to the other
    /// slot, when a replay is safe (an idempotent method, or any with
    /// `forwarding.retry_writes`).
    Replayable,
    /// It went out on a pooled connection that turned out closed, and
    /// nothing came back: once more on a new connection to the same slot,
    /// when a replay is safe. No failure of the slot.
    Reconnect,
}

/// A failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    pub retry: Retry,
}

impl Failure {
    pub fn never(kind: FailureKind) -> Failure {
        Failure {
            kind,
            retry: Retry::Never,
        }
    }
}

/// How a user request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream answered with this status, and its body (if any) was
    /// passed on to its end, or to where the client stopped reading it.
    Answered(u16),
    /// No usable answer (or one cut short): what went wrong last.
    Failed(FailureKind),
}

impl Outcome {
    /// Whether the slot is judged by it: the upstream answered, or failed.
    /// A client's fault or the proxy's is not the release's doing either way.
    pub fn counts(self) -> bool {
        match self {
            Outcome::Answered(_) => true,
            Outcome::Failed(kind) => kind.source() == Source::Upstream,
        }
    }

    /// Whether it counts against the slot: a 5xx answer, or a failure the
    /// upstream caused.
    pub fn is_failure(self) -> bool {
        match self {
            Outcome::Answered(status) => status >= 500,
            Outcome::Failed(kind) => kind.source() == Source::Upstream,
        }
    }

    /// Whether the guard judges the release by it: what `counts`, but a
    /// failed TLS handshake, which says the slot cannot be reached as
    /// configured (health takes it down, and users go elsewhere) and nothing
    /// about what the release does with a request.
    pub fn judges_release(self) -> bool {
        self.counts() && self != Outcome::Failed(FailureKind::Handshake)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_upstreams_failures_count_against_the_slot() {
        for kind in FailureKind::ALL {
            let outcome = Outcome::Failed(kind);
            let upstream = kind.source() == Source::Upstream;
            assert_eq!(outcome.is_failure(), upstream, "{kind:?}");
            assert_eq!(outcome.counts(), upstream, "{kind:?}");
            assert!(!kind.says_down() || upstream, "{kind:?}");
        }
        assert!(Outcome::Answered(503).is_failure());
        let judged: Vec<FailureKind> = FailureKind::ALL
            .into_iter()
            .filter(|&kind| {
                Outcome::Failed(kind).counts() != Outcome::Failed(kind).judges_release()
            })
            .collect();
        assert_eq!(
            judged,
            [FailureKind::Handshake],
            "only a handshake is not the release's"
        );
        assert!(!Outcome::Answered(413).is_failure());
        assert!(Outcome::Answered(413).counts());
    }

    #[test]
    fn every_kind_has_its_own_name() {
        let mut names: Vec<&str> = FailureKind::ALL.iter().map(|k| k.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), FailureKind::ALL.len());
    }
}
