//! Prometheus metrics for `GET /metrics` on the admin listener. The handles
//! the request path touches are made once at start, so a request costs a few
//! atomic adds and no label lookup.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::http::outcome::{FailureKind, Outcome, Source};
use crate::slot::Slot;
use crate::tls::HandshakeFailure;

type Labels = Vec<(&'static str, String)>;

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
const KINDS: usize = FailureKind::ALL.len();

pub struct Metrics {
    registry: Registry,
    /// `[slot][status class]`: the requests that judge the slot, by the
    /// class of the answer (a failure the upstream caused is a 5xx).
    requests: [[Counter; 5]; 2],
    /// `[slot][failure kind]`: failed attempts, by the upstream's doing
    /// (only those kinds are ever counted).
    upstream_failures: [[Counter; KINDS]; 2],
    /// The same failures by slot, member (its address) and kind: made on a
    /// member's first failure, so only failing members are listed.
    member_failures: Family<Labels, Counter>,
    /// `[slot][failure kind]`: requests the client's doing ended (only those
    /// kinds are ever counted).
    client_failures: [[Counter; KINDS]; 2],
    /// `[slot]`: requests sent again on a new connection after a pooled
    /// one turned out closed.
    reconnects: [Counter; 2],
    retries: Counter,
    /// Failed requests of the release the guard watches (a canary, or the
    /// new active slot in its bake), the user's or charged only.
    watched_failures: Counter,
    /// Of those, the ones the stable release answered for.
    answered_by_stable: Counter,
    latency: [Histogram; 2],
    active: Family<Labels, Gauge>,
    canary_percent: Gauge,
    pub switches: Counter,
    pub refused_switches: Counter,
    pub aborts: Counter,
    pub rollbacks: Counter,
    probe_results: Family<Labels, Counter>,
    pub budget_used_minutes: Gauge<f64, AtomicU64>,
    pub budget_left_minutes: Gauge<f64, AtomicU64>,
    /// Indexed by `HandshakeFailure as usize`.
    tls_handshake_failures: [Counter; HandshakeFailure::ALL.len()],
    /// Client connections of the public listener open; the listener counts them.
    pub client_connections: Gauge,
    /// Of those, the parked ones (idle HTTP/1.1, holding no buffer); the
    /// listener counts them.
    pub parked_connections: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("bluegreen");
        let requests_family = Family::<Labels, Counter>::default();
        registry.register(
            "requests",
            "User requests by slot and status class",
            requests_family.clone(),
        );
        let failures_family = Family::<Labels, Counter>::default();
        registry.register(
            "upstream_failures",
            "Attempts of user requests the upstream failed (retried or not), by slot and kind",
            failures_family.clone(),
        );
        let member_failures = Family::<Labels, Counter>::default();
        registry.register(
            "member_failures",
            "Attempts of user requests the upstream failed, by slot, member (address) and kind",
            member_failures.clone(),
        );
        let client_family = Family::<Labels, Counter>::default();
        registry.register(
            "client_failures",
            "User requests ended by the client's doing (never counted against the slot), by slot and kind",
            client_family.clone(),
        );
        let reconnects_family = Family::<Labels, Counter>::default();
        registry.register(
            "reconnects",
            "User requests sent again on a new connection after a pooled one turned out closed",
            reconnects_family.clone(),
        );
        let latency_family = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
        });
        registry.register(
            "request_duration_seconds",
            "Time to the upstream's response headers, by slot",
            latency_family.clone(),
        );

        let requests = Slot::ALL.map(|slot| {
            CLASSES.map(|class| {
                requests_family.get_or_create_owned(&vec![
                    ("slot", slot.to_string()),
                    ("class", class.to_string()),
                ])
            })
        });
        let by_kind = |family: &Family<Labels, Counter>, source: Source| {
            Slot::ALL.map(|slot| {
                FailureKind::ALL.map(|kind| {
                    let labels = vec![
                        ("slot", slot.to_string()),
                        ("kind", kind.as_str().to_string()),
                    ];
                    // Only this source's kinds are shown; the others' stay
                    // unregistered counters nothing increments.
                    if kind.source() == source {
                        family.get_or_create_owned(&labels)
                    } else {
                        Counter::default()
                    }
                })
            })
        };
        let upstream_failures = by_kind(&failures_family, Source::Upstream);
        let client_failures = by_kind(&client_family, Source::Client);
        let reconnects = Slot::ALL
            .map(|slot| reconnects_family.get_or_create_owned(&vec![("slot", slot.to_string())]));
        let latency = Slot::ALL
            .map(|slot| latency_family.get_or_create_owned(&vec![("slot", slot.to_string())]));

        let retries = Counter::default();
        registry.register(
            "retries",
            "User requests retried on the other slot",
            retries.clone(),
        );
        let watched_failures = Counter::default();
        registry.register(
            "guard_watched_failures",
            "Failed requests of the release the guard watches (canary, or new active slot in its bake)",
            watched_failures.clone(),
        );
        let answered_by_stable = Counter::default();
        registry.register(
            "guard_answered_by_stable",
            "Failed requests of the watched release that the stable release answered instead",
            answered_by_stable.clone(),
        );
        let active = Family::<Labels, Gauge>::default();
        registry.register(
            "active_slot",
            "1 for the slot recorded as active",
            active.clone(),
        );
        let canary_percent = Gauge::default();
        registry.register(
            "canary_percent",
            "Share of user traffic sent to the canary slot",
            canary_percent.clone(),
        );
        let switches = Counter::default();
        registry.register(
            "switches",
            "Switches and promotions that moved traffic",
            switches.clone(),
        );
        let refused_switches = Counter::default();
        registry.register(
            "refused_switches",
            "Switches, rollbacks and canaries refused by the probe gate",
            refused_switches.clone(),
        );
        let aborts = Counter::default();
        registry.register(
            "canary_aborts",
            "Canaries aborted, by an operator or the guard",
            aborts.clone(),
        );
        let rollbacks = Counter::default();
        registry.register(
            "rollbacks",
            "Rollbacks, by an operator or the guard",
            rollbacks.clone(),
        );
        let probe_results = Family::<Labels, Counter>::default();
        registry.register(
            "probe_results",
            "Probe scenario runs by scenario and result",
            probe_results.clone(),
        );
        let budget_used_minutes = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "error_budget_used_minutes",
            "Bad minutes counted against the SLA this year",
            budget_used_minutes.clone(),
        );
        let budget_left_minutes = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "error_budget_left_minutes",
            "Minutes of downtime the SLA still allows this year",
            budget_left_minutes.clone(),
        );
        let client_connections = Gauge::default();
        registry.register(
            "client_connections",
            "Client connections open on the public listener",
            client_connections.clone(),
        );
        let parked_connections = Gauge::default();
        registry.register(
            "parked_connections",
            "Idle HTTP/1.1 client connections parked: a bare socket, no buffer",
            parked_connections.clone(),
        );

        let handshake_family = Family::<Labels, Counter>::default();
        registry.register(
            "tls_handshake_failures",
            "TLS connections closed before their handshake completed, by reason",
            handshake_family.clone(),
        );
        let tls_handshake_failures = HandshakeFailure::ALL.map(|reason| {
            handshake_family.get_or_create_owned(&vec![("reason", reason.as_str().to_string())])
        });

        Metrics {
            registry,
            requests,
            upstream_failures,
            member_failures,
            client_failures,
            reconnects,
            retries,
            watched_failures,
            answered_by_stable,
            latency,
            active,
            canary_percent,
            switches,
            refused_switches,
            aborts,
            rollbacks,
            probe_results,
            budget_used_minutes,
            budget_left_minutes,
            tls_handshake_failures,
            client_connections,
            parked_connections,
        }
    }

    /// Counts one user request's outcome (`outcome::Tally` calls this).
    pub fn record(&self, slot: Slot, outcome: Outcome, latency_seconds: f64) {
        let s = slot.index();
        match outcome {
            Outcome::Answered(status) => {
                let class = (status / 100).clamp(1, 5) as usize - 1;
                self.requests[s][class].inc();
                self.latency[s].observe(latency_seconds);
            }
            Outcome::Failed(kind) => match kind.source() {
                Source::Upstream => {
                    self.requests[s][4].inc();
                }
                Source::Client => {
                    self.client_failures[s][kind_index(kind)].inc();
                }
                Source::Proxy => {}
            },
        };
    }

    /// Counts one attempt the member at `member` failed, retried or not.
    /// The member's label is looked up here, on the failure path only.
    pub fn upstream_failure(&self, slot: Slot, member: SocketAddr, kind: FailureKind) {
        if kind.source() == Source::Upstream {
            self.upstream_failures[slot.index()][kind_index(kind)].inc();
            self.member_failures
                .get_or_create(&vec![
                    ("slot", slot.to_string()),
                    ("member", member.to_string()),
                    ("kind", kind.as_str().to_string()),
                ])
                .inc();
        }
    }

    /// Counts a request sent again on a new connection to the same slot.
    pub fn reconnected(&self, slot: Slot) {
        self.reconnects[slot.index()].inc();
    }

    pub fn tls_handshake_failed(&self, reason: HandshakeFailure) {
        self.tls_handshake_failures[reason as usize].inc();
    }

    pub fn retried(&self) {
        self.retries.inc();
    }

    /// A request of the watched release failed.
    pub fn watched_failure(&self) {
        self.watched_failures.inc();
    }

    /// The stable release answered for a failed request of the watched one.
    pub fn answered_by_stable(&self) {
        self.answered_by_stable.inc();
    }

    pub fn set_routing(&self, active: Slot, canary_percent: u8) {
        for slot in Slot::ALL {
            self.active
                .get_or_create(&vec![("slot", slot.to_string())])
                .set(i64::from(slot == active));
        }
        self.canary_percent.set(i64::from(canary_percent));
    }

    pub fn probe_result(&self, scenario: &str, ok: bool) {
        self.probe_results
            .get_or_create(&vec![
                ("scenario", scenario.to_string()),
                ("result", if ok { "pass" } else { "fail" }.to_string()),
            ])
            .inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

fn kind_index(kind: FailureKind) -> usize {
    FailureKind::ALL
        .iter()
        .position(|k| *k == kind)
        .unwrap_or_default()
}
