//! The public status page, as a customer's browser shows it: headless Chromium loads it after a
//! staged incident and a prevented one, and the page says what happened, without secrets.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use e2e::{Shortener, TestStack, eventually, http_client};
use reqwest::StatusCode;
use serde_json::Value;
use tokio::process::Command;

const TIMEOUT: Duration = Duration::from_secs(20);
/// Chromium's first start on a busy 2-core box takes a while.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(90);
const CHROMIUM: &str = "chromium";

/// The page's DOM as Chromium renders it.
///
/// # Panics
/// When Chromium is not installed: CI installs it, and a silent pass would hide a broken page.
async fn dump_dom(url: &str, profile: &Path) -> String {
    let run = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(url)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = match tokio::time::timeout(BROWSER_TIMEOUT, run).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "chromium is not installed; this test needs it: `apt-get install chromium` \
             (Debian; run `apt-get update` first)"
        ),
        Ok(Err(e)) => panic!("cannot run {CHROMIUM}: {e}"),
        Err(_) => panic!("{CHROMIUM} did not finish within {BROWSER_TIMEOUT:?}"),
    };
    let dom = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success() && dom.contains("</html>"),
        "{CHROMIUM} failed ({}); stderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    dom
}

/// The visible text of some HTML: tags dropped, whitespace collapsed.
fn text_of(html: &str) -> String {
    let mut text = String::with_capacity(html.len());
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => {
                in_tag = true;
                text.push(' ');
            }
            '>' => in_tag = false,
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[tokio::test]
async fn a_browser_shows_the_incidents_the_budget_and_the_release_without_secrets() {
    // Arrange: a broken green is stopped at the gate (prevented) ...
    let mut stack = TestStack::builder()
        .green(Shortener::builder().release("v2").fault("create-500"))
        .gate(1, 10_000)
        .proxy(|p| {
            p.extra_toml(
                "[health]\ninterval_ms = 250\nfall = 2\nrise = 1\n\n[incidents]\nquiet_ms = 1500\n",
            )
        })
        .start()
        .await;
    let (code, _) = stack.proxy.switch("green").await;
    assert_eq!(code, StatusCode::CONFLICT);
    // ... then both releases die under user traffic and come back (an outage).
    stack.blue.sigkill().await;
    stack.green.sigkill().await;
    let client = http_client(Duration::from_secs(10));
    let mut failed = 0;
    for _ in 0..8 {
        let answer = client.get(stack.proxy.public_url("/healthz")).send().await;
        if answer.map_or(true, |r| r.status().is_server_error()) {
            failed += 1;
        }
    }
    assert_eq!(failed, 8, "nothing could answer");
    stack.blue.restart().await;
    stack.green.restart().await;
    let public = |path: &'static str| {
        let client = client.clone();
        let url = stack.proxy.status_url(path);
        async move {
            client
                .get(url)
                .send()
                .await
                .expect("the status listener answers")
        }
    };
    let resolved = |status: &Value| {
        status["incidents"].as_array().is_some_and(|all| {
            all.iter()
                .any(|i| i["kind"] == "outage" && !i["ended_at"].is_null())
        })
    };
    assert!(
        eventually(
            || async {
                resolved(
                    &public("/status.json")
                        .await
                        .json()
                        .await
                        .unwrap_or_default(),
                )
            },
            TIMEOUT
        )
        .await,
        "the outage never closed; log:\n{}",
        stack.proxy.log_tail()
    );

    // Act
    let page = public("/").await;
    let content_type = page
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let dom = dump_dom(
        &stack.proxy.status_url("/"),
        &stack.dir.path().join("chromium"),
    )
    .await;

    // Assert
    assert_eq!(page.status(), StatusCode::OK, "no token needed");
    assert_eq!(content_type.as_deref(), Some("text/html; charset=utf-8"));
    assert!(dom.contains("name=\"viewport\""), "readable on a phone");
    let text = text_of(&dom);
    for expected in [
        "Current release: v1",
        "Resolved incident",
        "Failed requests 8",
        "Prevented: a broken release was stopped before users saw it",
        "A new release failed its checks before the switch and never reached users",
        "switch refused",
        "minutes of downtime left this year",
        "Last 24 hours",
        "Last 30 days",
        "Share of good minutes",
    ] {
        assert!(
            text.contains(expected),
            "{expected:?} is not on the page:\n{text}"
        );
    }
    for secret in [
        stack.proxy.token().to_owned(),
        stack.blue.addr().to_string(),
        stack.green.addr().to_string(),
        stack.proxy.admin_addr().to_string(),
    ] {
        assert!(!dom.contains(&secret), "the page leaks {secret}");
    }
}
