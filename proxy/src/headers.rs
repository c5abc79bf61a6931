//! Header rewriting on the request path: hop-by-hop stripping (RFC 9110
//! section 7.6.1), `X-Forwarded-*`, and the request id. Pure functions over a
//! `HeaderMap`, so they are unit- and property-tested on their own.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// Removes the headers that describe one connection and must not be passed
/// on: `Connection` and every header it names, and the fixed list.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Collected first because the names borrow the map being changed.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        &header::CONNECTION,
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::TE,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
    ] {
        headers.remove(name);
    }
}

/// Sets the `X-Forwarded-*` headers for the upstream. `trust_client` says
/// whether the peer is a trusted hop whose `X-Forwarded-For` is kept and
/// appended to; otherwise the client's own claims are replaced. A client's
/// `Forwarded` header is always dropped: the proxy speaks `X-Forwarded-*`
/// only, and a stale `Forwarded` could contradict it.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    peer: IpAddr,
    host: Option<HeaderValue>,
    proto: &'static str,
    trust_client: bool,
) {
    headers.remove(&FORWARDED);
    let peer_text = peer.to_string();
    let previous: Vec<&str> = if trust_client {
        headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect()
    } else {
        Vec::new()
    };
    let xff = if previous.is_empty() {
        HeaderValue::from_str(&peer_text)
    } else {
        HeaderValue::from_str(&format!("{}, {peer_text}", previous.join(", ")))
    }
    .expect("IP addresses and visible header text are valid header values");
    headers.insert(&X_FORWARDED_FOR, xff);
    headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    match host {
        Some(host) => {
            headers.insert(&X_FORWARDED_HOST, host);
        }
        None => {
            headers.remove(&X_FORWARDED_HOST);
        }
    }
}

/// The request's id: the client's when it sent a usable one, otherwise a new
/// random one, written into `headers` either way.
pub fn ensure_request_id(headers: &mut HeaderMap) -> HeaderValue {
    if let Some(id) = headers.get(&X_REQUEST_ID)
        && !id.is_empty()
        && id.len() <= 200
    {
        return id.clone();
    }
    let id = new_request_id();
    headers.insert(&X_REQUEST_ID, id.clone());
    id
}

fn new_request_id() -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let n: u128 = rand::random();
    let mut buf = [0u8; 32];
    for (i, b) in buf.iter_mut().enumerate() {
        *b = HEX[((n >> (i * 4)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&buf).expect("hex digits are a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(
                HeaderName::from_bytes(k.as_bytes()).expect("test header name"),
                HeaderValue::from_str(v).expect("test header value"),
            );
        }
        m
    }

    #[test]
    fn strips_the_fixed_list_and_what_connection_names() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("connection", "x-other"),
            ("x-secret", "1"),
            ("x-other", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-t"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-kept", "yes"),
            ("host", "example.com"),
        ]);
        strip_hop_by_hop(&mut h);
        let mut names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, vec!["host", "x-kept"]);
    }

    #[test]
    fn appends_to_a_trusted_forwarded_for_and_replaces_an_untrusted_one() {
        let peer: IpAddr = "10.0.0.9".parse().expect("ip");
        let mut trusted = map(&[("x-forwarded-for", "1.1.1.1"), ("forwarded", "for=evil")]);
        set_forwarded(
            &mut trusted,
            peer,
            Some(HeaderValue::from_static("short.example")),
            "http",
            true,
        );
        assert_eq!(trusted["x-forwarded-for"], "1.1.1.1, 10.0.0.9");
        assert_eq!(trusted["x-forwarded-host"], "short.example");
        assert_eq!(trusted["x-forwarded-proto"], "http");
        assert!(trusted.get("forwarded").is_none());

        let mut untrusted = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-host", "spoof"),
        ]);
        set_forwarded(&mut untrusted, peer, None, "http", false);
        assert_eq!(untrusted["x-forwarded-for"], "10.0.0.9");
        assert!(untrusted.get("x-forwarded-host").is_none());
    }

    #[test]
    fn keeps_a_client_request_id_and_makes_one_when_absent() {
        let mut with = map(&[("x-request-id", "abc")]);
        assert_eq!(ensure_request_id(&mut with), "abc");
        let mut without = HeaderMap::new();
        let id = ensure_request_id(&mut without);
        assert_eq!(id.len(), 32);
        assert_eq!(without["x-request-id"], id);
        assert_ne!(ensure_request_id(&mut HeaderMap::new()), id);
    }

    proptest! {
        #[test]
        fn rewriting_arbitrary_headers_never_panics_and_leaves_no_hop_by_hop(
            pairs in proptest::collection::vec(("[a-zA-Z-]{1,12}", "[ -~]{0,40}"), 0..20),
            connection in "[ -~]{0,60}",
            trusted in any::<bool>(),
        ) {
            let mut h = HeaderMap::new();
            for (k, v) in &pairs {
                if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(v)) {
                    h.append(k, v);
                }
            }
            if let Ok(v) = HeaderValue::from_str(&connection) {
                h.append(header::CONNECTION, v);
            }
            strip_hop_by_hop(&mut h);
            set_forwarded(&mut h, "127.0.0.1".parse().expect("ip"), None, "http", trusted);
            ensure_request_id(&mut h);
            for name in ["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "forwarded"] {
                prop_assert!(h.get(name).is_none());
            }
            prop_assert!(h.get("x-forwarded-for").is_some());
            prop_assert!(h.get("x-request-id").is_some());
        }
    }
}
