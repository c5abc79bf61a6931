//! Header rewriting on the request path: hop-by-hop stripping (RFC 9110
//! section 7.6.1), fields that only look like framing fields dropped,
//! `X-Forwarded-*`, and the request id. Pure functions over a `HeaderMap`,
//! so they are unit- and property-tested on their own.

use std::net::{IpAddr, SocketAddr};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// The hop-by-hop headers every message loses, whatever `Connection` says.
static FIXED_HOP_BY_HOP: [&HeaderName; 7] = [
    &header::CONNECTION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &header::TE,
    &header::TRAILER,
    &header::TRANSFER_ENCODING,
    &header::UPGRADE,
];

/// What one pass over a message's header names found: which hop-by-hop
/// headers (a bit per entry of `FIXED_HOP_BY_HOP`), and the request headers
/// the forwarder would otherwise look up by hashing their names. Most
/// messages carry none of them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Seen {
    hop_by_hop: u8,
    forwarded: bool,
    request_id: bool,
    content_length: bool,
    cookie: bool,
    /// A name `looks_like_framing`.
    lookalike: bool,
}

/// Which of the fixed hop-by-hop headers `name` is, as its index in
/// `FIXED_HOP_BY_HOP`: compared as text by length first, which rejects
/// nearly every name at once.
pub fn fixed_hop_by_hop(name: &HeaderName) -> Option<usize> {
    Some(match name.as_str() {
        "connection" => HOP_CONNECTION,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "te" => 3,
        "trailer" => 4,
        "transfer-encoding" => HOP_TRANSFER_ENCODING,
        "upgrade" => 6,
        _ => return None,
    })
}

/// Whether a request field's name is not a framing field but may be taken
/// for one by the upstream's software: any name with an underscore (WSGI,
/// CGI and several frameworks fold `_` into `-`, so `Transfer_Encoding`
/// becomes a second `Transfer-Encoding` there; nginx drops these names by
/// default), and the letters of `Transfer-Encoding` or `Content-Length` with
/// other separators (`Transfer---Encoding`). Such fields are dropped.
pub fn looks_like_framing(name: &str) -> bool {
    let bytes = name.as_bytes();
    if bytes.contains(&b'_') {
        return true;
    }
    // Names are lower case; the real fields are on the fixed path.
    if bytes.len() < 13 || !matches!(bytes[0], b't' | b'c') {
        return false;
    }
    if name == "content-length" || name == "transfer-encoding" {
        return false;
    }
    let mut letters = bytes.iter().filter(|&&b| b != b'-');
    let spells = |word: &[u8], letters: &mut dyn Iterator<Item = &u8>| {
        word.iter().all(|w| letters.next() == Some(w)) && letters.next().is_none()
    };
    if bytes[0] == b't' {
        spells(b"transferencoding", &mut letters)
    } else {
        spells(b"contentlength", &mut letters)
    }
}

/// The non-empty items of a comma-separated header value, trimmed.
pub fn list_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|item| !item.is_empty())
}

/// `Connection`'s index in `FIXED_HOP_BY_HOP`.
pub const HOP_CONNECTION: usize = 0;
/// `Transfer-Encoding`'s index in `FIXED_HOP_BY_HOP`.
pub const HOP_TRANSFER_ENCODING: usize = 5;

impl Seen {
    /// Scans the names once (see `fixed_hop_by_hop`).
    pub fn scan(headers: &HeaderMap) -> Seen {
        let mut seen = Seen::default();
        for name in headers.keys() {
            if let Some(hop) = fixed_hop_by_hop(name) {
                seen.hop_by_hop |= 1 << hop;
                continue;
            }
            match name.as_str() {
                "forwarded" => seen.forwarded = true,
                "x-request-id" => seen.request_id = true,
                "content-length" => seen.content_length = true,
                "cookie" => seen.cookie = true,
                other => seen.lookalike |= looks_like_framing(other),
            }
        }
        seen
    }

    /// Whether a `Cookie` field is there (one or more).
    pub fn cookie(&self) -> bool {
        self.cookie
    }

    pub fn transfer_encoding(&self) -> bool {
        self.hop_by_hop & (1 << HOP_TRANSFER_ENCODING) != 0
    }

    pub fn content_length(&self) -> bool {
        self.content_length
    }
}

/// Removes the headers that describe one connection and must not be passed
/// on: `Connection` and every header it names, and the fixed list (those
/// `seen` found). Responses never need it: the upstream client's parser keeps
/// them out of the map (`upstream::response`).
fn strip_seen(headers: &mut HeaderMap, seen: Seen) {
    if seen.hop_by_hop == 0 {
        return;
    }
    if seen.hop_by_hop & 1 != 0 {
        strip_connection(headers);
    }
    for (i, name) in FIXED_HOP_BY_HOP.iter().enumerate().skip(1) {
        if seen.hop_by_hop & (1 << i) != 0 {
            headers.remove(*name);
        }
    }
}

/// Rewrites a request's headers for the upstream, given what `Seen::scan`
/// found in them: strips the hop-by-hop headers, keeps or makes the request
/// id (returned), and sets the `X-Forwarded-*` headers (see `forwarded`).
pub fn rewrite_request(
    headers: &mut HeaderMap,
    seen: Seen,
    client: &ClientAddr,
    host: HeaderValue,
    proto: &'static str,
    trust_client: bool,
) -> HeaderValue {
    strip_seen(headers, seen);
    if seen.lookalike {
        strip_lookalikes(headers);
    }
    let id = request_id(headers, seen.request_id);
    forwarded(headers, seen.forwarded, client, host, proto, trust_client);
    id
}

/// Removes the fields whose names `looks_like_framing`.
fn strip_lookalikes(headers: &mut HeaderMap) {
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|name| looks_like_framing(name.as_str()))
        .cloned()
        .collect();
    for name in names {
        tracing::debug!(%name, "a field that may be taken for a framing field is dropped");
        headers.remove(name);
    }
}

/// Removes `Connection` and the headers it names (its options).
fn strip_connection(headers: &mut HeaderMap) {
    let header::Entry::Occupied(entry) = headers.entry(header::CONNECTION) else {
        return;
    };
    // The common case, one `keep-alive`, names no other header (`close`
    // does: a header named `close` goes with it).
    let mut values = entry.iter();
    if let (Some(only), None) = (values.next(), values.next())
        && only.as_bytes().eq_ignore_ascii_case(b"keep-alive")
    {
        entry.remove();
        return;
    }
    // Taken out of the map first because the options name headers of the
    // same map; one value is the common case, and collects nothing.
    let (_, mut values) = entry.remove_entry_mult();
    let first = values.next();
    let rest: Vec<HeaderValue> = values.by_ref().collect();
    drop(values);
    for value in first.iter().chain(&rest) {
        let Ok(text) = value.to_str() else { continue };
        for option in text.split(',').map(str::trim) {
            // `keep-alive` goes with the fixed list; any other option is
            // looked up as text, which allocates nothing when it is absent.
            if !option.is_empty() && !option.eq_ignore_ascii_case("keep-alive") {
                headers.remove(option);
            }
        }
    }
}

/// A client's address, with its `X-Forwarded-For` text made once per
/// connection rather than formatted for every request.
#[derive(Debug, Clone)]
pub struct ClientAddr {
    pub addr: SocketAddr,
    forwarded_for: HeaderValue,
}

impl ClientAddr {
    pub fn new(addr: SocketAddr) -> ClientAddr {
        let forwarded_for = HeaderValue::from_str(&addr.ip().to_string())
            .expect("an IP address is a valid header value");
        ClientAddr {
            addr,
            forwarded_for,
        }
    }

    pub fn ip(&self) -> IpAddr {
        self.addr.ip()
    }
}

/// Sets the `X-Forwarded-*` headers for the upstream. `trust_client` says
/// whether the peer is a trusted hop whose `X-Forwarded-For` is kept and
/// appended to; otherwise the client's own claims are replaced. A client's
/// `Forwarded` header is always dropped (`maybe_forwarded`: it may be there):
/// the proxy speaks `X-Forwarded-*` only, and a stale `Forwarded` could
/// contradict it.
fn forwarded(
    headers: &mut HeaderMap,
    maybe_forwarded: bool,
    client: &ClientAddr,
    host: HeaderValue,
    proto: &'static str,
    trust_client: bool,
) {
    if maybe_forwarded {
        headers.remove(&FORWARDED);
    }
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
        client.forwarded_for.clone()
    } else {
        let own = client
            .forwarded_for
            .to_str()
            .expect("made from an IP address");
        HeaderValue::from_str(&format!("{}, {own}", previous.join(", ")))
            .expect("IP addresses and visible header text are valid header values")
    };
    headers.insert(&X_FORWARDED_FOR, xff);
    headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    headers.insert(&X_FORWARDED_HOST, host);
}

/// The request's id: the client's when it sent a usable one (`maybe_sent`:
/// it may have), otherwise a new random one, written into `headers` either
/// way.
fn request_id(headers: &mut HeaderMap, maybe_sent: bool) -> HeaderValue {
    if maybe_sent
        && let Some(id) = headers.get(&X_REQUEST_ID)
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
    let random: u128 = rand::random();
    let mut buf = [0u8; 32];
    for (pair, byte) in buf.chunks_exact_mut(2).zip(random.to_le_bytes()) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0xf)];
    }
    // Owned by one shared buffer: the copies for the response and the log
    // are reference counts, not allocations.
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(buf))
        .expect("hex digits are a valid header value")
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

    /// The strip on its own, as `rewrite_request` does it first.
    fn strip_hop_by_hop(headers: &mut HeaderMap) {
        strip_seen(headers, Seen::scan(headers));
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
        let peer = ClientAddr::new("10.0.0.9:4000".parse().expect("socket address"));
        let mut trusted = map(&[("x-forwarded-for", "1.1.1.1"), ("forwarded", "for=evil")]);
        let host = HeaderValue::from_static("short.example");
        forwarded(&mut trusted, true, &peer, host.clone(), "http", true);
        assert_eq!(trusted["x-forwarded-for"], "1.1.1.1, 10.0.0.9");
        assert_eq!(trusted["x-forwarded-host"], "short.example");
        assert_eq!(trusted["x-forwarded-proto"], "http");
        assert!(trusted.get("forwarded").is_none());

        let mut untrusted = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-host", "spoof"),
        ]);
        forwarded(&mut untrusted, true, &peer, host, "http", false);
        assert_eq!(untrusted["x-forwarded-for"], "10.0.0.9");
        assert_eq!(untrusted["x-forwarded-host"], "short.example");
    }

    #[test]
    fn the_scan_marks_each_hop_by_hop_name_at_its_index_in_the_fixed_list() {
        for (i, name) in FIXED_HOP_BY_HOP.iter().enumerate() {
            let mut h = HeaderMap::new();
            h.insert(*name, HeaderValue::from_static("x"));
            assert_eq!(Seen::scan(&h).hop_by_hop, 1 << i, "{name}");
        }
        let te = map(&[("transfer-encoding", "chunked")]);
        assert!(Seen::scan(&te).transfer_encoding());
    }

    #[test]
    fn keeps_a_client_request_id_and_makes_one_when_absent() {
        let mut with = map(&[("x-request-id", "abc")]);
        assert_eq!(request_id(&mut with, true), "abc");
        let mut without = HeaderMap::new();
        let id = request_id(&mut without, true);
        assert_eq!(id.len(), 32);
        assert_eq!(without["x-request-id"], id);
        assert_ne!(request_id(&mut HeaderMap::new(), true), id);
    }

    /// The plain version the strip must agree with.
    fn strip_by_the_book(headers: &mut HeaderMap) {
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
        for name in FIXED_HOP_BY_HOP {
            headers.remove(name);
        }
    }

    /// The map of the pairs that make a valid header; the rest are skipped.
    fn valid_pairs(pairs: &[(String, String)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            if let (Ok(k), Ok(v)) = (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                m.append(k, v);
            }
        }
        m
    }

    fn sorted(headers: &HeaderMap) -> Vec<(String, Vec<u8>)> {
        let mut all: Vec<_> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect();
        all.sort();
        all
    }

    proptest! {
        #[test]
        fn stripping_agrees_with_the_plain_version(
            pairs in proptest::collection::vec(
                (prop_oneof![
                    Just("connection".to_string()), Just("keep-alive".to_string()),
                    Just("te".to_string()), Just("upgrade".to_string()),
                    Just("transfer-encoding".to_string()), Just("x-a".to_string()),
                    Just("x-b".to_string()), Just("close".to_string()), "[a-z-]{1,6}"
                ], "[ -~]{0,12}"),
                0..12,
            ),
            options in proptest::collection::vec(
                prop_oneof![
                    Just("keep-alive"), Just("close"), Just("x-a"), Just("X-B"),
                    Just("te"), Just(" upgrade "), Just(""), Just("bad token"),
                ],
                0..4,
            ),
        ) {
            let mut h = valid_pairs(&pairs);
            if !options.is_empty() {
                h.append(header::CONNECTION, HeaderValue::from_str(&options.join(",")).expect("visible text"));
            }
            let mut expected = h.clone();
            strip_by_the_book(&mut expected);
            strip_hop_by_hop(&mut h);
            prop_assert_eq!(sorted(&h), sorted(&expected));
        }

        #[test]
        fn one_pass_rewrite_agrees_with_the_steps_one_by_one(
            pairs in proptest::collection::vec(
                (prop_oneof![
                    Just("connection".to_string()), Just("forwarded".to_string()),
                    Just("x-request-id".to_string()), Just("x-forwarded-for".to_string()),
                    Just("content-length".to_string()), Just("te".to_string()),
                    Just("keep-alive".to_string()), "[a-z-]{1,6}"
                ], prop_oneof![
                    Just("x-request-id".to_string()), Just("forwarded".to_string()),
                    Just("keep-alive".to_string()), Just(String::new()), "[ -~]{0,12}"
                ]),
                0..12,
            ),
            trusted in any::<bool>(),
        ) {
            let mut by_steps = valid_pairs(&pairs);
            let mut in_one = by_steps.clone();
            let client = ClientAddr::new("10.1.2.3:9".parse().expect("socket address"));
            let host = HeaderValue::from_static("short.example");
            strip_hop_by_hop(&mut by_steps);
            // Each step looking up what it needs, as if anything could be there.
            let id_by_steps = request_id(&mut by_steps, true);
            forwarded(&mut by_steps, true, &client, host.clone(), "http", trusted);
            let seen = Seen::scan(&in_one);
            let id_in_one = rewrite_request(&mut in_one, seen, &client, host, "http", trusted);
            // A request id made here is random: compare it only when it was the client's.
            if id_by_steps != id_in_one {
                prop_assert_eq!(id_by_steps.len(), 32);
                prop_assert_eq!(id_in_one.len(), 32);
                by_steps.insert(&X_REQUEST_ID, id_in_one.clone());
            }
            prop_assert_eq!(&in_one[&X_REQUEST_ID], &id_in_one);
            prop_assert_eq!(sorted(&in_one), sorted(&by_steps));
        }

        #[test]
        fn rewriting_arbitrary_headers_never_panics_and_leaves_no_hop_by_hop(
            pairs in proptest::collection::vec(("[a-zA-Z-]{1,12}", "[ -~]{0,40}"), 0..20),
            connection in "[ -~]{0,60}",
            trusted in any::<bool>(),
        ) {
            let mut h = valid_pairs(&pairs);
            if let Ok(v) = HeaderValue::from_str(&connection) {
                h.append(header::CONNECTION, v);
            }
            strip_hop_by_hop(&mut h);
            let client = ClientAddr::new("127.0.0.1:1".parse().expect("socket address"));
            forwarded(&mut h, true, &client, HeaderValue::from_static("short.example"), "http", trusted);
            request_id(&mut h, true);
            for name in ["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "forwarded"] {
                prop_assert!(h.get(name).is_none());
            }
            prop_assert!(h.get("x-forwarded-for").is_some());
            prop_assert!(h.get("x-request-id").is_some());
        }
    }

    #[test]
    fn names_that_only_look_like_framing_fields_are_dropped() {
        for name in [
            "transfer_encoding",
            "content_length",
            "transfer---encoding",
            "content--length",
            "transferencoding",
            "contentlength",
            "x_custom",
            "_",
        ] {
            assert!(looks_like_framing(name), "{name} kept");
        }
        for name in [
            "transfer-encoding",
            "content-length",
            "content-type",
            "cache-control",
            "transfer-encodings",
            "content-language",
            "x-custom",
            "te",
        ] {
            assert!(!looks_like_framing(name), "{name} dropped");
        }
        let mut h = map(&[
            ("transfer_encoding", "chunked"),
            ("content--length", "1000"),
            ("content-length", "5"),
            ("host", "short.example"),
        ]);
        let seen = Seen::scan(&h);
        let client = ClientAddr::new("127.0.0.1:1".parse().expect("socket address"));
        rewrite_request(
            &mut h,
            seen,
            &client,
            HeaderValue::from_static("x"),
            "http",
            false,
        );
        assert!(h.get("transfer_encoding").is_none());
        assert!(h.get("content--length").is_none());
        assert_eq!(h["content-length"], "5");
    }
}
