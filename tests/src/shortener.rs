//! A `shortener` process: one release label, optional faults, a SQLite file it may share.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::binary::binary;
use crate::process::{Launch, Process, address_in};

/// The start of the line the shortener prints on stdout once it accepts connections; the
/// line ends with the address ([`address_in`]).
pub const READY_PREFIX: &str = "shortener listening on ";
/// Restarting on the same port retries this many times, in case the old socket lingers.
const RESTART_ATTEMPTS: u32 = 5;
/// The pause between two restart attempts.
const RESTART_BACKOFF: Duration = Duration::from_millis(300);

/// Gives every shortener of a test run its own log file.
static NEXT_ID: AtomicUsize = AtomicUsize::new(0);

/// How to start a shortener: `Shortener::builder().release("v2").fault("create-500")`.
#[derive(Debug, Clone)]
pub struct ShortenerBuilder {
    release: String,
    faults: Vec<String>,
    db: Option<PathBuf>,
    /// The loopback address it listens on (a free port of it).
    host: std::net::IpAddr,
}

impl ShortenerBuilder {
    /// The loopback address to listen on (127.0.0.2 and up reach the loopback interface on
    /// Linux), for a pool of several shorteners; 127.0.0.1 by default.
    pub fn host(mut self, host: std::net::IpAddr) -> Self {
        self.host = host;
        self
    }

    /// The release label it reports (`x-release`, `/healthz`) and writes into its links.
    pub fn release(mut self, label: &str) -> Self {
        self.release = label.to_owned();
        self
    }

    /// A fault to inject: `create-500`, `foreign-links-500`, `fail-after=N`, `latency=MS`.
    pub fn fault(mut self, kind: &str) -> Self {
        self.faults.push(kind.to_owned());
        self
    }

    /// The SQLite file or a PostgreSQL URL; defaults to `links.db` in the directory given to [`Self::start`].
    pub fn db(mut self, path: impl Into<PathBuf>) -> Self {
        self.db = Some(path.into());
        self
    }

    /// The release label this builder will start.
    pub fn release_label(&self) -> &str {
        &self.release
    }

    /// Starts the shortener on an ephemeral loopback port; its log goes into `dir`.
    ///
    /// # Panics
    /// When the binary is missing or does not become ready.
    pub async fn start(self, dir: &Path) -> Shortener {
        let db = self.db.clone().unwrap_or_else(|| dir.join("links.db"));
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let name = format!("shortener {} #{id}", self.release);
        let log = dir.join(format!("shortener-{}-{id}.log", self.release));
        let listen = SocketAddr::new(self.host, 0).to_string();
        let (process, addr) = spawn(&name, &log, &self, &db, &listen).await;
        Shortener {
            process,
            addr,
            release: self.release,
        }
    }
}

/// A running shortener. Dropping it kills the process.
#[derive(Debug)]
pub struct Shortener {
    process: Process,
    /// The bound address; kept across restarts.
    addr: SocketAddr,
    release: String,
}

impl Shortener {
    /// A builder for release `v1`, no faults.
    pub fn builder() -> ShortenerBuilder {
        ShortenerBuilder {
            release: "v1".to_owned(),
            faults: Vec::new(),
            db: None,
            host: std::net::Ipv4Addr::LOCALHOST.into(),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn release(&self) -> &str {
        &self.release
    }

    /// Stops it with SIGTERM (graceful).
    pub async fn stop(&mut self) {
        self.process.terminate().await;
    }

    /// Kills it with SIGKILL, as a crash would.
    pub async fn sigkill(&mut self) {
        self.process.sigkill().await;
    }

    /// Stops it (SIGTERM) and starts it again with the same arguments on the same port.
    ///
    /// # Panics
    /// When it cannot listen on its old port again.
    pub async fn restart(&mut self) {
        self.process.terminate().await;
        let mut launch = self.process.launch().clone();
        let listen = launch
            .args
            .iter()
            .position(|arg| arg == "--listen")
            .expect("the harness always passes --listen")
            + 1;
        launch.args[listen] = self.addr.to_string().into();
        let mut last_error = String::new();
        for _ in 0..RESTART_ATTEMPTS {
            match Process::try_spawn(launch.clone()).await {
                Ok((process, lines)) => {
                    let addr = address_in(&lines[0]);
                    assert_eq!(addr, self.addr, "{} restarted on another port", launch.name);
                    self.process = process;
                    return;
                }
                // The old socket may linger for a moment; try again.
                Err(why) => last_error = why,
            }
            tokio::time::sleep(RESTART_BACKOFF).await;
        }
        panic!(
            "{} could not restart on {} after {RESTART_ATTEMPTS} attempts: {last_error}",
            launch.name, self.addr
        );
    }

    /// The last lines of its stderr.
    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }
}

async fn spawn(
    name: &str,
    log: &Path,
    spec: &ShortenerBuilder,
    db: &Path,
    listen: &str,
) -> (Process, SocketAddr) {
    let mut args = vec![
        "--listen".into(),
        listen.into(),
        "--db".into(),
        db.as_os_str().to_owned(),
        "--release".into(),
        spec.release.clone().into(),
    ];
    for fault in &spec.faults {
        args.push("--fault".into());
        args.push(fault.into());
    }
    let launch = Launch {
        name: name.to_owned(),
        program: binary("shortener"),
        args,
        // Plain logs: they are read in a terminal only when a test fails.
        envs: vec![("NO_COLOR".to_owned(), "1".to_owned())],
        log: log.to_owned(),
        ready: vec![READY_PREFIX.to_owned()],
    };
    let (process, lines) = Process::spawn(launch).await;
    let addr = address_in(&lines[0]);
    (process, addr)
}
