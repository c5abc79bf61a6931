//! A tiny in-process upstream that answers with what it received, so that tests can see the
//! request as the proxy forwarded it.
//!
//! - `GET /healthz` answers `{"status":"ok","release":"echo"}`, so a proxy may probe it.
//! - `POST /echo-body` reads the whole body, then sends it back, with its length and FNV-1a
//!   hash in `x-echo-received-len` / `x-echo-received-fnv64`.
//! - Anything else answers `{"method","path","version","headers":[[name,value],...]}`.
//!
//! Every answer carries `x-release: echo`; a request with `x-echo-send-hop-by-hop: 1` gets
//! hop-by-hop response headers on top (see [`HOP_BY_HOP_RESPONSE`]).

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// The request header that asks for [`HOP_BY_HOP_RESPONSE`].
pub const SEND_HOP_BY_HOP: &str = "x-echo-send-hop-by-hop";

/// The hop-by-hop headers sent back on request; `x-custom-hop` is hop-by-hop because
/// `Connection` names it. (`Transfer-Encoding` is left out: a proxy re-frames bodies, so its
/// presence downstream says nothing.)
pub const HOP_BY_HOP_RESPONSE: &[(&str, &str)] = &[
    ("connection", "x-custom-hop"),
    ("x-custom-hop", "secret-from-upstream"),
    ("keep-alive", "timeout=5"),
    ("proxy-connection", "keep-alive"),
    ("te", "trailers"),
    ("trailer", "x-trail"),
    ("upgrade", "foo/1"),
];

/// A running echo upstream on an ephemeral loopback port; stops when dropped.
#[derive(Debug)]
pub struct EchoUpstream {
    addr: SocketAddr,
    /// The accept loop; it owns the connection tasks, so aborting it ends them all.
    server: JoinHandle<()>,
}

impl EchoUpstream {
    /// # Panics
    /// When no loopback port can be bound.
    pub async fn start() -> EchoUpstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding an ephemeral loopback port");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let server = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            // Ends when the EchoUpstream drops (abort).
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                connections.spawn(async move {
                    let _ = Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service_fn(answer))
                        .await;
                });
                // Reaps finished connections so that the set stays small.
                while connections.try_join_next().is_some() {}
            }
        });
        EchoUpstream { addr, server }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for EchoUpstream {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn answer(request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let send_hop_by_hop = request.headers().contains_key(SEND_HOP_BY_HOP);
    let mut response = match (request.method().as_str(), request.uri().path()) {
        ("GET", "/healthz") => json_response(&json!({ "status": "ok", "release": "echo" })),
        ("POST", "/echo-body") => match request.into_body().collect().await {
            Ok(body) => {
                let body = body.to_bytes();
                let mut response = Response::new(Full::new(body.clone()));
                let headers = response.headers_mut();
                headers.insert("x-echo-received-len", body.len().into());
                headers.insert(
                    "x-echo-received-fnv64",
                    format!("{:016x}", fnv64(&body))
                        .parse()
                        .expect("hex digits are a valid header value"),
                );
                response
            }
            Err(e) => {
                let mut response = json_response(&json!({ "error": e.to_string() }));
                *response.status_mut() = StatusCode::BAD_REQUEST;
                response
            }
        },
        _ => json_response(&describe(&request)),
    };
    let headers = response.headers_mut();
    headers.insert("x-release", "echo".parse().expect("constant header value"));
    if send_hop_by_hop {
        for (name, value) in HOP_BY_HOP_RESPONSE {
            headers.append(*name, value.parse().expect("constant header value"));
        }
    }
    Ok(response)
}

fn describe(request: &Request<Incoming>) -> Value {
    let headers: Vec<(String, String)> = request
        .headers()
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    json!({
        "method": request.method().as_str(),
        "path": request.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/"),
        "version": format!("{:?}", request.version()),
        "headers": headers,
    })
}

fn json_response(body: &Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    response.headers_mut().insert(
        "content-type",
        "application/json".parse().expect("constant header value"),
    );
    response
}

/// Every value of header `name` in an echoed request description, in order.
pub fn echoed_header<'a>(echo: &'a Value, name: &str) -> Vec<&'a str> {
    echo["headers"]
        .as_array()
        .map(|headers| {
            headers
                .iter()
                .filter(|pair| pair[0].as_str() == Some(name))
                .filter_map(|pair| pair[1].as_str())
                .collect()
        })
        .unwrap_or_default()
}

/// The 64-bit FNV-1a hash: enough to tell two 32 MB bodies apart without a crypto crate.
pub fn fnv64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}
