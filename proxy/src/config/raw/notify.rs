//! `[notify]`: the webhooks told about incidents, and how hard each delivery
//! is tried.

use std::path::PathBuf;

use serde::Deserialize;

use super::problems::Problems;
use crate::config::{NotifyCfg, Webhook, defaults as d};

#[derive(Debug, Default, Deserialize)]
pub(super) struct RawNotify {
    #[serde(default)]
    webhook: Vec<RawWebhook>,
    max_attempts: Option<u32>,
    backoff_ms: Option<u64>,
    timeout_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct RawWebhook {
    url: Option<String>,
    secret: Option<String>,
    ca: Option<PathBuf>,
}

impl RawNotify {
    pub(super) fn validate(self, p: &mut Problems) -> NotifyCfg {
        let mut webhooks = Vec::with_capacity(self.webhook.len());
        for (i, w) in self.webhook.into_iter().enumerate() {
            let key = format!("notify.webhook[{i}].url");
            match w.url.as_deref().map(|u| u.parse::<http::Uri>()) {
                Some(Ok(uri))
                    if matches!(uri.scheme_str(), Some("http" | "https"))
                        && uri.authority().is_some() =>
                {
                    if w.ca.is_some() && uri.scheme_str() != Some("https") {
                        p.push(
                            format!("notify.webhook[{i}].ca"),
                            "only for an https:// URL",
                        );
                    }
                    webhooks.push(Webhook {
                        url: uri,
                        secret: w.secret,
                        ca: w.ca,
                    })
                }
                Some(Ok(_)) => p.push(key, "an http:// or https:// URL with a host"),
                Some(Err(_)) => p.push(key, "not a URL"),
                None => p.push(key, "required"),
            }
        }
        NotifyCfg {
            webhooks,
            max_attempts: p.at_least_one(
                "notify.max_attempts",
                self.max_attempts,
                d::NOTIFY_ATTEMPTS,
            ),
            backoff: p.millis("notify.backoff_ms", self.backoff_ms, d::NOTIFY_BACKOFF_MS),
            timeout: p.millis("notify.timeout_ms", self.timeout_ms, d::NOTIFY_TIMEOUT_MS),
        }
    }
}
