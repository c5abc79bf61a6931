//! The TLS listener's handshakes: each within `limits.tls_handshake_timeout` of its accept,
//! with the certificates of the routing snapshot as it is then (a reload changes them for
//! the next handshake, never for an open connection). Plain HTTP sent to the TLS port is
//! answered 400 in plain text, as nginx does. A failure ends its connection, never the
//! listener, and is counted by reason in `/metrics`.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::http::routing::Router;
use crate::metrics::Metrics;
use crate::tls::HandshakeFailure;

/// The first byte of a TLS record that carries a handshake message, as a ClientHello does.
const HANDSHAKE_RECORD: u8 = 0x16;
/// What a plain HTTP request on the TLS port gets.
const PLAIN_HTTP_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
content-type: text/plain; charset=utf-8\r\n\
content-length: 51\r\n\
connection: close\r\n\
\r\n\
400 bad request: plain HTTP sent to the HTTPS port\n";
/// Bytes of the plain request read (and dropped) after the answer, so that closing with
/// them unread does not reset the connection before the client has read the answer.
const PLAIN_HTTP_DRAIN: usize = 64 * 1024;

/// The TLS listener and what its handshakes need.
pub struct TlsListener {
    pub listener: TcpListener,
    pub handshake: Handshake,
}

/// What a handshake needs: shared by every connection's task.
#[derive(Clone)]
pub struct Handshake {
    /// The certificates are in its policy (`Https`).
    pub router: Arc<Router>,
    pub metrics: Arc<Metrics>,
    pub timeout: Duration,
}

impl Handshake {
    /// The TLS stream of an accepted connection, or `None` when the handshake failed (the
    /// connection is then closed, and the failure counted).
    pub async fn run(&self, stream: TcpStream, peer: SocketAddr) -> Option<TlsStream<TcpStream>> {
        let result = tokio::time::timeout(self.timeout, self.handshake(stream))
            .await
            .unwrap_or(Err((HandshakeFailure::Timeout, None)));
        match result {
            Ok(stream) => Some(stream),
            Err((failure, detail)) => {
                self.metrics.tls_handshake_failed(failure);
                tracing::debug!(%peer, reason = failure.as_str(), detail = detail.as_deref().unwrap_or(""), "TLS handshake failed");
                None
            }
        }
    }

    async fn handshake(
        &self,
        stream: TcpStream,
    ) -> Result<TlsStream<TcpStream>, (HandshakeFailure, Option<String>)> {
        let mut first = [0u8; 1];
        match stream.peek(&mut first).await {
            Ok(0) => return Err((HandshakeFailure::Closed, None)),
            Err(e) => return Err((HandshakeFailure::Closed, Some(e.to_string()))),
            Ok(_) => {}
        }
        if first[0] != HANDSHAKE_RECORD {
            // A request line starts with a method in capitals; anything else gets no answer.
            if first[0].is_ascii_uppercase() {
                let _ = answer_plain_http(stream).await;
            }
            return Err((HandshakeFailure::NotTls, None));
        }
        // Loaded once, for this handshake only: an open connection keeps its certificate.
        let Some(https) = self.router.load().policy.https.clone() else {
            return Err((
                HandshakeFailure::Failed,
                Some("no certificate is loaded".into()),
            ));
        };
        TlsAcceptor::from(Arc::clone(https.certificates.server_config()))
            .accept(stream)
            .await
            .map_err(|e| {
                let failure = if e.kind() == io::ErrorKind::UnexpectedEof {
                    HandshakeFailure::Closed
                } else {
                    HandshakeFailure::Failed
                };
                (failure, Some(e.to_string()))
            })
    }
}

/// Answers 400, then reads what the client sent (bounded) until it closes: the caller's
/// timeout bounds the whole.
async fn answer_plain_http(mut stream: TcpStream) -> io::Result<()> {
    stream.write_all(PLAIN_HTTP_ANSWER).await?;
    stream.shutdown().await?;
    let mut buf = [0u8; 4096];
    let mut drained = 0;
    while drained < PLAIN_HTTP_DRAIN {
        match stream.read(&mut buf).await? {
            0 => break,
            n => drained += n,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plain_http_answer_says_its_length() {
        let text = std::str::from_utf8(PLAIN_HTTP_ANSWER).expect("ASCII");
        let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
    }

    #[test]
    fn every_reason_is_listed_at_its_index() {
        for (i, reason) in HandshakeFailure::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, i);
        }
    }
}
