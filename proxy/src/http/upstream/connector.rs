//! How a slot's upstream is reached: a TCP connection, and TLS over it (HTTP/1.1 by ALPN,
//! the certificate verified for the slot's `server_name`) when the slot says `tls = true`.
//! The request path's pool, the probes and the health checks all connect through it, so
//! each of them sees an upstream the same way.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use rustls::RootCertStore;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::config::SlotTls;
use crate::tls::client;

/// Opens connections to an upstream. Cheap to clone (the TLS configuration is shared, and
/// with it rustls's cache of sessions to resume).
#[derive(Clone)]
pub enum Connector {
    Plain,
    Tls {
        connector: TlsConnector,
        /// Sent as SNI; the certificate must be valid for it.
        server_name: ServerName<'static>,
    },
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Connector::Plain => f.write_str("Plain"),
            Connector::Tls { server_name, .. } => write!(f, "Tls({})", server_name.to_str()),
        }
    }
}

/// Why no connection was opened. Either way nothing of a request was sent.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("tcp connect error: {0}")]
    Tcp(io::Error),
    #[error("tcp connect timed out")]
    TcpTimeout,
    /// The upstream's certificate did not verify, or TLS found nothing in common.
    #[error("tls handshake: {0}")]
    Handshake(io::Error),
    #[error("tls handshake timed out")]
    HandshakeTimeout,
}

impl ConnectError {
    /// The TCP connection was made and TLS over it failed.
    pub fn is_handshake(&self) -> bool {
        matches!(
            self,
            ConnectError::Handshake(_) | ConnectError::HandshakeTimeout
        )
    }
}

impl Connector {
    /// The connector of a slot whose upstream is at `addr`: plain, or TLS as `tls` says,
    /// verified for its `server_name` or else for the address's IP.
    pub fn new(tls: Option<&SlotTls>, addr: SocketAddr) -> Connector {
        let Some(tls) = tls else {
            return Connector::Plain;
        };
        let server_name = tls
            .server_name
            .clone()
            .unwrap_or_else(|| ServerName::IpAddress(addr.ip().into()));
        // Only a config that was parsed and never loaded has no client configuration (unit
        // tests): it trusts nothing, so every handshake fails rather than going plain.
        let config = tls
            .client
            .clone()
            .unwrap_or_else(|| Arc::new(client::config(RootCertStore::empty(), &[b"http/1.1"])));
        Connector::Tls {
            connector: TlsConnector::from(config),
            server_name,
        }
    }

    /// Connects to `addr` (and completes the handshake) within `timeout`.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<Stream, ConnectError> {
        let deadline = Instant::now() + timeout;
        let tcp = match tokio::time::timeout_at(deadline, TcpStream::connect(addr)).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => return Err(ConnectError::Tcp(e)),
            Err(_) => return Err(ConnectError::TcpTimeout),
        };
        let _ = tcp.set_nodelay(true);
        match self {
            Connector::Plain => Ok(Stream::Plain(tcp)),
            Connector::Tls {
                connector,
                server_name,
            } => {
                let handshake = connector.connect(server_name.clone(), tcp);
                match tokio::time::timeout_at(deadline, handshake).await {
                    Ok(Ok(tls)) => Ok(Stream::Tls(Box::new(tls))),
                    Ok(Err(e)) => Err(ConnectError::Handshake(e)),
                    Err(_) => Err(ConnectError::HandshakeTimeout),
                }
            }
        }
    }
}

/// A connection to an upstream, plain or TLS.
pub enum Stream {
    Plain(TcpStream),
    // Boxed: rustls's connection state is large, and plain connections are the common case.
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    /// Whether an idle connection can take a request: nothing arrived on it and the upstream
    /// did not close it. A plain one costs no system call unless the socket became readable.
    /// A TLS one reads what arrived through rustls, which takes the records that are not data
    /// (a TLS 1.3 session ticket comes after the handshake, unasked) and leaves data or a
    /// close for this to see.
    pub fn is_usable(&mut self) -> bool {
        let mut probe = [0u8; 1];
        match self {
            Stream::Plain(tcp) => {
                matches!(tcp.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
            Stream::Tls(tls) => {
                // Nothing waits on this poll: a real read registers its own waker later.
                let mut cx = Context::from_waker(Waker::noop());
                let mut buf = ReadBuf::new(&mut probe);
                Pin::new(tls).poll_read(&mut cx, &mut buf).is_pending()
            }
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Stream::Tls(tls) => match Pin::new(tls).poll_read(cx, buf) {
                // A close without TLS's close_notify reads as a close, as nginx takes it
                // (OpenSSL's IGNORE_UNEXPECTED_EOF): HTTP's own framing says whether the
                // answer was whole, exactly as over plain TCP.
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    Poll::Ready(Ok(()))
                }
                other => other,
            },
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Stream::Tls(tls) => Pin::new(tls).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Stream::Tls(tls) => Pin::new(tls).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Stream::Tls(tls) => Pin::new(tls).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Instant;

    use bytes::Bytes;
    use http::{Method, Request, StatusCode, Uri};
    use http_body_util::BodyExt as _;
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpSocket;
    use tokio::sync::{Semaphore, mpsc};
    use tokio_rustls::TlsAcceptor;

    use super::*;
    use crate::config::Timeouts;
    use crate::http::deadline::Progress;
    use crate::http::upstream::request_body::{BodyLimits, RequestBody, Resend};
    use crate::http::upstream::{SendError, Upstream};
    use crate::slot::Slot;
    use crate::tls::client::Trust;

    /// A TLS upstream on 127.0.0.1:0 with a self-signed certificate for `names`.
    struct TlsServer {
        addr: SocketAddr,
        /// Its certificate, which is its own CA.
        cert: CertificateDer<'static>,
        accepted: Arc<AtomicUsize>,
        /// A message each time an answer went out.
        answered: mpsc::UnboundedReceiver<()>,
        /// A permit lets the connection that answered last refresh its traffic keys.
        update: Arc<Semaphore>,
        /// A message each time the keys were refreshed.
        updated: mpsc::UnboundedReceiver<()>,
    }

    impl TlsServer {
        /// Reads each request (its head, and a body of the length given) and answers `ok`;
        /// then, when `update` allows, refreshes its traffic keys: a TLS record that is not
        /// data, sent unasked, as a session ticket is. Its socket buffers are small, so that
        /// a large request fills them again and again.
        async fn start(names: &[&str]) -> TlsServer {
            let (cert, key) = crate::tls::certs::tests::pem(names);
            let cert = CertificateDer::from_pem_slice(cert.as_bytes()).expect("a certificate");
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("a key");
            let config = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
                .with_safe_default_protocol_versions()
                .expect("ring has the default versions")
                .with_no_client_auth()
                .with_single_cert(vec![cert.clone()], key)
                .expect("the key matches");
            let acceptor = TlsAcceptor::from(Arc::new(config));
            let socket = TcpSocket::new_v4().expect("a socket");
            socket.set_recv_buffer_size(4096).expect("a receive buffer");
            socket
                .bind("127.0.0.1:0".parse().expect("an address"))
                .expect("bind");
            let listener = socket.listen(16).expect("listen");
            let addr = listener.local_addr().expect("local addr");
            let accepted = Arc::new(AtomicUsize::new(0));
            let update = Arc::new(Semaphore::new(0));
            let (answered_tx, answered) = mpsc::unbounded_channel();
            let (updated_tx, updated) = mpsc::unbounded_channel();
            let (counter, permits) = (Arc::clone(&accepted), Arc::clone(&update));
            tokio::spawn(async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let (acceptor, permits) = (acceptor.clone(), Arc::clone(&permits));
                    let (answered, updated) = (answered_tx.clone(), updated_tx.clone());
                    tokio::spawn(async move {
                        let Ok(mut tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let mut seen = Vec::new();
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            let whole =
                                seen.windows(4)
                                    .position(|w| w == b"\r\n\r\n")
                                    .and_then(|end| {
                                        let head =
                                            String::from_utf8_lossy(&seen[..end]).to_lowercase();
                                        let length: usize = head
                                            .lines()
                                            .find_map(|l| l.strip_prefix("content-length: "))
                                            .map_or(0, |v| v.trim().parse().expect("a length"));
                                        (seen.len() >= end + 4 + length).then_some(end + 4 + length)
                                    });
                            let Some(request) = whole else {
                                match tls.read(&mut buf).await {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                                }
                                continue;
                            };
                            seen.drain(..request);
                            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            if tls.write_all(answer).await.is_err() || tls.flush().await.is_err() {
                                return;
                            }
                            let _ = answered.send(());
                            let Ok(permit) = permits.acquire().await else {
                                return;
                            };
                            permit.forget();
                            tls.get_mut()
                                .1
                                .refresh_traffic_keys()
                                .expect("TLS 1.3 refreshes its keys");
                            if tls.flush().await.is_err() {
                                return;
                            }
                            let _ = updated.send(());
                        }
                    });
                }
            });
            TlsServer {
                addr,
                cert,
                accepted,
                answered,
                update,
                updated,
            }
        }
    }

    /// An upstream reached over TLS, trusting `ca` only, verifying `server_name`.
    fn tls_upstream(
        addr: SocketAddr,
        ca: &CertificateDer<'static>,
        server_name: &str,
    ) -> Arc<Upstream> {
        let roots = client::roots(&Trust::Ca(vec![ca.clone()])).expect("a usable CA");
        let tls = SlotTls {
            server_name: Some(ServerName::try_from(server_name.to_owned()).expect("a name")),
            ca: None,
            client: Some(Arc::new(client::config(roots, &[b"http/1.1"]))),
        };
        let timeouts = Timeouts {
            connect: Duration::from_secs(5),
            response_header: Duration::from_secs(5),
            upstream_idle: Duration::from_secs(60),
            upstream_read: Duration::from_secs(5),
            shutdown_grace: Duration::from_secs(1),
        };
        Upstream::new(
            Slot::Blue,
            addr,
            &timeouts,
            Connector::new(Some(&tls), addr),
        )
    }

    fn request(body: Vec<Bytes>) -> Request<RequestBody> {
        let limits = BodyLimits {
            max_bytes: u64::MAX,
            timeout: Duration::from_secs(5),
            retain: 0,
        };
        let (body, _) = RequestBody::new(Resend::Replay(body), limits);
        let mut req = Request::new(body);
        *req.method_mut() = Method::POST;
        *req.uri_mut() = Uri::from_static("/upload");
        req
    }

    /// Sends `body`, reads the answer to its end and hands the connection back to the pool.
    async fn exchange(upstream: &Arc<Upstream>, body: Vec<Bytes>) -> Result<Bytes, SendError> {
        let response = upstream
            .send(request(body), Instant::now(), &Progress::default(), false)
            .await?;
        assert_eq!(response.status(), StatusCode::OK);
        let mut body = response.into_body();
        let mut data = Vec::new();
        while let Some(frame) = body.frame().await {
            data.extend_from_slice(&frame.expect("a whole body").into_data().expect("data"));
        }
        if let Some(conn) = body.take_reusable() {
            upstream.checkin(conn);
        }
        Ok(Bytes::from(data))
    }

    #[tokio::test]
    async fn a_tls_upstream_keeps_its_connection_through_records_that_are_not_data() {
        // Arrange
        let mut server = TlsServer::start(&["up.test"]).await;
        let upstream = tls_upstream(server.addr, &server.cert, "up.test");

        for _ in 0..3 {
            // Act
            let body = exchange(&upstream, vec![Bytes::from_static(b"hi")])
                .await
                .expect("an answer over TLS");
            // The answer was read whole; then a key update arrives on the idle connection,
            // unread until the next request looks at it.
            server.answered.recv().await.expect("the server answered");
            server.update.add_permits(1);
            server
                .updated
                .recv()
                .await
                .expect("the keys were refreshed");

            // Assert
            assert_eq!(body, "ok");
        }
        assert_eq!(
            server.accepted.load(Ordering::SeqCst),
            1,
            "one kept-alive connection"
        );
    }

    #[tokio::test]
    async fn a_large_body_reaches_a_tls_upstream_whole() {
        // Larger than the socket buffers: TLS takes in more than the socket can take, and
        // the rest must be flushed, or the upstream waits for it forever.
        let server = TlsServer::start(&["up.test"]).await;
        let upstream = tls_upstream(server.addr, &server.cert, "up.test");
        let chunks = vec![Bytes::from(vec![b'x'; 1 << 20]); 8];

        let body = tokio::time::timeout(Duration::from_secs(20), exchange(&upstream, chunks))
            .await
            .expect("the upstream got the whole body and answered")
            .expect("an answer");

        assert_eq!(body, "ok");
    }

    #[tokio::test]
    async fn an_unknown_issuer_or_another_name_fails_the_handshake() {
        // Arrange
        let server = TlsServer::start(&["up.test"]).await;
        let (addr, ca) = (server.addr, &server.cert);
        // Another issuer's name, so that no trusted certificate could have signed it.
        let mut params = rcgen::CertificateParams::new(vec!["up.test".to_owned()]).expect("names");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "another CA");
        let key = rcgen::KeyPair::generate().expect("a key pair");
        let other_ca = params
            .self_signed(&key)
            .expect("a certificate")
            .der()
            .clone();
        let cases = [
            (tls_upstream(addr, &other_ca, "up.test"), "UnknownIssuer"),
            (
                tls_upstream(addr, ca, "other.test"),
                "not valid for name \"other.test\"",
            ),
        ];

        for (upstream, reason) in cases {
            // Act
            let error = exchange(&upstream, Vec::new()).await.expect_err("refused");

            // Assert
            let SendError::Connect { why, .. } = error else {
                panic!("not a connect failure: {error:?}");
            };
            assert!(why.is_handshake(), "{why}");
            assert!(why.to_string().contains(reason), "{why} names {reason}");
        }
    }
}
