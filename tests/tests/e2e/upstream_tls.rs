//! Upstreams over TLS: a slot with `tls = true` is probed, health-checked and served over
//! TLS on kept-alive connections, and a switch to it passes the gate; a slot whose
//! certificate does not verify (an unknown issuer, another name) is down with the reason in
//! `GET /status` and refused by the gate; `check-config` reads the slot's CA file.
//!
//! The shortener speaks plain HTTP: a `TlsTerminator` (a rustls acceptor relaying bytes)
//! stands in front of it, so the TLS peer shares no code with the proxy under test.

use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e::binary::binary;
use e2e::client::create_link;
use e2e::tls::{Pki, TlsTerminator};
use e2e::{Proxy, Shortener, eventually, http_client};
use reqwest::StatusCode;
use serde_json::Value;
use tempfile::TempDir;

const WAIT: Duration = Duration::from_secs(15);

fn temp_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("e2e-upstream-tls-")
        .tempdir()
        .expect("a temp dir can be created")
}

/// The keys of a slot reached over TLS, verified for `server_name` against `ca`.
fn tls_keys(server_name: &str, ca: &Path) -> String {
    format!(
        "tls = true\nserver_name = {server_name:?}\nca = {:?}\n",
        ca.display().to_string()
    )
}

/// Health checks seldom enough that none runs during a test's requests (the first runs at
/// start), so the handshakes counted are the requests'.
const QUIET_HEALTH: &str = "[health]\ninterval_ms = 60000\n";

#[tokio::test]
async fn a_switch_to_a_tls_slot_passes_the_gate_and_users_reach_it_on_kept_alive_connections() {
    // Arrange
    let dir = temp_dir();
    let pki = Pki::new(dir.path());
    let cert = pki.issue("green", &["green.test"]);
    let db = dir.path().join("links.db");
    let blue = Shortener::builder()
        .release("v1")
        .db(&db)
        .start(dir.path())
        .await;
    let green = Shortener::builder()
        .release("v2")
        .db(&db)
        .start(dir.path())
        .await;
    let terminator = TlsTerminator::start(pki.server_config(&cert), green.addr()).await;
    let proxy = Proxy::builder()
        .blue(blue.addr())
        .green(terminator.addr)
        .slot_toml("green", &tls_keys("green.test", &pki.ca_file()))
        .extra_toml(QUIET_HEALTH)
        .start(dir.path())
        .await;
    let client = http_client(WAIT);

    // Act
    let (code, switched) = proxy.switch("green").await;
    let probed = terminator.handshakes();
    let mut releases = Vec::new();
    for i in 0..20 {
        let link = create_link(
            &client,
            &proxy.base(),
            &format!("https://e2e.example/tls/{i}"),
        )
        .await
        .unwrap_or_else(|e| panic!("request {i}: {e}\n{}", proxy.log_tail()));
        releases.push(link.release);
    }
    let served = terminator.handshakes() - probed;

    // Assert
    assert_eq!(
        code,
        StatusCode::OK,
        "the switch was refused: {switched}\n{}",
        proxy.log_tail()
    );
    assert!(
        probed >= 3,
        "the probes went over TLS ({probed} handshakes)"
    );
    assert!(
        releases.iter().all(|r| r == "v2"),
        "green answered every request: {releases:?}"
    );
    assert!(
        served <= 2,
        "20 requests in a row took {served} handshakes: the connection is not kept alive"
    );
    let status = proxy.status().await;
    assert_eq!(status["slots"]["green"]["healthy"], true, "{status}");
    assert_eq!(status["slots"]["green"]["release"], "v2", "{status}");
}

/// A proxy whose green slot is `terminator`, verified for `server_name` against `ca`; blue is
/// a plain shortener. Waits until green's health check has failed, and returns its status.
async fn with_unverifiable_green(
    dir: &Path,
    terminator: &TlsTerminator,
    blue: &Shortener,
    server_name: &str,
    ca: &Path,
) -> (Proxy, Value) {
    let proxy = Proxy::builder()
        .blue(blue.addr())
        .green(terminator.addr)
        .slot_toml("green", &tls_keys(server_name, ca))
        .start(dir)
        .await;
    let failed = eventually(
        || async {
            let status = proxy.status().await;
            !status["slots"]["green"]["last_error"].is_null()
        },
        WAIT,
    )
    .await;
    assert!(failed, "green was never checked:\n{}", proxy.log_tail());
    let status = proxy.status().await;
    (proxy, status)
}

#[tokio::test]
async fn a_tls_slot_whose_certificate_does_not_verify_is_down_and_refused_with_the_reason() {
    // Arrange: green's certificate is for green.test, issued by the test CA.
    let dir = temp_dir();
    let pki = Pki::new(dir.path());
    let cert = pki.issue("green", &["green.test"]);
    let other_dir = dir.path().join("other");
    std::fs::create_dir(&other_dir).expect("a directory");
    let other_ca = Pki::named(&other_dir, "another CA").ca_file();
    let blue = Shortener::builder()
        .release("v1")
        .db(dir.path().join("links.db"))
        .start(dir.path())
        .await;
    let green = Shortener::builder()
        .release("v2")
        .db(dir.path().join("links.db"))
        .start(dir.path())
        .await;
    let terminator = TlsTerminator::start(pki.server_config(&cert), green.addr()).await;
    let cases: [(&str, &str, PathBuf, &str); 2] = [
        ("unknown-ca", "green.test", other_ca, "UnknownIssuer"),
        (
            "other-name",
            "other.test",
            pki.ca_file(),
            "not valid for name \"other.test\"",
        ),
    ];
    let client = http_client(WAIT);

    for (case, server_name, ca, reason) in cases {
        let case_dir = dir.path().join(case);
        std::fs::create_dir(&case_dir).expect("a directory");

        // Act
        let (proxy, status) =
            with_unverifiable_green(&case_dir, &terminator, &blue, server_name, &ca).await;
        let (code, refusal) = proxy.switch("green").await;

        // Assert
        let green_status = &status["slots"]["green"];
        assert_eq!(green_status["healthy"], false, "{case}: {status}");
        let last_error = green_status["last_error"].as_str().unwrap_or_default();
        assert!(
            last_error.contains(reason),
            "{case}: the last error names {reason:?}: {status}"
        );
        assert_eq!(code, StatusCode::CONFLICT, "{case}: {refusal}");
        let got = refusal["failure"]["got"].as_str().unwrap_or_default();
        assert!(
            got.contains(reason),
            "{case}: the refusal names {reason:?}: {refusal}"
        );
        let link = create_link(&client, &proxy.base(), "https://e2e.example/blue")
            .await
            .unwrap_or_else(|e| panic!("{case}: blue serves on: {e}"));
        assert_eq!(link.release, "v1", "{case}");
    }
}

#[tokio::test]
async fn check_config_reads_a_tls_slots_ca_file() {
    // Arrange
    let dir = temp_dir();
    let pki = Pki::new(dir.path());
    let cert = pki.issue("green", &["green.test"]);
    let config = |ca: &Path| {
        format!(
            "data_dir = {:?}\n[slots.green]\naddr = \"127.0.0.1:1\"\n{}",
            dir.path().join("data").display().to_string(),
            tls_keys("green.test", ca)
        )
    };
    let good = dir.path().join("good.toml");
    std::fs::write(&good, config(&pki.ca_file())).expect("write");
    let broken = dir.path().join("broken.toml");
    // A key file is no CA file.
    std::fs::write(&broken, config(&cert.key)).expect("write");

    // Act
    let run = |file: PathBuf| async move {
        let output = tokio::process::Command::new(binary("proxy"))
            .arg("check-config")
            .arg(&file)
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(WAIT, output)
            .await
            .expect("check-config finishes")
            .expect("check-config runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.success(), text)
    };
    let (good_valid, good_text) = run(good).await;
    let (broken_valid, broken_text) = run(broken).await;

    // Assert
    assert!(good_valid, "{good_text}");
    assert!(
        !broken_valid,
        "check-config passed a key as a CA: {broken_text}"
    );
    assert!(
        broken_text.contains(":6: slots.green.ca: ") && broken_text.contains("no certificate"),
        "the problem names the key, its line and the reason: {broken_text}"
    );
}

/// The status entry of `slot`'s member at `addr`.
fn member<'a>(status: &'a Value, slot: &str, addr: &str) -> &'a Value {
    status["slots"][slot]["members"]
        .as_array()
        .and_then(|members| members.iter().find(|m| m["addr"] == addr))
        .unwrap_or_else(|| panic!("{slot} has no member {addr}: {status}"))
}

#[tokio::test]
async fn each_member_of_a_tls_pool_is_verified_for_its_own_ip_and_the_gate_names_the_one_that_fails()
 {
    // Arrange: a pool of two TLS members and no server_name, so each certificate must name
    // the member's IP; the second member's names another IP.
    let dir = temp_dir();
    let pki = Pki::new(dir.path());
    let good = pki.issue("good", &["127.0.0.1"]);
    let wrong = pki.issue("wrong", &["127.0.0.9"]);
    let db = dir.path().join("links.db");
    let blue = Shortener::builder()
        .release("v1")
        .db(&db)
        .start(dir.path())
        .await;
    let green = Shortener::builder()
        .release("v2")
        .db(&db)
        .start(dir.path())
        .await;
    let first = TlsTerminator::start(pki.server_config(&good), green.addr()).await;
    let second = TlsTerminator::start(pki.server_config(&wrong), green.addr()).await;
    let (first_at, second_at) = (first.addr.to_string(), second.addr.to_string());
    let proxy = Proxy::builder()
        .blue(blue.addr())
        .pool("green", &[first.addr, second.addr])
        .slot_toml(
            "green",
            &format!(
                "tls = true\nca = {:?}\n",
                pki.ca_file().display().to_string()
            ),
        )
        .start(dir.path())
        .await;

    // Act
    let checked = eventually(
        || async {
            let status = proxy.status().await;
            member(&status, "green", &second_at)["last_error"].is_string()
                && member(&status, "green", &first_at)["healthy"] == true
        },
        WAIT,
    )
    .await;
    let status = proxy.status().await;
    let (code, refusal) = proxy.switch("green").await;

    // Assert
    assert!(
        checked,
        "green's members were never checked: {status}\n{}",
        proxy.log_tail()
    );
    let last_error = member(&status, "green", &second_at)["last_error"]
        .as_str()
        .unwrap_or_default();
    assert!(
        last_error.contains("not valid for name"),
        "the second member's error names the certificate: {status}"
    );
    assert_eq!(
        member(&status, "green", &second_at)["healthy"],
        false,
        "{status}"
    );
    assert_eq!(code, StatusCode::CONFLICT, "{refusal}");
    assert_eq!(refusal["failure"]["member"], second_at, "{refusal}");
}
