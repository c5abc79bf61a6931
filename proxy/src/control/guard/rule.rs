//! The guard's rule: whether a release breaches the limits, judged by the
//! user traffic it served (a sliding window of failures).

use crate::config::GuardCfg;
use crate::http::traffic::WindowStats;

/// The reason a release breaches the limits, or `None` while it is fine or
/// has not served enough requests to judge. `stable` is the release it is
/// compared with during a canary.
pub fn judge(
    candidate: WindowStats,
    stable: Option<WindowStats>,
    cfg: &GuardCfg,
) -> Option<String> {
    if candidate.count < cfg.min_requests {
        return None;
    }
    let ratio = candidate.failure_ratio();
    if ratio > cfg.max_failure_ratio {
        return Some(format!(
            "{} of {} user requests failed ({:.1}%) in the last {} s, above the {:.1}% limit",
            candidate.failures(),
            candidate.count,
            ratio * 100.0,
            cfg.window.as_secs(),
            cfg.max_failure_ratio * 100.0
        ));
    }
    if let Some(stable) = stable
        && stable.count >= cfg.min_requests
        && ratio > stable.failure_ratio() + cfg.margin
    {
        return Some(format!(
            "{:.1}% of its user requests failed against {:.1}% on the stable release (margin {:.1}%)",
            ratio * 100.0,
            stable.failure_ratio() * 100.0,
            cfg.margin * 100.0
        ));
    }
    None
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::time::Duration;

    /// A 30 s window, 2% limit, 1% margin, 20 requests to judge, 60 s bake.
    pub(in crate::control::guard) fn cfg() -> GuardCfg {
        GuardCfg {
            window: Duration::from_secs(30),
            interval: Duration::from_secs(1),
            max_failure_ratio: 0.02,
            margin: 0.01,
            min_requests: 20,
            bake: Duration::from_secs(60),
            answer_from_stable: true,
        }
    }

    /// `count` requests of which `failures` were answered with a 5xx.
    pub(in crate::control::guard) fn stats(count: u64, failures: u64) -> WindowStats {
        WindowStats {
            count,
            server_errors: failures,
            upstream_failures: 0,
            latency_us: 0,
        }
    }

    #[test]
    fn waits_for_the_minimum_sample_then_applies_the_limit() {
        assert_eq!(judge(stats(19, 19), None, &cfg()), None);
        assert_eq!(judge(stats(100, 2), None, &cfg()), None);
        assert!(judge(stats(100, 3), None, &cfg()).is_some_and(|r| r.contains("3 of 100")));
    }

    #[test]
    fn a_canary_worse_than_the_stable_release_by_the_margin_breaches() {
        // 1.5% is under the 2% limit, but the stable release fails none.
        assert!(judge(stats(200, 3), Some(stats(1000, 0)), &cfg()).is_some());
        assert_eq!(judge(stats(200, 3), Some(stats(1000, 10)), &cfg()), None);
    }

    #[test]
    fn upstream_failures_count_as_failures() {
        let failed = WindowStats {
            count: 100,
            server_errors: 0,
            upstream_failures: 3,
            latency_us: 0,
        };
        assert!(judge(failed, None, &cfg()).is_some());
    }
}
