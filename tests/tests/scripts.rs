//! `scripts/deploy.sh` against a real proxy and shortener: a healthy release takes the traffic,
//! a faulty one is refused by the probes, stopped, and users stay on blue.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use e2e::binary::binary;
use e2e::client::create_link;
use e2e::script_run::{STOP_TIMEOUT, ScriptInstances, free_addr, repo_root};
use e2e::{Proxy, Shortener, eventually, http_client};
use tempfile::TempDir;
use tokio::process::Command;

/// The whole script: starting a debug shortener, three probe passes, the switch.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Blue (v1) behind a proxy whose green slot points at a free port, where `deploy.sh` starts
/// the new release. Fields drop in order: the script's instances, the proxy, blue, the dir.
struct DeployStack {
    instances: ScriptInstances,
    proxy: Proxy,
    blue: Shortener,
    green: SocketAddr,
    db: PathBuf,
    /// Holds the db, the config, every log and the script's run dir.
    _dir: TempDir,
}

impl DeployStack {
    async fn start() -> DeployStack {
        let dir = tempfile::Builder::new()
            .prefix("e2e-scripts-")
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
            .start(dir.path())
            .await;
        let run_dir = dir.path().join("run");
        DeployStack {
            instances: ScriptInstances { run_dir },
            proxy,
            blue,
            green,
            db,
            _dir: dir,
        }
    }

    /// Runs `scripts/deploy.sh --release RELEASE EXTRA...` against this stack; returns its
    /// exit, and its stdout and stderr together.
    async fn deploy(&self, release: &str, extra: &[&str]) -> (Output, String) {
        let script = repo_root().join("scripts").join("deploy.sh");
        let admin = format!("http://{}", self.proxy.admin_addr());
        let shortener = binary("shortener");
        let mut command = Command::new(&script);
        command
            .args(["--release", release, "--admin", &admin])
            .arg("--binary")
            .arg(&shortener)
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
}

#[tokio::test]
async fn deploy_sh_moves_traffic_to_a_healthy_release() {
    // Arrange
    let stack = DeployStack::start().await;
    let client = http_client(REQUEST_TIMEOUT);

    // Act
    let (output, text) = stack.deploy("v2", &[]).await;

    // Assert
    assert!(output.status.success(), "deploy.sh failed:\n{text}");
    assert!(
        text.contains("traffic moved: green is active, release v2"),
        "deploy.sh did not report the new active slot:\n{text}"
    );
    assert_eq!(stack.proxy.active().await, "green", "{text}");
    let link = create_link(&client, &stack.base(), "https://e2e.example/deployed")
        .await
        .expect("a link is created through the proxy");
    assert_eq!(link.release, "v2", "{text}");
    assert!(
        stack.pid_file("green").is_file(),
        "deploy.sh recorded no pid for the instance it started:\n{text}"
    );
    let blue = http_client(REQUEST_TIMEOUT)
        .get(stack.blue.url("/healthz"))
        .send()
        .await
        .expect("blue still answers, warm for a rollback");
    assert!(blue.status().is_success());
}

#[tokio::test]
async fn deploy_sh_reports_a_refused_release_and_stops_it() {
    // Arrange
    let stack = DeployStack::start().await;
    let client = http_client(REQUEST_TIMEOUT);

    // Act
    let (output, text) = stack.deploy("v2", &["--fault", "create-500"]).await;

    // Assert
    assert!(
        !output.status.success(),
        "deploy.sh succeeded with a faulty release:\n{text}"
    );
    assert!(
        text.lines().any(|line| line.trim() == "step:     create"),
        "deploy.sh did not name the failing step:\n{text}"
    );
    assert!(text.contains("create-and-follow"), "{text}");
    assert_eq!(stack.proxy.active().await, "blue", "{text}");
    let link = create_link(&client, &stack.base(), "https://e2e.example/refused")
        .await
        .expect("a link is created through the proxy");
    assert_eq!(link.release, "v1");
    let green = stack.green;
    assert!(
        eventually(
            || async move { tokio::net::TcpStream::connect(green).await.is_err() },
            STOP_TIMEOUT
        )
        .await,
        "the refused instance still listens on {green}:\n{text}"
    );
    assert!(
        !stack.pid_file("green").exists(),
        "the pid file of the stopped instance is left behind:\n{text}"
    );
}
