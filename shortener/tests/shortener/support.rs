//! The shortener's side of the harness: a fresh database per test on either engine (`TestDb`),
//! the app in-process on 127.0.0.1:0 (`TestApp`), the real binary as a child process
//! (`ChildApp`), requests against either (`Target`), and `on_each_engine!`, which runs a test
//! once on SQLite and once on PostgreSQL (one server per test binary, `e2e::postgres`, a
//! database per test). What every harness of the workspace shares comes from the e2e crate:
//! the child process and its readiness line (`e2e::process`), the client that shows redirects
//! (`e2e::http_client`) and `e2e::eventually`, the one way to wait for a condition.

use std::ffi::OsString;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use e2e::postgres::{PgDatabase, PostgresServer};
use e2e::process::{Launch, Process, address_in};
use e2e::shortener::READY_PREFIX;
use reqwest::{Client, RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};
use shortener::{AppState, Args};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// Bound on anything a test waits for: a request, a readiness line, an exit.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Runs each named `async fn(Engine)` of the module as two tests, `NAME::sqlite` and
/// `NAME::postgres`. A test function left out of the list is dead code, which the lints refuse.
macro_rules! on_each_engine {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn sqlite() {
                super::$name($crate::support::Engine::Sqlite).await;
            }

            #[tokio::test]
            async fn postgres() {
                super::$name($crate::support::Engine::Postgres).await;
            }
        }
    )+};
}

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

/// A fresh database of one test: a file in a temporary folder, or a database of its own on the
/// shared PostgreSQL server. Cheap to clone; the folder lives as long as a clone does.
#[derive(Debug, Clone)]
pub struct TestDb {
    place: Place,
}

#[derive(Debug, Clone)]
enum Place {
    Sqlite {
        path: PathBuf,
        _dir: Arc<TempDir>,
    },
    Postgres {
        server: &'static PostgresServer,
        db: PgDatabase,
    },
}

impl TestDb {
    pub async fn new(engine: Engine) -> Self {
        let place = match engine {
            Engine::Sqlite => {
                let dir = tempfile::tempdir().expect("a temp dir");
                // A folder that does not exist yet: the first process to open it creates it.
                let path = dir.path().join("data").join("links.db");
                Place::Sqlite {
                    path,
                    _dir: Arc::new(dir),
                }
            }
            Engine::Postgres => {
                let server = PostgresServer::shared().await;
                let db = server.create_database().await;
                Place::Postgres { server, db }
            }
        };
        Self { place }
    }

    /// What `--db` and `SHORTENER_DB` take: the file's path or the database's URL.
    pub fn arg(&self) -> String {
        match &self.place {
            Place::Sqlite { path, .. } => path.to_str().expect("a UTF-8 temp path").to_owned(),
            Place::Postgres { db, .. } => db.url.clone(),
        }
    }

    /// Runs `sql` on the database from outside the app, as another process would.
    pub async fn execute(&self, sql: &str) {
        match &self.place {
            Place::Sqlite { path, .. } => {
                let (path, sql) = (path.clone(), sql.to_owned());
                tokio::task::spawn_blocking(move || {
                    let conn = rusqlite::Connection::open(&path).expect("open the database");
                    conn.busy_timeout(PATIENCE).expect("busy timeout");
                    conn.execute_batch(&sql).expect("the statements run");
                })
                .await
                .expect("the SQLite task");
            }
            Place::Postgres { server, db } => {
                server.psql(&db.name, sql).await;
            }
        }
    }

    /// The schema version the migrations recorded; 0 before the first.
    pub async fn schema_version(&self) -> i64 {
        match &self.place {
            Place::Sqlite { path, .. } => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || {
                    rusqlite::Connection::open(&path)
                        .and_then(|c| c.query_row("PRAGMA user_version", [], |row| row.get(0)))
                        .expect("the schema version")
                })
                .await
                .expect("the SQLite task")
            }
            Place::Postgres { server, db } => server
                .psql(
                    &db.name,
                    "SELECT coalesce(max(version), 0) FROM schema_version",
                )
                .await
                .parse()
                .expect("a version number"),
        }
    }

    /// Records `version` as the schema's, as a newer release's migration would.
    pub async fn set_schema_version(&self, version: i64) {
        let sql = match &self.place {
            Place::Sqlite { .. } => format!("PRAGMA user_version = {version}"),
            Place::Postgres { .. } => format!("UPDATE schema_version SET version = {version}"),
        };
        self.execute(&sql).await;
    }
}

/// Requests against one base URL, shared by the in-process app and the child process.
pub trait Target {
    fn base(&self) -> String;
    fn http(&self) -> &Client;

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base())
    }
    fn get(&self, path: &str) -> RequestBuilder {
        self.http().get(self.url(path))
    }
    fn delete(&self, path: &str) -> RequestBuilder {
        self.http().delete(self.url(path))
    }
    fn post_json(&self, path: &str, body: &Value) -> RequestBuilder {
        self.http().post(self.url(path)).json(body)
    }
    fn post_form(&self, path: &str, fields: &[(&str, &str)]) -> RequestBuilder {
        self.http().post(self.url(path)).form(fields)
    }

    /// Creates a link through the API, asserting the 201, and answers the JSON.
    fn create(&self, url: &str, code: Option<&str>) -> impl Future<Output = Value> + Send
    where
        Self: Sync,
    {
        async move {
            let res =
                send(self.post_json("/api/links", &json!({ "url": url, "code": code }))).await;
            assert_eq!(
                res.status(),
                StatusCode::CREATED,
                "creating {url} as {code:?}"
            );
            json_of(res).await
        }
    }
}

/// Sends, panicking on transport errors (tests want the status, not a `Result`).
pub async fn send(request: RequestBuilder) -> Response {
    request.send().await.expect("the request gets an answer")
}

pub async fn json_of(res: Response) -> Value {
    res.json().await.expect("a JSON body")
}

pub async fn text_of(res: Response) -> String {
    res.text().await.expect("a text body")
}

pub fn header<'a>(res: &'a Response, name: &str) -> &'a str {
    res.headers()
        .get(name)
        .map(|v| v.to_str().expect("a text header"))
        .unwrap_or_default()
}

/// The JSON error message of a 4xx/5xx answer, asserting the status and the shape.
pub async fn error_of(res: Response, status: StatusCode) -> String {
    assert_eq!(res.status(), status);
    assert!(header(&res, "content-type").starts_with("application/json"));
    let body = json_of(res).await;
    let message = body["error"]
        .as_str()
        .expect("an `error` string")
        .to_owned();
    assert!(!message.is_empty());
    message
}

/// The app running in this test's runtime, on its own port and (by default) its own database.
pub struct TestApp {
    pub addr: SocketAddr,
    pub db: TestDb,
    client: Client,
    shutdown: Option<oneshot::Sender<()>>,
}

impl Target for TestApp {
    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }
    fn http(&self) -> &Client {
        &self.client
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

pub async fn spawn_app(engine: Engine) -> TestApp {
    spawn_app_with(engine, &[]).await
}

/// An app on a fresh database, with extra command-line flags.
pub async fn spawn_app_with(engine: Engine, flags: &[&str]) -> TestApp {
    spawn_app_on(&TestDb::new(engine).await, flags).await
}

/// An app on a given database (several apps may share one), with extra flags.
pub async fn spawn_app_on(db: &TestDb, flags: &[&str]) -> TestApp {
    let db_arg = db.arg();
    let argv = ["shortener", "--listen", "127.0.0.1:0", "--db", &db_arg]
        .into_iter()
        .chain(flags.iter().copied());
    let args = Args::try_parse_from(argv).expect("test flags parse");
    let state = AppState::open(&args).await.expect("the store opens");
    // Bound before `run`: connections queue in the backlog, so the app is ready on return.
    let listener = TcpListener::bind(args.listen).await.expect("bind port 0");
    let addr = listener.local_addr().expect("a bound address");
    let (shutdown, stop) = oneshot::channel::<()>();
    tokio::spawn(shortener::run(listener, state, async {
        let _ = stop.await;
    }));
    TestApp {
        addr,
        db: db.clone(),
        client: e2e::http_client(PATIENCE),
        shutdown: Some(shutdown),
    }
}

/// The real `shortener` binary as a child process on the address its readiness line names.
/// Its `process` is killed when dropped, and its log printed when the test panics.
pub struct ChildApp {
    pub addr: SocketAddr,
    /// Stops, kills and reads the log of the child.
    pub process: Process,
    client: Client,
    /// Holds the child's log; dropped after `process`, which prints the log on a panic.
    _dir: TempDir,
}

impl Target for ChildApp {
    fn base(&self) -> String {
        format!("http://{}", self.addr)
    }
    fn http(&self) -> &Client {
        &self.client
    }
}

impl ChildApp {
    /// Starts the binary on `db` and a free port, with extra flags, and waits for readiness.
    pub async fn start(db: &TestDb, flags: &[&str]) -> Self {
        let db_arg = db.arg();
        let mut args = vec!["--listen", "127.0.0.1:0", "--db", &db_arg];
        args.extend_from_slice(flags);
        Self::spawn(&args, &[]).await
    }

    /// Starts the binary with exactly these arguments and environment variables, and waits for
    /// the readiness line on stdout.
    pub async fn spawn(args: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().expect("a temp dir");
        // After the test's own variables, so that the log always has the lines tests wait for.
        let log_env = [("RUST_LOG", "info,shortener=debug"), ("NO_COLOR", "1")];
        let launch = Launch {
            name: "shortener".to_owned(),
            program: PathBuf::from(env!("CARGO_BIN_EXE_shortener")),
            args: args.iter().map(OsString::from).collect(),
            envs: env
                .iter()
                .chain(&log_env)
                .map(|&(key, value)| (key.to_owned(), value.to_owned()))
                .collect(),
            log: dir.path().join("shortener.log"),
            ready: vec![READY_PREFIX.to_owned()],
        };
        let (process, ready) = Process::spawn(launch).await;
        Self {
            addr: address_in(&ready[0]),
            process,
            client: e2e::http_client(PATIENCE),
            _dir: dir,
        }
    }
}
