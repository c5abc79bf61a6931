//! What a user does through the proxy (create a link, follow it), and a raw HTTP/1.1 client
//! for the header tests that need byte-level control of a request.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::StatusCode;
use reqwest::redirect::Policy;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// The default timeout of one user request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A raw exchange gives up after this long.
const RAW_TIMEOUT: Duration = Duration::from_secs(30);
/// A raw response head larger than this is a bug, not a response.
const RAW_MAX_HEAD: usize = 64 * 1024;

/// A client for loopback tests: no system proxy (traffic stays on 127.0.0.1), no redirects
/// followed (a redirect is the shortener's answer under test), HTTP/1.1.
pub fn http_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(Policy::none())
        .timeout(timeout)
        .build()
        .expect("a client without TLS always builds")
}

/// A value unique within the test run, for URLs and codes: `{prefix}-{pid}-{n}-{nanos}`.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("{prefix}-{}-{n}-{nanos}", std::process::id())
}

/// The status and the body as JSON; a body that is not JSON becomes a JSON string, an empty
/// one `null`.
pub async fn status_and_json(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response
        .text()
        .await
        .unwrap_or_else(|e| format!("(body unreadable: {e})"));
    let body = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, body)
}

/// The `x-release` header of a response, or `"(none)"`.
pub fn release_of(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("x-release")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("(none)")
        .to_owned()
}

/// A link created through the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    pub code: String,
    pub url: String,
    /// The release that created it (its `x-release`).
    pub release: String,
}

/// `POST {base}/api/links {"url": url}`; anything but a 201 with a code is an error.
pub async fn create_link(
    client: &reqwest::Client,
    base: &str,
    url: &str,
) -> Result<Created, String> {
    let response = client
        .post(format!("{base}/api/links"))
        .json(&json!({ "url": url }))
        .send()
        .await
        .map_err(|e| format!("POST /api/links: {e:?}"))?;
    let release = release_of(&response);
    let (status, body) = status_and_json(response).await;
    if status != StatusCode::CREATED {
        return Err(format!(
            "POST /api/links answered {status} from {release}: {body}"
        ));
    }
    let code = body["code"]
        .as_str()
        .ok_or_else(|| format!("POST /api/links answered 201 without a code: {body}"))?;
    Ok(Created {
        code: code.to_owned(),
        url: url.to_owned(),
        release,
    })
}

/// `POST {base}/your-url` with the form (url, code), as the HTML form does; returns the
/// release that answered. Anything but a 200 page containing the code is an error.
pub async fn create_with_form(
    client: &reqwest::Client,
    base: &str,
    url: &str,
    code: &str,
) -> Result<String, String> {
    let response = client
        .post(format!("{base}/your-url"))
        .form(&[("url", url), ("code", code)])
        .send()
        .await
        .map_err(|e| format!("POST /your-url: {e:?}"))?;
    let release = release_of(&response);
    let status = response.status();
    let page = response
        .text()
        .await
        .map_err(|e| format!("POST /your-url body: {e:?}"))?;
    if status != StatusCode::OK || !page.contains(code) {
        return Err(format!(
            "POST /your-url answered {status} from {release}: {page}"
        ));
    }
    Ok(release)
}

/// `GET {base}/{code}`; returns the release that answered. Anything but a 302 to `url` is an
/// error.
pub async fn follow(
    client: &reqwest::Client,
    base: &str,
    code: &str,
    url: &str,
) -> Result<String, String> {
    let response = client
        .get(format!("{base}/{code}"))
        .send()
        .await
        .map_err(|e| format!("GET /{code}: {e:?}"))?;
    let release = release_of(&response);
    let status = response.status();
    let location = response
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if status != StatusCode::FOUND || location.as_deref() != Some(url) {
        let body = response.text().await.unwrap_or_default();
        return Err(format!(
            "GET /{code} answered {status} from {release}, location {location:?} (want {url}): {body}"
        ));
    }
    Ok(release)
}

/// A response read off a raw socket.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    /// In wire order, names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    /// Every value of a header, in wire order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.header_all(name).into_iter().next()
    }

    /// The body as JSON.
    ///
    /// # Panics
    /// When it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// The sending half of an HTTP/2 cleartext connection (of requests with bodies of type
/// `B`), and the task driving it.
pub type H2Connection<B = http_body_util::Empty<bytes::Bytes>> = (
    hyper::client::conn::http2::SendRequest<B>,
    tokio::task::JoinHandle<hyper::Result<()>>,
);

/// Opens an HTTP/2 connection to `addr` with prior knowledge (no upgrade), as a client
/// that knows the server speaks HTTP/2 cleartext does.
///
/// # Panics
/// When the connection or the HTTP/2 handshake fails.
pub async fn h2_connect<B>(addr: SocketAddr) -> H2Connection<B>
where
    B: hyper::body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr).await.expect("the proxy accepts");
    let (sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("the public listener speaks HTTP/2 with prior knowledge");
    (sender, tokio::spawn(connection))
}

/// The text of a plain HTTP/1.1 GET of `path` with a valid `Host`, for [`raw_exchange`] and
/// raw connections.
pub fn raw_get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: shop.example\r\n\r\n")
}

/// Sends `request` byte for byte on a new connection and reads one response (framed by
/// Content-Length, chunked encoding, or the end of the connection).
pub async fn raw_exchange(addr: SocketAddr, request: &str) -> Result<RawResponse, String> {
    exchange(addr, request, false).await
}

/// Like [`raw_exchange`], but shuts down the sending side once the request is written, as
/// a client does that has nothing more to say and waits for its answer.
pub async fn raw_exchange_half_closed(
    addr: SocketAddr,
    request: &str,
) -> Result<RawResponse, String> {
    exchange(addr, request, true).await
}

/// Sends `request` on `stream`, a connection kept open by the caller, and reads one response.
pub async fn raw_exchange_on(stream: &mut TcpStream, request: &str) -> Result<RawResponse, String> {
    tokio::time::timeout(RAW_TIMEOUT, async {
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        read_response(stream).await
    })
    .await
    .map_err(|_| format!("no complete response within {RAW_TIMEOUT:?}"))?
}

async fn exchange(
    addr: SocketAddr,
    request: &str,
    half_close: bool,
) -> Result<RawResponse, String> {
    tokio::time::timeout(RAW_TIMEOUT, async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("write: {e}"))?;
        if half_close {
            stream
                .shutdown()
                .await
                .map_err(|e| format!("shutdown: {e}"))?;
        }
        read_response(&mut stream).await
    })
    .await
    .map_err(|_| format!("no complete response from {addr} within {RAW_TIMEOUT:?}"))?
}

async fn read_response(stream: &mut TcpStream) -> Result<RawResponse, String> {
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(at) = find(&buf, b"\r\n\r\n") {
            break at;
        }
        if buf.len() > RAW_MAX_HEAD {
            return Err("response head too large".to_owned());
        }
        if read_more(stream, &mut buf).await? == 0 {
            return Err(format!(
                "connection closed inside the response head: {:?}",
                String::from_utf8_lossy(&buf)
            ));
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut rest = buf[head_end + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let response = RawResponse {
        status,
        headers,
        body: Vec::new(),
    };
    let chunked = response
        .header_all("transfer-encoding")
        .iter()
        .any(|v| v.to_ascii_lowercase().contains("chunked"));
    let length = response
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok());
    let body = if chunked {
        read_chunked(stream, &mut rest).await?
    } else if let Some(length) = length {
        while rest.len() < length {
            if read_more(stream, &mut rest).await? == 0 {
                return Err(format!(
                    "connection closed after {} of {length} body bytes",
                    rest.len()
                ));
            }
        }
        rest.truncate(length);
        rest
    } else if status == 204 || status == 304 || (100..200).contains(&status) {
        Vec::new()
    } else {
        while read_more(stream, &mut rest).await? > 0 {}
        rest
    };
    Ok(RawResponse { body, ..response })
}

async fn read_chunked(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(at) = find(buf, b"\r\n") {
                break at;
            }
            if read_more(stream, buf).await? == 0 {
                return Err("connection closed inside a chunk size".to_owned());
            }
        };
        let size_text = String::from_utf8_lossy(&buf[..line_end]).into_owned();
        let size_hex = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        buf.drain(..line_end + 2);
        if size == 0 {
            // Trailers, then the final empty line.
            loop {
                if let Some(at) = find(buf, b"\r\n") {
                    let empty = at == 0;
                    buf.drain(..at + 2);
                    if empty {
                        return Ok(body);
                    }
                } else if read_more(stream, buf).await? == 0 {
                    return Err("connection closed inside the trailers".to_owned());
                }
            }
        }
        while buf.len() < size + 2 {
            if read_more(stream, buf).await? == 0 {
                return Err("connection closed inside a chunk".to_owned());
            }
        }
        body.extend_from_slice(&buf[..size]);
        buf.drain(..size + 2);
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<usize, String> {
    let mut chunk = [0u8; 16 * 1024];
    let n = stream
        .read(&mut chunk)
        .await
        .map_err(|e| format!("read: {e}"))?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
