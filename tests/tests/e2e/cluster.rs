//! Several proxies on one routing truth in PostgreSQL (`[cluster]`), each on its own loopback
//! address as on its own host, in front of the same blue (v1) and green (v2) shorteners: a
//! switch or a slot's address set through one is served by the others within a second, and a
//! pool set through one is the others' pool; of two changes at once exactly one wins; the
//! guard judges a canary on every proxy's users and its abort acts once for all; with
//! PostgreSQL stopped every proxy keeps serving and changes answer 503; a proxy started again
//! serves the current generation from its first request.

use std::time::{Duration, Instant};

use e2e::client::create_link;
use e2e::client::release_of;
use e2e::postgres::{PgDatabase, PostgresServer};
use e2e::{Proxy, ProxyBuilder, Shortener, ShortenerBuilder, UserLoad, eventually, http_client};
use reqwest::Method;
use reqwest::StatusCode;
use serde_json::Value;
use serde_json::json;
use tempfile::TempDir;

/// The bound: every proxy serves a committed change within one second.
const APPLY_BOUND: Duration = Duration::from_secs(1);
/// How often a test looks while it measures that bound.
const LOOK_EVERY: Duration = Duration::from_millis(20);
const TIMEOUT: Duration = Duration::from_secs(20);
/// Each proxy stands for a host of its own.
const HOSTS: [&str; 3] = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];

/// Two shorteners on one SQLite file and `n` proxies sharing `db` as their routing store.
/// Fields drop in order: the proxies first, the directories last.
struct Fleet {
    proxies: Vec<Proxy>,
    _blue: Shortener,
    _green: Shortener,
    _dirs: Vec<TempDir>,
}

impl Fleet {
    async fn start(db: &PgDatabase, n: usize) -> Fleet {
        Fleet::start_with(db, n, Shortener::builder().release("v2"), |p| p).await
    }

    /// With `green` as the green shortener, and every proxy's options `configure`d.
    async fn start_with(
        db: &PgDatabase,
        n: usize,
        green: ShortenerBuilder,
        configure: impl Fn(ProxyBuilder) -> ProxyBuilder,
    ) -> Fleet {
        let dir = tempdir("e2e-cluster-");
        let links = dir.path().join("links.db");
        let blue = Shortener::builder()
            .release("v1")
            .db(&links)
            .start(dir.path())
            .await;
        let green = green.db(&links).start(dir.path()).await;
        let mut dirs = vec![dir];
        let mut proxies = Vec::new();
        for (i, ip) in HOSTS.iter().take(n).enumerate() {
            let own = tempdir("e2e-cluster-proxy-");
            let proxy = configure(Proxy::builder())
                .listen_ip(ip)
                .blue(blue.addr())
                .green(green.addr())
                .gate(1, 10_000)
                .extra_toml(&format!(
                    "[cluster]\nstore = {:?}\nname = \"proxy-{i}\"\n",
                    db.url
                ))
                .start(own.path())
                .await;
            proxies.push(proxy);
            dirs.push(own);
        }
        Fleet {
            proxies,
            _blue: blue,
            _green: green,
            _dirs: dirs,
        }
    }
}

fn tempdir(prefix: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("a temp dir can be created")
}

/// The release that answers a user's request through `proxy`; `None` when it failed.
async fn served_by(client: &reqwest::Client, proxy: &Proxy) -> Option<String> {
    let response = client.get(proxy.public_url("/healthz")).send().await.ok()?;
    (response.status() == StatusCode::OK).then(|| release_of(&response))
}

fn generation(status: &Value) -> u64 {
    status["cluster"]["generation"]
        .as_u64()
        .unwrap_or_else(|| panic!("/status has no cluster.generation: {status}"))
}

/// How long until `proxy` serves `release`, looking every `LOOK_EVERY` for at most `TIMEOUT`.
async fn time_until_served(client: &reqwest::Client, proxy: &Proxy, release: &str) -> Duration {
    let start = Instant::now();
    while start.elapsed() < TIMEOUT {
        if served_by(client, proxy).await.as_deref() == Some(release) {
            return start.elapsed();
        }
        tokio::time::sleep(LOOK_EVERY).await;
    }
    panic!("{release} was not served within {TIMEOUT:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_switch_through_one_proxy_is_served_by_the_others_within_a_second() {
    // Arrange
    let db = PostgresServer::shared().await.create_database().await;
    let fleet = Fleet::start(&db, 3).await;
    let [a, b, c] = &fleet.proxies[..] else {
        unreachable!("three proxies")
    };
    let client = http_client(Duration::from_secs(5));
    for proxy in [a, b, c] {
        assert_eq!(served_by(&client, proxy).await.as_deref(), Some("v1"));
    }

    // Act
    let (code, body) = a.switch("green").await;

    // Assert
    assert_eq!(code, StatusCode::OK, "{body}");
    let (b_took, c_took) = tokio::join!(
        time_until_served(&client, b, "v2"),
        time_until_served(&client, c, "v2")
    );
    assert!(
        b_took <= APPLY_BOUND && c_took <= APPLY_BOUND,
        "after the switch was answered, B served it after {b_took:?} and C after {c_took:?}"
    );
    let committed = generation(&a.status().await);
    assert!(committed > 1, "the switch committed no generation");
    for proxy in [b, c] {
        let status = proxy.status().await;
        assert_eq!(status["active"], "green", "{status}");
        assert_eq!(generation(&status), committed, "{status}");
    }
    let all_seen = eventually(
        || async {
            let status = a.status().await;
            let proxies = status["cluster"]["proxies"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            proxies.len() == 3
                && proxies
                    .iter()
                    .all(|p| p["generation"].as_u64() == Some(committed))
        },
        TIMEOUT,
    )
    .await;
    assert!(
        all_seen,
        "A's status does not show every proxy at generation {committed}: {}",
        a.status().await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_two_switches_sent_to_two_proxies_at_once_exactly_one_wins() {
    // Arrange
    let db = PostgresServer::shared().await.create_database().await;
    let fleet = Fleet::start(&db, 2).await;
    let [a, b] = &fleet.proxies[..] else {
        unreachable!("two proxies")
    };
    let before = generation(&a.status().await);

    // Act: both gates run at once, each from the generation both serve.
    let ((code_a, body_a), (code_b, body_b)) = tokio::join!(a.switch("green"), b.switch("green"));

    // Assert
    let mut codes = [code_a, code_b];
    codes.sort();
    assert_eq!(
        codes,
        [StatusCode::OK, StatusCode::CONFLICT],
        "A answered {code_a} {body_a}, B answered {code_b} {body_b}"
    );
    let refusal = if code_a == StatusCode::CONFLICT {
        &body_a
    } else {
        &body_b
    };
    let error = refusal["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("committed first") && error.contains("traffic moved from blue to green"),
        "the 409 does not name the change that won: {refusal}"
    );
    let settled = eventually(
        || async { generation(&a.status().await) == generation(&b.status().await) },
        TIMEOUT,
    )
    .await;
    assert!(settled, "A and B serve different generations");
    let after = generation(&b.status().await);
    let switches = a.events_of_kind("switch").await.len() + b.events_of_kind("switch").await.len();
    assert_eq!(switches, 1, "one switch happened, not {switches}");
    assert!(after > before, "{before} -> {after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_postgres_stopped_every_proxy_serves_and_changes_answer_503_until_it_is_back() {
    // Arrange: a server of its own, since this test stops it.
    let server = PostgresServer::start().await;
    let db = server.create_database().await;
    let fleet = Fleet::start(&db, 2).await;
    let [a, b] = &fleet.proxies[..] else {
        unreachable!("two proxies")
    };
    let client = http_client(Duration::from_secs(5));

    // Act
    server.kill().await;
    let (code, body) = a.switch("green").await;

    // Assert
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let error = body["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("routing store") && error.contains("unreachable"),
        "{body}"
    );
    for proxy in [a, b] {
        // Each proxy finds the store gone at its next read.
        let noticed = eventually(
            || async { proxy.status().await["cluster"]["store_reachable"] == false },
            TIMEOUT,
        )
        .await;
        assert!(noticed, "the store is down: {}", proxy.status().await);
        for _ in 0..20 {
            assert_eq!(served_by(&client, proxy).await.as_deref(), Some("v1"));
        }
        assert_eq!(proxy.status().await["active"], "blue");
    }

    server.start_again().await;
    let back = eventually(
        || async { a.status().await["cluster"]["store_reachable"] == true },
        TIMEOUT,
    )
    .await;
    assert!(back, "A never saw the store again: {}", a.status().await);
    let (code, body) = a.switch("green").await;
    assert_eq!(
        code,
        StatusCode::OK,
        "the first change after the store is back: {body}"
    );
    let took = time_until_served(&client, b, "v2").await;
    assert!(took <= APPLY_BOUND, "B served the switch after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_proxy_killed_and_started_again_serves_the_current_generation_from_its_start() {
    // Arrange
    let db = PostgresServer::shared().await.create_database().await;
    let mut fleet = Fleet::start(&db, 2).await;
    fleet.proxies[1].sigkill().await;
    let (code, body) = fleet.proxies[0].switch("green").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let current = generation(&fleet.proxies[0].status().await);
    let client = http_client(Duration::from_secs(5));

    // Act
    fleet.proxies[1].start_again().await;

    // Assert: its first answers, before its clock would have read the store.
    let b = &fleet.proxies[1];
    assert_eq!(served_by(&client, b).await.as_deref(), Some("v2"));
    let status = b.status().await;
    assert_eq!(
        (status["active"].as_str(), generation(&status)),
        (Some("green"), current),
        "{status}"
    );
    assert!(
        b.log_tail().contains(&format!(
            "serving routing generation {current} from the routing store"
        )),
        "it did not start from the store:\n{}",
        b.log_tail()
    );
}

/// The guard judges every second once 20 requests are in; no bake.
const GUARD: &str = "[guard]\nwindow_ms = 10000\ninterval_ms = 1000\nmax_failure_ratio = 0.02\n\
                     answer_from_stable = false\nmargin = 0.01\nmin_requests = 20\nbake_ms = 0\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_canary_is_aborted_once_for_every_proxy() {
    // Arrange: green answers its first 150 requests (gate and health checks included), then
    // 500; it takes 30% of the users of both proxies.
    let db = PostgresServer::shared().await.create_database().await;
    let green = Shortener::builder()
        .release("v2")
        .fault("latency=20")
        .fault("fail-after=150");
    let fleet = Fleet::start_with(&db, 2, green, |p| p.extra_toml(GUARD)).await;
    let [a, b] = &fleet.proxies[..] else {
        unreachable!("two proxies")
    };
    let client = http_client(Duration::from_secs(30));
    let mut links = Vec::new();
    for n in 0..10 {
        let url = format!("https://e2e.example/cluster/{n}");
        links.push(
            create_link(&client, &a.base(), &url)
                .await
                .expect("a link is created on blue"),
        );
    }
    let (code, body) = a
        .admin(
            Method::POST,
            "/canary",
            Some(json!({ "slot": "green", "percent": 30 })),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let on_b = eventually(
        || async { b.status().await["canary"]["percent"] == 30 },
        TIMEOUT,
    )
    .await;
    assert!(on_b, "B never served the canary: {}", b.status().await);

    // Act: users on both proxies until both have pulled the canary back.
    let loads = [
        UserLoad::start(&a.base(), &links, 4, 5_000),
        UserLoad::start(&b.base(), &links, 4, 5_000),
    ];
    let aborted = eventually(
        || async {
            let (sa, sb) = (a.status().await, b.status().await);
            [sa, sb]
                .iter()
                .all(|s| s["canary"].is_null() && s["guard"]["aborted"] == true)
        },
        Duration::from_secs(60),
    )
    .await;
    for load in loads {
        load.stop().await;
    }

    // Assert: one verdict acted, once, and both proxies know it.
    let (sa, sb) = (a.status().await, b.status().await);
    assert!(
        aborted,
        "the canary was not aborted everywhere: A {sa} B {sb}"
    );
    let events =
        a.events_of_kind("guard_abort").await.len() + b.events_of_kind("guard_abort").await.len();
    assert_eq!(events, 1, "the abort acted {events} times");
    assert_eq!(
        sa["guard"]["reason"], sb["guard"]["reason"],
        "A {sa} B {sb}"
    );
    let settled = eventually(
        || async { generation(&a.status().await) == generation(&b.status().await) },
        TIMEOUT,
    )
    .await;
    assert!(settled, "A and B serve different generations");
}

/// The guard acts on 30 requests in its window; the health checks stay out of the way.
const GUARD_ON_30: &str = "[guard]\nwindow_ms = 10000\ninterval_ms = 1000\nmax_failure_ratio = 0.02\n\
                           answer_from_stable = false\nmin_requests = 30\nbake_ms = 0\n\
                           [health]\ninterval_ms = 60000\n";
/// Failed requests sent through each proxy: under the guard's minimum on each, over it together.
const FAILURES_EACH: usize = 29;
/// Users at a human pace: the guard's window of a canary starts at a whole second after the
/// canary, so a burst in its first second would not be judged at all.
const PACE: Duration = Duration::from_millis(100);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_failing_on_each_proxy_below_the_minimum_is_judged_on_the_sum() {
    // Arrange: green passes its health check (the gate) but fails every link blue wrote; it
    // takes every user of both proxies.
    let db = PostgresServer::shared().await.create_database().await;
    let green = Shortener::builder()
        .release("v2")
        .fault("foreign-links-500");
    let fleet = Fleet::start_with(&db, 2, green, |p| p.scenarios("").extra_toml(GUARD_ON_30)).await;
    let [a, b] = &fleet.proxies[..] else {
        unreachable!("two proxies")
    };
    let client = http_client(Duration::from_secs(30));
    let link = create_link(&client, &a.base(), "https://e2e.example/cluster/sum")
        .await
        .expect("a link is created on blue");
    let (code, body) = a
        .admin(
            Method::POST,
            "/canary",
            Some(json!({ "slot": "green", "percent": 100 })),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let on_b = eventually(
        || async { b.status().await["canary"]["percent"] == 100 },
        TIMEOUT,
    )
    .await;
    assert!(on_b, "B never served the canary: {}", b.status().await);

    // Act
    // Once the guard acts, the users are back on blue (a 302).
    let mut pace = tokio::time::interval(PACE);
    let mut failed = [0; 2];
    for _ in 0..FAILURES_EACH {
        for (i, proxy) in [a, b].into_iter().enumerate() {
            pace.tick().await;
            let response = client
                .get(proxy.public_url(&format!("/{}", link.code)))
                .send()
                .await
                .expect("the proxy answers");
            if response.status() == StatusCode::INTERNAL_SERVER_ERROR {
                failed[i] += 1;
            }
        }
    }

    // Assert
    assert!(
        failed.iter().all(|f| *f > 0 && *f < 30),
        "failures per proxy: {failed:?}"
    );
    let aborted = eventually(
        || async {
            let (sa, sb) = (a.status().await, b.status().await);
            [sa, sb]
                .iter()
                .all(|s| s["canary"].is_null() && s["guard"]["aborted"] == true)
        },
        Duration::from_secs(15),
    )
    .await;
    assert!(
        aborted,
        "{failed:?} failures on the proxies, 30 the minimum: the canary stands: A {} B {}",
        a.status().await,
        b.status().await,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slot_address_set_through_one_proxy_is_the_others_within_a_second() {
    // Arrange
    let db = PostgresServer::shared().await.create_database().await;
    let fleet = Fleet::start(&db, 2).await;
    let [a, b] = &fleet.proxies[..] else {
        unreachable!("two proxies")
    };
    let blue = a.status().await["slots"]["blue"]["addr"].clone();

    // Act: green points at blue's release.
    let (code, body) = a.put_slot("green", blue.as_str().unwrap_or_default()).await;

    // Assert
    assert_eq!(code, StatusCode::OK, "{body}");
    let start = Instant::now();
    let mut seen = false;
    while !seen && start.elapsed() < TIMEOUT {
        seen = b.status().await["slots"]["green"]["addr"] == blue;
        if !seen {
            tokio::time::sleep(LOOK_EVERY).await;
        }
    }
    let took = start.elapsed();
    assert!(
        seen,
        "B never pointed green at {blue}: {}",
        b.status().await
    );
    assert!(
        took <= APPLY_BOUND,
        "B pointed green at {blue} after {took:?}"
    );
    let status = b.status().await;
    assert_eq!(status["active"], "blue", "{status}");
    assert_eq!(
        generation(&status),
        generation(&a.status().await),
        "{status}"
    );
}

/// The addresses of `slot`'s members in a proxy's `/status`, in order.
fn members(status: &Value, slot: &str) -> Vec<String> {
    status["slots"][slot]["members"]
        .as_array()
        .map(|members| {
            members
                .iter()
                .filter_map(|m| m["addr"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pool_set_through_one_proxy_is_the_others_pool_and_so_is_its_end() {
    // Arrange
    let db = PostgresServer::shared().await.create_database().await;
    let fleet = Fleet::start(&db, 2).await;
    let [a, b] = &fleet.proxies[..] else {
        unreachable!("two proxies")
    };
    let status = a.status().await;
    let blue = status["slots"]["blue"]["addr"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let green = status["slots"]["green"]["addr"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let pool = vec![green.clone(), blue];

    for want in [pool, vec![green]] {
        // Act
        let (code, body) = a
            .admin(Method::PUT, "/slots/green", Some(json!({ "addrs": want })))
            .await;

        // Assert
        assert_eq!(code, StatusCode::OK, "{body}");
        // B serves an adopted state a moment before it records its generation: both are
        // awaited, the generation as the sign that B took in this very commit.
        let wanted = &want;
        let seen = eventually(
            || async move {
                let status = b.status().await;
                members(&status, "green") == *wanted
                    && generation(&status) == generation(&a.status().await)
            },
            TIMEOUT,
        )
        .await;
        assert!(
            seen,
            "B's green never had the members {want:?} at A's generation: A {} B {}",
            a.status().await,
            b.status().await
        );
    }
}
