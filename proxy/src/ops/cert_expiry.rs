//! Certificates about to expire: a warning in the log and a `certificate_expiring` event
//! once per certificate (as loaded: a renewed certificate at the same path is a new one),
//! checked at start and every minute, so that a reload that brings an old certificate and
//! the passing days are both noticed. `GET /status` shows the same warnings, computed when
//! asked.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::http::routing::Router;
use crate::ops::events::{Event, EventKind, EventLog};
use crate::tls::Certificates;

const CHECK_EVERY: Duration = Duration::from_secs(60);

/// Checks until `shutdown` changes.
pub async fn run(router: Arc<Router>, events: Arc<EventLog>, mut shutdown: watch::Receiver<bool>) {
    let mut warned = Warned::default();
    let mut ticker = tokio::time::interval(CHECK_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => break,
        }
        let https = router.load().policy.https.clone();
        let certificates = https.as_ref().map(|h| &*h.certificates);
        for event in warned.check(certificates, OffsetDateTime::now_utc()) {
            tracing::warn!("{}", event.reason);
            events.record(event);
        }
    }
}

/// The certificates already warned about, by file and end of validity.
#[derive(Default)]
struct Warned(HashSet<(PathBuf, OffsetDateTime)>);

impl Warned {
    /// An event for each certificate of `certificates` that expires soon and was not warned
    /// about yet.
    fn check(&mut self, certificates: Option<&Certificates>, now: OffsetDateTime) -> Vec<Event> {
        let Some(certificates) = certificates else {
            return Vec::new();
        };
        let mut news = Vec::new();
        for cert in certificates.list() {
            let Some(warning) = cert.expiry_warning(now) else {
                continue;
            };
            if !self.0.insert((cert.file.clone(), cert.not_after)) {
                continue;
            }
            let not_after = cert
                .not_after
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default();
            news.push(
                Event::new(EventKind::CertificateExpiring, warning).detail(json!({
                    "file": cert.file.display().to_string(),
                    "names": cert.names,
                    "not_after": not_after,
                })),
            );
        }
        news
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::certs::tests::self_signed;

    #[test]
    fn each_certificate_is_warned_about_once_when_it_comes_close() {
        let certificates = Certificates::new(vec![self_signed(&["a.test"])]);
        let end = certificates.list()[0].not_after;
        let mut warned = Warned::default();

        let early = warned.check(Some(&certificates), end - Duration::from_secs(20 * 86_400));
        let close = warned.check(Some(&certificates), end - Duration::from_secs(13 * 86_400));
        let again = warned.check(Some(&certificates), end - Duration::from_secs(12 * 86_400));

        assert!(early.is_empty());
        assert_eq!(close.len(), 1);
        assert_eq!(close[0].kind, EventKind::CertificateExpiring);
        assert!(close[0].reason.contains("a.test"), "{}", close[0].reason);
        assert!(again.is_empty(), "warned once");
        assert!(warned.check(None, end).is_empty());
    }
}
