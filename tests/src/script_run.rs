//! Running the release scripts (`scripts/*.sh`) from tests: the stack a script deploys
//! into, where the scripts are, a free address for the idle slot, and stopping the
//! shorteners a script detached, by the PIDs it recorded.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use tempfile::TempDir;
use tokio::process::Command;

use crate::binary::binary;
use crate::proxy::{Proxy, ProxyBuilder, TOKEN_ENV};
use crate::shortener::Shortener;

/// How long a script's shortener gets to stop after SIGTERM before SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// The whole script: starting a debug shortener, the gate (at each step, for a canary), the
/// pauses, the switch.
pub const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

/// Blue (v1) behind a proxy whose green slot points at a free port, where a release script
/// (`deploy.sh`, `canary.sh`) starts the new release. Fields drop in order: the script's
/// instances, the proxy, blue, the dir.
pub struct ScriptStack {
    pub instances: ScriptInstances,
    pub proxy: Proxy,
    pub blue: Shortener,
    /// The green slot's address: free until the script starts a shortener there.
    pub green: SocketAddr,
    /// The SQLite file blue uses and the script's shortener is given.
    pub db: PathBuf,
    /// The script under test, a file name in `scripts/`.
    script: &'static str,
    /// Holds the db, the config, every log and the script's run dir.
    pub dir: TempDir,
}

impl ScriptStack {
    /// The stack for `script` (`"deploy.sh"`, `"canary.sh"`), with any proxy option
    /// `configure` adds; the slot addresses are set by the stack.
    ///
    /// # Panics
    /// When a binary is missing or a process does not become ready.
    pub async fn start(
        script: &'static str,
        configure: impl FnOnce(ProxyBuilder) -> ProxyBuilder,
    ) -> ScriptStack {
        let name = script.strip_suffix(".sh").unwrap_or(script);
        let dir = tempfile::Builder::new()
            .prefix(&format!("e2e-{name}-sh-"))
            .tempdir()
            .expect("a temp dir can be created");
        let db = dir.path().join("links.db");
        let blue = Shortener::builder()
            .release("v1")
            .db(&db)
            .start(dir.path())
            .await;
        let green = free_addr();
        let proxy = configure(Proxy::builder())
            .blue(blue.addr())
            .green(green)
            .start(dir.path())
            .await;
        let run_dir = dir.path().join("run");
        ScriptStack {
            instances: ScriptInstances { run_dir },
            proxy,
            blue,
            green,
            db,
            script,
            dir,
        }
    }

    /// Runs `scripts/SCRIPT --release RELEASE EXTRA...` against this stack; returns its exit,
    /// and its stdout and stderr together.
    ///
    /// # Panics
    /// When the script cannot be run or does not finish within [`SCRIPT_TIMEOUT`].
    pub async fn run(&self, release: &str, extra: &[&str]) -> (Output, String) {
        let script = repo_root().join("scripts").join(self.script);
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
            .env(TOKEN_ENV, self.proxy.token())
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

    /// The base URL users see: `http://<proxy public>`.
    pub fn base(&self) -> String {
        self.proxy.base()
    }

    /// Where the script records the PID of the shortener it started on `slot`.
    pub fn pid_file(&self, slot: &str) -> PathBuf {
        self.instances.run_dir.join(format!("{slot}.pid"))
    }
}

/// The shorteners a release script started (it detaches them, so the harness does not own them):
/// stopped when the test ends, pass or fail.
pub struct ScriptInstances {
    pub run_dir: PathBuf,
}

impl Drop for ScriptInstances {
    fn drop(&mut self) {
        // `<slot>.pid`, and `<slot>.<n>.pid` for the other members of a pool.
        let pid_files = std::fs::read_dir(&self.run_dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.path())
            .filter(|path| {
                path.extension().is_some_and(|e| e == "pid")
                    && path
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(['b', 'g']))
            });
        for pid_file in pid_files {
            let Ok(text) = std::fs::read_to_string(pid_file) else {
                continue;
            };
            let Ok(pid) = text.trim().parse::<u32>() else {
                continue;
            };
            stop_shortener(pid);
        }
    }
}

/// SIGTERM, then SIGKILL after a grace period, but only to a live shortener process.
pub fn stop_shortener(pid: u32) {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let is_shortener = std::fs::read(proc_dir.join("cmdline"))
        .map(|cmdline| String::from_utf8_lossy(&cmdline).contains("shortener"))
        .unwrap_or(false);
    if !is_shortener {
        return;
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let deadline = std::time::Instant::now() + STOP_TIMEOUT;
    while alive(&proc_dir) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if alive(&proc_dir) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
}

/// A process is gone once its /proc entry is, or it is a zombie waiting for its reaper.
fn alive(proc_dir: &Path) -> bool {
    std::fs::read_to_string(proc_dir.join("stat"))
        .map(|stat| {
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z') && !state.starts_with('X')
        })
        .unwrap_or(false)
}

/// A loopback address for a server a release script will start, free now and
/// not one the kernel hands out meanwhile: a port below its ephemeral range.
/// A port from binding port 0 and letting go can be given at once to another
/// test's server binding port 0, or to an outgoing connection, before the
/// script binds it; then the script rightly refuses an address in use.
pub fn free_addr() -> SocketAddr {
    const FLOOR: u16 = 10_000;
    let low = ephemeral_low().unwrap_or(32_768);
    let below_ephemeral = (low > FLOOR)
        .then(|| {
            (0..200).find_map(|_| {
                let seed = RandomState::new().build_hasher().finish();
                let port = FLOOR + (seed % u64::from(low - FLOOR)) as u16;
                TcpListener::bind(("127.0.0.1", port)).ok()
            })
        })
        .flatten();
    let listener = match below_ephemeral {
        Some(listener) => listener,
        None => TcpListener::bind("127.0.0.1:0").expect("a loopback port can be bound"),
    };
    listener
        .local_addr()
        .expect("a bound listener has an address")
}

/// The first port of the kernel's ephemeral range.
fn ephemeral_low() -> Option<u16> {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the e2e crate lives in the workspace root")
        .to_path_buf()
}
