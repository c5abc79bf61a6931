//! `[canary]`: the canary split's cookie and the private preview's header,
//! cookie and secret.

use http::HeaderName;
use serde::Deserialize;

use super::problems::Problems;
use crate::config::{CanaryCfg, defaults as d};

#[derive(Debug, Default, Deserialize)]
pub(super) struct RawCanary {
    cookie: Option<String>,
    preview_header: Option<String>,
    preview_cookie: Option<String>,
    preview_secret: Option<String>,
}

impl RawCanary {
    pub(super) fn validate(self, p: &mut Problems) -> CanaryCfg {
        let canary = CanaryCfg {
            cookie: cookie_name(p, "canary.cookie", self.cookie, d::CANARY_COOKIE),
            preview_header: header_name(
                p,
                "canary.preview_header",
                self.preview_header,
                d::PREVIEW_HEADER,
            ),
            preview_cookie: cookie_name(
                p,
                "canary.preview_cookie",
                self.preview_cookie,
                d::PREVIEW_COOKIE,
            ),
            preview_secret: self.preview_secret.filter(|s| !s.is_empty()),
        };
        if let Some(secret) = &canary.preview_secret
            && secret.len() < 16
        {
            p.push(
                "canary.preview_secret",
                "at least 16 characters: it is a password",
            );
        }
        canary
    }
}

fn header_name(p: &mut Problems, key: &str, value: Option<String>, default: &str) -> HeaderName {
    match HeaderName::from_bytes(value.as_deref().unwrap_or(default).as_bytes()) {
        Ok(h) => h,
        Err(_) => {
            p.push(key, "not a header name");
            HeaderName::from_bytes(default.as_bytes()).expect("default header names are valid")
        }
    }
}

fn cookie_name(p: &mut Problems, key: &str, value: Option<String>, default: &str) -> String {
    let name = value.unwrap_or_else(|| default.to_string());
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        p.push(key, "a cookie name is letters, digits, '_' and '-'");
    }
    name
}
