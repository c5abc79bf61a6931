//! Background users: concurrent clients creating and following links through the proxy while
//! a test does something to it, recording every error they see.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::client::{Created, REQUEST_TIMEOUT, create_link, follow, http_client, unique};
use crate::harness::eventually;

/// A client stops after this many rounds even if nobody stops it.
const MAX_ROUNDS_PER_CLIENT: u64 = 1_000_000;
/// Errors kept per client, so that a dead proxy does not fill the memory.
const MAX_ERRORS_KEPT: usize = 50;

/// What the clients saw, once stopped.
#[derive(Debug, Default, Clone)]
pub struct TrafficReport {
    /// Requests sent, failed or not.
    pub requests: u64,
    /// Failed requests (transport errors included).
    pub failures: u64,
    /// The first errors, with the time since the traffic started.
    pub errors: Vec<String>,
    /// Answered requests per `x-release`.
    pub by_release: BTreeMap<String, u64>,
    /// Every link created (201), in no particular order.
    pub links: Vec<Created>,
}

impl TrafficReport {
    /// Asserts that no user request failed `during` what the test did (in the panic message).
    ///
    /// # Panics
    /// When a request failed, with the counts and the first errors.
    #[track_caller]
    pub fn assert_no_failure(&self, during: &str) {
        assert!(
            self.errors.is_empty(),
            "{} of {} user requests failed {during}, first ones: {:#?}",
            self.failures,
            self.requests,
            self.errors
        );
    }
}

/// Running background clients; stop them with [`Traffic::stop`] (dropping aborts them).
#[derive(Debug)]
pub struct Traffic {
    stop: Arc<AtomicBool>,
    requests: Arc<AtomicU64>,
    clients: Vec<JoinHandle<TrafficReport>>,
}

impl Traffic {
    /// Starts `clients` clients against `base` (`http://127.0.0.1:PORT`). Each round a client
    /// creates a link (`POST /api/links`) and follows it (`GET /{code}`, redirect not
    /// followed); every other round it also follows one of its older links.
    pub fn start(base: &str, clients: usize) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicU64::new(0));
        let clients = (0..clients)
            .map(|id| {
                tokio::spawn(run_client(
                    id,
                    base.to_owned(),
                    Arc::clone(&stop),
                    Arc::clone(&requests),
                ))
            })
            .collect();
        Traffic {
            stop,
            requests,
            clients,
        }
    }

    /// Requests sent so far by all clients.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Waits until the clients have sent `more` requests beyond the current count; false
    /// when they have not within `timeout` (the contract of [`eventually`]).
    #[must_use = "assert on it, naming what was awaited"]
    pub async fn wait_for_more(&self, more: u64, timeout: Duration) -> bool {
        let target = self.requests() + more;
        eventually(|| async { self.requests() >= target }, timeout).await
    }

    /// Stops the clients after their current request and merges what they saw.
    ///
    /// # Panics
    /// When a client task panicked.
    pub async fn stop(mut self) -> TrafficReport {
        self.stop.store(true, Ordering::Relaxed);
        let mut report = TrafficReport::default();
        for client in self.clients.drain(..) {
            let part = client.await.expect("a traffic client panicked");
            report.requests += part.requests;
            report.failures += part.failures;
            report.errors.extend(part.errors);
            for (release, n) in part.by_release {
                *report.by_release.entry(release).or_default() += n;
            }
            report.links.extend(part.links);
        }
        report
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for client in &self.clients {
            client.abort();
        }
    }
}

async fn run_client(
    id: usize,
    base: String,
    stop: Arc<AtomicBool>,
    requests: Arc<AtomicU64>,
) -> TrafficReport {
    let client = http_client(REQUEST_TIMEOUT);
    let started = Instant::now();
    let mut report = TrafficReport::default();
    let record = |report: &mut TrafficReport, what: &str, result: Result<String, String>| {
        requests.fetch_add(1, Ordering::Relaxed);
        report.requests += 1;
        match result {
            Ok(release) => *report.by_release.entry(release).or_default() += 1,
            Err(e) => {
                report.failures += 1;
                if report.errors.len() < MAX_ERRORS_KEPT {
                    let at = started.elapsed().as_millis();
                    report
                        .errors
                        .push(format!("client {id} at {at} ms, {what}: {e}"));
                }
            }
        }
    };
    for round in 0..MAX_ROUNDS_PER_CLIENT {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let url = format!("https://e2e.example/{}", unique(&format!("c{id}")));
        let created = create_link(&client, &base, &url).await;
        match created {
            Ok(link) => {
                record(&mut report, "create", Ok(link.release.clone()));
                let followed = follow(&client, &base, &link.code, &link.url).await;
                record(&mut report, "follow new", followed);
                report.links.push(link);
            }
            Err(e) => record(&mut report, "create", Err(e)),
        }
        if round % 2 == 1 && !report.links.is_empty() {
            let old = report.links[(round as usize / 2) % report.links.len()].clone();
            let followed = follow(&client, &base, &old.code, &old.url).await;
            record(&mut report, "follow old", followed);
        }
    }
    report
}
