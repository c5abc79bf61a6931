//! How long a request may wait for its upstream's answer, and the cut at the
//! end of the shutdown grace period, when every request still waiting is
//! answered at once.
//!
//! The wait counts from when the proxy last stopped waiting on the client's
//! body ([`Progress`]): a client uploading slowly is bounded by its own body
//! timeout (a 408, its fault), never by the upstream's response timeout.
//!
//! A timer per request would be armed and disarmed for every request; a
//! channel per request to hear about the cut would be subscribed to and
//! dropped for every request. Both showed in the profile of the request path.
//! Instead each HTTP/1.1 connection (one request at a time) keeps one
//! [`Alarm`], and a request only reads the clock: the alarm is armed for the
//! first request's deadline, and when it rings early (for a request long
//! answered), it is armed again for the current one. Deadlines only move
//! later, so the alarm is re-armed once per timeout at most, whatever the
//! traffic. The cut sets a flag and rings every alarm, which wakes the tasks
//! whose requests are waiting.

use std::collections::HashMap;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// Every live alarm and the cut flag.
#[derive(Default)]
pub struct Deadlines {
    cut: AtomicBool,
    cut_requests: AtomicUsize,
    next_id: AtomicU64,
    alarms: Mutex<HashMap<u64, Weak<Alarm>>>,
}

/// Where an exchange stands for its response deadline: written by the
/// upstream connection as it sends the request, read by `Deadlines::within`.
/// The clock runs from the start of the exchange, stops while the proxy
/// waits on the client's body, and starts again from zero when that wait
/// ends; so it counts from when the request was sent (or the upstream
/// stopped taking it). Atomics, so the future holding a reference stays
/// `Send`; one writer, one reader, the same task.
#[derive(Debug, Default)]
pub struct Progress {
    /// When the clock last started, in microseconds after the exchange
    /// began; `WAITING_ON_CLIENT` while it is stopped.
    from_micros: AtomicU64,
}

const WAITING_ON_CLIENT: u64 = u64::MAX;

impl Progress {
    /// The proxy waits for the client's body: the clock stops.
    pub fn wait_on_client(&self) {
        self.from_micros.store(WAITING_ON_CLIENT, Ordering::Relaxed);
    }

    pub fn is_waiting_on_client(&self) -> bool {
        self.from_micros.load(Ordering::Relaxed) == WAITING_ON_CLIENT
    }

    /// The wait for the client ended at `now`: the clock starts from there.
    pub fn resume(&self, began: std::time::Instant, now: std::time::Instant) {
        let micros = now.saturating_duration_since(began).as_micros();
        let micros = u64::try_from(micros).unwrap_or(WAITING_ON_CLIENT - 1);
        self.from_micros.store(micros, Ordering::Relaxed);
    }

    /// When the wait ends, for an exchange that began at `began`; `None`
    /// while the clock is stopped.
    fn due(&self, began: Instant, timeout: Duration) -> Option<Instant> {
        match self.from_micros.load(Ordering::Relaxed) {
            WAITING_ON_CLIENT => None,
            0 => Some(began.checked_add(timeout).unwrap_or(began + FAR_FUTURE)),
            micros => Some(
                began
                    .checked_add(Duration::from_micros(micros) + timeout)
                    .unwrap_or(began + FAR_FUTURE),
            ),
        }
    }
}

/// How a wait ended.
#[derive(Debug)]
pub enum Waited<T> {
    Done(T),
    TimedOut,
    /// The grace period is over: the request is answered now.
    Cut,
}

impl Deadlines {
    pub fn new() -> Arc<Deadlines> {
        Arc::default()
    }

    /// An alarm for one connection (or one HTTP/2 request), registered
    /// until dropped so that the cut can ring it.
    pub fn alarm(self: &Arc<Self>) -> Arc<Alarm> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let alarm = Arc::new(Alarm {
            id,
            owner: Arc::downgrade(self),
            sleep: Mutex::new(None),
        });
        lock(&self.alarms).insert(id, Arc::downgrade(&alarm));
        alarm
    }

    /// Ends every wait now; later waits end at once too.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        let alarms: Vec<Arc<Alarm>> = lock(&self.alarms)
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        for alarm in alarms {
            alarm.ring();
        }
    }

    /// Waits answered `Waited::Cut`.
    pub fn cut_requests(&self) -> usize {
        self.cut_requests.load(Ordering::Relaxed)
    }

    fn is_cut(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }

    /// Runs `fut` until it finishes, `timeout` of `progress`'s clock has
    /// passed (see [`Progress`]), or the cut. `began` is the caller's reading
    /// of the clock, taken anyway for the request's latency. `alarm` must
    /// not be shared with another wait at the same time: it wakes one task.
    /// `fut` is pinned by the caller: moving a large future into this one
    /// would copy it for every request.
    pub async fn within<F: Future>(
        &self,
        alarm: &Alarm,
        began: Instant,
        timeout: Duration,
        progress: &Progress,
        mut fut: Pin<&mut F>,
    ) -> Waited<F::Output> {
        poll_fn(|cx| {
            if let Poll::Ready(out) = fut.as_mut().poll(cx) {
                return Poll::Ready(Waited::Done(out));
            }
            if self.is_cut() {
                self.cut_requests.fetch_add(1, Ordering::Relaxed);
                return Poll::Ready(Waited::Cut);
            }
            // While the clock is stopped the alarm still waits (far off), so
            // that the cut can wake the task.
            let due = progress.due(began, timeout).unwrap_or(began + FAR_FUTURE);
            alarm.poll_due(cx, due, self).map(|()| {
                if self.is_cut() {
                    self.cut_requests.fetch_add(1, Ordering::Relaxed);
                    Waited::Cut
                } else {
                    Waited::TimedOut
                }
            })
        })
        .await
    }
}

/// A deadline no request reaches.
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// One reusable timer; see the module documentation.
pub struct Alarm {
    id: u64,
    owner: Weak<Deadlines>,
    /// Made for the first wait. A std mutex, held for a poll or a reset,
    /// never across an `.await`; only the cut contends for it.
    sleep: Mutex<Option<Pin<Box<Sleep>>>>,
}

impl Alarm {
    /// Ready once `due` has passed or the cut came; otherwise the task is
    /// woken no later than `due`.
    fn poll_due(&self, cx: &mut Context<'_>, due: Instant, deadlines: &Deadlines) -> Poll<()> {
        let mut slot = lock(&self.sleep);
        let sleep = slot.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
        if sleep.deadline() > due {
            // Armed for a later deadline than this one: a wait that waited
            // on its client before, or a previous request's far-off one.
            sleep.as_mut().reset(due);
        }
        // Twice at most: an early ring re-arms for `due`, which is later.
        for _ in 0..2 {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // Checked under the lock the cut rings through: a ring seen
            // here is never lost by re-arming.
            if deadlines.is_cut() || Instant::now() >= due {
                return Poll::Ready(());
            }
            sleep.as_mut().reset(due);
        }
        // Re-armed and still ringing (a deadline inside the timer's current
        // millisecond): no waker is registered, so ask to be polled again.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn ring(&self) {
        if let Some(sleep) = lock(&self.sleep).as_mut() {
            sleep.as_mut().reset(Instant::now());
        }
    }
}

impl Drop for Alarm {
    fn drop(&mut self) {
        if let Some(owner) = self.owner.upgrade() {
            let mut alarms = lock(&owner.alarms);
            alarms.remove(&self.id);
            // A map never shrinks by itself: one that held 10,000 alarms
            // would keep 300 KB after their connections closed.
            if alarms.capacity() > MIN_ALARMS_CAPACITY && alarms.len() < alarms.capacity() / 4 {
                let len = alarms.len();
                alarms.shrink_to(len * 2);
            }
        }
    }
}

/// Below this many, the alarms' map is not worth shrinking.
const MIN_ALARMS_CAPACITY: usize = 1024;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::pin::pin;

    use super::*;

    const LONG: Duration = Duration::from_secs(30);

    #[tokio::test(start_paused = true)]
    async fn a_finished_future_is_done() {
        let deadlines = Deadlines::new();
        let alarm = deadlines.alarm();
        let out = deadlines
            .within(
                &alarm,
                Instant::now(),
                LONG,
                &Progress::default(),
                pin!(async { 7 }),
            )
            .await;
        assert!(matches!(out, Waited::Done(7)), "{out:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_future_times_out_at_its_own_deadline_on_a_reused_alarm() {
        let deadlines = Deadlines::new();
        let alarm = deadlines.alarm();
        // The first wait arms the alarm for t0 + 1 s and finishes at 0.1 s.
        let first = tokio::time::sleep(Duration::from_millis(100));
        let out = deadlines
            .within(
                &alarm,
                Instant::now(),
                Duration::from_secs(1),
                &Progress::default(),
                pin!(first),
            )
            .await;
        assert!(matches!(out, Waited::Done(())));
        tokio::time::sleep(Duration::from_millis(500)).await;
        // The second one's deadline is t0 + 1.6 s: the early ring at t0 + 1 s
        // must not end it.
        let started = Instant::now();
        let out = deadlines
            .within(
                &alarm,
                Instant::now(),
                Duration::from_secs(1),
                &Progress::default(),
                pin!(std::future::pending::<()>()),
            )
            .await;
        assert!(matches!(out, Waited::TimedOut), "{out:?}");
        assert_eq!(started.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn the_clock_stops_while_the_client_is_waited_on_and_restarts_from_zero() {
        let deadlines = Deadlines::new();
        let alarm = deadlines.alarm();
        let progress = Progress::default();
        let began = Instant::now();
        progress.wait_on_client();
        let mut never = pin!(std::future::pending::<()>());
        let waiting = deadlines.within(
            &alarm,
            began,
            Duration::from_secs(1),
            &progress,
            never.as_mut(),
        );
        // Ten times the timeout waiting on the client: no timeout.
        let out = tokio::time::timeout(Duration::from_secs(10), waiting).await;
        assert!(out.is_err(), "timed out while the client was waited on");
        // The body came at 10 s: one second from there.
        progress.resume(began.into_std(), Instant::now().into_std());
        let out = deadlines
            .within(
                &alarm,
                began,
                Duration::from_secs(1),
                &progress,
                pin!(std::future::pending::<()>()),
            )
            .await;
        assert!(matches!(out, Waited::TimedOut), "{out:?}");
        assert_eq!(began.elapsed(), Duration::from_secs(11));
    }

    #[tokio::test]
    async fn the_cut_ends_a_waiting_request_and_later_ones() {
        let deadlines = Deadlines::new();
        let alarm = deadlines.alarm();
        let waiting = {
            let deadlines = Arc::clone(&deadlines);
            let alarm = Arc::clone(&alarm);
            tokio::spawn(async move {
                deadlines
                    .within(
                        &alarm,
                        Instant::now(),
                        LONG,
                        &Progress::default(),
                        pin!(std::future::pending::<()>()),
                    )
                    .await
            })
        };
        // Until the wait has armed the alarm, a ring has nothing to wake.
        tokio::task::yield_now().await;
        deadlines.cut();
        let out = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("the cut woke the waiting task")
            .expect("the task");
        assert!(matches!(out, Waited::Cut), "{out:?}");
        let out = deadlines
            .within(
                &alarm,
                Instant::now(),
                LONG,
                &Progress::default(),
                pin!(std::future::pending::<()>()),
            )
            .await;
        assert!(matches!(out, Waited::Cut), "{out:?}");
        assert_eq!(deadlines.cut_requests(), 2);
    }

    #[tokio::test]
    async fn a_dropped_alarm_leaves_the_registry() {
        let deadlines = Deadlines::new();
        let alarm = deadlines.alarm();
        assert_eq!(lock(&deadlines.alarms).len(), 1);
        drop(alarm);
        assert!(lock(&deadlines.alarms).is_empty());
    }
}
