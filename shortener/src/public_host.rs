//! Which address the user came through: the origin printed in short links, and the set of hosts
//! that are "us" (a link to one of them would redirect back into the shortener forever).

use std::convert::Infallible;
use std::fmt;
use std::str::FromStr;

use axum::extract::FromRequestParts;
use http::request::Parts;
use http::{HeaderMap, HeaderName, Uri, header};

const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// The host used when a request names none (HTTP/1.0 without `Host`).
const FALLBACK_HOST: &str = "localhost";

/// A host in the one form hosts are compared in: IDNA-mapped, lowercase, no port, no trailing dot.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostName(String);

/// Why a `--public-host` value is not a host.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a host name or IP address")]
pub struct HostNameError(String);

impl HostName {
    /// Reads a host, ignoring a `:port` and a trailing dot; `None` when it is not a valid host.
    pub fn parse(authority: &str) -> Option<Self> {
        split_authority(authority).map(|(host, _port)| host)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for HostName {
    type Err = HostNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s).ok_or_else(|| HostNameError(s.to_owned()))
    }
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Splits `host[:port]` into a normalized host and its port. `None` when either part is invalid,
/// which also keeps header garbage (spaces, `<`, `/`) out of the links and pages we print.
fn split_authority(authority: &str) -> Option<(HostName, Option<u16>)> {
    let authority = authority.trim();
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']')?;
        let port = authority[end + 1..].strip_prefix(':');
        if port.is_none() && end + 1 != authority.len() {
            return None;
        }
        (&authority[..=end], port)
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port = match port {
        None | Some("") => None,
        Some(digits) => Some(digits.parse::<u16>().ok()?),
    };
    let host = host.trim_end_matches('.');
    if host.is_empty() {
        return None;
    }
    // url's own host parser, so that we compare hosts exactly as the URLs we store spell them:
    // `Sho.RT` -> `sho.rt`, `bücher.de` -> `xn--bcher-kva.de`, `2130706433` -> `127.0.0.1`.
    let parsed = url::Host::parse(host).ok()?.to_string();
    Some((HostName(parsed.trim_end_matches('.').to_owned()), port))
}

/// The public origin of one request and the hosts it names, read from its headers.
#[derive(Debug, Clone)]
pub struct PublicOrigin {
    /// `https` only when a valid `X-Forwarded-Proto` says so.
    scheme: &'static str,
    /// From the first valid `X-Forwarded-Host`, else `Host`, else the URI, else `localhost`.
    host: HostName,
    /// The port that came with `host`, kept so the short link works on non-default ports.
    port: Option<u16>,
    /// Every valid host in `Host` and `X-Forwarded-Host` (all values): each is a way users reach us.
    request_hosts: Vec<HostName>,
}

impl PublicOrigin {
    /// `X-Forwarded-Host` / `X-Forwarded-Proto` (first value of each) when present and valid,
    /// else the `Host` header (or the URI authority, as HTTP/2 sends it) with `http`.
    pub fn from_request(headers: &HeaderMap, uri: &Uri) -> Self {
        let forwarded = first_value(headers, &X_FORWARDED_HOST).and_then(split_authority);
        let direct = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| uri.authority().map(|a| a.as_str()))
            .and_then(split_authority);
        let scheme = match first_value(headers, &X_FORWARDED_PROTO) {
            Some(proto) if proto.eq_ignore_ascii_case("https") => "https",
            _ => "http",
        };
        let request_hosts = all_values(headers, &header::HOST)
            .chain(all_values(headers, &X_FORWARDED_HOST))
            .filter_map(HostName::parse)
            .collect();
        let (host, port) = forwarded
            .or(direct)
            .unwrap_or_else(|| (HostName(FALLBACK_HOST.to_owned()), None));
        Self {
            scheme,
            host,
            port,
            request_hosts,
        }
    }

    /// The short link users share: `scheme://host[:port]/code`.
    pub fn short_url(&self, code: &str) -> String {
        let Self {
            scheme, host, port, ..
        } = self;
        let host = host.as_str();
        match port {
            Some(port) => format!("{scheme}://{host}:{port}/{code}"),
            None => format!("{scheme}://{host}/{code}"),
        }
    }

    /// The hosts that are this shortener for this request: the ones it names plus the aliases.
    pub fn own_hosts<'a>(&'a self, aliases: &'a [HostName]) -> OwnHosts<'a> {
        OwnHosts {
            request: &self.request_hosts,
            aliases,
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for PublicOrigin {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self::from_request(&parts.headers, &parts.uri))
    }
}

/// The hosts a link must not point at.
#[derive(Debug, Clone, Copy)]
pub struct OwnHosts<'a> {
    request: &'a [HostName],
    aliases: &'a [HostName],
}

impl OwnHosts<'_> {
    /// No own hosts: for callers (and tests) without a request.
    pub const NONE: OwnHosts<'static> = OwnHosts {
        request: &[],
        aliases: &[],
    };

    pub fn contains(&self, host: &HostName) -> bool {
        self.request
            .iter()
            .chain(self.aliases)
            .any(|own| own == host)
    }
}

fn first_value<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    all_values(headers, name).next()
}

/// Every comma-separated value of every line of a header, trimmed, skipping non-text lines.
fn all_values<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(headers: &[(&str, &str)]) -> PublicOrigin {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).expect("test header name"),
                value.parse().expect("test header value"),
            );
        }
        PublicOrigin::from_request(&map, &Uri::from_static("/"))
    }

    #[test]
    fn host_names_ignore_case_port_and_trailing_dot() {
        let expected = HostName::parse("sho.rt");
        for spelling in ["SHO.rt", "sho.rt.", "sho.rt:8080", "Sho.Rt.:1"] {
            assert_eq!(HostName::parse(spelling), expected, "{spelling}");
        }
        assert_eq!(
            HostName::parse("[::1]:80").map(|h| h.to_string()),
            Some("[::1]".to_owned())
        );
        assert_eq!(
            HostName::parse("bücher.de").map(|h| h.to_string()),
            Some("xn--bcher-kva.de".to_owned())
        );
    }

    #[test]
    fn garbage_is_not_a_host() {
        for bad in [
            "",
            ".",
            "a b",
            "a<b",
            "a/b",
            "host:port",
            "host:99999",
            "[::1",
        ] {
            assert_eq!(HostName::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn short_url_uses_the_host_header_with_http() {
        let origin = origin(&[("host", "Sho.rt:8081")]);
        assert_eq!(origin.short_url("abc"), "http://sho.rt:8081/abc");
    }

    #[test]
    fn short_url_prefers_the_first_forwarded_values() {
        let origin = origin(&[
            ("host", "10.0.0.5:8081"),
            ("x-forwarded-host", "go.example, proxy.internal"),
            ("x-forwarded-proto", "https, http"),
        ]);
        assert_eq!(origin.short_url("abc"), "https://go.example/abc");
    }

    #[test]
    fn invalid_forwarded_values_fall_back_to_host() {
        let origin = origin(&[
            ("host", "sho.rt"),
            ("x-forwarded-host", "<script>"),
            ("x-forwarded-proto", "gopher"),
        ]);
        assert_eq!(origin.short_url("abc"), "http://sho.rt/abc");
    }

    #[test]
    fn own_hosts_are_request_hosts_and_aliases() {
        let origin = origin(&[
            ("host", "a.example:1"),
            ("x-forwarded-host", "b.example, c.example"),
        ]);
        let aliases = [HostName::parse("d.example").expect("valid alias")];
        let own = origin.own_hosts(&aliases);
        for host in ["a.example", "b.example", "c.example", "d.example"] {
            assert!(
                own.contains(&HostName::parse(host).expect("valid")),
                "{host}"
            );
        }
        assert!(!own.contains(&HostName::parse("e.example").expect("valid")));
    }
}
