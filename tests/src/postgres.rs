//! A throwaway PostgreSQL server for tests: Debian's binaries (`/usr/lib/postgresql/<version>/bin`,
//! the newest version installed), `initdb` in a temporary directory, listening on 127.0.0.1 and a
//! free port only (its socket in that directory too), trust authentication for the `postgres`
//! superuser. As root, the server runs as the `postgres` user, since `initdb` refuses root.
//!
//! A server stops when its handle drops, and in any case when the test process ends, however it
//! ends: a watchdog process waits for the end of a pipe that only this process holds, then
//! stops the server and removes its directory. [`PostgresServer::shared`] is one server per test
//! binary, never dropped, on which each test takes a database of its own
//! ([`PostgresServer::create_database`]); a test that stops or restarts its server starts its
//! own ([`PostgresServer::start`]).
//!
//! When the binaries are missing, starting one panics saying so: tests never skip silently.

use std::io::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::process::Command;
use tokio::sync::OnceCell;

/// Where Debian installs each PostgreSQL version's programs: `<this>/<version>/bin`.
const DEBIAN_PREFIX: &str = "/usr/lib/postgresql";
/// The programs a server needs.
const PROGRAMS: [&str; 3] = ["initdb", "pg_ctl", "psql"];
/// The superuser `initdb` creates; tests connect as it, without a password.
pub const SUPERUSER: &str = "postgres";
/// The system user the server runs as when the tests run as root.
const SYSTEM_USER: &str = "postgres";
/// Tries to start on a free port: another process may take the port between our check and the
/// server's bind.
const START_ATTEMPTS: u32 = 3;
/// Bound on one `initdb`, `pg_ctl` or `psql` run (a debug test run on a busy 2-core machine).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(90);
/// How long `pg_ctl` waits for the server to start or stop.
const PG_CTL_WAIT_SECONDS: &str = "60";
/// Bound on waiting for the watchdog to have stopped a dropped server.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How many lines of the server's log a failure message carries.
const LOG_TAIL_LINES: usize = 40;

/// The settings of a test server, appended to its `postgresql.conf` (the port follows).
/// `fsync = off`: a crash of PostgreSQL, even `pg_ctl stop -m immediate`, loses no committed
/// transaction, since the kernel still has what was written; only a crash of the machine would.
const SETTINGS: &str = "
listen_addresses = '127.0.0.1'
max_connections = 300
fsync = off
full_page_writes = off
";

/// Watches the pipe on its stdin; at its end (this process has exited or dropped the server),
/// runs the stop command given as its arguments, then removes the directory `$1`.
const WATCHDOG: &str =
    r#"dir=$1; shift; cat >/dev/null 2>&1; "$@" >/dev/null 2>&1; rm -rf -- "$dir""#;

/// Gives every database of this process its own name.
static NEXT_DATABASE: AtomicUsize = AtomicUsize::new(0);

static SHARED: OnceCell<PostgresServer> = OnceCell::const_new();

/// A running PostgreSQL server in a temporary directory.
#[derive(Debug)]
pub struct PostgresServer {
    /// The directory of `initdb`, `pg_ctl` and `psql`.
    bin: PathBuf,
    /// Holds `data/` (the cluster), `socket/` and `server.log`; removed on drop.
    dir: TempDir,
    port: u16,
    /// Whether the server's programs run as [`SYSTEM_USER`] (the tests run as root).
    as_system_user: bool,
    /// Stops the server when its stdin closes; taken by `Drop`.
    watchdog: Mutex<Option<Child>>,
}

/// A database of its own on a server, for one test.
#[derive(Debug, Clone)]
pub struct PgDatabase {
    pub name: String,
    /// `postgres://postgres@127.0.0.1:PORT/NAME`, what the shortener's `--db` takes.
    pub url: String,
}

impl PostgresServer {
    /// Initializes a cluster in a new temporary directory and starts a server on it.
    ///
    /// # Panics
    /// When the PostgreSQL binaries are not installed (saying which package to install), or the
    /// server cannot start (with its log).
    pub async fn start() -> Self {
        let bin = find_bin_dir();
        let as_system_user = running_as_root();
        let dir = tempfile::Builder::new()
            .prefix("pg-test-")
            .tempdir()
            .expect("a temporary directory for PostgreSQL");
        tokio::fs::create_dir(dir.path().join("socket"))
            .await
            .expect("the socket directory");
        if as_system_user {
            let owner = format!("{SYSTEM_USER}:");
            let mut chown = Command::new("chown");
            chown.arg("-R").arg(&owner).arg(dir.path());
            run(chown, "chown the server's directory to the postgres user").await;
        }
        let mut server = Self {
            bin,
            dir,
            port: 0,
            as_system_user,
            watchdog: Mutex::new(None),
        };
        let mut initdb = server.command("initdb");
        initdb
            .arg("-D")
            .arg(server.data())
            .args(["-U", SUPERUSER, "--auth=trust", "--encoding=UTF8"])
            .args(["--locale=C", "--no-sync", "--no-instructions"]);
        run(initdb, "initdb").await;
        server.spawn_watchdog();
        let socket = server.dir.path().join("socket");
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            server.port = free_port();
            let settings = format!(
                "{SETTINGS}port = {}\nunix_socket_directories = '{}'\n",
                server.port,
                socket.display()
            );
            append(&server.data().join("postgresql.conf"), &settings).await;
            match server.pg_ctl_start().await {
                Ok(()) => return server,
                Err(why) => last_error = why,
            }
        }
        panic!("PostgreSQL did not start after {START_ATTEMPTS} tries: {last_error}");
    }

    /// The server every test of this process shares, started by the first test that asks.
    pub async fn shared() -> &'static Self {
        SHARED.get_or_init(Self::start).await
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The URL of database `name` on this server.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://{SUPERUSER}@127.0.0.1:{}/{name}", self.port)
    }

    /// A new, empty database.
    pub async fn create_database(&self) -> PgDatabase {
        let n = NEXT_DATABASE.fetch_add(1, Ordering::Relaxed);
        let name = format!("test_{}_{n}", std::process::id());
        self.psql("postgres", &format!("CREATE DATABASE {name}"))
            .await;
        PgDatabase {
            url: self.url(&name),
            name,
        }
    }

    /// Runs `sql` (one or more statements) on database `db` and answers what `psql` printed:
    /// unaligned, tuples only, one row a line.
    ///
    /// # Panics
    /// When a statement fails, with `psql`'s message.
    pub async fn psql(&self, db: &str, sql: &str) -> String {
        let mut psql = Command::new(self.bin.join("psql"));
        psql.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-U", SUPERUSER])
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-d", db, "-c", sql])
            .env("PGCONNECT_TIMEOUT", "10");
        run(psql, &format!("psql -d {db} -c {sql:?}"))
            .await
            .trim_end()
            .to_owned()
    }

    /// Stops the server at once, as a crash would: sessions are cut, nothing is flushed.
    pub async fn kill(&self) {
        let mut stop = self.command("pg_ctl");
        stop.arg("-D").arg(self.data()).args([
            "-m",
            "immediate",
            "-w",
            "-t",
            PG_CTL_WAIT_SECONDS,
            "-s",
            "stop",
        ]);
        run(stop, "pg_ctl stop").await;
    }

    /// Starts the server again on its port, after [`Self::kill`].
    ///
    /// # Panics
    /// When it does not start (the port taken meanwhile, for one), with its log.
    pub async fn start_again(&self) {
        if let Err(why) = self.pg_ctl_start().await {
            panic!("PostgreSQL did not start again: {why}");
        }
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self) -> String {
        match std::fs::read_to_string(self.log()) {
            Ok(text) => {
                let lines: Vec<&str> = text.lines().collect();
                lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
            }
            Err(e) => format!("(cannot read {}: {e})", self.log().display()),
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    async fn pg_ctl_start(&self) -> Result<(), String> {
        let mut start = self.command("pg_ctl");
        start
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.log())
            .args(["-w", "-t", PG_CTL_WAIT_SECONDS, "-s", "start"])
            // Its own process group: a Ctrl-C of the tests is for them, not for the server,
            // which the watchdog stops.
            .process_group(0);
        let output = output(start, "pg_ctl start").await?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "pg_ctl start: {}; {}\nits log:\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim_end(),
                self.log_tail()
            ))
        }
    }

    /// `program` from the PostgreSQL binaries, as the user the server runs as.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_system_user {
            let mut command = Command::new("runuser");
            command.args(["-u", SYSTEM_USER, "--"]).arg(path);
            command
        } else {
            Command::new(path)
        }
    }

    /// Starts the process that stops the server when this process ends (see the module docs).
    fn spawn_watchdog(&self) {
        let mut watchdog = std::process::Command::new("sh");
        watchdog
            .arg("-c")
            .arg(WATCHDOG)
            .arg("sh")
            .arg(self.dir.path());
        if self.as_system_user {
            watchdog.args(["runuser", "-u", SYSTEM_USER, "--"]);
        }
        watchdog
            .arg(self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "-s", "stop"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Not in the tests' process group: it must outlive a Ctrl-C of them.
            .process_group(0);
        let child = watchdog.spawn().expect("sh starts the PostgreSQL watchdog");
        *self.watchdog.lock().expect("watchdog lock") = Some(child);
    }
}

impl Drop for PostgresServer {
    /// Closes the watchdog's pipe and waits (bounded) until it has stopped the server.
    fn drop(&mut self) {
        let Some(mut watchdog) = self.watchdog.lock().ok().and_then(|mut w| w.take()) else {
            return;
        };
        drop(watchdog.stdin.take());
        let deadline = Instant::now() + STOP_TIMEOUT;
        while matches!(watchdog.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The newest installed version's `bin` directory.
///
/// # Panics
/// When no version has every program in [`PROGRAMS`], saying what to install.
fn find_bin_dir() -> PathBuf {
    let versions = std::fs::read_dir(DEBIAN_PREFIX)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| entry.path().join("bin"))
                .filter(|bin| PROGRAMS.iter().all(|p| bin.join(p).is_file()))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    versions
        .into_iter()
        .max_by_key(|bin| version_of(bin))
        .unwrap_or_else(|| {
            panic!(
                "PostgreSQL is not installed: no {DEBIAN_PREFIX}/<version>/bin with {PROGRAMS:?}. \
                 The tests start their own server from Debian's package: \
                 apt-get install postgresql (scripts/test-deps.sh installs it)"
            )
        })
}

/// `15` for `/usr/lib/postgresql/15/bin`; 0 when the folder is not a number.
fn version_of(bin: &Path) -> u32 {
    bin.parent()
        .and_then(Path::file_name)
        .and_then(|v| v.to_str())
        .and_then(|v| v.split('.').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("an ephemeral port on 127.0.0.1")
        .port()
}

async fn append(path: &Path, text: &str) {
    let path = path.to_owned();
    let text = text.to_owned();
    tokio::task::spawn_blocking(move || {
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut file| file.write_all(text.as_bytes()))
            .unwrap_or_else(|e| panic!("cannot append to {}: {e}", path.display()));
    })
    .await
    .expect("the settings are written");
}

/// Runs `command` to its end within [`COMMAND_TIMEOUT`].
async fn output(mut command: Command, what: &str) -> Result<std::process::Output, String> {
    command.stdin(Stdio::null()).kill_on_drop(true);
    match tokio::time::timeout(COMMAND_TIMEOUT, command.output()).await {
        Ok(Ok(output)) => Ok(output),
        Ok(Err(e)) => Err(format!("{what}: cannot run it: {e}")),
        Err(_) => Err(format!("{what}: no end within {COMMAND_TIMEOUT:?}")),
    }
}

/// Runs `command` and answers its stdout.
///
/// # Panics
/// When it fails, with its output.
async fn run(command: Command, what: &str) -> String {
    let output = output(command, what)
        .await
        .unwrap_or_else(|why| panic!("{why}"));
    assert!(
        output.status.success(),
        "{what}: {}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout).trim_end(),
        String::from_utf8_lossy(&output.stderr).trim_end()
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_server_serves_survives_a_crash_and_is_gone_once_dropped() {
        let server = PostgresServer::start().await;
        let db = server.create_database().await;
        server
            .psql(
                &db.name,
                "CREATE TABLE t (v int); INSERT INTO t VALUES (41)",
            )
            .await;

        server.kill().await;
        let down = std::net::TcpStream::connect(("127.0.0.1", server.port()));
        server.start_again().await;
        let after = server.psql(&db.name, "SELECT v + 1 FROM t").await;
        let (port, dir) = (server.port(), server.dir.path().to_owned());
        drop(server);

        assert!(down.is_err(), "killed, the server still accepted");
        assert_eq!(after, "42", "committed before the crash, there after it");
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "dropped, the server still accepts"
        );
        assert!(!dir.exists(), "{} is left behind", dir.display());
    }
}
