//! `scripts/canary.sh` against a real proxy and shortener: a healthy release goes through its
//! steps to 100%; a release the gate refuses, or one the guard pulls back under user traffic,
//! makes the script fail with the reason, leaves users on blue and stops the new instance.

use std::time::Duration;

use e2e::client::create_link;
use e2e::script_run::{STOP_TIMEOUT, ScriptStack};
use e2e::{Traffic, eventually, http_client};
use reqwest::{Method, StatusCode};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A fast guard, so that a failing canary is pulled back within seconds.
const GUARD: &str = "[guard]\nwindow_ms = 10000\ninterval_ms = 500\nmin_requests = 20\n";
/// Users creating and following links while the script runs.
const CLIENTS: usize = 2;
const TRAFFIC_TIMEOUT: Duration = Duration::from_secs(20);

/// Blue (v1) behind a proxy with a fast guard, its green slot free for `canary.sh`.
async fn canary_stack() -> ScriptStack {
    ScriptStack::start("canary.sh", |proxy| proxy.extra_toml(GUARD)).await
}

/// The kinds of the events so far, oldest first.
async fn event_kinds(stack: &ScriptStack) -> Vec<String> {
    let (code, body) = stack
        .proxy
        .admin(Method::GET, "/events?limit=1000", None)
        .await;
    assert_eq!(code, StatusCode::OK, "GET /events: {body}");
    body["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter_map(|e| e["kind"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// After a failed run: users are on blue, the canary is gone, the new instance stopped.
async fn assert_left_on_blue(stack: &ScriptStack, text: &str) {
    let status = stack.proxy.status().await;
    assert_eq!(status["active"], "blue", "{status}\n{text}");
    assert!(status["canary"].is_null(), "{status}\n{text}");
    let client = http_client(REQUEST_TIMEOUT);
    for n in 0..20 {
        let url = format!("https://e2e.example/after-canary/{n}");
        let link = create_link(&client, &stack.base(), &url)
            .await
            .unwrap_or_else(|e| panic!("users are served after the run: {e}\n{text}"));
        assert_eq!(link.release, "v1", "{text}");
    }
    let green = stack.green;
    assert!(
        eventually(
            || async move { tokio::net::TcpStream::connect(green).await.is_err() },
            STOP_TIMEOUT
        )
        .await,
        "the new instance still listens on {green}:\n{text}"
    );
    assert!(
        !stack.pid_file("green").exists(),
        "the pid file of the stopped instance is left behind:\n{text}"
    );
}

#[tokio::test]
async fn canary_sh_takes_a_healthy_release_through_its_steps_to_100_percent() {
    // Arrange
    let stack = canary_stack().await;
    let client = http_client(REQUEST_TIMEOUT);

    // Act
    let (output, text) = stack
        .run("v2", &["--steps", "50,100", "--pause", "1"])
        .await;

    // Assert
    assert!(output.status.success(), "canary.sh failed:\n{text}");
    assert!(
        text.contains("promoted: green is active"),
        "canary.sh did not report the promotion:\n{text}"
    );
    let status = stack.proxy.status().await;
    assert_eq!(status["active"], "green", "{status}\n{text}");
    assert!(status["canary"].is_null(), "{status}\n{text}");
    let kinds = event_kinds(&stack).await;
    let steps: Vec<&str> = kinds
        .iter()
        .map(String::as_str)
        .filter(|k| k.starts_with("canary") || *k == "promote")
        .collect();
    assert_eq!(
        steps,
        ["canary_start", "promote"],
        "the 50% step, then the promotion:\n{text}"
    );
    let link = create_link(&client, &stack.base(), "https://e2e.example/promoted")
        .await
        .expect("a link is created through the proxy");
    assert_eq!(link.release, "v2", "{text}");
    assert!(
        stack.pid_file("green").is_file(),
        "canary.sh recorded no pid for the instance that now takes traffic:\n{text}"
    );
}

#[tokio::test]
async fn canary_sh_stops_at_the_first_step_when_the_gate_refuses_the_release() {
    // Arrange
    let stack = canary_stack().await;

    // Act
    let (output, text) = stack
        .run(
            "v2",
            &["--steps", "50,100", "--pause", "1", "--fault", "create-500"],
        )
        .await;

    // Assert
    assert!(
        !output.status.success(),
        "canary.sh succeeded with a release that cannot create links:\n{text}"
    );
    assert!(
        text.contains("refused the 50% step"),
        "canary.sh did not say which step was refused:\n{text}"
    );
    assert!(
        text.lines().any(|line| line.trim() == "step:     create"),
        "canary.sh did not name the failing probe step:\n{text}"
    );
    assert!(text.contains("create-and-follow"), "{text}");
    let kinds = event_kinds(&stack).await;
    assert!(kinds.contains(&"canary_refused".to_owned()), "{kinds:?}");
    assert!(
        !kinds.contains(&"canary_start".to_owned()),
        "a refused release never took a share: {kinds:?}"
    );
    assert_left_on_blue(&stack, &text).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn canary_sh_stops_when_the_guard_pulls_the_release_back_under_user_traffic() {
    // Arrange: users keep coming through the proxy for the whole run. The new release answers
    // its first 60 requests (health checks and the gate's 24 probes included), then 500.
    let stack = canary_stack().await;
    let traffic = Traffic::start(&stack.base(), CLIENTS);
    assert!(
        traffic.wait_for_more(10, TRAFFIC_TIMEOUT).await,
        "the background clients got no traffic through the proxy"
    );

    // Act: a long pause, so that the guard (every 500 ms) acts long before the next step.
    let (output, text) = stack
        .run(
            "v2",
            &[
                "--steps",
                "50,100",
                "--pause",
                "60",
                "--fault",
                "fail-after=60",
            ],
        )
        .await;
    let report = traffic.stop().await;

    // Assert
    assert!(
        !output.status.success(),
        "canary.sh succeeded with a release that fails its users:\n{text}"
    );
    let status = stack.proxy.status().await;
    let reason = status["guard"]["reason"].as_str().unwrap_or_default();
    assert!(
        status["guard"]["aborted"] == true && !reason.is_empty(),
        "the guard did not pull the canary back: {status}\n{text}"
    );
    assert!(
        text.contains("the proxy aborted the canary of v2 at 50%") && text.contains(reason),
        "canary.sh did not report the guard's abort and its reason ({reason}):\n{text}"
    );
    assert!(
        !text.contains("promoting"),
        "canary.sh went on to the next step:\n{text}"
    );
    assert!(
        report.by_release.get("v2").is_some_and(|n| *n > 0),
        "the canary served no user, so it was not exercised: {report:?}"
    );
    let kinds = event_kinds(&stack).await;
    assert!(kinds.contains(&"guard_abort".to_owned()), "{kinds:?}");
    assert!(!kinds.contains(&"promote".to_owned()), "{kinds:?}");
    assert_left_on_blue(&stack, &text).await;
}
