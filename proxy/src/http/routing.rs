//! All routing state in one snapshot behind one `ArcSwap`: readers load it
//! once per request without a lock; writers build a whole new snapshot and
//! store it, so no request ever sees a half-made change.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderMap;
use http::header::COOKIE;
use time::OffsetDateTime;

use crate::config::{CanaryCfg, Config};
use crate::http::https::Https;
use crate::http::pool::Pool;
use crate::slot::Slot;

/// A share of user traffic sent to the slot that is not active.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Canary {
    pub slot: Slot,
    /// 0 to 100. Users whose bucket (0-99) is below it go to the canary.
    pub percent: u8,
}

/// The request-path settings, part of the snapshot so that a config reload
/// swaps them atomically with everything else.
#[derive(Debug, Clone)]
pub struct Policy {
    pub canary: CanaryCfg,
    pub trusted_hops: Vec<IpAddr>,
    pub retry: bool,
    /// Also resend a write reset before any answer: the upstream treats a
    /// repeated `x-request-id` as the same write.
    pub retry_writes: bool,
    pub response_timeout: Duration,
    pub max_body_bytes: u64,
    pub body_timeout: Duration,
    /// The TLS listener's certificates, the redirect and HSTS; none without TLS.
    pub https: Option<Arc<Https>>,
    /// The stable release answers for a failed request of the watched one.
    pub answer_from_stable: bool,
}

impl Policy {
    pub fn from_config(config: &Config) -> Policy {
        Policy {
            canary: config.canary.clone(),
            trusted_hops: config.forwarding.trusted_hops.clone(),
            retry: config.forwarding.retry,
            retry_writes: config.forwarding.retry_writes,
            response_timeout: config.timeouts.response_header,
            max_body_bytes: config.limits.max_body_bytes,
            body_timeout: config.limits.body_timeout,
            https: Https::from_config(config),
            answer_from_stable: config.guard.answer_from_stable,
        }
    }
}

/// Where one request goes, and whether the client needs a bucket cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub slot: Slot,
    /// A newly drawn bucket to hand the client in a cookie.
    pub new_bucket: Option<u8>,
}

/// Everything a request needs to be routed. Immutable once stored.
pub struct Snapshot {
    /// The slot recorded as serving users. Changed only by an operator's
    /// switch or rollback, never by a passing outage.
    pub active: Slot,
    /// The slot that was active before the last switch: where a rollback goes.
    pub previous: Option<Slot>,
    /// Each slot's members and the health checker's verdict on each,
    /// indexed by `Slot::index()`. A slot is up while any member is.
    pub pools: [Arc<Pool>; 2],
    /// Whether the release now on each slot passed the gate (or is the
    /// active one). Only a vetted slot takes users in a failover or a
    /// retry: a release nobody gated never sees a user request.
    pub vetted: [bool; 2],
    pub last_switch: Option<OffsetDateTime>,
    pub canary: Option<Canary>,
    pub policy: Arc<Policy>,
}

impl Snapshot {
    /// Routes one user request: a preview request to the candidate; during a
    /// canary, by the client's sticky bucket; otherwise to `serving()`. A
    /// slot that is down is never chosen while the other is up.
    pub fn route(&self, headers: &HeaderMap) -> Route {
        let stable = self.serving();
        let policy = &self.policy;
        if self.canary.is_none() && policy.canary.preview_secret.is_none() {
            return Route {
                slot: stable,
                new_bucket: None,
            };
        }
        let candidate = self.canary.map_or(self.active.other(), |c| c.slot);
        if let Some(secret) = &policy.canary.preview_secret {
            let by_header = headers
                .get(&policy.canary.preview_header)
                .is_some_and(|v| crate::secret::matches(secret.as_bytes(), v.as_bytes()));
            let by_cookie = || {
                cookie(headers, &policy.canary.preview_cookie)
                    .is_some_and(|v| crate::secret::matches(secret.as_bytes(), v.as_bytes()))
            };
            if (by_header || by_cookie()) && self.is_healthy(candidate) {
                return Route {
                    slot: candidate,
                    new_bucket: None,
                };
            }
        }
        let Some(canary) = self.canary else {
            return Route {
                slot: stable,
                new_bucket: None,
            };
        };
        let (bucket, new_bucket) = match cookie(headers, &policy.canary.cookie)
            .and_then(|v| v.parse::<u8>().ok())
            .filter(|b| *b < 100)
        {
            Some(b) => (b, None),
            None => {
                let b = rand::random_range(0..100u8);
                (b, Some(b))
            }
        };
        let slot = if bucket < canary.percent && self.is_healthy(canary.slot) {
            canary.slot
        } else {
            stable
        };
        Route { slot, new_bucket }
    }

    pub fn pool(&self, slot: Slot) -> &Arc<Pool> {
        &self.pools[slot.index()]
    }

    /// Healthy and vetted: may take users the active slot cannot serve.
    pub fn can_take_over(&self, slot: Slot) -> bool {
        self.is_healthy(slot) && self.vetted[slot.index()]
    }

    pub fn is_healthy(&self, slot: Slot) -> bool {
        self.pools[slot.index()].is_healthy()
    }

    /// Where user requests go now: the active slot, unless it is down and the
    /// other one is up and vetted. Never a slot that failed its checks while a healthy
    /// one exists.
    pub fn serving(&self) -> Slot {
        let active = self.active;
        if !self.is_healthy(active) && self.can_take_over(active.other()) {
            active.other()
        } else {
            active
        }
    }

    /// A copy to modify into the next snapshot.
    pub fn to_builder(&self) -> Snapshot {
        Snapshot {
            active: self.active,
            previous: self.previous,
            pools: self.pools.clone(),
            vetted: self.vetted,
            last_switch: self.last_switch,
            canary: self.canary,
            policy: Arc::clone(&self.policy),
        }
    }
}

/// The one place routing state lives.
pub struct Router {
    current: ArcSwap<Snapshot>,
}

impl Router {
    pub fn new(initial: Snapshot) -> Router {
        Router {
            current: ArcSwap::from_pointee(initial),
        }
    }

    /// The snapshot in force; hold it only as long as the routing decision.
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.current.load()
    }

    pub fn load_full(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Applies `change` to the latest snapshot and stores the result
    /// atomically. Writers that race (a health flip during a switch) are
    /// retried on the newer snapshot, so neither change is lost.
    pub fn update(&self, mut change: impl FnMut(&Snapshot) -> Snapshot) -> Arc<Snapshot> {
        let mut next = None;
        self.current.rcu(|current| {
            let snap = Arc::new(change(current));
            next = Some(Arc::clone(&snap));
            snap
        });
        next.expect("rcu runs the closure at least once")
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn snapshot(canary: Option<Canary>, secret: Option<&str>) -> Snapshot {
        let mut config = Config::parse("").expect("defaults");
        config.canary.preview_secret = secret.map(str::to_string);
        let pools = Slot::ALL.map(|s| {
            Arc::new(
                Pool::new(s, &config.slot_addrs[s.index()], &config.timeouts, None).all_healthy(),
            )
        });
        Snapshot {
            active: Slot::Blue,
            previous: None,
            pools,
            vetted: [true, true],
            last_switch: None,
            canary,
            policy: Arc::new(Policy::from_config(&config)),
        }
    }

    fn with_cookie(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_str(value).expect("cookie"));
        h
    }

    #[tokio::test]
    async fn a_bucket_below_the_percent_goes_to_the_canary_and_raising_never_moves_back() {
        for bucket in 0..100u8 {
            let headers = with_cookie(&format!("a=b; bg_bucket={bucket}"));
            let mut was_canary = false;
            for percent in [0u8, 5, 10, 25, 50, 100] {
                let snap = snapshot(
                    Some(Canary {
                        slot: Slot::Green,
                        percent,
                    }),
                    None,
                );
                let route = snap.route(&headers);
                assert_eq!(route.new_bucket, None);
                let on_canary = route.slot == Slot::Green;
                assert_eq!(on_canary, bucket < percent);
                assert!(
                    !was_canary || on_canary,
                    "bucket {bucket} moved back at {percent}%"
                );
                was_canary = on_canary;
            }
        }
    }

    #[tokio::test]
    async fn a_client_without_a_cookie_gets_a_bucket_and_the_preview_reaches_the_candidate() {
        let snap = snapshot(
            Some(Canary {
                slot: Slot::Green,
                percent: 0,
            }),
            Some("0123456789abcdef"),
        );
        let route = snap.route(&HeaderMap::new());
        assert_eq!(route.slot, Slot::Blue);
        assert!(route.new_bucket.is_some_and(|b| b < 100));
        let mut preview = HeaderMap::new();
        preview.insert(
            "x-bluegreen-preview",
            HeaderValue::from_static("0123456789abcdef"),
        );
        assert_eq!(snap.route(&preview).slot, Slot::Green);
        assert_eq!(
            snap.route(&with_cookie("bg_preview=0123456789abcdef")).slot,
            Slot::Green
        );
        preview.insert("x-bluegreen-preview", HeaderValue::from_static("wrong"));
        assert_eq!(snap.route(&preview).slot, Slot::Blue);
    }

    #[tokio::test]
    async fn a_down_canary_gets_no_users() {
        let mut snap = snapshot(
            Some(Canary {
                slot: Slot::Green,
                percent: 100,
            }),
            None,
        );
        snap.pools[1] = Arc::new(snap.pools[1].with_health(0, false));
        assert_eq!(snap.route(&with_cookie("bg_bucket=1")).slot, Slot::Blue);
    }

    #[tokio::test]
    async fn a_down_active_fails_over_only_to_a_vetted_slot() {
        let mut snap = snapshot(None, None);
        snap.pools[0] = Arc::new(snap.pools[0].with_health(0, false));
        snap.vetted = [true, false];
        assert_eq!(
            snap.serving(),
            Slot::Blue,
            "an ungated release never takes users"
        );
        snap.vetted = [true, true];
        assert_eq!(snap.serving(), Slot::Green);
    }
}
