//! The `LongUrl` newtype: a link target that is safe to answer in a `Location` header.
//!
//! The rules run on the raw input, before `url::Url` sees it, because that parser is forgiving in
//! the ways attackers like: it strips tabs and newlines, reads `\` as `/` and `http:host` as
//! `http://host`, and skips extra slashes. What it would silently repair, we refuse.
//!
//! Scheme case: `HTTP://` and `hTtPs://` are accepted and stored lowercase (the parser normalizes
//! them); every other scheme is refused in any case, so `JavaScript:` is as refused as
//! `javascript:`. The shortener never fetches a target.

use std::fmt;

use url::Url;

use crate::public_host::{HostName, OwnHosts};

/// Longest target accepted, in bytes, both as given and once normalized.
pub const MAX_BYTES: usize = 2048;

/// A target URL: absolute `http`/`https` with a host, at most [`MAX_BYTES`], no control characters
/// or backslashes, not pointing back at this shortener. Holds the normalized serialization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LongUrl(String);

/// Why a string is not a [`LongUrl`]; each message names the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("url is required")]
    Empty,
    #[error("url is {len} bytes long; the limit is {MAX_BYTES}")]
    TooLong { len: usize },
    #[error(
        "url contains the control character {found:?}; tabs, newlines and other control characters are not allowed"
    )]
    ControlChar { found: char },
    #[error("url contains a backslash; write `/`, or `%5C` for a literal backslash")]
    Backslash,
    #[error("url must be absolute and start with http:// or https://")]
    NotAbsolute,
    #[error("url scheme `{0}` is not allowed; use http or https")]
    Scheme(String),
    #[error("url must have a host right after `//`")]
    NoHost,
    #[error("url is not valid: {0}")]
    Invalid(url::ParseError),
    #[error("url points back at this shortener (host `{0}`); that link would redirect to itself")]
    Loop(String),
}

impl LongUrl {
    /// Parses a target submitted in a request that reached us through `own` hosts.
    pub fn parse(raw: &str, own: &OwnHosts<'_>) -> Result<Self, UrlError> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(UrlError::Empty);
        }
        if raw.len() > MAX_BYTES {
            return Err(UrlError::TooLong { len: raw.len() });
        }
        if let Some(found) = raw.chars().find(|c| c.is_control()) {
            return Err(UrlError::ControlChar { found });
        }
        if raw.contains('\\') {
            return Err(UrlError::Backslash);
        }
        let (scheme, rest) = split_scheme(raw).ok_or(UrlError::NotAbsolute)?;
        if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
            return Err(UrlError::Scheme(scheme.to_owned()));
        }
        // Exactly two slashes then a host: `http:host`, `http:/host` and `http:///host` all
        // "work" in the parser and in browsers, and are exactly how filters get bypassed.
        let authority = rest.strip_prefix("//").ok_or(UrlError::NotAbsolute)?;
        if authority.is_empty() || authority.starts_with(['/', '?', '#']) {
            return Err(UrlError::NoHost);
        }

        let url = Url::parse(raw).map_err(UrlError::Invalid)?;
        let host = url
            .host_str()
            .and_then(HostName::parse)
            .ok_or(UrlError::NoHost)?;
        if own.contains(&host) {
            return Err(UrlError::Loop(host.to_string()));
        }
        let normalized = String::from(url);
        if normalized.len() > MAX_BYTES {
            return Err(UrlError::TooLong {
                len: normalized.len(),
            });
        }
        Ok(Self(normalized))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LongUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `scheme:rest` when the input starts with a syntactically valid scheme (RFC 3986:
/// `ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )`), else `None` (relative or scheme-relative).
fn split_scheme(raw: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = raw.split_once(':')?;
    let mut chars = scheme.chars();
    let starts_alpha = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    (starts_alpha && rest_ok).then_some((scheme, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &str) -> Result<String, UrlError> {
        LongUrl::parse(raw, &OwnHosts::NONE).map(|u| u.to_string())
    }

    #[test]
    fn accepts_http_and_https_and_trims_whitespace() {
        assert_eq!(
            parse("  https://example.com/a?b=c#d \n"),
            Ok("https://example.com/a?b=c#d".to_owned())
        );
        assert_eq!(
            parse("http://example.com"),
            Ok("http://example.com/".to_owned())
        );
    }

    #[test]
    fn uppercase_http_is_normalized() {
        assert_eq!(
            parse("HTTP://EXAMPLE.COM/Path"),
            Ok("http://example.com/Path".to_owned())
        );
        assert_eq!(
            parse("hTtPs://example.com/"),
            Ok("https://example.com/".to_owned())
        );
    }

    #[test]
    fn refuses_other_schemes_in_any_case() {
        for (raw, scheme) in [
            ("javascript:alert(1)", "javascript"),
            ("JavaScript:alert(1)", "JavaScript"),
            ("data:text/html,<b>hi</b>", "data"),
            ("vbscript:msgbox", "vbscript"),
            ("file:///etc/passwd", "file"),
            ("ftp://example.com/", "ftp"),
            ("mailto:a@example.com", "mailto"),
            ("example.com:8080", "example.com"),
        ] {
            assert_eq!(
                parse(raw),
                Err(UrlError::Scheme(scheme.to_owned())),
                "{raw}"
            );
        }
    }

    #[test]
    fn refuses_relative_and_slash_tricks() {
        for raw in [
            "//example.com/x",
            "/x",
            "example.com",
            "http:example.com",
            "http:/example.com",
        ] {
            assert_eq!(parse(raw), Err(UrlError::NotAbsolute), "{raw}");
        }
        for raw in ["http:///example.com", "http://", "https://?x", "http://#x"] {
            assert_eq!(parse(raw), Err(UrlError::NoHost), "{raw}");
        }
        for raw in [
            "http:/\\example.com",
            "http:\\\\example.com",
            "http://a.com\\@b.com",
        ] {
            assert_eq!(parse(raw), Err(UrlError::Backslash), "{raw}");
        }
    }

    #[test]
    fn leading_and_trailing_whitespace_is_trimmed_first() {
        assert_eq!(
            parse("\t http://example.com/\r\n"),
            Ok("http://example.com/".to_owned())
        );
    }

    #[test]
    fn refuses_control_characters_anywhere() {
        for (raw, found) in [
            ("http://exa\tmple.com/", '\t'),
            ("http://example.com/a\nb", '\n'),
            ("http://example.com/\r/x", '\r'),
            ("http://example.com/\0", '\0'),
            ("http://example.com/\u{7f}", '\u{7f}'),
            ("http://example.com/\u{85}x", '\u{85}'),
            ("java\tscript:alert(1)", '\t'),
        ] {
            assert_eq!(parse(raw), Err(UrlError::ControlChar { found }), "{raw:?}");
        }
    }

    #[test]
    fn limits_length_to_2048_bytes() {
        let prefix = "https://example.com/";
        let exact = format!("{prefix}{}", "a".repeat(MAX_BYTES - prefix.len()));
        assert_eq!(parse(&exact).map(|u| u.len()), Ok(MAX_BYTES));
        let over = format!("{exact}a");
        assert_eq!(parse(&over), Err(UrlError::TooLong { len: MAX_BYTES + 1 }));
    }

    #[test]
    fn refuses_invalid_hosts() {
        assert!(matches!(
            parse("http://exa mple.com/"),
            Err(UrlError::Invalid(_))
        ));
        assert!(matches!(parse("http://:80/"), Err(UrlError::Invalid(_))));
    }

    #[test]
    fn refuses_own_hosts_whatever_the_spelling() {
        let aliases = [HostName::parse("sho.rt").expect("valid host")];
        let own = OwnHosts::NONE;
        let origin = crate::public_host::PublicOrigin::from_request(
            &http::HeaderMap::new(),
            &http::Uri::from_static("/"),
        );
        let own_with_alias = origin.own_hosts(&aliases);
        for raw in [
            "http://sho.rt/x",
            "https://SHO.RT/x",
            "http://sho.rt./x",
            "http://sho.rt:9999/x",
        ] {
            assert_eq!(
                LongUrl::parse(raw, &own_with_alias),
                Err(UrlError::Loop("sho.rt".to_owned())),
                "{raw}"
            );
            assert!(LongUrl::parse(raw, &own).is_ok());
        }
    }
}
