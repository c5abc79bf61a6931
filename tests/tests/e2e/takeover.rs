//! A second proxy on the same data directory takes over from the running one: the very
//! listening sockets change hands, so users (keep-alive, fresh connections, HTTP/2) see no
//! error; a successor that is invalid or dies before it is ready leaves the old one serving;
//! the canary survives takeovers and restarts; a crash's downtime is counted, a takeover's
//! is not.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use e2e::client::{REQUEST_TIMEOUT, follow, raw_exchange};
use e2e::{Shortener, TestStack, Traffic, eventually, http_client};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

const TAKEOVERS: usize = 20;
const KEEP_ALIVE_CLIENTS: usize = 4;
/// Each takeover must see users on every kind of connection, or it tests nothing.
const TRAFFIC_TIMEOUT: Duration = Duration::from_secs(20);
const TIMEOUT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_takeovers_under_load_fail_no_request_and_lose_no_link() {
    // Arrange
    let mut stack = TestStack::start().await;
    let public = stack.proxy.public_addr();
    let keep_alive = Traffic::start(&stack.base(), KEEP_ALIVE_CLIENTS);
    let fresh = Users::start(Kind::FreshConnections, public);
    let h2 = Users::start(Kind::Http2, public);
    assert!(
        keep_alive.wait_for_more(20, TRAFFIC_TIMEOUT).await
            && fresh.wait_for_more(5).await
            && h2.wait_for_more(5).await,
        "the users got no traffic through the proxy"
    );

    // Act
    for n in 0..TAKEOVERS {
        let old = stack.proxy.take_over().await;
        assert!(
            old.success(),
            "takeover #{n}: the old proxy exited with {old}"
        );
        assert!(
            keep_alive
                .wait_for_more(KEEP_ALIVE_CLIENTS as u64, TRAFFIC_TIMEOUT)
                .await
                && fresh.wait_for_more(2).await
                && h2.wait_for_more(2).await,
            "the users stalled after takeover #{n}"
        );
    }
    let report = keep_alive.stop().await;
    let fresh = fresh.stop().await;
    let h2 = h2.stop().await;

    // Assert
    println!(
        "keep-alive: {} requests, {} links; fresh connections: {}; HTTP/2: {}",
        report.requests,
        report.links.len(),
        fresh.requests,
        h2.requests
    );
    report.assert_no_failure("during the takeovers (HTTP/1.1 keep-alive)");
    fresh.assert_no_failure("during the takeovers (a connection per request)");
    h2.assert_no_failure("during the takeovers (HTTP/2)");
    let client = http_client(REQUEST_TIMEOUT);
    let mut lost = Vec::new();
    for link in &report.links {
        if let Err(e) = follow(&client, &stack.base(), &link.code, &link.url).await {
            lost.push(e);
        }
    }
    for code in fresh.codes.iter().chain(&h2.codes) {
        let response = client
            .get(stack.proxy.public_url(&format!("/{code}")))
            .send()
            .await
            .map(|r| r.status());
        if !matches!(response, Ok(StatusCode::FOUND)) {
            lost.push(format!("GET /{code}: {response:?}"));
        }
    }
    assert!(lost.is_empty(), "created links do not resolve: {lost:#?}");
    let takeovers = stack.proxy.events_of_kind("takeover").await;
    assert_eq!(takeovers.len(), TAKEOVERS, "{takeovers:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_successor_that_is_invalid_or_fails_to_start_exits_non_zero_and_the_old_one_serves_on() {
    // Arrange: one successor's config is invalid; the other's is valid, but its admin
    // listener moves to a port that is taken, so it fails after the old one froze for it.
    let mut stack = TestStack::start().await;
    let traffic = Traffic::start(&stack.base(), 2);
    assert!(traffic.wait_for_more(10, TRAFFIC_TIMEOUT).await);
    let text = std::fs::read_to_string(stack.proxy.config_path()).expect("the config");
    let invalid = stack.dir.path().join("invalid.toml");
    std::fs::write(&invalid, format!("no_such_key = 1\n{text}")).expect("write");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_addr = taken.local_addr().expect("addr");
    let failing = stack.dir.path().join("failing.toml");
    let moved = text.replace(
        "admin = \"127.0.0.1:0\"",
        &format!("admin = \"{taken_addr}\""),
    );
    assert_ne!(moved, text, "the generated config sets the admin listener");
    std::fs::write(&failing, moved).expect("write");

    for config in [&invalid, &failing] {
        // Act
        let mut successor = stack.proxy.spawn_successor(config);
        let exit = successor.wait_exit(TIMEOUT).await;

        // Assert
        assert!(
            exit.is_some_and(|status| !status.success()),
            "the successor with {} exited with {exit:?}",
            config.display()
        );
        assert!(traffic.wait_for_more(10, TRAFFIC_TIMEOUT).await);
        assert!(!stack.proxy.has_exited(), "the old proxy stopped");
        // Not frozen: a routing change (it waits for a freeze) goes through.
        let to = if stack.proxy.active().await == "blue" {
            "green"
        } else {
            "blue"
        };
        let (code, body) = stack.proxy.switch(to).await;
        assert_eq!(code, StatusCode::OK, "{body}");
    }
    let old = stack.proxy.take_over().await;
    assert!(old.success(), "a valid takeover still works: {old}");
    assert!(traffic.wait_for_more(10, TRAFFIC_TIMEOUT).await);
    traffic
        .stop()
        .await
        .assert_no_failure("while successors failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_successor_killed_before_it_is_ready_leaves_the_old_one_serving_and_unfrozen() {
    // Arrange: green accepts connections and never answers, so a successor's probe of it
    // keeps the successor in its preparation (the old one frozen) for the health timeout.
    let dir = tempfile::tempdir().expect("a temp dir");
    let blue = Shortener::builder()
        .release("v1")
        .db(dir.path().join("links.db"))
        .start(dir.path())
        .await;
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut proxy = e2e::Proxy::builder()
        .blue(blue.addr())
        .green(silent.local_addr().expect("addr"))
        .extra_toml("[health]\ntimeout_ms = 10000\ninterval_ms = 200\n")
        .start(dir.path())
        .await;
    let traffic = Traffic::start(&proxy.base(), 2);
    assert!(traffic.wait_for_more(10, TRAFFIC_TIMEOUT).await);

    // Act
    let mut successor = proxy.spawn_successor(proxy.config_path());
    assert!(
        eventually(
            || async {
                proxy
                    .log_tail()
                    .contains("a new process takes over: freezing")
            },
            TIMEOUT
        )
        .await,
        "the old proxy never froze: {}",
        proxy.log_tail()
    );
    assert!(
        traffic.wait_for_more(10, TRAFFIC_TIMEOUT).await,
        "frozen, it must still serve"
    );
    successor.sigkill().await;

    // Assert
    assert!(
        eventually(
            || async { proxy.log_tail().contains("takeover called off") },
            TIMEOUT
        )
        .await,
        "the old proxy did not notice: {}",
        proxy.log_tail()
    );
    assert!(traffic.wait_for_more(10, TRAFFIC_TIMEOUT).await);
    assert!(!proxy.has_exited(), "the old proxy stopped");
    // Thawed: a routing change (it waits for a freeze) goes through.
    let (code, body) = proxy.put_slot("green", blue.addr()).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    traffic
        .stop()
        .await
        .assert_no_failure("while a successor was killed before it was ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_at_25_percent_survives_a_takeover_and_a_restart() {
    // Arrange
    let mut stack = TestStack::start().await;
    let (code, body) = stack
        .proxy
        .admin(
            Method::POST,
            "/canary",
            Some(json!({ "slot": "green", "percent": 25 })),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");

    // Act + Assert
    let old = stack.proxy.take_over().await;
    assert!(old.success(), "{old}");
    assert_canary_25(&stack, "after a takeover").await;
    stack.proxy.restart().await;
    assert_canary_25(&stack, "after a restart").await;
    assert!(
        stack.proxy.events_of_kind("canary_abort").await.is_empty()
            && stack.proxy.events_of_kind("guard_abort").await.is_empty(),
        "nothing ended the canary"
    );
}

async fn assert_canary_25(stack: &TestStack, when: &str) {
    let status = stack.proxy.status().await;
    assert_eq!(
        status["canary"],
        json!({ "slot": "green", "percent": 25 }),
        "{when}: {status}"
    );
    // Users without a bucket cookie: about a quarter of them land on green.
    let client = http_client(REQUEST_TIMEOUT);
    let mut green = 0;
    for _ in 0..200 {
        let response = client
            .get(stack.proxy.public_url("/healthz"))
            .send()
            .await
            .expect("the proxy answers");
        assert_eq!(response.status(), StatusCode::OK);
        if e2e::client::release_of(&response) == "v2" {
            green += 1;
        }
    }
    assert!(
        (20..=90).contains(&green),
        "{when}: {green} of 200 users went to green at 25%"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crash_s_downtime_counts_in_the_budget_the_events_and_the_incidents_a_takeover_s_not() {
    // Arrange
    let mut stack = TestStack::start().await;
    let used = |status: &Value| status["error_budget"]["used_minutes"].as_u64();
    let before = used(&stack.proxy.status().await).expect("used_minutes");

    // Act: a real gap of at least DOWN with nothing serving.
    const DOWN: Duration = Duration::from_secs(3);
    stack.proxy.sigkill().await;
    let killed = Instant::now();
    tokio::time::sleep(DOWN).await;
    stack.proxy.start_again().await;
    let gap = killed.elapsed();

    // Assert
    let status = stack.proxy.status().await;
    assert!(
        used(&status) > Some(before),
        "the gap counted no bad minute: {before} before, {status}"
    );
    let down = stack.proxy.events_of_kind("proxy_down").await;
    assert_eq!(down.len(), 1, "{down:#?}");
    let secs = down[0]["detail"]["down_secs"].as_u64().expect("down_secs");
    // The heartbeat is saved every 10 s: the gap is at least the real one, at most 10 s more.
    assert!(
        secs >= DOWN.as_secs() && secs <= gap.as_secs() + 11,
        "down_secs {secs} for a gap of {gap:?}"
    );
    let incidents = public_incidents(&stack).await;
    let outage = incidents
        .iter()
        .find(|i| i["kind"] == "outage" && i["ended_at"].is_string())
        .unwrap_or_else(|| panic!("no closed outage for the gap: {incidents:#?}"));
    assert!(
        outage["duration_secs"].as_u64() >= Some(DOWN.as_secs()),
        "{outage}"
    );
    for kind in ["incident_open", "incident_close"] {
        assert_eq!(stack.proxy.events_of_kind(kind).await.len(), 1, "{kind}");
    }

    // And a takeover is no gap.
    let used_before = used(&stack.proxy.status().await);
    let old = stack.proxy.take_over().await;
    assert!(old.success(), "{old}");
    assert_eq!(stack.proxy.events_of_kind("proxy_down").await.len(), 1);
    assert_eq!(used(&stack.proxy.status().await), used_before);
}

async fn public_incidents(stack: &TestStack) -> Vec<Value> {
    let client = http_client(REQUEST_TIMEOUT);
    let body: Value = client
        .get(stack.proxy.status_url("/status.json"))
        .send()
        .await
        .expect("the status page answers")
        .json()
        .await
        .expect("JSON");
    body["incidents"].as_array().cloned().unwrap_or_default()
}

/// Users of one kind of connection, each answer counted.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// HTTP/1.1, a new connection (`Connection: close`) per request.
    FreshConnections,
    /// HTTP/2 with prior knowledge, through a pooling client that reconnects after GOAWAY.
    Http2,
}

struct Users {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    task: JoinHandle<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    requests: u64,
    errors: Vec<String>,
    /// Codes of the links created (201).
    codes: Vec<String>,
}

impl Seen {
    #[track_caller]
    fn assert_no_failure(&self, during: &str) {
        assert!(
            self.errors.is_empty(),
            "{} of {} requests failed {during}: {:#?}",
            self.errors.len(),
            self.requests,
            &self.errors[..self.errors.len().min(20)]
        );
    }
}

impl Users {
    /// One user sending, in turn, `POST /api/links` and `GET /{code}` of what it created.
    fn start(kind: Kind, public: SocketAddr) -> Users {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(send(kind, public, Arc::clone(&stop), Arc::clone(&sent)));
        Users { stop, sent, task }
    }

    async fn wait_for_more(&self, more: u64) -> bool {
        let target = self.sent.load(Ordering::Relaxed) + more;
        eventually(
            || async { self.sent.load(Ordering::Relaxed) >= target },
            TRAFFIC_TIMEOUT,
        )
        .await
    }

    async fn stop(self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.expect("a user panicked")
    }
}

async fn send(kind: Kind, public: SocketAddr, stop: Arc<AtomicBool>, sent: Arc<AtomicU64>) -> Seen {
    let h2: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let mut seen = Seen::default();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let create = n % 2 == 0 || seen.codes.is_empty();
        let (method, path, body) = if create {
            let url = format!("https://e2e.example/{}", e2e::client::unique("takeover"));
            (
                "POST",
                "/api/links".to_owned(),
                json!({ "url": url }).to_string(),
            )
        } else {
            let code = &seen.codes[(n as usize / 2) % seen.codes.len()];
            ("GET", format!("/{code}"), String::new())
        };
        let answer = match kind {
            Kind::FreshConnections => fresh_request(public, method, &path, &body).await,
            Kind::Http2 => h2_request(&h2, public, method, &path, body).await,
        };
        let expected = if create { 201 } else { 302 };
        seen.requests += 1;
        sent.fetch_add(1, Ordering::Relaxed);
        match answer {
            Ok((status, body)) if status == expected => {
                if create {
                    let created: Value = serde_json::from_slice(&body).unwrap_or_default();
                    match created["code"].as_str() {
                        Some(code) => seen.codes.push(code.to_owned()),
                        None => seen
                            .errors
                            .push(format!("{method} {path}: 201 without a code")),
                    }
                }
            }
            Ok((status, _)) => seen.errors.push(format!("{method} {path}: {status}")),
            Err(e) => seen.errors.push(format!("{method} {path}: {e}")),
        }
        n += 1;
    }
    seen
}

async fn fresh_request(
    public: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, Vec<u8>), String> {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let response = raw_exchange(public, &request).await?;
    Ok((response.status, response.body))
}

async fn h2_request(
    client: &Client<HttpConnector, Full<Bytes>>,
    public: SocketAddr,
    method: &str,
    path: &str,
    body: String,
) -> Result<(u16, Vec<u8>), String> {
    let request = http::Request::builder()
        .method(method)
        .uri(format!("http://{public}{path}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(REQUEST_TIMEOUT, client.request(request))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| format!("{e:?}"))?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok((status, body.to_vec()))
}
