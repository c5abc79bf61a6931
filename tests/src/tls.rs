//! HTTPS in the harness: a test CA that issues certificates at test time (`Pki`: no key is
//! ever committed), a proxy with a TLS listener (`TlsProxy`), a TLS client that says which
//! certificate it was served and speaks HTTP/1.1 or HTTP/2 over it (`tls_connect`,
//! `HttpsConn`), an https:// webhook receiver (`HttpsReceiver`), and a TLS terminator in front
//! of a plain upstream (`TlsTerminator`), so that the shortener can be a TLS upstream.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::{TlsAcceptor, TlsConnector, client};

use crate::binary::binary;
use crate::client::{http_client, status_and_json, unique};
use crate::process::{Launch, Process, address_in};
use crate::proxy::{ProxyBuilder, TOKEN_ENV};

/// A TLS exchange in a test gives up after this long.
pub const TLS_TIMEOUT: Duration = Duration::from_secs(30);
const PUBLIC_TLS_READY: &str = "public_tls listening on ";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A certificate's two PEM files, and the certificate itself to compare with what a
/// handshake served.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: CertificateDer<'static>,
}

/// A test CA: issues ECDSA P-256 certificates into `dir`.
pub struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
    dir: PathBuf,
}

impl Pki {
    /// # Panics
    /// When rcgen cannot make the CA (it always can).
    pub fn new(dir: &Path) -> Pki {
        Pki::named(dir, "e2e test CA")
    }

    /// A CA of another name: what it issues is of an issuer that a `Pki::new` CA's
    /// trusters do not know (a CA of the same name would be a bad signature instead).
    ///
    /// # Panics
    /// When rcgen cannot make the CA (it always can).
    pub fn named(dir: &Path, name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("no names are valid");
        params.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().expect("a key pair");
        let ca = CertifiedIssuer::self_signed(params, key).expect("a CA certificate");
        Pki {
            ca,
            dir: dir.to_path_buf(),
        }
    }

    /// The CA certificate, to trust.
    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.ca.der().clone()
    }

    /// Writes the CA certificate as PEM (`<dir>/ca.pem`) and returns its path.
    pub fn ca_file(&self) -> PathBuf {
        let path = self.dir.join("ca.pem");
        std::fs::write(&path, self.ca.pem()).expect("the CA file is written");
        path
    }

    /// A certificate for `names` (DNS names or IP addresses) valid for a year, written to
    /// `<dir>/<stem>.pem` and `<stem>.key` (replacing what was there).
    pub fn issue(&self, stem: &str, names: &[&str]) -> Issued {
        self.issue_until(stem, names, None)
    }

    /// As `issue`, ending at `not_after` when given.
    pub fn issue_until(
        &self,
        stem: &str,
        names: &[&str],
        not_after: Option<time::OffsetDateTime>,
    ) -> Issued {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("no names are valid");
        params.subject_alt_names = names
            .iter()
            .map(|name| match name.parse() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*name).try_into().expect("a DNS name")),
            })
            .collect();
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - Duration::from_secs(3600);
        params.not_after = not_after.unwrap_or(now + Duration::from_secs(365 * 86_400));
        let key = KeyPair::generate().expect("a key pair");
        let cert = params
            .signed_by(&key, &self.ca)
            .expect("a signed certificate");
        let issued = Issued {
            cert: self.dir.join(format!("{stem}.pem")),
            key: self.dir.join(format!("{stem}.key")),
            der: cert.der().clone(),
        };
        std::fs::write(&issued.cert, cert.pem()).expect("the certificate is written");
        std::fs::write(&issued.key, key.serialize_pem()).expect("the key is written");
        issued
    }

    /// A server configuration serving `issued` (for receivers of the proxy's requests).
    pub fn server_config(&self, issued: &Issued) -> Arc<rustls::ServerConfig> {
        let key = std::fs::read(&issued.key).expect("the key file");
        let key = <rustls::pki_types::PrivateKeyDer<'static> as PemObject>::from_pem_slice(&key)
            .expect("a private key");
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("ring has the default versions")
            .with_no_client_auth()
            .with_single_cert(vec![issued.der.clone(), self.ca_der()], key)
            .expect("the key matches");
        Arc::new(config)
    }
}

/// What a TLS client trusts.
#[derive(Debug, Clone)]
pub enum Trust {
    /// This CA only, with the server's name checked: the way a browser connects.
    Ca(CertificateDer<'static>),
    /// Any certificate: to see which one a server chooses for a name it does not have.
    Anything,
}

/// Opens a TLS connection to `addr`, sending `server_name` as SNI (none for an IP address),
/// offering `alpn`.
///
/// # Errors
/// When the connection or the handshake fails (the reason, as text).
pub async fn tls_connect(
    addr: SocketAddr,
    server_name: &str,
    trust: &Trust,
    alpn: &[&[u8]],
) -> Result<client::TlsStream<TcpStream>, String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("ring has the default versions");
    let mut config = match trust {
        Trust::Ca(ca) => {
            let mut roots = RootCertStore::empty();
            roots.add(ca.clone()).expect("the CA is usable");
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::Anything => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnything(provider())))
            .with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = ServerName::try_from(server_name.to_owned())
        .map_err(|e| format!("bad server name {server_name:?}: {e}"))?;
    let connect = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake with {addr} as {server_name:?}: {e}"))
    };
    tokio::time::timeout(TLS_TIMEOUT, connect)
        .await
        .map_err(|_| format!("no TLS handshake with {addr} within {TLS_TIMEOUT:?}"))?
}

/// The certificate a TLS connection was served.
///
/// # Panics
/// When the server sent none (a TLS server always does).
pub fn served(stream: &client::TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .expect("the server sent a certificate")
        .clone()
        .into_owned()
}

/// A verifier that accepts any certificate, with a valid signature over the handshake.
#[derive(Debug)]
struct AcceptAnything(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// An answer read whole.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// The body as JSON.
    ///
    /// # Panics
    /// When it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// One HTTP connection over TLS, HTTP/1.1 or HTTP/2 as ALPN chose; requests go on it, one
/// after the other.
pub struct HttpsConn {
    sender: Sender,
    /// The certificate the handshake served.
    pub served: CertificateDer<'static>,
    /// The protocol ALPN chose, if any.
    pub alpn: Option<Vec<u8>>,
    /// What `Host` (or `:authority`) requests carry.
    authority: String,
    connection: JoinHandle<()>,
}

enum Sender {
    Http1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    Http2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl HttpsConn {
    /// Opens a connection (see `tls_connect`) offering h2 and http/1.1, or only http/1.1.
    ///
    /// # Errors
    /// When the connection, the handshake or the HTTP handshake fails.
    pub async fn open(
        addr: SocketAddr,
        server_name: &str,
        trust: &Trust,
        h2: bool,
    ) -> Result<HttpsConn, String> {
        let alpn: &[&[u8]] = if h2 {
            &[b"h2", b"http/1.1"]
        } else {
            &[b"http/1.1"]
        };
        let stream = tls_connect(addr, server_name, trust, alpn).await?;
        let served = served(&stream);
        let alpn = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        let io = TokioIo::new(stream);
        let (sender, connection) = if alpn.as_deref() == Some(b"h2") {
            let (sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
            (
                Sender::Http2(sender),
                tokio::spawn(async move {
                    let _ = conn.await;
                }),
            )
        } else {
            let (sender, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
            (
                Sender::Http1(sender),
                tokio::spawn(async move {
                    let _ = conn.await;
                }),
            )
        };
        Ok(HttpsConn {
            sender,
            served,
            alpn,
            authority: format!("{server_name}:{}", addr.port()),
            connection,
        })
    }

    /// Sends one request on this connection and reads the answer whole.
    ///
    /// # Errors
    /// When the connection fails before the whole answer arrived.
    pub async fn send(
        &mut self,
        method: Method,
        path: &str,
        json: Option<&Value>,
    ) -> Result<Answer, String> {
        let mut request = Request::builder().method(method);
        request = match &self.sender {
            Sender::Http1(_) => request.uri(path).header("host", &self.authority),
            Sender::Http2(_) => request.uri(format!("https://{}{path}", self.authority)),
        };
        let body = match json {
            Some(value) => {
                request = request.header("content-type", "application/json");
                Full::new(Bytes::from(value.to_string()))
            }
            None => Full::new(Bytes::new()),
        };
        let request = request.body(body).map_err(|e| format!("a request: {e}"))?;
        let exchange = async {
            let response: Response<Incoming> = match &mut self.sender {
                Sender::Http1(sender) => {
                    sender
                        .ready()
                        .await
                        .map_err(|e| format!("not ready: {e}"))?;
                    sender.send_request(request).await
                }
                Sender::Http2(sender) => {
                    sender
                        .ready()
                        .await
                        .map_err(|e| format!("not ready: {e}"))?;
                    sender.send_request(request).await
                }
            }
            .map_err(|e| format!("request failed: {e}"))?;
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| format!("body failed: {e}"))?
                .to_bytes();
            Ok(Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(TLS_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("no answer within {TLS_TIMEOUT:?}"))?
    }
}

impl Drop for HttpsConn {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

/// A proxy with a TLS listener (`listen.public_tls` on port 0) beside the plain one.
#[derive(Debug)]
pub struct TlsProxy {
    process: Process,
    pub public: SocketAddr,
    pub public_tls: SocketAddr,
    pub admin: SocketAddr,
    token: String,
    pub config: PathBuf,
    http: reqwest::Client,
}

impl TlsProxy {
    /// Writes `builder`'s config with `listen.public_tls` added into `dir`, and starts the
    /// proxy. The `[tls]` tables (certificates...) come from `builder.extra_toml`.
    ///
    /// # Panics
    /// When the binary is missing or does not print its four listening lines.
    pub async fn start(builder: &ProxyBuilder, dir: &Path) -> TlsProxy {
        let config = dir.join("proxy.toml");
        std::fs::write(&config, config_with_tls(builder, dir))
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", config.display()));
        let token = unique("e2e-tls-token");
        let launch = Launch {
            name: "proxy".to_owned(),
            program: binary("proxy"),
            args: vec!["--config".into(), config.clone().into()],
            envs: vec![
                (TOKEN_ENV.to_owned(), token.clone()),
                ("NO_COLOR".to_owned(), "1".to_owned()),
            ],
            log: dir.join("proxy.log"),
            ready: vec![
                "public listening on ".to_owned(),
                PUBLIC_TLS_READY.to_owned(),
                "admin listening on ".to_owned(),
                "status listening on ".to_owned(),
            ],
        };
        let (process, lines) = Process::spawn(launch).await;
        TlsProxy {
            process,
            public: address_in(&lines[0]),
            public_tls: address_in(&lines[1]),
            admin: address_in(&lines[2]),
            token,
            config,
            http: http_client(TLS_TIMEOUT),
        }
    }

    /// An authorized admin call; the body is JSON when it parses, else a JSON string.
    ///
    /// # Panics
    /// When the admin listener does not answer.
    pub async fn admin(&self, method: Method, path: &str) -> (reqwest::StatusCode, Value) {
        let method = reqwest::Method::from_bytes(method.as_str().as_bytes()).expect("a method");
        let response = self
            .http
            .request(method.clone(), format!("http://{}{path}", self.admin))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap_or_else(|e| panic!("admin {method} {path} failed: {e}"));
        status_and_json(response).await
    }

    /// `GET /metrics`, the text.
    ///
    /// # Panics
    /// When it does not answer.
    pub async fn metrics(&self) -> String {
        let (_, body) = self.admin(Method::GET, "/metrics").await;
        body.as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| body.to_string())
    }

    /// Starts a second proxy on the same config and data dir, which takes over from this one
    /// (the very sockets, the TLS listener too): waits until it is ready and this one has
    /// exited; returns this one's exit status.
    ///
    /// # Panics
    /// When the new one is not ready in time, listens anywhere else, or the old one does not
    /// exit within the grace period and more.
    pub async fn take_over(&mut self) -> ExitStatus {
        let launch = self.process.launch().clone();
        let (process, lines) = Process::spawn(launch).await;
        let mut old = std::mem::replace(&mut self.process, process);
        assert_eq!(
            (
                address_in(&lines[0]),
                address_in(&lines[1]),
                address_in(&lines[2])
            ),
            (self.public, self.public_tls, self.admin),
            "the new process serves on the very sockets of the old one"
        );
        old.wait_exit(TLS_TIMEOUT).await.unwrap_or_else(|| {
            panic!(
                "the old proxy did not exit after the takeover:\n{}",
                old.log_tail()
            )
        })
    }

    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }
}

/// The builder's config with `public_tls = "127.0.0.1:0"` in its `[listen]` table.
pub fn config_with_tls(builder: &ProxyBuilder, dir: &Path) -> String {
    let text = builder.config_toml(&dir.join("proxy-data"));
    let listen = "[listen]\n";
    let at = text
        .find(listen)
        .expect("the generated config has [listen]")
        + listen.len();
    format!(
        "{}public_tls = \"127.0.0.1:0\"\n{}",
        &text[..at],
        &text[at..]
    )
}

/// `[[tls.certificate]]` tables for these certificates, in order.
pub fn certificate_tables(certs: &[&Issued]) -> String {
    certs
        .iter()
        .map(|c| {
            format!(
                "[[tls.certificate]]\ncert = {:?}\nkey = {:?}\n",
                c.cert.display().to_string(),
                c.key.display().to_string()
            )
        })
        .collect()
}

/// One POST an `HttpsReceiver` got.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A webhook receiver over TLS on a loopback port: records every request, answers 204.
pub struct HttpsReceiver {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    server: JoinHandle<()>,
}

impl HttpsReceiver {
    /// # Panics
    /// When it cannot bind a loopback port.
    pub async fn start(config: Arc<rustls::ServerConfig>) -> HttpsReceiver {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding an ephemeral loopback port");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&received);
        let acceptor = TlsAcceptor::from(config);
        let server = tokio::spawn(async move {
            // Ends when the receiver drops (abort).
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (log, acceptor) = (Arc::clone(&log), acceptor.clone());
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    let service = service_fn(move |request: Request<Incoming>| {
                        let log = Arc::clone(&log);
                        async move {
                            let (parts, body) = request.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            log.lock().expect("receiver lock").push(Received {
                                headers: parts.headers,
                                body,
                            });
                            let mut answer = Response::new(Full::new(Bytes::new()));
                            *answer.status_mut() = StatusCode::NO_CONTENT;
                            Ok::<_, Infallible>(answer)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        HttpsReceiver {
            addr,
            received,
            server,
        }
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("receiver lock").clone()
    }
}

impl Drop for HttpsReceiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A TLS terminator on a loopback port in front of a plain upstream: each connection's
/// handshake with `config`, then its bytes relayed both ways to `backend` as they are. It
/// speaks no HTTP, so what reaches the backend is what the proxy sent, keep-alive included,
/// and the proxy under test shares no code with it.
pub struct TlsTerminator {
    pub addr: SocketAddr,
    handshakes: Arc<AtomicUsize>,
    server: JoinHandle<()>,
}

impl TlsTerminator {
    /// # Panics
    /// When it cannot bind a loopback port.
    pub async fn start(config: Arc<rustls::ServerConfig>, backend: SocketAddr) -> TlsTerminator {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding an ephemeral loopback port");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let handshakes = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&handshakes);
        let acceptor = TlsAcceptor::from(config);
        let server = tokio::spawn(async move {
            // Dropped with the accept loop when the terminator drops (abort): that ends every
            // relay.
            let mut relays = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let (acceptor, counted) = (acceptor.clone(), Arc::clone(&counted));
                relays.spawn(async move {
                    let Ok(mut tls) = acceptor.accept(client).await else {
                        return;
                    };
                    counted.fetch_add(1, Ordering::SeqCst);
                    let Ok(mut upstream) = TcpStream::connect(backend).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
                });
                while relays.try_join_next().is_some() {}
            }
        });
        TlsTerminator {
            addr,
            handshakes,
            server,
        }
    }

    /// Handshakes completed so far.
    pub fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::SeqCst)
    }
}

impl Drop for TlsTerminator {
    fn drop(&mut self) {
        self.server.abort();
    }
}
