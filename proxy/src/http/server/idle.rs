//! The deadlines of a client connection while no request of it is being
//! served: its request head must arrive within `limits.header_read_timeout`
//! of the first byte (or of the accept), and a connection with nothing in
//! flight is closed after `limits.idle_timeout`; and when an HTTP/1.1
//! connection has been idle long enough to be parked (see `conn`).
//!
//! hyper's own `header_read_timeout` starts when hyper begins waiting for a
//! head, that is as soon as a keep-alive connection goes idle, so it would
//! close idle connections after the header timeout and make the idle timeout
//! meaningless; and HTTP/2 has no idle timeout at all. So both live here, in
//! a wrapper of the socket that fails a read once the deadline in force has
//! passed, which hyper answers by closing the connection.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// A deadline no connection reaches.
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// `now + after`; a timeout too long to add is as good as none.
pub fn later(now: Instant, after: Duration) -> Instant {
    now.checked_add(after).unwrap_or(now + FAR_FUTURE)
}

/// The alarm's step: the shortest time after which something may be due.
fn step(
    idle_timeout: Duration,
    header_read_timeout: Duration,
    park_after: Option<Duration>,
) -> Duration {
    let step = header_read_timeout.min(idle_timeout);
    park_after.map_or(step, |after| step.min(after))
}

/// One connection's requests in flight, shared by its socket wrapper and its
/// service (and by `conn`, which parks the connection when the wrapper says
/// so). One word, so a reader never sees a count and a generation that
/// disagree: the low 32 bits count requests in flight, the high 32 bits
/// count the starts and ends of requests.
///
/// The end of a request wakes nobody: the socket wrapper keeps its alarm
/// armed while requests are in flight and, when it rings, counts the idle
/// time from `ended`. Waking the connection's task instead would cost every
/// request one more poll of the whole connection, for a deadline that is
/// seconds away.
#[derive(Debug)]
pub struct Activity {
    state: AtomicU64,
    /// When a request last ended, in nanoseconds after `since`.
    ended: AtomicU64,
    since: Instant,
    /// Set by the socket wrapper when the connection may be parked now (see
    /// `TimedIo::parkable`), taken by `conn` after hyper's poll returns.
    park: AtomicBool,
}

const IN_FLIGHT_MASK: u64 = u32::MAX as u64;
const GENERATION: u64 = 1 << 32;

impl Activity {
    pub fn new() -> Activity {
        Activity {
            state: AtomicU64::new(0),
            ended: AtomicU64::new(0),
            since: Instant::now(),
            park: AtomicBool::new(false),
        }
    }

    /// Whether the socket wrapper asked for the connection to be parked
    /// since the last call; one relaxed load when it did not, as the
    /// connection's own task writes and reads it.
    pub fn take_park(&self) -> bool {
        self.park.load(Ordering::Relaxed) && self.park.swap(false, Ordering::Relaxed)
    }

    /// A request of this connection is being served until the guard drops
    /// (the service's future, then the response body, holds it).
    pub fn start(self: &Arc<Self>) -> Busy {
        self.state.fetch_add(GENERATION + 1, Ordering::AcqRel);
        Busy(Arc::clone(self))
    }

    /// (generation, requests in flight)
    fn load(&self) -> (u64, u64) {
        let state = self.state.load(Ordering::Acquire);
        (state >> 32, state & IN_FLIGHT_MASK)
    }

    /// When a request last ended; read after a `load` that saw its end.
    pub fn ended(&self) -> Instant {
        self.since + Duration::from_nanos(self.ended.load(Ordering::Relaxed))
    }
}

/// Counts one request in flight until dropped.
#[derive(Debug)]
pub struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        // Stored before the count moves (and released by it), so a reader
        // that sees the new generation sees this time or a later one.
        let nanos = u64::try_from(self.0.since.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.0.ended.store(nanos, Ordering::Relaxed);
        // One step: one more generation, one less in flight.
        self.0.state.fetch_add(GENERATION - 1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request counted as in flight until
/// hyper has written it to the end or dropped it.
pub struct Tracked<B> {
    body: B,
    _busy: Busy,
}

impl<B> Tracked<B> {
    pub fn new(body: B, busy: Busy) -> Tracked<B> {
        Tracked { body, _busy: busy }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Which deadline is in force while nothing is in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the first byte of the next request.
    Idle,
    /// A request head has begun (or the connection is new): it must be
    /// complete by the deadline.
    Head,
}

/// The protocol of a connection, told by its first bytes before it is
/// wrapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    /// No request heads to time: any frame from the client is activity.
    Http2,
}

/// A client socket with the idle and header-read deadlines.
pub struct TimedIo<T> {
    inner: T,
    activity: Arc<Activity>,
    idle_timeout: Duration,
    header_read_timeout: Duration,
    /// How long an HTTP/1.1 connection idles before it is parked; `None`:
    /// never (HTTP/2, whose state lives as long as the connection).
    park_after: Option<Duration>,
    /// Whether the last write found the socket full, so that hyper still
    /// holds bytes to write: a connection is parked only once they are out.
    write_blocked: bool,
    phase: Phase,
    protocol: Protocol,
    /// The generation of `activity` the deadline was last set for.
    seen: u64,
    /// The deadline in force.
    due: Instant,
    /// A deadline to start at the next read that finds nothing: bytes
    /// arrive in bursts, and the clock is read once per burst rather than
    /// per read (a read of the clock costs as much as a few hundred
    /// instructions on a virtual machine).
    restart: Option<Duration>,
    /// A timer that fires at `due` (or at the time to park) or before: when
    /// early, it is armed again. Arming a timer costs more than reading the
    /// clock, and the deadline moves two or three times per request; armed
    /// no later than the shortest of the timeouts (`step`) from now, the
    /// timer never needs to move earlier, so it is armed once per step at
    /// most, whatever the traffic.
    alarm: Pin<Box<Sleep>>,
}

/// What the alarm found when it rang.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rang {
    /// Nothing due yet (or not rung): armed again.
    Nothing,
    /// The deadline in force has passed.
    Expired,
    /// The connection may be parked now; `Activity::take_park` says so too.
    Park,
}

impl<T> TimedIo<T> {
    /// Wraps a socket with no request head begun (just accepted, or just
    /// unparked with its next bytes waiting): its next request head is due
    /// within `header_read_timeout`. With `park_after`, the connection asks
    /// to be parked once it has had nothing in flight for that long.
    pub fn new(
        inner: T,
        protocol: Protocol,
        activity: Arc<Activity>,
        idle_timeout: Duration,
        header_read_timeout: Duration,
        park_after: Option<Duration>,
    ) -> TimedIo<T> {
        let step = step(idle_timeout, header_read_timeout, park_after);
        // Requests of the connection before it was parked are not news.
        let (seen, _) = activity.load();
        TimedIo {
            inner,
            activity,
            idle_timeout,
            header_read_timeout,
            park_after,
            write_blocked: false,
            phase: Phase::Head,
            protocol,
            seen,
            due: later(Instant::now(), header_read_timeout),
            restart: None,
            alarm: Box::pin(tokio::time::sleep(step)),
        }
    }

    /// The socket, for the connection to park.
    pub fn into_inner(self) -> T {
        self.inner
    }

    fn step(&self) -> Duration {
        step(self.idle_timeout, self.header_read_timeout, self.park_after)
    }

    /// When this connection is to be parked, if it is idle and parks.
    fn park_at(&self) -> Option<Instant> {
        match (self.park_after, self.phase) {
            (Some(after), Phase::Idle) => Some(later(self.activity.ended(), after)),
            _ => None,
        }
    }

    /// The deadline is now `from + after`. `after` is one of the two
    /// timeouts, never shorter than the alarm's step, so from now on the
    /// alarm is already armed no later than the deadline; only a deadline
    /// counted from the past (the end of a request) can fall before it.
    fn set_deadline(&mut self, from: Instant, after: Duration) {
        self.due = later(from, after);
        if self.due < self.alarm.deadline() {
            let due = self.due;
            self.alarm.as_mut().reset(due);
        }
    }

    /// Follows the connection's requests, without reading the clock: while
    /// any is in flight there is no deadline (the alarm, when it rings,
    /// finds the connection busy and rings again later); once they have
    /// ended, the idle timeout counts from the last end. Whether any is in
    /// flight.
    fn follow_activity(&mut self) -> bool {
        let (generation, in_flight) = self.activity.load();
        if generation != self.seen {
            self.seen = generation;
            self.phase = Phase::Idle;
            self.restart = None;
            if in_flight == 0 {
                let (ended, idle) = (self.activity.ended(), self.idle_timeout);
                self.set_deadline(ended, idle);
            }
        }
        in_flight > 0
    }

    /// Whether the deadline has passed or the connection may be parked;
    /// unless expired, leaves the alarm armed to wake the task no later than
    /// the deadline (and the time to park).
    fn poll_alarm(&mut self, cx: &mut Context<'_>) -> Rang {
        let step = self.step();
        // Twice at most: a ring before the deadline re-arms for later.
        for _ in 0..2 {
            if self.alarm.as_mut().poll(cx).is_pending() {
                return Rang::Nothing;
            }
            let now = Instant::now();
            if self.follow_activity() {
                self.alarm.as_mut().reset(later(now, step));
                continue;
            }
            if now >= self.due {
                return Rang::Expired;
            }
            let mut next = self.due.min(later(now, step));
            if let Some(park_at) = self.park_at() {
                // hyper holds no unread bytes here: phase `Idle` means none
                // came since the last request ended, and a read just found
                // none waiting.
                if now >= park_at && !self.write_blocked {
                    self.activity.park.store(true, Ordering::Relaxed);
                    // Armed still, in case the connection is not parked.
                    self.alarm.as_mut().reset(next);
                    return Rang::Park;
                }
                next = next.min(park_at);
            }
            self.alarm.as_mut().reset(next);
        }
        // Re-armed and still ringing (a 1 ms timeout inside the timer's
        // current millisecond): no waker is registered, so ask to be polled
        // again rather than sleep past the deadline.
        cx.waker().wake_by_ref();
        Rang::Nothing
    }

    /// Notes that bytes came from the client: what they mean for the
    /// deadline.
    fn received(&mut self, busy: bool) {
        if busy {
            return;
        }
        match self.protocol {
            Protocol::Http2 => {
                self.phase = Phase::Idle;
                self.restart = Some(self.idle_timeout);
            }
            Protocol::Http1 if self.phase == Phase::Idle => {
                self.phase = Phase::Head;
                self.restart = Some(self.header_read_timeout);
            }
            _ => {}
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for TimedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // A request started or ended since the deadline was set: the
        // connection's quiet time starts over.
        let busy = this.follow_activity();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.received(busy);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                if let Some(after) = this.restart.take() {
                    this.set_deadline(Instant::now(), after);
                }
                // Polled while busy too, so that the alarm is armed when the
                // last request ends: nothing else wakes this task for that.
                if this.poll_alarm(cx) != Rang::Expired {
                    return Poll::Pending;
                }
                let why = match this.phase {
                    Phase::Idle => "idle timeout",
                    Phase::Head => "request head timeout",
                };
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, why)))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TimedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.write_blocked = written.is_pending();
        written
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.write_blocked = written.is_pending();
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    // Real time, short: the tests assert lower bounds (which deadline was in
    // force), and only a generous upper bound against a hang.
    const HEAD: Duration = Duration::from_millis(100);
    const IDLE: Duration = Duration::from_millis(1_000);
    const HANG: Duration = Duration::from_secs(10);

    fn pair() -> (
        TimedIo<tokio::io::DuplexStream>,
        tokio::io::DuplexStream,
        Arc<Activity>,
    ) {
        pair_of(Protocol::Http1)
    }

    fn pair_of(
        protocol: Protocol,
    ) -> (
        TimedIo<tokio::io::DuplexStream>,
        tokio::io::DuplexStream,
        Arc<Activity>,
    ) {
        let (server, client) = tokio::io::duplex(1024);
        let activity = Arc::new(Activity::new());
        (
            TimedIo::new(server, protocol, Arc::clone(&activity), IDLE, HEAD, None),
            client,
            activity,
        )
    }

    /// The client sends a whole request head and the wrapper reads it.
    async fn receive_head(
        io: &mut TimedIo<tokio::io::DuplexStream>,
        client: &mut tokio::io::DuplexStream,
    ) {
        client
            .write_all(b"GET / HTTP/1.1\r\n\r\n")
            .await
            .expect("write");
        let mut buf = [0u8; 64];
        let _ = io.read(&mut buf).await.expect("the head");
    }

    /// Reads until the wrapper fails a read; the time that took.
    async fn time_to_error(io: &mut TimedIo<tokio::io::DuplexStream>) -> Duration {
        time_to_error_from(io, Instant::now()).await
    }

    /// Reads until the wrapper fails a read; the time since `from`.
    async fn time_to_error_from(
        io: &mut TimedIo<tokio::io::DuplexStream>,
        from: Instant,
    ) -> Duration {
        let mut buf = [0u8; 64];
        let e = tokio::time::timeout(HANG, async {
            loop {
                match io.read(&mut buf).await {
                    Ok(n) => assert!(n > 0, "the client never closes in these tests"),
                    Err(e) => return e,
                }
            }
        })
        .await
        .expect("a deadline ends the read");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        from.elapsed()
    }

    #[tokio::test]
    async fn a_new_connection_that_sends_nothing_gets_the_header_timeout() {
        let (mut io, _client, _activity) = pair();
        let waited = time_to_error(&mut io).await;
        assert!(waited >= HEAD && waited < IDLE, "{waited:?}");
    }

    #[tokio::test]
    async fn a_request_in_flight_has_no_deadline_and_then_the_idle_one_applies() {
        let (mut io, mut client, activity) = pair();
        receive_head(&mut io, &mut client).await;
        let busy = activity.start();
        let mut buf = [0u8; 64];
        let in_flight = tokio::time::timeout(IDLE * 2, io.read(&mut buf)).await;
        assert!(
            in_flight.is_err(),
            "a read failed while a request was in flight"
        );
        // Taken before the end, which the idle timeout counts from.
        let ended = Instant::now();
        drop(busy);
        let waited = time_to_error_from(&mut io, ended).await;
        assert!(
            waited >= IDLE,
            "closed after {waited:?}, before the idle timeout"
        );
    }

    #[tokio::test]
    async fn a_read_waiting_when_the_request_ends_gets_the_idle_timeout() {
        // The end of a request wakes nobody: a read that was already waiting
        // (in its own task, polled only when woken) must still fail once the
        // connection has been idle too long, neither at once nor never.
        let (mut io, mut client, activity) = pair();
        let busy = activity.start();
        receive_head(&mut io, &mut client).await;
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 64];
            let result = io.read(&mut buf).await;
            (result, Instant::now())
        });
        tokio::time::sleep(HEAD * 3).await;
        assert!(
            !reader.is_finished(),
            "a read ended while a request was in flight"
        );
        let ended = Instant::now();
        drop(busy);
        let (result, failed_at) = tokio::time::timeout(HANG, reader)
            .await
            .expect("the idle deadline ends the read")
            .expect("the reader does not panic");
        let waited = failed_at - ended;
        assert_eq!(
            result.expect_err("the client sends nothing more").kind(),
            io::ErrorKind::TimedOut
        );
        assert!(
            waited >= IDLE && waited < IDLE + HEAD * 5,
            "closed {waited:?} after the request ended"
        );
    }

    #[tokio::test]
    async fn the_first_byte_after_idle_starts_the_header_timeout() {
        let (mut io, mut client, activity) = pair();
        drop(activity.start());
        client.write_all(b"GET").await.expect("write");
        let mut buf = [0u8; 64];
        let _ = io.read(&mut buf).await.expect("a first byte");
        let waited = time_to_error(&mut io).await;
        assert!(waited >= HEAD && waited < IDLE, "{waited:?}");
    }

    #[tokio::test]
    async fn http2_frames_with_nothing_in_flight_get_the_idle_timeout() {
        let (mut io, mut client, _activity) = pair_of(Protocol::Http2);
        client
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .expect("write");
        let mut buf = [0u8; 64];
        let _ = io.read(&mut buf).await.expect("the preface");
        let waited = time_to_error(&mut io).await;
        assert!(waited >= IDLE, "HTTP/2 has no heads to time: {waited:?}");
    }

    /// How long a connection idles before it asks to be parked, in the
    /// parking tests, whose deadlines are both `IDLE`, far longer: none
    /// interferes.
    const PARK: Duration = Duration::from_millis(50);

    fn parking_pair() -> (
        TimedIo<tokio::io::DuplexStream>,
        tokio::io::DuplexStream,
        Arc<Activity>,
    ) {
        let (server, client) = tokio::io::duplex(1024);
        let activity = Arc::new(Activity::new());
        let io = TimedIo::new(
            server,
            Protocol::Http1,
            Arc::clone(&activity),
            IDLE,
            IDLE,
            Some(PARK),
        );
        (io, client, activity)
    }

    /// Keeps a read waiting (as hyper does between requests) for `within`;
    /// when the wrapper asked for the connection to be parked, if it did.
    async fn asked_to_park(
        io: &mut TimedIo<tokio::io::DuplexStream>,
        activity: &Activity,
        within: Duration,
    ) -> Option<Instant> {
        let until = Instant::now() + within;
        let mut buf = [0u8; 64];
        while Instant::now() < until {
            let read = tokio::time::timeout(Duration::from_millis(5), io.read(&mut buf)).await;
            assert!(read.is_err(), "the client sends nothing here");
            if activity.take_park() {
                return Some(Instant::now());
            }
        }
        None
    }

    #[tokio::test]
    async fn an_idle_connection_asks_to_be_parked_once_idle_for_park_after() {
        let (mut io, mut client, activity) = parking_pair();
        receive_head(&mut io, &mut client).await;
        let busy = activity.start();
        assert_eq!(
            asked_to_park(&mut io, &activity, PARK * 3).await,
            None,
            "while busy"
        );
        let ended = Instant::now();
        drop(busy);
        let asked = asked_to_park(&mut io, &activity, HANG).await;
        let asked = asked.expect("an idle connection asks to be parked");
        assert!(
            asked - ended >= PARK,
            "asked {:?} after the end",
            asked - ended
        );
    }

    #[tokio::test]
    async fn a_connection_with_a_head_begun_is_not_parked() {
        let (mut io, mut client, activity) = parking_pair();
        receive_head(&mut io, &mut client).await;
        drop(activity.start());
        client.write_all(b"GE").await.expect("write");
        let mut buf = [0u8; 64];
        let _ = io.read(&mut buf).await.expect("the start of a head");
        assert_eq!(asked_to_park(&mut io, &activity, PARK * 3).await, None);
    }

    #[tokio::test]
    async fn a_connection_with_bytes_left_to_write_is_parked_only_once_they_are_out() {
        let (mut io, mut client, activity) = parking_pair();
        receive_head(&mut io, &mut client).await;
        drop(activity.start());
        // More than the pipe holds: the last write finds it full.
        let answer = vec![b'x'; 4096];
        let written = tokio::time::timeout(PARK, io.write_all(&answer)).await;
        assert!(written.is_err(), "the pipe holds only 1024 bytes");
        assert_eq!(
            asked_to_park(&mut io, &activity, PARK * 3).await,
            None,
            "while blocked"
        );
        let mut drained = vec![0u8; 4096];
        let n = client.read(&mut drained).await.expect("the client reads");
        assert!(n > 0);
        io.write_all(b"x").await.expect("room again");
        let asked = asked_to_park(&mut io, &activity, HANG).await;
        assert!(asked.is_some(), "once written out, the connection parks");
    }
}
