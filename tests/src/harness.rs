//! The whole system under test in one temp dir (`TestStack`), and `eventually`, the only way
//! tests wait.

use std::future::Future;
use std::time::Duration;

use tempfile::TempDir;
use tokio::time::Instant;

use crate::echo::EchoUpstream;
use crate::proxy::{Proxy, ProxyBuilder};
use crate::shortener::{Shortener, ShortenerBuilder};

/// How often `eventually` re-checks its condition.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Re-checks `cond` every 50 ms until it holds (true) or `timeout` has passed (false).
///
/// The one way tests wait, for the shortener's tests as for the end-to-end ones. It answers
/// instead of panicking so that the caller's assertion names what it waited for and shows
/// what it saw: `assert!(eventually(|| .., TIMEOUT).await, "no notice arrived: {log}")`.
/// The answer must be used; a wait that is not a precondition is discarded by name
/// (`let _blue_marked_down = eventually(..)`), so that nobody reads it as one.
#[must_use = "assert on it, naming what was awaited, or discard it by name"]
pub async fn eventually<F, Fut>(mut cond: F, timeout: Duration) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Blue (v1) and green (v2) shorteners sharing one SQLite file, and a proxy in front with
/// blue active. Fields drop in order: the proxy first, the temp dir last.
#[derive(Debug)]
pub struct TestStack {
    pub proxy: Proxy,
    pub blue: Shortener,
    pub green: Shortener,
    /// Holds the db, the config, the proxy's data dir and every log.
    pub dir: TempDir,
}

impl TestStack {
    /// The default stack: blue v1, green v2 (healthy), reference gate and scenarios.
    pub async fn start() -> TestStack {
        TestStack::builder().start().await
    }

    pub fn builder() -> TestStackBuilder {
        TestStackBuilder {
            blue: Shortener::builder().release("v1"),
            green: Shortener::builder().release("v2"),
            proxy: Proxy::builder(),
        }
    }

    /// The base URL users see: `http://<proxy public>`.
    pub fn base(&self) -> String {
        self.proxy.base()
    }
}

/// Options of a [`TestStack`]:
/// `TestStack::builder().green(Shortener::builder().release("v2").fault("create-500"))`.
#[derive(Debug, Clone)]
pub struct TestStackBuilder {
    blue: ShortenerBuilder,
    green: ShortenerBuilder,
    proxy: ProxyBuilder,
}

impl TestStackBuilder {
    /// How to start the blue shortener (its db is always the shared one).
    pub fn blue(mut self, blue: ShortenerBuilder) -> Self {
        self.blue = blue;
        self
    }

    /// How to start the green shortener (its db is always the shared one).
    pub fn green(mut self, green: ShortenerBuilder) -> Self {
        self.green = green;
        self
    }

    /// The cutover gate: `passes` clean runs in a row within `deadline_ms`.
    pub fn gate(mut self, passes: u32, deadline_ms: u64) -> Self {
        self.proxy = self.proxy.gate(passes, deadline_ms);
        self
    }

    /// Any other proxy option; the slot addresses are set by the stack.
    pub fn proxy(mut self, configure: impl FnOnce(ProxyBuilder) -> ProxyBuilder) -> Self {
        self.proxy = configure(self.proxy);
        self
    }

    /// # Panics
    /// When a binary is missing or a process does not become ready.
    pub async fn start(self) -> TestStack {
        let dir = tempfile::Builder::new()
            .prefix("e2e-")
            .tempdir()
            .expect("a temp dir can be created");
        let db = dir.path().join("links.db");
        let blue = self.blue.db(&db).start(dir.path()).await;
        let green = self.green.db(&db).start(dir.path()).await;
        let proxy = self
            .proxy
            .blue(blue.addr())
            .green(green.addr())
            .start(dir.path())
            .await;
        TestStack {
            proxy,
            blue,
            green,
            dir,
        }
    }
}

/// A proxy in front of an [`EchoUpstream`] (both slots point at it), for tests of what the
/// proxy does to requests and responses rather than of the shortener.
#[derive(Debug)]
pub struct EchoStack {
    pub proxy: Proxy,
    pub echo: EchoUpstream,
    /// Holds the config, the proxy's data dir and its log.
    pub dir: TempDir,
}

impl EchoStack {
    /// # Panics
    /// When the proxy binary is missing or does not become ready.
    pub async fn start() -> EchoStack {
        let dir = tempfile::Builder::new()
            .prefix("e2e-echo-")
            .tempdir()
            .expect("a temp dir can be created");
        let echo = EchoUpstream::start().await;
        let proxy = Proxy::builder()
            .blue(echo.addr())
            .green(echo.addr())
            .start(dir.path())
            .await;
        EchoStack { proxy, echo, dir }
    }
}
