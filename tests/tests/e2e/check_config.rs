//! `proxy check-config`: the reference config is valid; a broken one is refused with every
//! problem named by its key and line.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use e2e::binary::{binary, reference_config};
use tokio::process::Command;

const TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `proxy check-config FILE` in `cwd` (so that a relative `data_dir` lands in a temp dir).
async fn check_config(file: &Path, cwd: &Path) -> Output {
    let run = Command::new(binary("proxy"))
        .arg("check-config")
        .arg(file)
        .current_dir(cwd)
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(TIMEOUT, run)
        .await
        .expect("check-config finishes")
        .expect("check-config runs")
}

/// The 1-based number of the line of `text` that starts with `prefix`.
fn line_of(text: &str, prefix: &str) -> usize {
    text.lines()
        .position(|line| line.starts_with(prefix))
        .map(|i| i + 1)
        .unwrap_or_else(|| panic!("no line starts with {prefix:?}"))
}

/// Whether some line of `output` names `key` and has `line` as one of its numbers.
fn names_key_at_line(output: &str, key: &str, line: usize) -> bool {
    output.lines().any(|text| {
        text.contains(key)
            && text
                .split(|c: char| !c.is_ascii_digit())
                .any(|number| number == line.to_string())
    })
}

#[tokio::test]
async fn the_reference_config_is_valid() {
    // Arrange
    let cwd = tempfile::tempdir().expect("a temp dir can be created");

    // Act
    let output = check_config(&reference_config(), cwd.path()).await;

    // Assert
    assert!(
        output.status.success(),
        "check-config refused config/proxy.toml ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn an_unknown_key_and_a_bad_address_are_both_reported_with_their_lines() {
    // Arrange
    let cwd = tempfile::tempdir().expect("a temp dir can be created");
    let config = r#"# Two mistakes: a bad address and a misspelt key.
data_dir = "data"

[listen]
public = "nowhere"
admin = "127.0.0.1:0"

[slots]
active = "blue"

[slots.blue]
addr = "127.0.0.1:8081"

[slots.green]
addr = "127.0.0.1:8082"

[timeouts]
conect_ms = 1000
"#;
    let file = cwd.path().join("broken.toml");
    std::fs::write(&file, config).expect("the temp dir is writable");

    // Act
    let output = check_config(&file, cwd.path()).await;

    // Assert
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        !output.status.success(),
        "check-config accepted it:\n{printed}"
    );
    let public_line = line_of(config, "public = ");
    let typo_line = line_of(config, "conect_ms");
    assert!(
        names_key_at_line(&printed, "listen.public", public_line),
        "the bad address is not reported as `listen.public` at line {public_line}:\n{printed}"
    );
    assert!(
        names_key_at_line(&printed, "conect_ms", typo_line),
        "the unknown key is not reported as `conect_ms` at line {typo_line}:\n{printed}"
    );
}
