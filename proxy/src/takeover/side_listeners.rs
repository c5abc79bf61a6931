//! The admin and status listeners through a takeover or a shutdown: they
//! stop accepting at once (the new process accepts from the same sockets),
//! while the connections already open keep being answered for
//! [`LINGER`], each answer with `Connection: close`, before they are closed.
//!
//! Closing an idle keep-alive connection at once races the client's next
//! request on it, which then fails though a new process is serving: a
//! release script polling `GET /status` through a takeover would see an
//! error. The public listener's drain lingers in the same way.

use std::io;
use std::net::SocketAddr;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

// Open connections are answered as long as the public listener's are.
use crate::http::server::LINGER;

/// Serves `app` on `listener` until `stop` turns true, then for [`LINGER`]
/// more on the connections already open.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let app = app.layer(middleware::from_fn_with_state(
        stop.clone(),
        close_once_stopped,
    ));
    let mut lingered = stop.clone();
    let closed = async move {
        stopped(&mut lingered).await;
        tokio::time::sleep(LINGER).await;
    };
    axum::serve(Stoppable { listener, stop }, app)
        .with_graceful_shutdown(closed)
        .await
}

/// Once stopped, every answer closes its connection.
async fn close_once_stopped(
    State(stop): State<watch::Receiver<bool>>,
    request: Request,
    next: Next,
) -> Response {
    let mut response = next.run(request).await;
    if *stop.borrow() {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// A listener that accepts no more once `stop` turns true.
struct Stoppable {
    listener: TcpListener,
    stop: watch::Receiver<bool>,
}

/// Resolves once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

impl axum::serve::Listener for Stoppable {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        tokio::select! {
            biased;
            () = stopped(&mut self.stop) => std::future::pending().await,
            accepted = axum::serve::Listener::accept(&mut self.listener) => accepted,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}
