//! A child process of the harness: started with its stderr in a log file, ready once it has
//! printed its listening lines, stopped by SIGTERM (SIGKILL as a last resort), never leaked.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::time::{Instant, timeout, timeout_at};

use crate::harness::eventually;

/// How long a binary may take to print its listening lines (debug builds on a busy 2-core box).
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a process may take to exit after SIGTERM before it gets SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// How many lines of a log are printed when a test fails.
const LOG_TAIL_LINES: usize = 200;

/// What to run and what it prints once it is ready.
#[derive(Debug, Clone)]
pub struct Launch {
    /// Names the process in panic messages and in the log dump.
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub envs: Vec<(String, String)>,
    /// The process's stderr is appended here; survives restarts.
    pub log: PathBuf,
    /// Stdout line prefixes that, once all printed, mean the process is ready.
    pub ready: Vec<String>,
}

/// A running child. Dropping it kills the process (`kill_on_drop`).
#[derive(Debug)]
pub struct Process {
    launch: Launch,
    /// Owned so that the process dies with this handle.
    child: Child,
}

impl Process {
    /// Starts the program and waits until it has printed a line starting with each of
    /// `launch.ready`; returns those lines in the order of `launch.ready`.
    ///
    /// # Panics
    /// When the program cannot start, exits early, or is not ready within [`STARTUP_TIMEOUT`];
    /// the message carries the program's stderr.
    pub async fn spawn(launch: Launch) -> (Process, Vec<String>) {
        match Self::try_spawn(launch).await {
            Ok(started) => started,
            Err(why) => panic!("{why}"),
        }
    }

    /// [`Self::spawn`], with the reason as an error instead of a panic.
    pub async fn try_spawn(launch: Launch) -> Result<(Process, Vec<String>), String> {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&launch.log)
            .map_err(|e| format!("cannot open log {}: {e}", launch.log.display()))?;
        // A marker so that restarts are visible in one log.
        let _ = writeln!(log, "----- harness: starting {} -----", launch.name);
        let mut child = Command::new(&launch.program)
            .args(&launch.args)
            .envs(launch.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", launch.program.display()))?;
        let stdout = child.stdout.take().expect("stdout was configured as piped");
        let mut lines = BufReader::new(stdout).lines();

        let mut found: Vec<Option<String>> = vec![None; launch.ready.len()];
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        while found.iter().any(Option::is_none) {
            match timeout_at(deadline, lines.next_line()).await {
                Ok(Ok(Some(line))) => {
                    for (slot, prefix) in found.iter_mut().zip(&launch.ready) {
                        if slot.is_none() && line.starts_with(prefix.as_str()) {
                            *slot = Some(line.clone());
                        }
                    }
                }
                Ok(Ok(None)) | Ok(Err(_)) => {
                    let status = match timeout(STOP_TIMEOUT, child.wait()).await {
                        Ok(Ok(status)) => status.to_string(),
                        _ => "closed its stdout".to_owned(),
                    };
                    return Err(format!(
                        "{} exited before it was ready ({status}); its stderr:\n{}",
                        launch.name,
                        read_tail(&launch.log)
                    ));
                }
                Err(_) => {
                    return Err(format!(
                        "{} did not print {:?} within {STARTUP_TIMEOUT:?}; its stderr:\n{}",
                        launch.name,
                        launch.ready,
                        read_tail(&launch.log)
                    ));
                }
            }
        }
        // Keeps the pipe drained so that a chatty child never blocks on stdout; ends at EOF,
        // that is when the child exits.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

        let ready = found.into_iter().flatten().collect();
        Ok((Process { launch, child }, ready))
    }

    /// Starts the program without waiting for it to be ready (its stdout is drained): for
    /// tests that act while it starts.
    ///
    /// # Panics
    /// When the program cannot start.
    pub fn spawn_unready(launch: Launch) -> Process {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&launch.log)
            .unwrap_or_else(|e| panic!("cannot open log {}: {e}", launch.log.display()));
        let _ = writeln!(log, "----- harness: starting {} -----", launch.name);
        let mut child = Command::new(&launch.program)
            .args(&launch.args)
            .envs(launch.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", launch.program.display()));
        let stdout = child.stdout.take().expect("stdout was configured as piped");
        let mut lines = BufReader::new(stdout).lines();
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Process { launch, child }
    }

    /// Waits up to `within` for the process to exit by itself; `None` if it still runs.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        match timeout(within, self.child.wait()).await {
            Ok(Ok(status)) => Some(status),
            _ => None,
        }
    }

    /// The launch this process was started from, for restarts.
    pub fn launch(&self) -> &Launch {
        &self.launch
    }

    /// The OS process id, while the process runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the exit; SIGKILL after [`STOP_TIMEOUT`].
    pub async fn terminate(&mut self) -> ExitStatus {
        self.signal("TERM").await;
        match timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(Ok(status)) => status,
            _ => self.sigkill().await,
        }
    }

    /// Sends SIGKILL and waits for the exit.
    pub async fn sigkill(&mut self) -> ExitStatus {
        let _ = self.child.start_kill();
        timeout(STOP_TIMEOUT, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} survived SIGKILL", self.launch.name))
            .unwrap_or_else(|e| panic!("cannot wait for {}: {e}", self.launch.name))
    }

    /// Whether the process has exited (without waiting).
    pub fn has_exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Sends a signal through the `kill` command: the workspace forbids `unsafe`, and so `libc`.
    async fn signal(&self, signal: &str) {
        let Some(pid) = self.child.id() else { return };
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .await;
    }

    /// The last lines of this process's log.
    pub fn log_tail(&self) -> String {
        read_tail(&self.launch.log)
    }

    /// Everything the process wrote to stderr, its earlier runs included (the log survives
    /// restarts), or why the log cannot be read.
    pub async fn log(&self) -> String {
        tokio::fs::read_to_string(&self.launch.log)
            .await
            .unwrap_or_else(|e| format!("(cannot read {}: {e})", self.launch.log.display()))
    }

    /// Waits until the log holds `needle`; false when it does not within `timeout` (the
    /// contract of [`eventually`]).
    #[must_use = "assert on it, naming what was awaited"]
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        eventually(|| async { self.log().await.contains(needle) }, timeout).await
    }

    /// How many threads the process runs now.
    ///
    /// # Panics
    /// When it has exited or its threads cannot be listed.
    #[cfg(target_os = "linux")]
    pub async fn threads(&self) -> usize {
        let name = &self.launch.name;
        let pid = self
            .pid()
            .unwrap_or_else(|| panic!("{name} has exited: it has no threads"));
        let listed = async {
            let mut tasks = tokio::fs::read_dir(format!("/proc/{pid}/task")).await?;
            let mut threads = 0;
            while tasks.next_entry().await?.is_some() {
                threads += 1;
            }
            Ok::<_, std::io::Error>(threads)
        };
        listed
            .await
            .unwrap_or_else(|e| panic!("cannot list the threads of {name}: {e}"))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "===== {} log ({}) =====\n{}",
                self.launch.name,
                self.launch.log.display(),
                read_tail(&self.launch.log)
            );
        }
    }
}

/// The last [`LOG_TAIL_LINES`] lines of a log file, or why it cannot be read.
fn read_tail(path: &Path) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(LOG_TAIL_LINES);
            lines[start..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// The socket address at the end of a line like `shortener listening on 127.0.0.1:41234`.
///
/// # Panics
/// When the line does not end with an address.
pub fn address_in(line: &str) -> std::net::SocketAddr {
    line.rsplit(' ')
        .next()
        .and_then(|word| word.trim().parse().ok())
        .unwrap_or_else(|| panic!("no socket address at the end of {line:?}"))
}
