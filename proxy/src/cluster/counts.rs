//! The guard's windows over every proxy's users: each proxy publishes its
//! per-slot counts of the last seconds every second, and reads the others'
//! (`Shared`); `Combined` adds them to its own, so that a release failing on
//! each proxy a little is judged on the whole. Seconds are wall-clock seconds,
//! so the proxies' clocks are taken to agree within a second (NTP).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::control::guard::Windows;
use crate::http::traffic::{MAX_WINDOW_SECS, Traffic, WindowStats};
use crate::slot::Slot;

/// The seconds republished every beat: a beat that came late still leaves
/// no second out, and a second published while it was still running is
/// published again complete.
pub const REPUBLISHED_SECS: u64 = 3;

/// One second of one slot's counts on the other proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Second {
    pub slot: Slot,
    /// Seconds since the Unix epoch.
    pub at: i64,
    pub stats: WindowStats,
}

/// The seconds this proxy publishes now: `(slot, second, counts)` for each
/// of the last `REPUBLISHED_SECS` whole seconds.
pub fn local_seconds(traffic: &Traffic, now: i64) -> Vec<Second> {
    let mut seconds = Vec::new();
    for slot in Slot::ALL {
        for back in 1..=REPUBLISHED_SECS {
            // The seconds up to `back` ago, less those up to `back - 1` ago.
            let newer = traffic.window(slot, Duration::from_secs(back));
            let older = traffic.window(slot, Duration::from_secs(back + 1));
            let back = i64::try_from(back).unwrap_or(0);
            seconds.push(Second {
                slot,
                at: now - back,
                stats: minus(older, newer),
            });
        }
    }
    seconds
}

/// This proxy's windows plus the other proxies' seconds.
pub struct Combined<'a> {
    pub local: &'a Traffic,
    pub remote: &'a [Second],
    /// Now, in seconds since the Unix epoch.
    pub now: i64,
}

impl Windows for Combined<'_> {
    fn window(&self, slot: Slot, span: Duration) -> WindowStats {
        let mut stats = self.local.window(slot, span);
        add(&mut stats, remote_window(self.remote, slot, span, self.now));
        stats
    }
}

/// The others' counts of `slot` in the last `span` (whole seconds, as the
/// local window counts them; the running second is not published yet).
pub fn remote_window(remote: &[Second], slot: Slot, span: Duration, now: i64) -> WindowStats {
    let secs = i64::try_from(span.as_secs().clamp(1, MAX_WINDOW_SECS)).unwrap_or(1);
    let mut stats = WindowStats::default();
    for second in remote {
        if second.slot == slot && second.at > now - secs && second.at <= now {
            add(&mut stats, second.stats);
        }
    }
    stats
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
}

fn add(to: &mut WindowStats, more: WindowStats) {
    to.count += more.count;
    to.server_errors += more.server_errors;
    to.upstream_failures += more.upstream_failures;
    to.latency_us += more.latency_us;
}

fn minus(a: WindowStats, b: WindowStats) -> WindowStats {
    WindowStats {
        count: a.count.saturating_sub(b.count),
        server_errors: a.server_errors.saturating_sub(b.server_errors),
        upstream_failures: a.upstream_failures.saturating_sub(b.upstream_failures),
        latency_us: a.latency_us.saturating_sub(b.latency_us),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn second(slot: Slot, at: i64, count: u64, server_errors: u64) -> Second {
        Second {
            slot,
            at,
            stats: WindowStats {
                count,
                server_errors,
                ..WindowStats::default()
            },
        }
    }

    #[test]
    fn the_others_seconds_within_the_span_and_of_the_slot_are_summed() {
        let now = 1_000;
        let remote = [
            second(Slot::Green, 1_000, 10, 1),
            second(Slot::Green, 991, 20, 2),
            // Outside a 10 s span, or another slot.
            second(Slot::Green, 990, 40, 4),
            second(Slot::Blue, 999, 80, 8),
        ];

        let green = remote_window(&remote, Slot::Green, Duration::from_secs(10), now);
        let blue = remote_window(&remote, Slot::Blue, Duration::from_secs(1), now);

        assert_eq!((green.count, green.server_errors), (30, 3));
        assert_eq!(blue.count, 0, "999 is outside the last second");
    }

    #[test]
    fn two_proxies_under_the_minimum_each_are_judged_on_their_sum() {
        // Arrange: 20 failed requests on this proxy, 20 on the other, a minimum of 30.
        let traffic = Traffic::new();
        let now = std::time::Instant::now();
        for _ in 0..20 {
            traffic.record(
                Slot::Green,
                crate::http::outcome::Outcome::Answered(500),
                Duration::from_millis(1),
                now,
            );
        }
        let remote = [second(Slot::Green, unix_now() - 1, 20, 20)];

        // Act
        let combined = Combined {
            local: &traffic,
            remote: &remote,
            now: unix_now(),
        }
        .window(Slot::Green, Duration::from_secs(10));

        // Assert
        assert_eq!(
            traffic.window(Slot::Green, Duration::from_secs(10)).count,
            20
        );
        assert_eq!((combined.count, combined.failures()), (40, 40));
    }
}
