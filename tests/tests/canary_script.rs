//! `scripts/canary.sh` against a real proxy and shortener: a healthy release goes through its
//! steps to 100%; a release the gate refuses, or one the guard pulls back under user traffic,
//! makes the script fail with the reason, leaves users on blue and stops the new instance.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use e2e::binary::binary;
use e2e::client::create_link;
use e2e::script_run::{STOP_TIMEOUT, ScriptInstances, free_addr, repo_root};
use e2e::{Proxy, Shortener, Traffic, eventually, http_client};
use reqwest::{Method, StatusCode};
use tempfile::TempDir;
use tokio::process::Command;

/// The whole script: starting a debug shortener, the gate at each step, the pauses.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stopped instance's port may take to close.
/// A fast guard, so that a failing canary is pulled back within seconds.
const GUARD: &str = "[guard]\nwindow_ms = 10000\ninterval_ms = 500\nmin_requests = 20\n";
/// Users creating and following links while the script runs.
const CLIENTS: usize = 2;
const TRAFFIC_TIMEOUT: Duration = Duration::from_secs(20);

/// Blue (v1) behind a proxy whose green slot points at a free port, where `canary.sh` starts
/// the new release. Fields drop in order: the script's instances, the proxy, blue, the dir.
struct CanaryStack {
    instances: ScriptInstances,
    proxy: Proxy,
    _blue: Shortener,
    green: SocketAddr,
    db: PathBuf,
    /// Holds the db, the config, every log and the script's run dir.
    _dir: TempDir,
}

impl CanaryStack {
    async fn start() -> CanaryStack {
        let dir = tempfile::Builder::new()
            .prefix("e2e-canary-sh-")
            .tempdir()
            .expect("a temp dir can be created");
        let db = dir.path().join("links.db");
        let blue = Shortener::builder()
            .release("v1")
            .db(&db)
            .start(dir.path())
            .await;
        let green = free_addr();
        let proxy = Proxy::builder()
            .blue(blue.addr())
            .green(green)
            .extra_toml(GUARD)
            .start(dir.path())
            .await;
        let run_dir = dir.path().join("run");
        CanaryStack {
            instances: ScriptInstances { run_dir },
            proxy,
            _blue: blue,
            green,
            db,
            _dir: dir,
        }
    }

    /// Runs `scripts/canary.sh --release RELEASE EXTRA...` against this stack; returns its
    /// exit, and its stdout and stderr together.
    async fn canary(&self, release: &str, extra: &[&str]) -> (Output, String) {
        let script = repo_root().join("scripts").join("canary.sh");
        let admin = format!("http://{}", self.proxy.admin_addr());
        let mut command = Command::new(&script);
        command
            .args(["--release", release, "--admin", &admin])
            .arg("--binary")
            .arg(binary("shortener"))
            .arg("--db")
            .arg(&self.db)
            .arg("--run-dir")
            .arg(&self.instances.run_dir)
            .args(extra)
            .env("PROXY_ADMIN_TOKEN", self.proxy.token())
            .kill_on_drop(true);
        let output = tokio::time::timeout(SCRIPT_TIMEOUT, command.output())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{} did not finish within {SCRIPT_TIMEOUT:?}",
                    script.display()
                )
            })
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output, text)
    }

    fn base(&self) -> String {
        self.proxy.base()
    }

    fn pid_file(&self, slot: &str) -> PathBuf {
        self.instances.run_dir.join(format!("{slot}.pid"))
    }

    async fn event_kinds(&self) -> Vec<String> {
        let (code, body) = self
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
    async fn assert_left_on_blue(&self, text: &str) {
        let status = self.proxy.status().await;
        assert_eq!(status["active"], "blue", "{status}\n{text}");
        assert!(status["canary"].is_null(), "{status}\n{text}");
        let client = http_client(REQUEST_TIMEOUT);
        for n in 0..20 {
            let url = format!("https://e2e.example/after-canary/{n}");
            let link = create_link(&client, &self.base(), &url)
                .await
                .unwrap_or_else(|e| panic!("users are served after the run: {e}\n{text}"));
            assert_eq!(link.release, "v1", "{text}");
        }
        let green = self.green;
        assert!(
            eventually(
                || async move { tokio::net::TcpStream::connect(green).await.is_err() },
                STOP_TIMEOUT
            )
            .await,
            "the new instance still listens on {green}:\n{text}"
        );
        assert!(
            !self.pid_file("green").exists(),
            "the pid file of the stopped instance is left behind:\n{text}"
        );
    }
}

#[tokio::test]
async fn canary_sh_takes_a_healthy_release_through_its_steps_to_100_percent() {
    // Arrange
    let stack = CanaryStack::start().await;
    let client = http_client(REQUEST_TIMEOUT);

    // Act
    let (output, text) = stack
        .canary("v2", &["--steps", "50,100", "--pause", "1"])
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
    let kinds = stack.event_kinds().await;
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
    let stack = CanaryStack::start().await;

    // Act
    let (output, text) = stack
        .canary(
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
    let kinds = stack.event_kinds().await;
    assert!(kinds.contains(&"canary_refused".to_owned()), "{kinds:?}");
    assert!(
        !kinds.contains(&"canary_start".to_owned()),
        "a refused release never took a share: {kinds:?}"
    );
    stack.assert_left_on_blue(&text).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn canary_sh_stops_when_the_guard_pulls_the_release_back_under_user_traffic() {
    // Arrange: users keep coming through the proxy for the whole run. The new release answers
    // its first 60 requests (health checks and the gate's 24 probes included), then 500.
    let stack = CanaryStack::start().await;
    let traffic = Traffic::start(&stack.base(), CLIENTS);
    assert!(
        traffic.wait_for_more(10, TRAFFIC_TIMEOUT).await,
        "the background clients got no traffic through the proxy"
    );

    // Act: a long pause, so that the guard (every 500 ms) acts long before the next step.
    let (output, text) = stack
        .canary(
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
    let kinds = stack.event_kinds().await;
    assert!(kinds.contains(&"guard_abort".to_owned()), "{kinds:?}");
    assert!(!kinds.contains(&"promote".to_owned()), "{kinds:?}");
    stack.assert_left_on_blue(&text).await;
}
