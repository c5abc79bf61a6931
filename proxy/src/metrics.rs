//! Prometheus metrics for `GET /metrics` on the admin listener. The handles
//! the request path touches are made once at start, so a request costs a few
//! atomic adds and no label lookup.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::http::traffic::{FailureKind, Outcome};
use crate::slot::Slot;

type Labels = Vec<(&'static str, String)>;

const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];
const KINDS: [FailureKind; 3] = [
    FailureKind::Connect,
    FailureKind::Timeout,
    FailureKind::Reset,
];

pub struct Metrics {
    registry: Registry,
    /// `[slot][status class]`.
    requests: [[Counter; 5]; 2],
    /// `[slot][failure kind]`.
    upstream_failures: [[Counter; 3]; 2],
    retries: Counter,
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
            "User requests that got no upstream answer, by slot and kind",
            failures_family.clone(),
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
        let upstream_failures = Slot::ALL.map(|slot| {
            KINDS.map(|kind| {
                failures_family.get_or_create_owned(&vec![
                    ("slot", slot.to_string()),
                    ("kind", kind.as_str().to_string()),
                ])
            })
        });
        let latency = Slot::ALL
            .map(|slot| latency_family.get_or_create_owned(&vec![("slot", slot.to_string())]));

        let retries = Counter::default();
        registry.register(
            "retries",
            "User requests retried on the other slot",
            retries.clone(),
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

        Metrics {
            registry,
            requests,
            upstream_failures,
            retries,
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
            client_connections,
            parked_connections,
        }
    }

    /// Counts one user request.
    pub fn record(&self, slot: Slot, outcome: Outcome, latency_seconds: f64) {
        let s = slot.index();
        match outcome {
            Outcome::Answered(status) => {
                let class = (status / 100).clamp(1, 5) as usize - 1;
                self.requests[s][class].inc();
                self.latency[s].observe(latency_seconds);
            }
            Outcome::Failed(_) => {
                self.requests[s][4].inc();
            }
        };
    }

    /// Counts one failed attempt on an upstream, retried or not.
    pub fn upstream_failure(&self, slot: Slot, kind: FailureKind) {
        let k = KINDS
            .iter()
            .position(|x| *x == kind)
            .expect("every kind is listed");
        self.upstream_failures[slot.index()][k].inc();
    }

    pub fn retried(&self) {
        self.retries.inc();
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
