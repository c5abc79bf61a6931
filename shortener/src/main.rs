//! The `shortener` binary: arguments, tracing, open the store, bind, announce, serve.

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use shortener::{AppState, Args, StartError};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

/// Threads for blocking work: on SQLite, the reads, on two reader connections (writes have a
/// thread of their own); PostgreSQL needs none. More would only queue on the readers' mutexes; tokio's default (512)
/// let a burst of 200 concurrent reads start a thread each.
const BLOCKING_THREADS: usize = 8;

fn main() -> ExitCode {
    let args = Args::parse();
    init_tracing();
    // Worker threads: tokio's default, the CPU count or TOKIO_WORKER_THREADS.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .max_blocking_threads(BLOCKING_THREADS)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!(error = %err, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "shortener failed");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: Args) -> Result<(), StartError> {
    let state = AppState::open(&args)
        .await
        .map_err(|source| StartError::Store {
            db: args.db.clone(),
            source,
        })?;
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: args.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(StartError::Announce)?;
    // Installed before the readiness line: a SIGTERM right after it must drain, not kill.
    let shutdown = shutdown_signal().map_err(StartError::Signals)?;
    announce(addr).map_err(StartError::Announce)?;
    tracing::info!(
        %addr,
        release = %args.release,
        db = %args.db,
        faults = ?args.faults.iter().map(ToString::to_string).collect::<Vec<_>>(),
        public_hosts = ?args.public_hosts.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "serving"
    );
    shortener::run(listener, state, shutdown).await
}

/// The readiness line: harnesses read it from stdout to learn the bound port.
fn announce(addr: SocketAddr) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "shortener listening on {addr}")?;
    stdout.flush()
}

fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Completes on the first SIGTERM or SIGINT.
#[cfg(unix)]
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
}

/// Completes on Ctrl-C.
#[cfg(not(unix))]
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    Ok(async {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::info!("Ctrl-C received");
        }
    })
}
