//! Incident notices to the configured webhooks: a JSON POST per notice and
//! webhook (http, or https verified against the webhook's CA file or the
//! system's roots), signed with HMAC-SHA256 when the webhook has a secret, retried
//! with exponential backoff, delivered by one background task fed through a
//! bounded queue so that nobody waits on a slow receiver. A notice that
//! still fails becomes a `notice_failed` event.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http::{Request, StatusCode, header};
use http_body_util::Full;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::RootCertStore;
use serde::Serialize;
use serde_json::json;
use sha2::Sha256;
use time::OffsetDateTime;
use tokio::sync::{mpsc, watch};

use crate::config::{NotifyCfg, Webhook};
use crate::ops::events::{Event, EventKind, EventLog};
use crate::ops::incidents::Incident;
use crate::tls::client::{self, Trust};

/// Notices waiting for delivery; past this, new ones are dropped (and logged
/// as failed) rather than ever blocking the detector.
pub const QUEUE: usize = 256;
/// The header carrying `sha256=<hex>` of the body.
pub const SIGNATURE_HEADER: &str = "x-bluegreen-signature";
/// The header naming the notice kind, for receivers that route on it.
pub const EVENT_HEADER: &str = "x-bluegreen-event";
/// Backoff never grows past this, however many attempts are configured.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeKind {
    IncidentOpen,
    IncidentClose,
    PreventedIncident,
}

impl NoticeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeKind::IncidentOpen => "incident_open",
            NoticeKind::IncidentClose => "incident_close",
            NoticeKind::PreventedIncident => "prevented_incident",
        }
    }
}

/// The body of one POST.
#[derive(Debug, Clone, Serialize)]
pub struct Notice {
    pub event: NoticeKind,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub incident: Incident,
}

impl Notice {
    pub fn new(event: NoticeKind, incident: Incident) -> Notice {
        Notice {
            event,
            at: OffsetDateTime::now_utc(),
            incident,
        }
    }
}

/// The handle that queues notices; cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    /// `None` when no webhook is configured: notices go nowhere.
    tx: Option<mpsc::Sender<Notice>>,
    events: Arc<EventLog>,
}

impl Notifier {
    /// Starts the delivery task; it ends when `shutdown` changes or every
    /// handle is dropped.
    pub fn start(
        cfg: NotifyCfg,
        events: Arc<EventLog>,
        shutdown: watch::Receiver<bool>,
    ) -> (Notifier, tokio::task::JoinHandle<()>) {
        if cfg.webhooks.is_empty() {
            let notifier = Notifier { tx: None, events };
            return (notifier, tokio::spawn(async {}));
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(deliver_all(rx, cfg, Arc::clone(&events), shutdown));
        (
            Notifier {
                tx: Some(tx),
                events,
            },
            task,
        )
    }

    /// Queues a notice without waiting.
    pub fn send(&self, notice: Notice) {
        let Some(tx) = &self.tx else { return };
        if let Err(e) = tx.try_send(notice) {
            let (why, notice) = match e {
                mpsc::error::TrySendError::Full(n) => ("the notice queue is full", n),
                mpsc::error::TrySendError::Closed(n) => ("the notifier has stopped", n),
            };
            self.events.record(failed(&notice, None, why));
        }
    }
}

fn failed(notice: &Notice, url: Option<&str>, why: &str) -> Event {
    let to = url.map(|u| format!(" to {u}")).unwrap_or_default();
    Event::new(
        EventKind::NoticeFailed,
        format!(
            "the {} notice of incident {}{to} was not delivered: {why}",
            notice.event.as_str(),
            notice.incident.id
        ),
    )
    .releases(notice.incident.releases.iter().cloned().map(Some))
    .detail(json!({
        "incident": notice.incident.id,
        "notice": notice.event.as_str(),
        "webhook": url,
    }))
}

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// One client per webhook, in order, or why there is none: an https:// webhook trusts its
/// CA file, else the system's roots. Reads files: run it off the runtime's threads.
fn clients(cfg: &NotifyCfg) -> Vec<Result<HttpClient, String>> {
    let mut system: Option<Result<RootCertStore, String>> = None;
    cfg.webhooks
        .iter()
        .map(|hook| {
            let roots = match (hook.url.scheme_str(), &hook.ca) {
                (Some("https"), Some(ca)) => client::read_ca(ca)
                    .and_then(|certs| client::roots(&Trust::Ca(certs)))
                    .map_err(|why| format!("{}: {why}", ca.display())),
                (Some("https"), None) => system
                    .get_or_insert_with(|| client::roots(&Trust::System))
                    .clone(),
                // Plain http: the connector never starts TLS.
                _ => Ok(RootCertStore::empty()),
            };
            roots.map(|roots| {
                let mut http = HttpConnector::new();
                http.set_connect_timeout(Some(cfg.timeout));
                // The https connector around it takes the https:// URLs.
                http.enforce_http(false);
                let connector = HttpsConnectorBuilder::new()
                    .with_tls_config(client::config(roots, &[]))
                    .https_or_http()
                    .enable_http1()
                    .wrap_connector(http);
                Client::builder(TokioExecutor::new()).build(connector)
            })
        })
        .collect()
}

async fn deliver_all(
    mut rx: mpsc::Receiver<Notice>,
    cfg: NotifyCfg,
    events: Arc<EventLog>,
    mut shutdown: watch::Receiver<bool>,
) {
    let for_clients = cfg.clone();
    let clients = match tokio::task::spawn_blocking(move || clients(&for_clients)).await {
        Ok(clients) => clients,
        Err(e) => {
            tracing::error!(error = %e, "cannot make the webhook clients: notices will not be sent");
            cfg.webhooks
                .iter()
                .map(|_| Err(format!("no client: {e}")))
                .collect()
        }
    };
    for (hook, client) in cfg.webhooks.iter().zip(&clients) {
        if let Err(why) = client {
            tracing::error!(webhook = %display_url(&hook.url), error = %why, "this webhook will get no notice");
        }
    }
    loop {
        let notice = tokio::select! {
            notice = rx.recv() => match notice {
                Some(n) => n,
                None => return,
            },
            _ = shutdown.changed() => break,
        };
        let body = Bytes::from(serde_json::to_vec(&notice).expect("notices serialize"));
        // Webhooks are independent: one slow receiver must not delay another.
        let deliveries = cfg.webhooks.iter().zip(&clients).map(|(hook, client)| {
            let body = body.clone();
            let mut shutdown = shutdown.clone();
            let cfg = &cfg;
            async move {
                let result = match client {
                    Ok(client) => tokio::select! {
                        result = deliver(client, hook, notice.event, body, cfg) => result,
                        _ = shutdown.changed() => Err("the proxy shut down before it was delivered".to_string()),
                    },
                    Err(why) => Err(why.clone()),
                };
                (hook, result)
            }
        });
        for (hook, result) in futures_util::future::join_all(deliveries).await {
            let url = display_url(&hook.url);
            match result {
                Ok(attempts) => {
                    tracing::info!(notice = notice.event.as_str(), incident = notice.incident.id, webhook = %url, attempts, "notice delivered")
                }
                Err(why) => {
                    tracing::warn!(notice = notice.event.as_str(), incident = notice.incident.id, webhook = %url, error = %why, "notice not delivered");
                    events.record(failed(&notice, Some(&url), &why));
                }
            }
        }
    }
    // Whatever is still queued at shutdown will not be sent; the log says so.
    rx.close();
    while let Ok(notice) = rx.try_recv() {
        events.record(failed(
            &notice,
            None,
            "the proxy shut down before it was sent",
        ));
    }
}

/// Posts one notice to one webhook until it is taken (a 2xx) or the attempts
/// run out; returns the attempts it took.
async fn deliver(
    client: &HttpClient,
    hook: &Webhook,
    kind: NoticeKind,
    body: Bytes,
    cfg: &NotifyCfg,
) -> Result<u32, String> {
    let signature = hook.secret.as_deref().map(|secret| sign(secret, &body));
    let mut backoff = cfg.backoff;
    let mut last_error = String::new();
    for attempt in 1..=cfg.max_attempts {
        let mut request = Request::post(hook.url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::USER_AGENT, "bluegreen-proxy")
            .header(EVENT_HEADER, kind.as_str());
        if let Some(signature) = &signature {
            request = request.header(SIGNATURE_HEADER, signature.as_str());
        }
        let request = request
            .body(Full::new(body.clone()))
            .map_err(|e| format!("cannot build the request: {e}"))?;
        match tokio::time::timeout(cfg.timeout, client.request(request)).await {
            Ok(Ok(response)) if response.status().is_success() => return Ok(attempt),
            Ok(Ok(response)) => last_error = status_error(response.status()),
            Ok(Err(e)) => last_error = format!("request failed: {e}"),
            Err(_) => last_error = format!("no answer within {} ms", cfg.timeout.as_millis()),
        }
        if attempt < cfg.max_attempts {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
    Err(format!(
        "{} attempts, the last: {last_error}",
        cfg.max_attempts
    ))
}

fn status_error(status: StatusCode) -> String {
    format!("answered {}", status.as_u16())
}

/// `sha256=<hex of HMAC-SHA256(secret, body)>`.
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A webhook's address without its query, which may hold a credential.
fn display_url(uri: &http::Uri) -> String {
    format!(
        "{}://{}{}",
        uri.scheme_str().unwrap_or("http"),
        uri.authority().map(|a| a.as_str()).unwrap_or(""),
        uri.path()
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use axum::Router;
    use axum::extract::State;
    use axum::http::HeaderMap;
    use axum::routing::post;

    use super::*;
    use crate::ops::incidents::IncidentKind;

    /// A loopback receiver that answers the statuses given, then 200.
    #[derive(Clone, Default)]
    struct Receiver {
        answers: Arc<Mutex<Vec<u16>>>,
        got: Arc<Mutex<Vec<(HeaderMap, Bytes)>>>,
    }

    async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
        r.got.lock().expect("lock").push((headers, body));
        let next = {
            let mut answers = r.answers.lock().expect("lock");
            if answers.is_empty() {
                200
            } else {
                answers.remove(0)
            }
        };
        StatusCode::from_u16(next).expect("valid status")
    }

    async fn start_receiver(answers: Vec<u16>) -> (Receiver, http::Uri) {
        let receiver = Receiver {
            answers: Arc::new(Mutex::new(answers)),
            ..Receiver::default()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(receiver.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let url = format!("http://{addr}/hook?token=x").parse().expect("uri");
        (receiver, url)
    }

    fn incident() -> Incident {
        Incident {
            id: 9,
            kind: IncidentKind::Prevented,
            trigger: "switch_refused".into(),
            cause: "switch refused".into(),
            started_at: OffsetDateTime::UNIX_EPOCH,
            ended_at: Some(OffsetDateTime::UNIX_EPOCH),
            duration_secs: Some(0),
            failed_requests: 0,
            releases: vec!["v2".into()],
            timeline: Vec::new(),
            timeline_omitted: 0,
        }
    }

    fn cfg(url: http::Uri, attempts: u32) -> NotifyCfg {
        NotifyCfg {
            webhooks: vec![Webhook {
                url,
                secret: Some("s3cret".into()),
                ca: None,
            }],
            max_attempts: attempts,
            backoff: Duration::from_millis(10),
            timeout: Duration::from_secs(5),
        }
    }

    async fn until(cond: impl Fn() -> bool) -> bool {
        for _ in 0..200 {
            if cond() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        false
    }

    #[test]
    fn the_signature_is_the_hex_hmac_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[tokio::test]
    async fn a_refused_delivery_is_retried_and_signed() {
        // Arrange
        let (receiver, url) = start_receiver(vec![503, 500]).await;
        let events = Arc::new(EventLog::in_memory());
        let (_stop_tx, stop) = watch::channel(false);
        let (notifier, _task) = Notifier::start(cfg(url, 5), Arc::clone(&events), stop);

        // Act
        notifier.send(Notice::new(NoticeKind::PreventedIncident, incident()));

        // Assert
        assert!(until(|| receiver.got.lock().expect("lock").len() == 3).await);
        let got = receiver.got.lock().expect("lock").clone();
        for (headers, body) in &got {
            assert_eq!(headers[SIGNATURE_HEADER], sign("s3cret", body).as_str());
            assert_eq!(headers[EVENT_HEADER], "prevented_incident");
            let json: serde_json::Value = serde_json::from_slice(body).expect("json");
            assert_eq!(json["event"], "prevented_incident");
            assert_eq!(json["incident"]["id"], 9);
        }
        assert!(
            events.since(0, 10).is_empty(),
            "a delivered notice is no failure"
        );
    }

    #[tokio::test]
    async fn a_notice_that_keeps_failing_is_logged_as_an_event() {
        // Arrange
        let (receiver, url) = start_receiver(vec![500, 500, 500]).await;
        let events = Arc::new(EventLog::in_memory());
        let (_stop_tx, stop) = watch::channel(false);
        let (notifier, _task) = Notifier::start(cfg(url, 2), Arc::clone(&events), stop);

        // Act
        notifier.send(Notice::new(NoticeKind::IncidentOpen, incident()));

        // Assert
        assert!(until(|| !events.since(0, 10).is_empty()).await);
        let logged = events.since(0, 10);
        assert_eq!(logged[0].kind, EventKind::NoticeFailed);
        assert!(
            logged[0].reason.contains("2 attempts"),
            "{}",
            logged[0].reason
        );
        assert!(
            !logged[0].reason.contains("token"),
            "the query is not logged: {}",
            logged[0].reason
        );
        assert_eq!(receiver.got.lock().expect("lock").len(), 2);
    }
}
