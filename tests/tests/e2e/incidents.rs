//! Incidents and the SLA: a refused release is a prevented incident with one signed notice, a
//! canary the guard pulls back opens and closes an incident, dead upstreams spend the error
//! budget, and a restart keeps the event log, the incidents and the budget.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use e2e::{Proxy, Shortener, TestStack, eventually, http_client};
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

const SECRET: &str = "e2e-webhook-secret";
/// A notice is queued when the detector sees the refusal (within a second) and sent at once.
const NOTICE_TIMEOUT: Duration = Duration::from_secs(15);
/// Incidents close after `quiet_ms` (1.5 s here) without failures, checked every second.
const INCIDENT_TIMEOUT: Duration = Duration::from_secs(20);
/// A bad minute counts once the UTC minute it is in has ended (at most 60 s, plus a sample).
const MINUTE_TIMEOUT: Duration = Duration::from_secs(80);
/// The gauges follow the budget within a sample.
const TIMEOUT_METRICS: Duration = Duration::from_secs(5);
/// How many user requests a test may send while it waits for the guard.
const MAX_USER_REQUESTS: usize = 3_000;
/// Fast health checks and a short quiet period, so that the tests take seconds, not minutes.
const FAST: &str =
    "[health]\ninterval_ms = 250\nfall = 2\nrise = 1\n\n[incidents]\nquiet_ms = 1500\n";

/// One POST the receiver got.
#[derive(Debug, Clone)]
struct Received {
    signature: Option<String>,
    event: Option<String>,
    body: Bytes,
}

/// A webhook receiver on a loopback port: records every request and answers 204.
struct WebhookReceiver {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    server: JoinHandle<()>,
}

impl WebhookReceiver {
    async fn start() -> WebhookReceiver {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding an ephemeral loopback port");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&received);
        let server = tokio::spawn(async move {
            // Ends when the receiver drops (abort).
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let log = Arc::clone(&log);
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let log = Arc::clone(&log);
                        async move {
                            let header = |name: &str| {
                                request
                                    .headers()
                                    .get(name)
                                    .and_then(|v| v.to_str().ok())
                                    .map(str::to_owned)
                            };
                            let signature = header("x-bluegreen-signature");
                            let event = header("x-bluegreen-event");
                            let body = request
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            log.lock().expect("receiver lock").push(Received {
                                signature,
                                event,
                                body,
                            });
                            let mut answer = Response::new(Full::new(Bytes::new()));
                            *answer.status_mut() = hyper::StatusCode::NO_CONTENT;
                            Ok::<_, Infallible>(answer)
                        }
                    });
                    let _ = Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        WebhookReceiver {
            addr,
            received,
            server,
        }
    }

    fn url(&self) -> String {
        format!("http://{}/hooks/incidents", self.addr)
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().expect("receiver lock").clone()
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn signature_of(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// `GET /status.json` on the public status listener (no token).
async fn public_status(proxy: &Proxy) -> Value {
    let response = http_client(Duration::from_secs(10))
        .get(proxy.status_url("/status.json"))
        .send()
        .await
        .expect("the status listener answers");
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.expect("status.json is JSON")
}

fn incidents_of_kind(status: &Value, kind: &str) -> Vec<Value> {
    status["incidents"]
        .as_array()
        .map(|all| all.iter().filter(|i| i["kind"] == kind).cloned().collect())
        .unwrap_or_default()
}

/// `GET /events?since=0&limit=1000`: the kinds in order.
async fn event_kinds(proxy: &Proxy) -> Vec<String> {
    let (code, body) = proxy
        .admin(Method::GET, "/events?since=0&limit=1000", None)
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    body["events"]
        .as_array()
        .unwrap_or_else(|| panic!("no events array: {body}"))
        .iter()
        .map(|e| e["kind"].as_str().unwrap_or("?").to_owned())
        .collect()
}

/// User requests through the proxy; returns how many answered 5xx (or did not answer).
async fn user_requests(proxy: &Proxy, n: usize) -> u64 {
    let client = http_client(Duration::from_secs(10));
    let mut failed = 0;
    for _ in 0..n {
        match client.get(proxy.public_url("/healthz")).send().await {
            Ok(response) if !response.status().is_server_error() => {}
            _ => failed += 1,
        }
    }
    failed
}

#[tokio::test]
async fn a_refused_broken_release_is_a_prevented_incident_with_one_signed_notice() {
    // Arrange
    let receiver = WebhookReceiver::start().await;
    let notify = format!(
        "[notify]\nbackoff_ms = 50\n\n[[notify.webhook]]\nurl = {:?}\nsecret = {SECRET:?}\n",
        receiver.url()
    );
    let stack = TestStack::builder()
        .green(Shortener::builder().release("v2").fault("create-500"))
        .gate(1, 10_000)
        .proxy(|p| p.extra_toml(&notify))
        .start()
        .await;

    // Act
    let (code, refusal) = stack.proxy.switch("green").await;

    // Assert
    assert_eq!(code, StatusCode::CONFLICT, "{refusal}");
    assert!(
        eventually(|| async { !receiver.received().is_empty() }, NOTICE_TIMEOUT).await,
        "no notice arrived; proxy log:\n{}",
        stack.proxy.log_tail()
    );
    // Notices go out in order: a duplicate of the first would arrive before the second's.
    let (code, _) = stack.proxy.switch("green").await;
    assert_eq!(code, StatusCode::CONFLICT);
    assert!(
        eventually(|| async { receiver.received().len() >= 2 }, NOTICE_TIMEOUT).await,
        "the second notice did not arrive"
    );
    let received = receiver.received();
    assert_eq!(
        received.len(),
        2,
        "one notice per prevented incident: {received:?}"
    );
    let mut ids = Vec::new();
    for notice in &received {
        assert_eq!(
            notice.signature.as_deref(),
            Some(signature_of(&notice.body).as_str()),
            "the signature is the HMAC-SHA256 of the body"
        );
        assert_eq!(notice.event.as_deref(), Some("prevented_incident"));
        let body: Value = serde_json::from_slice(&notice.body).expect("a JSON notice");
        assert_eq!(body["event"], "prevented_incident", "{body}");
        assert_eq!(body["incident"]["kind"], "prevented", "{body}");
        assert_eq!(body["incident"]["failed_requests"], 0, "{body}");
        assert!(
            body["incident"]["releases"]
                .as_array()
                .is_some_and(|r| r.contains(&json!("v2"))),
            "the stopped release is named: {body}"
        );
        ids.push(body["incident"]["id"].as_u64().expect("an id"));
    }
    assert_eq!(ids[1], ids[0] + 1, "{ids:?}");
    let kinds = event_kinds(&stack.proxy).await;
    assert_eq!(
        kinds.iter().filter(|k| *k == "prevented_incident").count(),
        2,
        "{kinds:?}"
    );
    assert!(!kinds.contains(&"notice_failed".to_owned()), "{kinds:?}");
    let status = public_status(&stack.proxy).await;
    assert_eq!(incidents_of_kind(&status, "prevented").len(), 2, "{status}");
    assert!(
        incidents_of_kind(&status, "outage").is_empty(),
        "no user was affected: {status}"
    );
}

#[tokio::test]
async fn a_canary_the_guard_aborts_opens_and_closes_an_incident_with_its_failed_requests() {
    // Arrange: green answers the gate, then fails everything after 60 requests; users see
    // its failures (the stable release does not answer for it), so they make an incident.
    let stack = TestStack::builder()
        .green(Shortener::builder().release("v2").fault("fail-after=60"))
        .gate(1, 10_000)
        .proxy(|p| {
            p.extra_toml(
                "[guard]\nwindow_ms = 10000\ninterval_ms = 200\nmin_requests = 10\nbake_ms = 0\n\
                 answer_from_stable = false\n\n\
                 [health]\ninterval_ms = 2000\n\n[incidents]\nquiet_ms = 1500\n",
            )
        })
        .start()
        .await;
    let (code, body) = stack
        .proxy
        .admin(
            Method::POST,
            "/canary",
            Some(json!({ "slot": "green", "percent": 50 })),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "the canary did not start: {body}");

    // Act: users keep coming until the guard pulls green back.
    let mut failed = 0;
    let mut aborted = false;
    for _ in 0..MAX_USER_REQUESTS / 10 {
        failed += user_requests(&stack.proxy, 10).await;
        let status = stack.proxy.status().await;
        if status["guard"]["aborted"] == true && status["canary"].is_null() {
            aborted = true;
            break;
        }
    }

    // Assert
    assert!(
        aborted,
        "the guard never aborted the canary; log:\n{}",
        stack.proxy.log_tail()
    );
    assert!(
        failed > 0,
        "users saw no failure, so there is no incident to check"
    );
    let closed = |status: &Value| {
        let outages = incidents_of_kind(status, "outage");
        !outages.is_empty() && outages.iter().all(|i| !i["ended_at"].is_null())
    };
    assert!(
        eventually(
            || async { closed(&public_status(&stack.proxy).await) },
            INCIDENT_TIMEOUT
        )
        .await,
        "the incident did not close: {}",
        public_status(&stack.proxy).await
    );
    let status = public_status(&stack.proxy).await;
    let outages = incidents_of_kind(&status, "outage");
    assert_eq!(outages.len(), 1, "one incident: {status}");
    let incident = &outages[0];
    assert_eq!(
        incident["failed_requests"], failed,
        "every failed user request: {incident}"
    );
    assert!(incident["duration_secs"].as_u64().is_some(), "{incident}");
    assert!(
        incident["releases"]
            .as_array()
            .is_some_and(|r| r.contains(&json!("v2"))),
        "{incident}"
    );
    let timeline: Vec<&str> = incident["timeline"]
        .as_array()
        .map(|t| t.iter().filter_map(|e| e["what"].as_str()).collect())
        .unwrap_or_default();
    assert!(timeline.contains(&"guard_abort"), "{timeline:?}");
    assert_eq!(timeline.last(), Some(&"quiet"), "{timeline:?}");
    let kinds = event_kinds(&stack.proxy).await;
    for kind in [
        "canary_start",
        "guard_abort",
        "incident_open",
        "incident_close",
    ] {
        assert!(
            kinds.contains(&kind.to_owned()),
            "{kind} missing from {kinds:?}"
        );
    }
}

#[tokio::test]
async fn dead_upstreams_spend_the_error_budget_and_a_restart_keeps_it() {
    // Arrange
    let mut stack = TestStack::builder()
        .proxy(|p| p.extra_toml(FAST))
        .start()
        .await;
    let budget = stack.proxy.status().await["error_budget"].clone();
    assert_eq!(budget["used_minutes"], 0, "{budget}");
    assert_eq!(budget["allowed_minutes"], 20.0, "{budget}");

    // Act: both releases die while users keep coming.
    stack.blue.sigkill().await;
    stack.green.sigkill().await;
    let both_down = |status: Value| {
        status["slots"]["blue"]["healthy"] == false && status["slots"]["green"]["healthy"] == false
    };
    assert!(
        eventually(
            || async { both_down(stack.proxy.status().await) },
            INCIDENT_TIMEOUT
        )
        .await,
        "the health checks never marked both slots down"
    );
    let failed = user_requests(&stack.proxy, 10).await;
    assert_eq!(failed, 10, "nothing could answer");

    // Assert: once the minute is over, it counts.
    let used = || async { stack.proxy.status().await["error_budget"]["used_minutes"].as_u64() };
    assert!(
        eventually(|| async { used().await.unwrap_or(0) >= 1 }, MINUTE_TIMEOUT).await,
        "no bad minute was counted: {}",
        stack.proxy.status().await
    );
    let gauge = || async {
        let (_, metrics) = stack.proxy.admin(Method::GET, "/metrics", None).await;
        metrics
            .as_str()
            .and_then(|text| {
                text.lines()
                    .find(|l| l.starts_with("bluegreen_error_budget_used_minutes "))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    assert!(
        eventually(
            || async { gauge().await.is_some_and(|g| g >= 1.0) },
            TIMEOUT_METRICS
        )
        .await,
        "the gauge shows {:?}",
        gauge().await
    );
    let status = public_status(&stack.proxy).await;
    assert!(
        status["error_budget"]["last_24h"]["bad_minutes"].as_u64() >= Some(1),
        "{status}"
    );
    assert!(
        !incidents_of_kind(&status, "outage").is_empty(),
        "users were affected: {status}"
    );
    let used_before = used().await.unwrap_or(0);

    stack.blue.restart().await;
    stack.proxy.restart().await;

    let after = stack.proxy.status().await["error_budget"].clone();
    assert!(
        after["used_minutes"].as_u64() >= Some(used_before),
        "the restart lost bad minutes: {used_before} before, {after} after"
    );
    let status = public_status(&stack.proxy).await;
    assert!(!incidents_of_kind(&status, "outage").is_empty(), "{status}");
}

#[tokio::test]
async fn a_restart_keeps_the_event_log_and_the_incidents() {
    // Arrange
    let mut stack = TestStack::builder()
        .green(Shortener::builder().release("v2").fault("create-500"))
        .gate(1, 10_000)
        .start()
        .await;
    let (code, _) = stack.proxy.switch("green").await;
    assert_eq!(code, StatusCode::CONFLICT);
    assert!(
        eventually(
            || async {
                !incidents_of_kind(&public_status(&stack.proxy).await, "prevented").is_empty()
            },
            INCIDENT_TIMEOUT
        )
        .await,
        "no prevented incident"
    );
    let (_, before) = stack
        .proxy
        .admin(Method::GET, "/events?since=0&limit=1000", None)
        .await;
    let before = before["events"].as_array().cloned().unwrap_or_default();
    let prevented = incidents_of_kind(&public_status(&stack.proxy).await, "prevented");

    // Act
    stack.proxy.restart().await;

    // Assert
    let (code, after) = stack
        .proxy
        .admin(Method::GET, "/events?since=0&limit=1000", None)
        .await;
    assert_eq!(code, StatusCode::OK);
    let after = after["events"].as_array().cloned().unwrap_or_default();
    assert!(after.len() >= before.len(), "{after:?}");
    assert_eq!(
        &after[..before.len()],
        &before[..],
        "the log is kept as it was"
    );
    let kinds: Vec<&str> = after.iter().filter_map(|e| e["kind"].as_str()).collect();
    assert!(
        kinds.contains(&"switch_refused") && kinds.contains(&"prevented_incident"),
        "{kinds:?}"
    );
    assert_eq!(
        incidents_of_kind(&public_status(&stack.proxy).await, "prevented"),
        prevented,
        "the incidents are kept"
    );

    let last = after.last().and_then(|e| e["seq"].as_u64()).expect("a seq");
    let (code, body) = stack
        .proxy
        .admin(Method::GET, &format!("/events?since={last}"), None)
        .await;
    assert_eq!((code, body), (StatusCode::OK, json!({ "events": [] })));
    let (code, body) = stack
        .proxy
        .admin(Method::GET, "/events?limit=1", None)
        .await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(body["events"].as_array().map(Vec::len), Some(1), "{body}");
    for bad in [
        "/events?limit=0",
        "/events?limit=1001",
        "/events?since=x",
        "/events?what=1",
    ] {
        let (code, body) = stack.proxy.admin(Method::GET, bad, None).await;
        assert_eq!(code, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert!(body["error"].is_string(), "{bad}: {body}");
    }
}
