//! `scripts/deploy.sh` against a real proxy and shortener: a healthy release takes the traffic,
//! a faulty one is refused by the probes, stopped, and users stay on blue.

use std::time::Duration;

use e2e::client::create_link;
use e2e::script_run::{STOP_TIMEOUT, ScriptStack};
use e2e::{eventually, http_client};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn deploy_sh_moves_traffic_to_a_healthy_release() {
    // Arrange
    let stack = ScriptStack::start("deploy.sh", |proxy| proxy).await;
    let client = http_client(REQUEST_TIMEOUT);

    // Act
    let (output, text) = stack.run("v2", &[]).await;

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
    let stack = ScriptStack::start("deploy.sh", |proxy| proxy).await;
    let client = http_client(REQUEST_TIMEOUT);

    // Act
    let (output, text) = stack.run("v2", &["--fault", "create-500"]).await;

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
