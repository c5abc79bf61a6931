//! Slots as pools: three shorteners per slot on 127.0.0.2-4, all on one PostgreSQL. A member
//! killed under load costs users nothing (its requests go to the other members); all three
//! killed, users go to the other, vetted slot; a release with one broken member is refused by
//! the gate, which names the member; switches under load lose nothing, and every link created
//! resolves through both releases. `scripts/deploy.sh` starts the release on every member.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use e2e::client::{REQUEST_TIMEOUT, follow};
use e2e::postgres::PostgresServer;
use e2e::script_run::{STOP_TIMEOUT, ScriptStack, free_addr};
use e2e::{Proxy, Shortener, Traffic, eventually, http_client};
use reqwest::StatusCode;
use serde_json::Value;
use tempfile::TempDir;

const CLIENTS: usize = 4;
/// The loopback addresses of a pool's members (Linux routes 127.0.0.0/8 to the loopback).
const HOSTS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(127, 0, 0, 2),
    Ipv4Addr::new(127, 0, 0, 3),
    Ipv4Addr::new(127, 0, 0, 4),
];
/// Writes are resent (the shortener deduplicates by x-request-id); no bake guard, so that
/// nothing but an operator moves the active slot.
const POOL_TOML: &str = "[forwarding]\nretry_writes = true\n\n[guard]\nbake_ms = 0";
const VERDICT_TIMEOUT: Duration = Duration::from_secs(20);
const TRAFFIC_TIMEOUT: Duration = Duration::from_secs(20);

/// A pool of three v1 shorteners on blue (active), three v2 on green, one database.
struct PoolStack {
    proxy: Proxy,
    blue: Vec<Shortener>,
    green: Vec<Shortener>,
    _dir: TempDir,
}

impl PoolStack {
    /// `broken` is a fault given to the last green member only.
    async fn start(broken: Option<&str>) -> PoolStack {
        let dir = tempfile::Builder::new()
            .prefix("e2e-pools-")
            .tempdir()
            .expect("a temp dir can be created");
        let db = PostgresServer::shared().await.create_database().await;
        let mut blue = Vec::new();
        let mut green = Vec::new();
        for (n, host) in HOSTS.into_iter().enumerate() {
            let member = |release: &str| {
                Shortener::builder()
                    .release(release)
                    .db(&db.url)
                    .host(IpAddr::V4(host))
            };
            blue.push(member("v1").start(dir.path()).await);
            let mut g = member("v2");
            if let Some(fault) = broken
                && n == HOSTS.len() - 1
            {
                g = g.fault(fault);
            }
            green.push(g.start(dir.path()).await);
        }
        let addrs = |pool: &[Shortener]| pool.iter().map(Shortener::addr).collect::<Vec<_>>();
        let proxy = Proxy::builder()
            .pool("blue", &addrs(&blue))
            .pool("green", &addrs(&green))
            .gate(1, 20_000)
            .extra_toml(POOL_TOML)
            .start(dir.path())
            .await;
        PoolStack {
            proxy,
            blue,
            green,
            _dir: dir,
        }
    }

    fn base(&self) -> String {
        self.proxy.base()
    }

    /// The status entry of `slot`'s member at `addr`.
    async fn member(&self, slot: &str, addr: SocketAddr) -> Value {
        let status = self.proxy.status().await;
        status["slots"][slot]["members"]
            .as_array()
            .and_then(|members| {
                members
                    .iter()
                    .find(|m| m["addr"] == addr.to_string())
                    .cloned()
            })
            .unwrap_or_else(|| panic!("{slot} has no member {addr}: {status}"))
    }

    async fn serving(&self) -> String {
        self.proxy.status().await["serving"]
            .as_str()
            .unwrap_or("(none)")
            .to_owned()
    }

    /// Switches to green and back, so that both releases passed the gate.
    async fn vet_both(&self) {
        for to in ["green", "blue"] {
            let (code, body) = self.proxy.switch(to).await;
            assert_eq!(
                code,
                StatusCode::OK,
                "the switch to {to} was refused: {body}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_killed_under_load_costs_users_nothing() {
    // Arrange: green never passed the gate, so only blue's other members can take over.
    let mut stack = PoolStack::start(None).await;
    let status = stack.proxy.status().await;
    assert_eq!(
        status["slots"]["blue"]["members"].as_array().map(Vec::len),
        Some(3),
        "{status}"
    );
    let traffic = Traffic::start(&stack.base(), CLIENTS);
    assert!(
        traffic.wait_for_more(40, TRAFFIC_TIMEOUT).await,
        "the clients got no traffic through the proxy"
    );

    // Act
    let dead = stack.blue[1].addr();
    stack.blue[1].sigkill().await;
    let marked_down = eventually(
        || async { stack.member("blue", dead).await["healthy"] == false },
        VERDICT_TIMEOUT,
    )
    .await;
    assert!(
        traffic.wait_for_more(100, TRAFFIC_TIMEOUT).await,
        "the clients stalled after the kill"
    );
    let report = traffic.stop().await;

    // Assert
    assert!(
        marked_down,
        "{dead} is still healthy: {}",
        stack.proxy.status().await
    );
    report.assert_no_failure("after a member of the serving slot was killed");
    assert_eq!(
        stack.serving().await,
        "blue",
        "one member down is no failover"
    );
    assert_eq!(
        report.by_release.keys().collect::<Vec<_>>(),
        ["v1"],
        "only blue's members answer: {:?}",
        report.by_release
    );
    let status = stack.proxy.status().await;
    for alive in [0, 2] {
        let member = stack.member("blue", stack.blue[alive].addr()).await;
        assert_eq!(member["healthy"], true, "{status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_member_killed_fails_over_to_the_vetted_slot() {
    // Arrange
    let mut stack = PoolStack::start(None).await;
    stack.vet_both().await;
    let traffic = Traffic::start(&stack.base(), CLIENTS);
    assert!(
        traffic.wait_for_more(40, TRAFFIC_TIMEOUT).await,
        "the clients got no traffic through the proxy"
    );

    // Act
    for member in &mut stack.blue {
        member.sigkill().await;
    }
    let failed_over = eventually(
        || async { stack.serving().await == "green" },
        VERDICT_TIMEOUT,
    )
    .await;
    assert!(
        traffic.wait_for_more(100, TRAFFIC_TIMEOUT).await,
        "the clients stalled after the kill"
    );
    let report = traffic.stop().await;

    // Assert
    assert!(
        failed_over,
        "users still go to blue: {}",
        stack.proxy.status().await
    );
    report.assert_no_failure("while every member of the serving slot died");
    assert!(
        report.by_release.get("v2").copied().unwrap_or(0) > 0,
        "green served nothing: {:?}",
        report.by_release
    );
    assert_eq!(
        stack.proxy.active().await,
        "blue",
        "a failover moves no active slot"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_release_with_one_broken_member_is_refused_naming_it() {
    // Arrange
    let stack = PoolStack::start(Some("create-500")).await;
    let broken = stack.green[2].addr();

    // Act
    let (code, body) = stack.proxy.switch("green").await;

    // Assert
    assert_eq!(code, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["failure"]["member"], broken.to_string(), "{body}");
    assert_eq!(stack.proxy.active().await, "blue");
    let refusals = stack.proxy.events_of_kind("switch_refused").await;
    assert!(
        refusals.iter().any(|e| e["reason"]
            .as_str()
            .is_some_and(|r| r.contains(&broken.to_string()))),
        "no refusal names {broken}: {refusals:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn switches_under_load_with_pools_lose_nothing_and_every_link_resolves_through_both() {
    // Arrange
    let stack = PoolStack::start(None).await;
    let traffic = Traffic::start(&stack.base(), CLIENTS);
    assert!(
        traffic.wait_for_more(20, TRAFFIC_TIMEOUT).await,
        "the clients got no traffic through the proxy"
    );

    // Act
    for n in 0..6 {
        let to = if n % 2 == 0 { "green" } else { "blue" };
        let (code, body) = stack.proxy.switch(to).await;
        assert_eq!(code, StatusCode::OK, "switch #{n} to {to}: {body}");
        assert!(
            traffic
                .wait_for_more(CLIENTS as u64 * 4, TRAFFIC_TIMEOUT)
                .await,
            "the clients stalled after switch #{n}"
        );
    }
    let report = traffic.stop().await;

    // Assert
    report.assert_no_failure("during the switches");
    for release in ["v1", "v2"] {
        assert!(
            report.by_release.get(release).copied().unwrap_or(0) > 0,
            "{release} served nothing: {:?}",
            report.by_release
        );
    }
    let client = http_client(REQUEST_TIMEOUT);
    let mut unresolved = Vec::new();
    for (n, link) in report.links.iter().enumerate() {
        // Each release, through one of its members in turn.
        for pool in [&stack.blue, &stack.green] {
            let member = &pool[n % pool.len()];
            let base = member.url("");
            if let Err(e) = follow(&client, &base, &link.code, &link.url).await {
                unresolved.push(format!("{} via {}: {e}", link.code, member.addr()));
            }
        }
    }
    assert!(
        unresolved.is_empty(),
        "{} of {} links do not resolve, first ones: {:#?}",
        unresolved.len(),
        report.links.len(),
        &unresolved[..unresolved.len().min(10)]
    );
}

#[tokio::test]
async fn deploy_sh_starts_the_release_on_every_member_of_the_idle_slot() {
    // Arrange: green is a pool of two free addresses on 127.0.0.2 and 127.0.0.3.
    let port = free_addr().port();
    let members: Vec<SocketAddr> = HOSTS[..2]
        .iter()
        .map(|host| SocketAddr::new(IpAddr::V4(*host), port))
        .collect();
    let stack = ScriptStack::start("deploy.sh", |proxy| proxy.pool("green", &members)).await;
    let client = http_client(REQUEST_TIMEOUT);

    // Act: a broken release first, then a good one.
    let (refused, refused_text) = stack.run("v2", &["--fault", "create-500"]).await;
    let mut stopped = true;
    for member in &members {
        let member = *member;
        stopped &= eventually(
            || async move { tokio::net::TcpStream::connect(member).await.is_err() },
            STOP_TIMEOUT,
        )
        .await;
    }
    let (output, text) = stack.run("v3", &[]).await;

    // Assert
    assert!(
        !refused.status.success(),
        "a broken release went live:\n{refused_text}"
    );
    assert!(stopped, "a refused member still listens:\n{refused_text}");
    assert!(output.status.success(), "deploy.sh failed:\n{text}");
    assert_eq!(stack.proxy.active().await, "green", "{text}");
    for member in &members {
        let answer = client
            .get(format!("http://{member}/healthz"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("nothing listens on {member}: {e}\n{text}"));
        assert_eq!(answer.headers()["x-release"], "v3", "{member}\n{text}");
    }
    for pid_file in ["green.pid", "green.1.pid"] {
        assert!(
            stack.instances.run_dir.join(pid_file).is_file(),
            "no {pid_file}:\n{text}"
        );
    }
}
