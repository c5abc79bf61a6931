//! The `proxy` binary: arguments, the allocator's options, tracing, configuration,
//! systemd's sockets, run.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use proxy::Config;
use proxy::ProxyError;
use proxy::run;
use proxy::{AdminToken, TOKEN_ENV};

// Every request allocates a few small buffers and frees them again (hyper's
// read buffers, header maps, channels); mimalloc's per-thread free lists
// make that cheaper than the system allocator (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's delay before it gives the pages it has emptied back to the
/// kernel. Its default (10 ms) is not a timer: it is checked when the thread
/// next allocates or frees a page, and a proxy that goes quiet once thousands
/// of connections have closed (or parked) never does, so their memory stays
/// resident (24 MiB of 7.5 after 10,000 idle clients closed, against 9 with
/// 0). With 0 the free that empties a page gives it back.
const PURGE_DELAY: (&str, &str) = ("MIMALLOC_PURGE_DELAY", "0");

#[derive(Parser)]
#[command(
    name = "proxy",
    version,
    about = "A blue-green deployment reverse proxy that cuts over only after real probes pass"
)]
struct Args {
    /// The configuration file.
    #[arg(long, env = "PROXY_CONFIG", default_value = "config/proxy.toml")]
    config: PathBuf,
    /// Threads that serve requests (default: one per CPU). With 1, everything runs on
    /// the main thread: no work stealing, no wakeups across threads.
    #[arg(long, env = "TOKIO_WORKER_THREADS")]
    threads: Option<NonZeroUsize>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validates a configuration file: exit 0 when valid, else every problem with its key and line.
    CheckConfig { file: PathBuf },
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Command::CheckConfig { file }) = args.command {
        return match Config::load(&file) {
            Ok(_) => {
                println!("{}: valid", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        };
    }

    restart_with_allocator_options();

    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let systemd = systemd_sockets();
    let runtime = match build_runtime(args.threads) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("proxy: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(start(args.config, systemd)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("proxy: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Starts this program again with `PURGE_DELAY` set, unless the environment
/// sets it already (the operator's value wins): mimalloc reads its options
/// from the environment once, before `main`, and setting one from inside is
/// an `unsafe` call. Returns only when the restart failed; the proxy then
/// runs with mimalloc's default, which costs memory, not correctness.
fn restart_with_allocator_options() {
    use std::os::unix::process::CommandExt as _;
    let (name, value) = PURGE_DELAY;
    if std::env::var_os(name).is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut args = std::env::args_os();
    let mut command = std::process::Command::new(exe);
    if let Some(arg0) = args.next() {
        command.arg0(arg0);
    }
    let error = command.args(args).env(name, value).exec();
    eprintln!("proxy: could not restart with {name}={value} ({error}); running without it");
}

/// Task polls between two looks for new socket events on a current-thread
/// runtime (tokio's default is 61). A proxied request takes two polls of its
/// client connection's task, so 61 would cut the work of 50 busy connections
/// into pieces and let new requests in between; 256 finishes what is ready
/// first, which keeps p99 narrow under load.
const EVENT_INTERVAL: u32 = 256;

/// One thread: a current-thread runtime, cheaper per request than a
/// multi-thread one with a single worker (docs/performance.md).
fn build_runtime(threads: Option<NonZeroUsize>) -> std::io::Result<tokio::runtime::Runtime> {
    match threads.map(NonZeroUsize::get) {
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .event_interval(EVENT_INTERVAL)
            .enable_all()
            .build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    }
}

async fn start(
    config_path: PathBuf,
    systemd: Vec<std::net::TcpListener>,
) -> Result<(), ProxyError> {
    let config = Config::load(&config_path)?;
    let token = AdminToken::resolve(&config, std::env::var(TOKEN_ENV).ok())?;
    // Installed before the readiness lines, so a SIGTERM right after them
    // already drains instead of killing.
    let shutdown = shutdown_signal()?;
    tracing::info!(config = %config_path.display(), "proxy starting");
    run(config, config_path, token, systemd, shutdown).await
}

/// The TCP sockets systemd passed (`LISTEN_FDS`), taken before the runtime
/// starts threads: taking them clears the variables, and the environment is
/// not for changing while other threads read it.
fn systemd_sockets() -> Vec<std::net::TcpListener> {
    let mut fds = listenfd::ListenFd::from_env();
    (0..fds.len())
        .filter_map(|at| match fds.take_tcp_listener(at) {
            Ok(listener) => listener,
            Err(e) => {
                eprintln!("proxy: LISTEN_FDS socket {at} is not a TCP listener: {e}");
                None
            }
        })
        .collect()
}

/// A future that resolves on SIGTERM or SIGINT; the handlers are in place
/// when this returns.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, ProxyError> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
    })
}
