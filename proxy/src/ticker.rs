//! The clock of the background tasks (health checks, error budget, incident
//! detector, guard): a tick every period until the shutdown signal.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{Interval, MissedTickBehavior};

pub struct Ticker {
    interval: Interval,
    /// `true` once the proxy shuts down; a dropped sender means the same.
    shutdown: watch::Receiver<bool>,
}

impl Ticker {
    /// The first tick is at once. A round of work that outlasts the period
    /// pushes the next ticks back instead of bunching them up: a stalled
    /// check must not be followed by a burst of them. `period` is not zero
    /// (the configuration refuses zero intervals; tokio panics on them).
    pub fn new(period: Duration, shutdown: watch::Receiver<bool>) -> Ticker {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ticker { interval, shutdown }
    }

    /// Waits for the next tick: `true`, or `false` once the proxy shuts
    /// down (then at once on every later call). Cancel-safe, so it can be one
    /// branch of a `select!` with the task's other sources.
    pub async fn tick(&mut self) -> bool {
        loop {
            if *self.shutdown.borrow_and_update() {
                return false;
            }
            // Biased: once shutdown is signalled, no further round starts.
            tokio::select! {
                biased;
                changed = self.shutdown.changed() => {
                    if changed.is_err() {
                        return false;
                    }
                }
                _ = self.interval.tick() => return true,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn ticks_at_once_then_every_period_until_shutdown() {
        // Arrange
        let (stop, shutdown) = watch::channel(false);
        let mut ticker = Ticker::new(Duration::from_secs(1), shutdown);
        let start = tokio::time::Instant::now();

        // Act / Assert
        assert!(ticker.tick().await);
        assert_eq!(start.elapsed(), Duration::ZERO, "the first tick is at once");
        assert!(ticker.tick().await);
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        stop.send(true).expect("the ticker holds a receiver");
        assert!(!ticker.tick().await, "shutdown ends the ticks");
        assert!(!ticker.tick().await, "and every later call");
        assert_eq!(
            start.elapsed(),
            Duration::from_secs(1),
            "without waiting for a tick"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_round_delays_the_next_tick_instead_of_bunching() {
        // Arrange
        let (_stop, shutdown) = watch::channel(false);
        let mut ticker = Ticker::new(Duration::from_secs(1), shutdown);
        assert!(ticker.tick().await);

        // Act: a round of work takes 3.5 periods.
        tokio::time::sleep(Duration::from_millis(3500)).await;
        let late = tokio::time::Instant::now();
        assert!(ticker.tick().await, "the missed tick fires at once");
        assert!(ticker.tick().await);

        // Assert
        assert_eq!(
            late.elapsed(),
            Duration::from_secs(1),
            "the tick after a late one waits a whole period"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_shutdown_sender_ends_the_ticks() {
        let (stop, shutdown) = watch::channel(false);
        let mut ticker = Ticker::new(Duration::from_secs(1), shutdown);
        assert!(ticker.tick().await);

        drop(stop);

        assert!(!ticker.tick().await);
    }
}
