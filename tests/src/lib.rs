//! The end-to-end harness: the real `proxy` and `shortener` binaries, started on ephemeral
//! loopback ports in a temporary directory, driven over real sockets.
//!
//! ```text
//!   test ──► Proxy (public) ──► active slot: Shortener "blue" (v1) │ EchoUpstream
//!        └─► Proxy (admin)  ──► probes ──► candidate: Shortener "green" (v2, faults)
//!                 both shorteners share one SQLite file in the TestStack's temp dir
//! ```
//!
//! The binaries are not built by `cargo test -p e2e`: run `cargo build --workspace` first.
//! Every child process is killed when its handle drops; when a test panics, the stderr logs of
//! the processes it started are printed with the failure.
//!
//! The shortener's own tests start its binary with the same [`process::Process`], wait with
//! the same [`eventually`] and send with the same [`http_client`].

pub mod binary;
pub mod client;
pub mod echo;
pub mod harness;
pub mod hostile;
pub mod load;
pub mod postgres;
pub mod process;
pub mod proxy;
pub mod recorder;
pub mod scrape;
pub mod script_run;
pub mod shortener;
pub mod tls;
pub mod traffic;

pub use client::{Created, RawResponse, http_client, unique};
pub use echo::{EchoUpstream, fnv64};
pub use harness::{EchoStack, TestStack, TestStackBuilder, eventually};
pub use load::{Sample, UserLoad};
pub use proxy::{Proxy, ProxyBuilder};
pub use shortener::{Shortener, ShortenerBuilder};
pub use traffic::{Traffic, TrafficReport};
