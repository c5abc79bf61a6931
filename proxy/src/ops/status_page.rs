//! The public status page on its own listener: the release serving users,
//! availability, the error budget left, and the incidents with their
//! timelines. Read-only, no token, no secrets: incidents are worded here
//! from their kinds, never from event reasons (which carry addresses and
//! probe bodies). Server-rendered HTML that escapes every text, and the same
//! data as JSON at `/status.json`.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use time::OffsetDateTime;
use time::macros::format_description;

use crate::control::health::HealthTable;
use crate::http::routing::Router as Routing;
use crate::ops::budget::{AvailabilityView, Budget, BudgetView};
use crate::ops::incidents::{FAILURES, Incident, IncidentKind, IncidentStore, TimelineEntry};

/// Incidents shown, newest first.
pub const SHOWN: usize = 50;

#[derive(Clone)]
pub struct StatusPage {
    pub router: Arc<Routing>,
    pub health: Arc<HealthTable>,
    pub budget: Arc<Budget>,
    pub incidents: Arc<IncidentStore>,
}

/// Everything the page shows.
#[derive(Debug, Clone, Serialize)]
pub struct PublicStatus {
    #[serde(with = "time::serde::rfc3339")]
    pub generated_at: OffsetDateTime,
    /// The release label of the slot serving users, when it reported one.
    pub release: Option<String>,
    /// Whether the slot serving users passes its health checks.
    pub operational: bool,
    pub error_budget: BudgetView,
    /// Newest first.
    pub incidents: Vec<PublicIncident>,
}

/// An incident as customers see it.
#[derive(Debug, Clone, Serialize)]
pub struct PublicIncident {
    pub id: u64,
    pub kind: IncidentKind,
    pub summary: String,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub ended_at: Option<OffsetDateTime>,
    pub duration_secs: Option<u64>,
    pub failed_requests: u64,
    pub releases: Vec<String>,
    pub timeline: Vec<PublicEntry>,
    pub timeline_omitted: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct PublicEntry {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub what: String,
    pub description: String,
}

impl PublicIncident {
    pub fn of(incident: &Incident) -> PublicIncident {
        let summary = match incident.trigger.as_str() {
            // The detector's own sentence holds only counts.
            FAILURES => incident.cause.clone(),
            "guard_abort" => {
                "Automatic protection withdrew a new release after user requests to it failed"
                    .into()
            }
            "guard_rollback" => {
                "Automatic protection rolled a new release back after user requests to it failed"
                    .into()
            }
            "switch_refused" => {
                "A new release failed its checks before the switch and never reached users".into()
            }
            "canary_refused" => {
                "A new release failed its checks before it was given any traffic".into()
            }
            "rollback_refused" => {
                "A rollback was stopped: the previous release failed its checks".into()
            }
            "proxy_down" => {
                "The service could not be reached while its front server restarted".into()
            }
            other => describe(other, ""),
        };
        PublicIncident {
            id: incident.id,
            kind: incident.kind,
            summary,
            started_at: incident.started_at,
            ended_at: incident.ended_at,
            duration_secs: incident.duration_secs,
            failed_requests: incident.failed_requests,
            releases: incident.releases.clone(),
            timeline: incident
                .timeline
                .iter()
                .map(|e: &TimelineEntry| PublicEntry {
                    at: e.at,
                    what: e.what.clone(),
                    description: describe(&e.what, &e.detail),
                })
                .collect(),
            timeline_omitted: incident.timeline_omitted,
        }
    }

    fn is_open(&self) -> bool {
        self.ended_at.is_none()
    }
}

/// A public sentence for a timeline entry. Only the detector's own notes
/// (counts and durations) are shown as written.
fn describe(what: &str, detail: &str) -> String {
    let phrase = match what {
        FAILURES | "quiet" | "restart" => return detail.to_string(),
        "switch" => "Traffic was switched to a new release",
        "switch_refused" => "A switch to a new release was refused: it failed its checks",
        "rollback" => "Traffic was rolled back to the previous release",
        "rollback_refused" => "A rollback was refused: the previous release failed its checks",
        "slot_changed" => "A standby server was replaced",
        "canary_start" => "A new release started taking a share of the traffic",
        "canary_change" => "The new release's share of the traffic changed",
        "canary_refused" => {
            "A new release was refused a share of the traffic: it failed its checks"
        }
        "canary_abort" => "The new release was withdrawn",
        "promote" => "The new release took all the traffic",
        "guard_abort" => "Automatic protection withdrew the new release",
        "guard_rollback" => "Automatic protection rolled back to the previous release",
        "upstream_down" => "A server stopped answering its health checks",
        "upstream_up" => "A server answers its health checks again",
        "failover" => "Traffic moved to the standby server",
        "failback" => "Traffic moved back to the main server",
        "config_reload" => "The configuration was changed",
        "config_reload_refused" => "A configuration change was refused",
        "started" => "The service started",
        "proxy_down" => "The front server was down, then started again",
        _ => "An operational event",
    };
    phrase.to_string()
}

impl StatusPage {
    pub fn snapshot(&self) -> PublicStatus {
        let (serving, operational) = {
            let snap = self.router.load();
            let serving = snap.serving();
            (serving, snap.is_healthy(serving))
        };
        let incidents = self
            .incidents
            .all()
            .iter()
            .rev()
            .take(SHOWN)
            .map(PublicIncident::of)
            .collect();
        PublicStatus {
            generated_at: OffsetDateTime::now_utc(),
            release: self.health.get(serving).release,
            operational,
            error_budget: self.budget.view(),
            incidents,
        }
    }
}

pub fn app(page: StatusPage) -> Router {
    Router::new()
        .route("/", get(html))
        .route("/status.json", get(json))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .with_state(page)
}

async fn html(State(page): State<StatusPage>) -> Response {
    let body = render(&page.snapshot());
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

async fn json(State(page): State<StatusPage>) -> Response {
    let mut response = Json(page.snapshot()).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Text made safe for HTML content and attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn when(at: OffsetDateTime) -> String {
    at.format(format_description!(
        "[year]-[month]-[day] [hour]:[minute]:[second] UTC"
    ))
    .unwrap_or_else(|_| at.to_string())
}

/// `45 s`, `3 min 5 s`, `2 h 7 min`, `3 d 4 h`.
pub fn human_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s} s"),
        (0, 0, _) => format!("{m} min {s} s"),
        (0, _, _) => format!("{h} h {m} min"),
        _ => format!("{d} d {h} h"),
    }
}

fn percent(value: Option<f64>) -> String {
    value.map_or_else(|| "no data yet".to_string(), |p| format!("{p:.3} %"))
}

fn minutes(value: f64) -> String {
    if value.fract() == 0.0 {
        format!("{value:.0}")
    } else {
        format!("{value:.1}")
    }
}

const STYLE: &str = "body{font-family:system-ui,-apple-system,sans-serif;margin:0 auto;max-width:46rem;padding:1rem;line-height:1.45;color:#1b1b1b}\
h1{font-size:1.5rem}h2{font-size:1.2rem;margin-top:2rem}\
.state{padding:.75rem 1rem;border-radius:.5rem;font-weight:600}\
.ok{background:#e3f4e6}.bad{background:#fbe3e3}.warn{background:#fff4d6}\
table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:.3rem .4rem;border-bottom:1px solid #ddd;vertical-align:top}\
.incident{border:1px solid #ccc;border-radius:.5rem;padding:.5rem 1rem;margin:1rem 0}\
.incident h3{font-size:1rem;margin:.3rem 0}ol{padding-left:1.2rem}small{color:#555}";

/// The whole page.
pub fn render(status: &PublicStatus) -> String {
    let mut page = String::with_capacity(8 * 1024);
    let release = status.release.as_deref().unwrap_or("unknown");
    let open = status
        .incidents
        .iter()
        .any(|i| i.is_open() && i.kind == IncidentKind::Outage);
    let (class, headline) = match (status.operational, open) {
        (true, false) => ("ok", "All systems operational"),
        (true, true) => ("warn", "Incident in progress"),
        (false, _) => ("bad", "Service unavailable"),
    };
    let _ = write!(
        page,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>Service status</title><style>{STYLE}</style></head><body>\
<h1>Service status</h1>\
<p id=\"state\" class=\"state {class}\">{headline}</p>\
<p>Current release: <strong id=\"release\">{}</strong></p>",
        escape(release)
    );

    let budget = &status.error_budget;
    let _ = write!(
        page,
        "<h2>Availability</h2>\
<p><small>Share of good minutes among the minutes the service was watched. A minute is bad when \
at least {ratio} % of its requests failed or no healthy server could answer. The share of \
successful requests is shown beside it.</small></p>\
<table><tr><th>Period</th><th>Good minutes</th><th>Successful requests</th><th>Bad minutes</th></tr>{day}{month}</table>",
        ratio = escape(&minutes(budget.bad_minute_ratio * 100.0)),
        day = availability_row("Last 24 hours", "availability-24h", &budget.last_24h),
        month = availability_row("Last 30 days", "availability-30d", &budget.last_30d),
    );
    let _ = write!(
        page,
        "<h2>Error budget {year}</h2>\
<p id=\"budget\">{left} of {allowed} minutes of downtime left this year ({used} used).</p>",
        year = budget.year,
        left = escape(&minutes(budget.left_minutes)),
        allowed = escape(&minutes(budget.allowed_minutes)),
        used = budget.used_minutes,
    );
    if budget.exhausted {
        page.push_str("<p class=\"state bad\">The error budget for this year is spent.</p>");
    }

    page.push_str("<h2>Incidents</h2>");
    if status.incidents.is_empty() {
        page.push_str("<p id=\"no-incidents\">No incidents recorded.</p>");
    }
    for incident in &status.incidents {
        render_incident(&mut page, incident, status.generated_at);
    }
    let _ = writeln!(
        page,
        "<p><small>Updated {}. Times are UTC. Machine-readable: <a href=\"/status.json\">status.json</a>.</small></p></body></html>",
        escape(&when(status.generated_at))
    );
    page
}

fn availability_row(label: &str, id: &str, a: &AvailabilityView) -> String {
    format!(
        "<tr id=\"{id}\"><td>{label}</td><td>{good}</td><td>{ok}</td><td>{bad} of {observed}</td></tr>",
        id = escape(id),
        label = escape(label),
        good = escape(&percent(a.good_minutes_percent)),
        ok = escape(&percent(a.successful_requests_percent)),
        bad = a.bad_minutes,
        observed = a.observed_minutes,
    )
}

fn render_incident(page: &mut String, incident: &PublicIncident, now: OffsetDateTime) {
    let title = match (incident.kind, incident.is_open()) {
        (IncidentKind::Prevented, _) => {
            "Prevented: a broken release was stopped before users saw it"
        }
        (IncidentKind::Outage, true) => "Ongoing incident",
        (IncidentKind::Outage, false) => "Resolved incident",
    };
    let duration = match incident.duration_secs {
        Some(secs) => human_duration(secs),
        None => format!(
            "{} so far",
            human_duration((now - incident.started_at).whole_seconds().max(0) as u64)
        ),
    };
    let ended = incident
        .ended_at
        .map_or_else(|| "ongoing".to_string(), when);
    let releases = if incident.releases.is_empty() {
        "unknown".to_string()
    } else {
        incident.releases.join(", ")
    };
    let _ = write!(
        page,
        "<section class=\"incident\" id=\"incident-{id}\"><h3>#{id} {title}</h3><p>{cause}</p>\
<table><tr><th>Started</th><td>{start}</td></tr><tr><th>Ended</th><td>{ended}</td></tr>\
<tr><th>Duration</th><td>{duration}</td></tr><tr><th>Failed requests</th><td>{failed}</td></tr>\
<tr><th>Releases</th><td>{releases}</td></tr></table><ol class=\"timeline\">",
        id = incident.id,
        title = escape(title),
        cause = escape(&incident.summary),
        start = escape(&when(incident.started_at)),
        ended = escape(&ended),
        duration = escape(&duration),
        failed = incident.failed_requests,
        releases = escape(&releases),
    );
    for entry in &incident.timeline {
        let _ = write!(
            page,
            "<li><small>{}</small> <strong>{}</strong>: {}</li>",
            escape(&when(entry.at)),
            escape(&entry.what.replace('_', " ")),
            escape(&entry.description)
        );
    }
    if incident.timeline_omitted > 0 {
        let _ = write!(
            page,
            "<li>… and {} more entries</li>",
            incident.timeline_omitted
        );
    }
    page.push_str("</ol></section>");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::incidents::TimelineEntry;

    fn view() -> BudgetView {
        let window = AvailabilityView {
            observed_minutes: 100,
            bad_minutes: 1,
            good_minutes_percent: Some(99.0),
            requests: 1000,
            failed_requests: 10,
            successful_requests_percent: Some(99.0),
        };
        BudgetView {
            year: 2024,
            allowed_minutes: 20.0,
            used_minutes: 1,
            left_minutes: 19.0,
            exhausted: false,
            bad_minute_ratio: 0.05,
            last_24h: window.clone(),
            last_30d: window,
        }
    }

    #[test]
    fn escapes_every_text_it_shows() {
        assert_eq!(
            escape("<a href='x'>&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"
        );
        let status = PublicStatus {
            generated_at: OffsetDateTime::UNIX_EPOCH,
            release: Some("<script>alert(1)</script>".into()),
            operational: true,
            error_budget: view(),
            incidents: vec![PublicIncident::of(&Incident {
                id: 3,
                kind: IncidentKind::Outage,
                trigger: "failures".into(),
                cause: "7 user requests failed <b>".into(),
                started_at: OffsetDateTime::UNIX_EPOCH,
                ended_at: Some(OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(65)),
                duration_secs: Some(65),
                failed_requests: 7,
                releases: vec!["v2\"".into()],
                timeline: vec![TimelineEntry {
                    at: OffsetDateTime::UNIX_EPOCH,
                    what: "guard_abort".into(),
                    detail: "</ol>".into(),
                    seq: Some(1),
                }],
                timeline_omitted: 0,
            })],
        };

        let page = render(&status);

        assert!(!page.contains("<script>"), "{page}");
        assert!(
            !page.contains("<b>") && !page.contains("</ol></ol>"),
            "{page}"
        );
        assert!(page.contains("&lt;script&gt;"));
        assert!(page.contains("1 min 5 s"), "{page}");
        assert!(page.contains("19 of 20 minutes"), "{page}");
        assert!(page.contains("name=\"viewport\""));
        assert!(page.contains("guard abort"));
    }

    #[test]
    fn event_reasons_never_reach_the_public() {
        // Arrange: reasons as the controller and the checker write them.
        let at = OffsetDateTime::UNIX_EPOCH;
        let entry = |what: &str, detail: &str| TimelineEntry {
            at,
            what: what.into(),
            detail: detail.into(),
            seq: Some(1),
        };
        let prevented = Incident {
            id: 1,
            kind: IncidentKind::Prevented,
            trigger: "switch_refused".into(),
            cause: "switch refused: green refused: got body \"secret-internal\"".into(),
            started_at: at,
            ended_at: Some(at),
            duration_secs: Some(0),
            failed_requests: 0,
            releases: vec!["v2".into()],
            timeline: vec![entry("switch_refused", "green 10.0.0.7:8082 refused")],
            timeline_omitted: 0,
        };
        let outage = Incident {
            id: 2,
            kind: IncidentKind::Outage,
            trigger: "failures".into(),
            cause: "9 user requests failed within 60 s".into(),
            ended_at: None,
            duration_secs: None,
            failed_requests: 9,
            timeline: vec![
                entry("slot_changed", "green now points at 10.0.0.7:8082"),
                entry("upstream_down", "connect error 10.0.0.7:8081"),
            ],
            ..prevented.clone()
        };

        // Act
        let shown: Vec<_> = [prevented, outage].iter().map(PublicIncident::of).collect();
        let json = serde_json::to_string(&shown).expect("serializes");

        // Assert
        assert!(
            !json.contains("10.0.0.7") && !json.contains("secret-internal"),
            "{json}"
        );
        assert!(shown[0].summary.contains("never reached users"), "{json}");
        assert_eq!(shown[1].summary, "9 user requests failed within 60 s");
        assert_eq!(
            shown[1].timeline[1].description,
            "A server stopped answering its health checks"
        );
    }

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(human_duration(0), "0 s");
        assert_eq!(human_duration(61), "1 min 1 s");
        assert_eq!(human_duration(7260), "2 h 1 min");
        assert_eq!(human_duration(90_000), "1 d 1 h");
    }
}
