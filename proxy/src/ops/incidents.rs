//! Incidents: when users are affected (failed user requests above the
//! threshold within a minute, or the guard pulling a release back) an
//! incident opens; a quiet period without failures closes it. A refused
//! change is a prevented incident. Each records its times, failed requests,
//! releases and a timeline, is kept in `<data_dir>/incidents.json`, becomes
//! an event, and is announced by the notifier.
//!
//! `Detector` is pure (times and counts are passed in); `run` feeds it from
//! the traffic counters and the event log.

use std::collections::{BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::config::IncidentsCfg;
use crate::error::ProxyError;
use crate::ops::events::{Event, EventKind};
use crate::persist;
use crate::slot::Slot;

pub mod watcher;

/// How often the failure counters are sampled and the quiet period checked.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// The window the failure threshold is counted over.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Incidents kept (in memory, in the file, on the status page); the oldest
/// are dropped first.
pub const KEPT: usize = 200;
/// Timeline entries per incident; a longer incident notes how many it left out.
pub const TIMELINE_MAX: usize = 100;
/// Events remembered from before an incident opens, so its timeline shows
/// what led to it (a canary start, a switch).
const LEAD_UP_EVENTS: usize = 20;
const VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentKind {
    /// Users were affected.
    Outage,
    /// A broken release was stopped before users saw it.
    Prevented,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelineEntry {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// An event kind (`switch_refused`) or a detector note (`failures`).
    pub what: String,
    pub detail: String,
    /// The event's sequence number in the event log, when it is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}

impl TimelineEntry {
    fn note(at: OffsetDateTime, what: &str, detail: impl Into<String>) -> TimelineEntry {
        TimelineEntry {
            at,
            what: what.to_string(),
            detail: detail.into(),
            seq: None,
        }
    }

    fn of(event: &Event) -> TimelineEntry {
        TimelineEntry {
            at: event.at,
            what: kind_name(event.kind),
            detail: event.reason.clone(),
            seq: Some(event.seq),
        }
    }
}

fn failures() -> String {
    FAILURES.to_string()
}

/// The trigger and timeline entry of failed user requests.
pub const FAILURES: &str = "failures";

fn kind_name(kind: EventKind) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{kind:?}"))
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    /// Increasing, across restarts.
    pub id: u64,
    pub kind: IncidentKind,
    /// What opened it: `failures`, or the kind of the event that did
    /// (`guard_abort`, `switch_refused`); the status page words it from this.
    #[serde(default = "failures")]
    pub trigger: String,
    /// Why it opened, in a sentence (with internal detail: admin eyes only).
    pub cause: String,
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    /// `None` while it is open.
    #[serde(with = "time::serde::rfc3339::option")]
    pub ended_at: Option<OffsetDateTime>,
    /// Whole seconds from start to end; `None` while open.
    pub duration_secs: Option<u64>,
    /// Failed user requests counted while it was open (with the ones that
    /// opened it).
    pub failed_requests: u64,
    /// Release labels involved: of the slots that failed, and of its events.
    pub releases: Vec<String>,
    pub timeline: Vec<TimelineEntry>,
    /// Timeline entries left out past `TIMELINE_MAX`.
    #[serde(default)]
    pub timeline_omitted: u64,
}

impl Incident {
    pub fn is_open(&self) -> bool {
        self.ended_at.is_none()
    }

    fn push(&mut self, entry: TimelineEntry) {
        if self.timeline.len() < TIMELINE_MAX {
            self.timeline.push(entry);
        } else {
            self.timeline_omitted += 1;
        }
    }

    fn involve(&mut self, releases: impl IntoIterator<Item = String>) {
        let mut all: BTreeSet<String> = self.releases.drain(..).collect();
        all.extend(releases);
        self.releases = all.into_iter().collect();
    }
}

/// What the detector decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Opened(Incident),
    /// The open incident grew (more failures, another event).
    Updated(Incident),
    Closed(Incident),
    Prevented(Incident),
}

struct Open {
    incident: Incident,
    /// The last failure or guard action; `quiet` after it, the incident closes.
    last_bad: OffsetDateTime,
}

/// Decides when incidents open and close, from failure counts and events.
pub struct Detector {
    cfg: IncidentsCfg,
    /// Failures per sample over the last `WINDOW`: (time, per slot).
    window: VecDeque<(OffsetDateTime, [u64; 2])>,
    /// The last events, for the timeline of an incident that opens.
    lead_up: VecDeque<Event>,
    open: Option<Open>,
    next_id: u64,
}

impl Detector {
    /// A detector that continues after `restored` (ids go on; an incident
    /// left open by the previous process stays open until it is quiet).
    pub fn new(cfg: IncidentsCfg, restored: &[Incident], now: OffsetDateTime) -> Detector {
        let next_id = restored.iter().map(|i| i.id).max().unwrap_or(0) + 1;
        let open = restored
            .iter()
            .rev()
            .find(|i| i.is_open() && i.kind == IncidentKind::Outage)
            .map(|i| {
                let mut incident = i.clone();
                incident.push(TimelineEntry::note(
                    now,
                    "restart",
                    "the proxy restarted while this incident was open",
                ));
                Open {
                    incident,
                    last_bad: now,
                }
            });
        Detector {
            cfg,
            window: VecDeque::new(),
            lead_up: VecDeque::new(),
            open,
            next_id,
        }
    }

    pub fn open_incident(&self) -> Option<&Incident> {
        self.open.as_ref().map(|o| &o.incident)
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// One sample: failed user requests per slot since the last one, and the
    /// release each slot runs. Opens, grows or closes the incident.
    pub fn sample(
        &mut self,
        now: OffsetDateTime,
        failures: [u64; 2],
        releases: &[Option<String>; 2],
    ) -> Option<Change> {
        let new_failures: u64 = failures.iter().sum();
        let failing = Slot::ALL
            .iter()
            .filter(|s| failures[s.index()] > 0)
            .filter_map(|s| releases[s.index()].clone());
        if let Some(open) = self.open.as_mut() {
            if new_failures > 0 {
                open.last_bad = now;
                open.incident.failed_requests += new_failures;
                open.incident.involve(failing);
                return Some(Change::Updated(open.incident.clone()));
            }
            if now - open.last_bad >= self.cfg.quiet {
                return Some(self.close(now));
            }
            return None;
        }
        if new_failures == 0 {
            self.prune(now);
            return None;
        }
        self.window.push_back((now, failures));
        self.prune(now);
        let in_window: u64 = self.window.iter().map(|(_, f)| f.iter().sum::<u64>()).sum();
        if in_window < self.cfg.failure_threshold {
            return None;
        }
        let mut involved = [false; 2];
        for (_, f) in &self.window {
            for slot in Slot::ALL {
                involved[slot.index()] |= f[slot.index()] > 0;
            }
        }
        let releases = Slot::ALL
            .iter()
            .filter(|s| involved[s.index()])
            .filter_map(|s| releases[s.index()].clone());
        let cause = format!(
            "{in_window} user requests failed within {} s",
            WINDOW.as_secs()
        );
        Some(self.start(
            now,
            cause.clone(),
            in_window,
            releases,
            TimelineEntry::note(now, FAILURES, cause),
        ))
    }

    /// The proxy itself was not serving from `event`'s gap start to its
    /// time (a `proxy_down` event): an outage that opened and closed while
    /// nothing watched, recorded as both at once.
    pub fn downtime(&mut self, event: &Event, from: OffsetDateTime) -> [Change; 2] {
        let id = self.take_id();
        let mut incident = Incident {
            id,
            kind: IncidentKind::Outage,
            trigger: kind_name(event.kind),
            cause: event.reason.clone(),
            started_at: from,
            ended_at: None,
            duration_secs: None,
            failed_requests: 0,
            releases: Vec::new(),
            timeline: vec![TimelineEntry::of(event)],
            timeline_omitted: 0,
        };
        let opened = Change::Opened(incident.clone());
        incident.ended_at = Some(event.at);
        incident.duration_secs = Some((event.at - from).whole_seconds().max(0).unsigned_abs());
        [opened, Change::Closed(incident)]
    }

    /// One recorded event: a guard action opens (or extends) an incident, a
    /// refused change is a prevented one, anything else joins the timeline
    /// of the open incident.
    pub fn event(&mut self, event: &Event) -> Option<Change> {
        match event.kind {
            // The detector's own events and the notifier's are not news to it.
            EventKind::IncidentOpen
            | EventKind::IncidentClose
            | EventKind::PreventedIncident
            | EventKind::NoticeFailed
            // `downtime` records it.
            | EventKind::ProxyDown => return None,
            _ => {}
        }
        let change = match event.kind {
            EventKind::SwitchRefused | EventKind::CanaryRefused | EventKind::RollbackRefused => {
                let id = self.take_id();
                let mut prevented = Incident {
                    id,
                    kind: IncidentKind::Prevented,
                    trigger: kind_name(event.kind),
                    cause: format!(
                        "{}: {}",
                        kind_name(event.kind).replace('_', " "),
                        event.reason
                    ),
                    started_at: event.at,
                    ended_at: Some(event.at),
                    duration_secs: Some(0),
                    failed_requests: 0,
                    releases: Vec::new(),
                    timeline: vec![TimelineEntry::of(event)],
                    timeline_omitted: 0,
                };
                prevented.involve(event.releases.iter().cloned());
                if let Some(open) = self.open.as_mut() {
                    open.incident.push(TimelineEntry::of(event));
                }
                Some(Change::Prevented(prevented))
            }
            EventKind::GuardAbort | EventKind::GuardRollback => match self.open.as_mut() {
                Some(open) => {
                    open.last_bad = event.at.max(open.last_bad);
                    open.incident.push(TimelineEntry::of(event));
                    open.incident.involve(event.releases.iter().cloned());
                    Some(Change::Updated(open.incident.clone()))
                }
                None => {
                    let failed: u64 = self.window.iter().map(|(_, f)| f.iter().sum::<u64>()).sum();
                    let cause = format!("the guard pulled a release back: {}", event.reason);
                    Some(self.start(
                        event.at,
                        cause,
                        failed,
                        event.releases.iter().cloned(),
                        TimelineEntry::of(event),
                    ))
                }
            },
            _ => match self.open.as_mut() {
                Some(open) => {
                    open.incident.push(TimelineEntry::of(event));
                    open.incident.involve(event.releases.iter().cloned());
                    Some(Change::Updated(open.incident.clone()))
                }
                None => None,
            },
        };
        if self.lead_up.len() == LEAD_UP_EVENTS {
            self.lead_up.pop_front();
        }
        self.lead_up.push_back(event.clone());
        change
    }

    fn start(
        &mut self,
        now: OffsetDateTime,
        cause: String,
        failed: u64,
        releases: impl IntoIterator<Item = String>,
        opening: TimelineEntry,
    ) -> Change {
        let id = self.take_id();
        let mut incident = Incident {
            id,
            kind: IncidentKind::Outage,
            trigger: opening.what.clone(),
            cause,
            started_at: now,
            ended_at: None,
            duration_secs: None,
            failed_requests: failed,
            releases: Vec::new(),
            timeline: Vec::new(),
            timeline_omitted: 0,
        };
        let since = now - WINDOW;
        for event in self.lead_up.iter().filter(|e| e.at >= since) {
            incident.push(TimelineEntry::of(event));
            incident.involve(event.releases.iter().cloned());
        }
        incident.push(opening);
        incident.involve(releases);
        self.open = Some(Open {
            incident: incident.clone(),
            last_bad: now,
        });
        Change::Opened(incident)
    }

    fn close(&mut self, now: OffsetDateTime) -> Change {
        let Open { mut incident, .. } = self
            .open
            .take()
            .expect("close is called on an open incident");
        incident.push(TimelineEntry::note(
            now,
            "quiet",
            format!(
                "no failed user request for {} s: closed",
                self.cfg.quiet.as_secs_f64()
            ),
        ));
        incident.ended_at = Some(now);
        incident.duration_secs = Some((now - incident.started_at).whole_seconds().max(0) as u64);
        // The failures that opened it are its own; they must not open the next.
        self.window.clear();
        Change::Closed(incident)
    }

    fn prune(&mut self, now: OffsetDateTime) {
        let since = now - WINDOW;
        while self.window.front().is_some_and(|(at, _)| *at <= since) {
            self.window.pop_front();
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Persisted {
    version: u32,
    incidents: Vec<Incident>,
}

/// The incidents, oldest first, shared by the detector's task and readers.
pub struct IncidentStore {
    path: PathBuf,
    /// A std mutex: held for a copy or an update, never across an await.
    incidents: Mutex<Vec<Incident>>,
}

impl IncidentStore {
    /// Loads `path` (or starts empty). A corrupt file stops the start: the
    /// incident history is what the customer report is made from.
    pub async fn open(path: &Path) -> Result<IncidentStore, ProxyError> {
        let persisted: Option<Persisted> =
            persist::load(path, VERSION, "fix it, or move it away to start over").await?;
        Ok(IncidentStore {
            path: path.to_path_buf(),
            incidents: Mutex::new(persisted.map(|p| p.incidents).unwrap_or_default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Incident>> {
        self.incidents
            .lock()
            .expect("incident lock is never poisoned: no panics under it")
    }

    /// Oldest first.
    pub fn all(&self) -> Vec<Incident> {
        self.lock().clone()
    }

    /// Adds or replaces (by id) an incident.
    pub fn upsert(&self, incident: Incident) {
        let mut all = self.lock();
        match all.iter_mut().rev().find(|i| i.id == incident.id) {
            Some(existing) => *existing = incident,
            None => {
                all.push(incident);
                if all.len() > KEPT {
                    let extra = all.len() - KEPT;
                    all.drain(..extra);
                }
            }
        }
    }

    /// Writes the file atomically, off the runtime.
    pub async fn save(&self) -> Result<(), ProxyError> {
        let persisted = Persisted {
            version: VERSION,
            incidents: self.all(),
        };
        persist::save(&self.path, &persisted).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_717_200_000;

    fn at(secs: f64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(T0).expect("valid time")
            + time::Duration::seconds_f64(secs)
    }

    fn cfg() -> IncidentsCfg {
        IncidentsCfg {
            failure_threshold: 5,
            quiet: Duration::from_secs(60),
        }
    }

    fn releases() -> [Option<String>; 2] {
        [Some("v1".into()), Some("v2".into())]
    }

    fn event(kind: EventKind, secs: f64, seq: u64) -> Event {
        let mut e = Event::new(kind, format!("{kind:?} happened"))
            .releases([Some("v1".to_string()), Some("v2".to_string())]);
        e.at = at(secs);
        e.seq = seq;
        e
    }

    #[test]
    fn failures_above_the_threshold_within_a_minute_open_and_a_quiet_minute_closes() {
        // Arrange
        let mut d = Detector::new(cfg(), &[], at(0.0));

        // Act / Assert: 4 failures spread over more than a minute open nothing.
        assert_eq!(d.sample(at(0.0), [2, 0], &releases()), None);
        assert_eq!(d.sample(at(61.0), [0, 2], &releases()), None);
        assert_eq!(d.sample(at(62.0), [0, 0], &releases()), None);
        let Some(Change::Opened(opened)) = d.sample(at(63.0), [0, 3], &releases()) else {
            panic!("5 failures within a minute open an incident");
        };
        assert_eq!(opened.failed_requests, 5);
        assert_eq!(opened.releases, vec!["v2".to_string()]);
        assert_eq!(opened.id, 1);

        assert!(matches!(
            d.sample(at(100.0), [1, 0], &releases()),
            Some(Change::Updated(_))
        ));
        assert_eq!(
            d.sample(at(159.0), [0, 0], &releases()),
            None,
            "not quiet for a minute yet"
        );
        let Some(Change::Closed(closed)) = d.sample(at(160.0), [0, 0], &releases()) else {
            panic!("a quiet minute closes it");
        };
        assert_eq!(closed.failed_requests, 6);
        assert_eq!(closed.releases, vec!["v1".to_string(), "v2".to_string()]);
        assert_eq!(closed.duration_secs, Some(97));
        assert_eq!(closed.ended_at, Some(at(160.0)));
        assert_eq!(
            closed.timeline.last().map(|e| e.what.as_str()),
            Some("quiet")
        );
        assert_eq!(
            d.sample(at(161.0), [1, 0], &releases()),
            None,
            "the old failures do not reopen it"
        );
    }

    #[test]
    fn a_guard_action_opens_an_incident_with_what_led_to_it() {
        // Arrange
        let mut d = Detector::new(cfg(), &[], at(0.0));
        assert_eq!(d.event(&event(EventKind::CanaryStart, 1.0, 7)), None);
        assert_eq!(d.sample(at(2.0), [0, 3], &releases()), None);

        // Act
        let Some(Change::Opened(opened)) = d.event(&event(EventKind::GuardAbort, 3.0, 8)) else {
            panic!("a guard abort opens an incident");
        };

        // Assert
        assert_eq!(opened.failed_requests, 3);
        let what: Vec<_> = opened
            .timeline
            .iter()
            .map(|e| (e.what.as_str(), e.seq))
            .collect();
        assert_eq!(
            what,
            vec![("canary_start", Some(7)), ("guard_abort", Some(8))]
        );
        assert!(opened.cause.contains("guard"), "{}", opened.cause);
    }

    #[test]
    fn a_refused_switch_is_a_prevented_incident_and_own_events_are_ignored() {
        let mut d = Detector::new(cfg(), &[], at(0.0));
        let Some(Change::Prevented(prevented)) = d.event(&event(EventKind::SwitchRefused, 1.0, 3))
        else {
            panic!("a refusal is a prevented incident");
        };
        assert_eq!(prevented.kind, IncidentKind::Prevented);
        assert_eq!(prevented.failed_requests, 0);
        assert_eq!(prevented.duration_secs, Some(0));
        assert_eq!(prevented.releases, vec!["v1".to_string(), "v2".to_string()]);
        assert_eq!(d.event(&event(EventKind::PreventedIncident, 1.0, 4)), None);
        assert_eq!(
            d.event(&event(EventKind::Switch, 2.0, 5)),
            None,
            "no incident open"
        );
    }

    #[test]
    fn an_incident_left_open_resumes_and_ids_continue() {
        // Arrange: a previous process opened incident 4.
        let mut d = Detector::new(cfg(), &[], at(0.0));
        d.next_id = 4;
        d.sample(at(0.0), [5, 0], &releases());
        let left_open = d.open_incident().cloned().expect("open");

        // Act
        let mut resumed = Detector::new(cfg(), &[left_open], at(10.0));

        // Assert
        assert_eq!(resumed.open_incident().map(|i| i.id), Some(4));
        assert_eq!(resumed.sample(at(69.0), [0, 0], &releases()), None);
        let Some(Change::Closed(closed)) = resumed.sample(at(70.0), [0, 0], &releases()) else {
            panic!("quiet since the restart closes it");
        };
        assert!(closed.timeline.iter().any(|e| e.what == "restart"));
        let Some(Change::Prevented(next)) =
            resumed.event(&event(EventKind::CanaryRefused, 71.0, 1))
        else {
            panic!("prevented");
        };
        assert_eq!(next.id, 5);
    }

    #[tokio::test]
    async fn the_store_keeps_incidents_across_a_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("incidents.json");
        let store = IncidentStore::open(&path).await.expect("open");
        let mut d = Detector::new(cfg(), &[], at(0.0));
        let Some(Change::Prevented(p)) = d.event(&event(EventKind::SwitchRefused, 1.0, 1)) else {
            panic!("prevented");
        };
        store.upsert(p.clone());
        store.save().await.expect("save");

        let reopened = IncidentStore::open(&path).await.expect("reopen");
        assert_eq!(reopened.all(), vec![p]);
    }
}
