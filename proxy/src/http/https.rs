//! What HTTPS changes on the request path: how a client connection arrived (`Transport`: it
//! sets `X-Forwarded-Proto`), the `308` that sends a plain request to the TLS listener when
//! `tls.redirect_http` is on, and `Strict-Transport-Security` on answers over TLS. `Https`
//! is part of the routing snapshot's policy, so a reload swaps the certificates and these
//! settings with everything else, at once.

use std::sync::Arc;

use http::header::{self, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Response, StatusCode};

use crate::config::Config;
use crate::http::body::ProxyBody;
use crate::tls::Certificates;

/// The TLS listener's certificates and what HTTPS adds to answers.
#[derive(Debug)]
pub struct Https {
    pub certificates: Arc<Certificates>,
    pub redirect_http: bool,
    /// `Strict-Transport-Security`, made once.
    pub hsts: Option<HeaderValue>,
}

impl Https {
    /// `None` without a TLS listener, or before `Config::load` read the certificates.
    pub fn from_config(config: &Config) -> Option<Arc<Https>> {
        config.public_tls?;
        let certificates = config.tls.loaded.clone()?;
        let hsts = config.tls.hsts_max_age.map(|age| {
            HeaderValue::from_str(&format!("max-age={age}")).expect("digits are a header value")
        });
        Some(Arc::new(Https {
            certificates,
            redirect_http: config.tls.redirect_http,
            hsts,
        }))
    }
}

/// How a client connection reached the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// In plain text, on the public listener; `https_port` is the TLS listener's, when there
    /// is one: where a redirect points.
    Plain { https_port: Option<u16> },
    /// Over TLS, on the TLS listener.
    Tls,
}

impl Transport {
    /// The scheme, for `X-Forwarded-Proto`.
    pub fn proto(self) -> &'static str {
        match self {
            Transport::Plain { .. } => "http",
            Transport::Tls => "https",
        }
    }
}

/// The `308` to the same URL on https for a plain request, when the redirect is on and the
/// request is not exempt: one with the preview header (an operator's test), or one from a
/// trusted hop (a load balancer's health check, which must keep working in plain text).
pub fn redirect(
    transport: Transport,
    https: Option<&Https>,
    parts: &Parts,
    host: &HeaderValue,
    preview_header: &HeaderName,
    trusted: bool,
) -> Option<Response<ProxyBody>> {
    let Transport::Plain {
        https_port: Some(port),
    } = transport
    else {
        return None;
    };
    if !https.is_some_and(|h| h.redirect_http)
        || trusted
        || parts.headers.contains_key(preview_header)
    {
        return None;
    }
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let location = location(host.as_bytes(), port, target)?;
    let mut response = Response::new(ProxyBody::local("308 permanent redirect: use https\n"));
    *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, location);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    Some(response)
}

/// `https://{host}{:port}{target}`: the host without the port the client used, the TLS
/// listener's port unless it is 443, the target as it came (an `OPTIONS *` goes to `/`).
fn location(host: &[u8], port: u16, target: &str) -> Option<HeaderValue> {
    let host = std::str::from_utf8(host).ok()?;
    let name = match host.strip_prefix('[') {
        // An IPv6 literal keeps its brackets; its colons are not a port.
        Some(rest) => &host[..rest.find(']')? + 2],
        None => host.split(':').next().unwrap_or(host),
    };
    let target = if target.starts_with('/') { target } else { "/" };
    let url = if port == 443 {
        format!("https://{name}{target}")
    } else {
        format!("https://{name}:{port}{target}")
    };
    HeaderValue::from_str(&url).ok()
}

/// Adds `Strict-Transport-Security` to an answer over TLS when it is configured (never over
/// plain text, where browsers ignore it: RFC 6797 section 7.2).
pub fn with_hsts(
    mut response: Response<ProxyBody>,
    transport: Transport,
    https: Option<&Https>,
) -> Response<ProxyBody> {
    if transport == Transport::Tls
        && let Some(hsts) = https.and_then(|h| h.hsts.as_ref())
    {
        response
            .headers_mut()
            .insert(header::STRICT_TRANSPORT_SECURITY, hsts.clone());
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(host: &str, port: u16, target: &str) -> String {
        location(host.as_bytes(), port, target)
            .expect("a location")
            .to_str()
            .expect("visible")
            .to_owned()
    }

    #[test]
    fn the_location_is_the_same_url_on_the_tls_port() {
        assert_eq!(
            at("shop.test", 8443, "/a?b=c"),
            "https://shop.test:8443/a?b=c"
        );
        assert_eq!(at("shop.test:8080", 8443, "/"), "https://shop.test:8443/");
        assert_eq!(at("shop.test:80", 443, "/x"), "https://shop.test/x");
        assert_eq!(at("[::1]:8080", 8443, "/"), "https://[::1]:8443/");
        assert_eq!(at("[::1]", 443, "/"), "https://[::1]/");
        assert_eq!(at("shop.test", 443, "*"), "https://shop.test/");
    }

    fn https(redirect_http: bool) -> Https {
        Https {
            certificates: Arc::new(Certificates::new(vec![
                crate::tls::certs::tests::self_signed(&["shop.test"]),
            ])),
            redirect_http,
            hsts: Some(HeaderValue::from_static("max-age=60")),
        }
    }

    fn parts(headers: &[(&str, &str)]) -> Parts {
        let mut request = http::Request::get("/path?q=1");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        request.body(()).expect("a request").into_parts().0
    }

    const PREVIEW: HeaderName = HeaderName::from_static("x-bluegreen-preview");
    const PLAIN: Transport = Transport::Plain {
        https_port: Some(8443),
    };

    fn redirected(
        transport: Transport,
        https: &Https,
        headers: &[(&str, &str)],
        trusted: bool,
    ) -> Option<String> {
        let host = HeaderValue::from_static("shop.test:8080");
        redirect(
            transport,
            Some(https),
            &parts(headers),
            &host,
            &PREVIEW,
            trusted,
        )
        .map(|r| {
            assert_eq!(r.status(), StatusCode::PERMANENT_REDIRECT);
            r.headers()[header::LOCATION]
                .to_str()
                .expect("visible")
                .to_owned()
        })
    }

    #[test]
    fn plain_requests_are_redirected_but_previews_and_trusted_hops() {
        let on = https(true);
        assert_eq!(
            redirected(PLAIN, &on, &[], false).as_deref(),
            Some("https://shop.test:8443/path?q=1")
        );
        assert_eq!(
            redirected(PLAIN, &on, &[("x-bluegreen-preview", "x")], false),
            None
        );
        assert_eq!(redirected(PLAIN, &on, &[], true), None);
        assert_eq!(redirected(Transport::Tls, &on, &[], false), None);
        assert_eq!(
            redirected(Transport::Plain { https_port: None }, &on, &[], false),
            None
        );
        assert_eq!(redirected(PLAIN, &https(false), &[], false), None);
    }

    #[test]
    fn hsts_goes_on_answers_over_tls_only() {
        let on = https(false);
        let answer = || Response::new(ProxyBody::local("ok"));
        let over_tls = with_hsts(answer(), Transport::Tls, Some(&on));
        assert_eq!(
            over_tls.headers()[header::STRICT_TRANSPORT_SECURITY],
            "max-age=60"
        );
        let plain = with_hsts(answer(), PLAIN, Some(&on));
        assert!(
            !plain
                .headers()
                .contains_key(header::STRICT_TRANSPORT_SECURITY)
        );
    }
}
