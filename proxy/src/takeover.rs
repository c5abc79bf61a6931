//! The takeover: a running proxy hands its listening sockets to a new
//! process of it without closing them, so no connection is refused and none
//! waiting in an accept queue is lost. The running one listens on
//! `<data_dir>/takeover.sock`; a new one started on the same data directory
//! connects, and:
//!
//! 1. new -> old `prepare`: the old one freezes what writes the data
//!    directory (its background tasks stop and save, the event log is
//!    sealed, routing changes wait) and answers `frozen`;
//! 2. the new one restores the routing state, the budget and the incidents
//!    from the files, probes the upstreams, and sends `ready`;
//! 3. old -> new `sockets`: the listening sockets themselves (SCM_RIGHTS);
//!    the old one still accepts on them meanwhile;
//! 4. new -> old `serving`: the new one accepts; the old one stops
//!    accepting, drains within the grace period and exits 0.
//!
//! Until `serving`, a new process that fails or goes away leaves the old one
//! serving: it thaws and carries on as if nothing happened.

pub mod side_listeners;
mod wire;

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};

use crate::background::Plane;
use crate::error::ProxyError;
use wire::{Message, Wire};

/// The socket's name in the data directory.
pub const SOCKET: &str = "takeover.sock";
/// How long the old process waits for each step of the new one: restoring
/// and probing take at most a few health-check timeouts.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(SOCKET)
}

/// The new side: a running proxy that froze for this process.
pub struct Predecessor {
    wire: Wire,
    pid: u32,
}

impl Predecessor {
    /// Connects to the proxy serving `data_dir`, if one runs, and has it
    /// freeze. `None` when none runs (no socket, or one left by a process
    /// that is gone).
    pub async fn find(data_dir: &Path) -> Result<Option<Predecessor>, ProxyError> {
        let path = socket_path(data_dir);
        let stream = match UnixStream::connect(&path).await {
            Ok(stream) => stream,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(takeover_error(format!("{}: {e}", path.display()))),
        };
        let mut wire = Wire::new(stream);
        let me = std::process::id();
        wire.send(&Message::Prepare { pid: me }, &[])
            .await
            .map_err(|e| takeover_error(format!("cannot ask the running proxy: {e}")))?;
        match expect(&mut wire).await? {
            (Message::Frozen { pid }, _) => {
                tracing::info!(
                    pid,
                    "a proxy runs on this data directory: taking over from it"
                );
                Ok(Some(Predecessor { wire, pid }))
            }
            (other, _) => Err(takeover_error(format!(
                "the running proxy answered {other:?} to prepare"
            ))),
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Asks for the listening sockets, by name.
    pub async fn sockets(&mut self) -> Result<Vec<(String, OwnedFd)>, ProxyError> {
        self.wire
            .send(&Message::Ready, &[])
            .await
            .map_err(|e| takeover_error(format!("cannot ask for the listeners: {e}")))?;
        match expect(&mut self.wire).await? {
            (Message::Sockets { names }, fds) if names.len() == fds.len() => {
                Ok(names.into_iter().zip(fds).collect())
            }
            (other, fds) => Err(takeover_error(format!(
                "the running proxy answered {other:?} with {} descriptor(s)",
                fds.len()
            ))),
        }
    }

    /// Tells it this process accepts now: it stops accepting and drains.
    pub async fn serving(self) -> Result<(), ProxyError> {
        self.wire
            .send(
                &Message::Serving {
                    pid: std::process::id(),
                },
                &[],
            )
            .await
            .map_err(|e| takeover_error(format!("cannot tell the old proxy to drain: {e}")))
    }
}

async fn expect(wire: &mut Wire) -> Result<(Message, Vec<OwnedFd>), ProxyError> {
    match tokio::time::timeout(STEP_TIMEOUT, wire.recv()).await {
        Ok(Ok(received)) => Ok(received),
        Ok(Err(e)) => Err(takeover_error(format!("the running proxy: {e}"))),
        Err(_) => Err(takeover_error(format!(
            "the running proxy did not answer within {} s",
            STEP_TIMEOUT.as_secs()
        ))),
    }
}

fn takeover_error(reason: String) -> ProxyError {
    ProxyError::Takeover(reason)
}

/// Binds the takeover socket in `data_dir`, replacing one left there (by a
/// predecessor that handed over, or one that is gone). Only the owner may
/// connect: whoever connects gets the listeners. The file work runs off the
/// runtime's threads.
pub async fn bind(data_dir: &Path) -> io::Result<UnixListener> {
    let path = socket_path(data_dir);
    let listener = tokio::task::spawn_blocking(move || bind_blocking(&path))
        .await
        .map_err(io::Error::other)??;
    UnixListener::from_std(listener)
}

fn bind_blocking(path: &Path) -> io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// The old side: what it hands over and how it steps aside.
pub struct Handover {
    /// Copies of the listening sockets (the serving tasks own the
    /// originals), by name.
    pub sockets: Vec<(&'static str, OwnedFd)>,
    pub plane: Arc<Plane>,
}

/// The next message of the new process, within the step's time.
async fn step(wire: &mut Wire) -> Result<Message, String> {
    match tokio::time::timeout(STEP_TIMEOUT, wire.recv()).await {
        Ok(Ok((message, _))) => Ok(message),
        Ok(Err(e)) => Err(format!("the new process: {e}")),
        Err(_) => Err(format!(
            "the new process did not go on within {} s",
            STEP_TIMEOUT.as_secs()
        )),
    }
}

/// Answers takeovers until one succeeds (then returns the new process's
/// pid: the caller drains and exits) or `stop` changes (`None`). A takeover
/// that fails part-way leaves this process serving.
pub async fn answer(
    listener: UnixListener,
    handover: Handover,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Option<u32> {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "takeover socket: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return None,
        };
        match hand_over(Wire::new(stream), &handover).await {
            Ok(pid) => {
                tracing::info!(pid, "handed the listeners over; draining");
                return Some(pid);
            }
            Err(reason) => {
                tracing::warn!(%reason, "takeover called off: this process keeps serving");
                handover.plane.thaw().await;
            }
        }
    }
}

async fn hand_over(mut wire: Wire, handover: &Handover) -> Result<u32, String> {
    let Message::Prepare { pid } = step(&mut wire).await? else {
        return Err("the new process did not start with prepare".into());
    };
    tracing::info!(pid, "a new process takes over: freezing");
    handover.plane.freeze().await;
    let me = std::process::id();
    wire.send(&Message::Frozen { pid: me }, &[])
        .await
        .map_err(|e| format!("cannot answer the new process: {e}"))?;
    if step(&mut wire).await? != Message::Ready {
        return Err("the new process did not send ready".into());
    }
    let names = handover
        .sockets
        .iter()
        .map(|(name, _)| (*name).to_string())
        .collect();
    let fds: Vec<_> = handover.sockets.iter().map(|(_, fd)| fd.as_fd()).collect();
    wire.send(&Message::Sockets { names }, &fds)
        .await
        .map_err(|e| format!("cannot send the listeners: {e}"))?;
    match step(&mut wire).await? {
        Message::Serving { pid } => Ok(pid),
        other => Err(format!("the new process sent {other:?} instead of serving")),
    }
}

/// A takeover started from inside: a reload that changed what only a new
/// process applies starts one of the same binary, with the same arguments.
pub struct Succession {
    /// The pid of the process this one handed over to, once it did.
    handed_over: tokio::sync::watch::Receiver<Option<u32>>,
}

impl Succession {
    pub fn new(handed_over: tokio::sync::watch::Receiver<Option<u32>>) -> Succession {
        Succession { handed_over }
    }

    /// Starts the new process and waits until it took over (its pid) or
    /// failed (why; this process keeps serving).
    pub async fn hand_over(&self) -> Result<u32, String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
        let mut child = tokio::process::Command::new(&exe)
            .args(std::env::args_os().skip(1))
            .stdin(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
        tracing::info!(pid = child.id(), "started a new process to take over");
        let mut handed_over = self.handed_over.clone();
        tokio::select! {
            status = child.wait() => Err(match status {
                Ok(status) => format!("the new process exited ({status}) before it took over; see its log"),
                Err(e) => format!("the new process: {e}"),
            }),
            pid = handed_over.wait_for(Option::is_some) => match pid {
                Ok(pid) => Ok(pid.unwrap_or_default()),
                Err(_) => Err("this process is shutting down".into()),
            },
            () = tokio::time::sleep(STEP_TIMEOUT * 3) => Err(format!(
                "the new process did not take over within {} s",
                (STEP_TIMEOUT * 3).as_secs()
            )),
        }
    }
}
