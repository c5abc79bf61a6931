//! How a change to each key of the configuration takes effect in a running
//! proxy: live, at the next restart, or never by the file once the routing
//! state exists. `Config::reconcile` names every field of the typed config,
//! so a field added without saying how a reload applies it does not compile.

use std::net::SocketAddr;

use serde::Serialize;

use super::{
    CanaryCfg, ClusterCfg, Config, Forwarding, Gate, GuardCfg, Health, IncidentsCfg, Limits,
    NotifyCfg, SlaCfg, SlotTls, Timeouts, TlsCfg,
};
use crate::slot::Slot;

/// How a change to one key takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "apply", rename_all = "snake_case")]
pub(crate) enum Apply {
    /// Read where it is used (the routing policy, the gate, the guard's
    /// verdicts): a reload applies it to new requests and the next gate or
    /// guard tick.
    Live,
    /// Read once when the proxy starts (a listener, a background task, the
    /// upstream pools, the data directory): a reload applies it by a
    /// takeover (`via`), a fresh process taking the listeners over.
    Restart {
        #[serde(skip_serializing_if = "Option::is_none")]
        via: Option<&'static str>,
    },
    /// Seeds the routing state on a start without a state file only; from
    /// then on the state file decides, and `via` changes it.
    Seed { via: &'static str },
}

/// One key whose value in the file differs from the running one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct Change {
    /// The dotted key as written in the file, e.g. `limits.max_connections`.
    pub(crate) key: &'static str,
    #[serde(flatten)]
    pub(crate) apply: Apply,
}

/// What a reload makes of a valid file.
#[derive(Debug)]
pub(crate) struct Reconciled {
    /// The running config with the file's live keys: what is in effect
    /// after the reload, so a later reload still names what waits.
    pub(crate) config: Config,
    /// Every changed key, in the order of the reference config.
    pub(crate) changes: Vec<Change>,
}

const LIVE: Apply = Apply::Live;
const RESTART: Apply = Apply::Restart { via: None };
const SWITCH: Apply = Apply::Seed {
    via: "POST /switch",
};
const PUT_SLOT: Apply = Apply::Seed {
    via: "PUT /slots/{slot}",
};

/// The key a change of a slot's members is reported under: `addrs` when
/// either side is a pool, `addr` for one upstream as before.
fn members_key(slot: Slot, running: &[SocketAddr], file: &[SocketAddr]) -> &'static str {
    let pool = running.len() > 1 || file.len() > 1;
    match (slot, pool) {
        (Slot::Blue, false) => "slots.blue.addr",
        (Slot::Blue, true) => "slots.blue.addrs",
        (Slot::Green, false) => "slots.green.addr",
        (Slot::Green, true) => "slots.green.addrs",
    }
}

impl Config {
    /// Splits `file` into what a running proxy takes now and what waits.
    pub(crate) fn reconcile(&self, file: Config) -> Reconciled {
        let run = self;
        let mut d = Diff::default();
        // No `..` in these patterns: every field must say how it is applied.
        let Config {
            data_dir,
            public,
            public_tls,
            admin,
            status,
            forwarding,
            canary,
            guard,
            incidents,
            sla,
            notify,
            token_file,
            initial_active,
            slot_addrs,
            slot_tls,
            timeouts,
            gate,
            health,
            limits,
            scenarios,
            tls,
            cluster,
        } = file;
        let [blue, green] = slot_addrs;
        let [blue_tls, green_tls] = slot_tls;
        let Timeouts {
            connect,
            response_header,
            upstream_idle,
            upstream_read,
            shutdown_grace,
        } = timeouts;
        let Health {
            path,
            interval: health_interval,
            timeout: health_timeout,
            fall,
            rise,
            passive_fall,
        } = health;
        let Limits {
            header_read_timeout,
            idle_timeout,
            body_timeout,
            max_header_bytes,
            max_body_bytes,
            max_connections,
            tls_handshake_timeout,
        } = limits;
        let Forwarding {
            trusted_hops,
            retry,
            retry_writes,
        } = forwarding;
        let CanaryCfg {
            cookie,
            preview_header,
            preview_cookie,
            preview_secret,
        } = canary;
        let GuardCfg {
            window,
            interval: guard_interval,
            max_failure_ratio,
            margin,
            min_requests,
            bake,
            answer_from_stable,
        } = guard;
        let IncidentsCfg {
            failure_threshold,
            quiet,
        } = incidents;
        let SlaCfg {
            allowed_downtime,
            bad_minute_ratio,
        } = sla;
        let NotifyCfg {
            webhooks,
            max_attempts,
            backoff,
            timeout: notify_timeout,
        } = notify;
        let TlsCfg {
            certificates,
            redirect_http,
            hsts_max_age,
            loaded,
        } = tls;
        let Gate {
            passes,
            deadline,
            request_timeout,
        } = gate;

        // Fields in the order of the reference config, so are the changes.
        let config = Config {
            data_dir: d.key("data_dir", RESTART, &run.data_dir, data_dir),
            public: d.key("listen.public", RESTART, &run.public, public),
            public_tls: d.key("listen.public_tls", RESTART, &run.public_tls, public_tls),
            admin: d.key("listen.admin", RESTART, &run.admin, admin),
            status: d.key("listen.status", RESTART, &run.status, status),
            token_file: d.key("admin.token_file", RESTART, &run.token_file, token_file),
            initial_active: d.key("slots.active", SWITCH, &run.initial_active, initial_active),
            slot_addrs: [
                d.key(
                    members_key(Slot::Blue, &run.slot_addrs[Slot::Blue.index()], &blue),
                    PUT_SLOT,
                    &run.slot_addrs[Slot::Blue.index()],
                    blue,
                ),
                d.key(
                    members_key(Slot::Green, &run.slot_addrs[Slot::Green.index()], &green),
                    PUT_SLOT,
                    &run.slot_addrs[Slot::Green.index()],
                    green,
                ),
            ],
            // The upstream pools, the prober and the health checks take a
            // slot's connector when its upstream is made.
            slot_tls: [
                d.slot_tls(
                    ["slots.blue.tls", "slots.blue.server_name", "slots.blue.ca"],
                    &run.slot_tls[Slot::Blue.index()],
                    blue_tls,
                ),
                d.slot_tls(
                    [
                        "slots.green.tls",
                        "slots.green.server_name",
                        "slots.green.ca",
                    ],
                    &run.slot_tls[Slot::Green.index()],
                    green_tls,
                ),
            ],
            // The prober and the upstream pools take these when they are
            // made; the routing policy reads the response timeout per request.
            timeouts: Timeouts {
                connect: d.key(
                    "timeouts.connect_ms",
                    RESTART,
                    &run.timeouts.connect,
                    connect,
                ),
                response_header: d.key(
                    "timeouts.response_header_ms",
                    LIVE,
                    &run.timeouts.response_header,
                    response_header,
                ),
                upstream_idle: d.key(
                    "timeouts.upstream_idle_ms",
                    RESTART,
                    &run.timeouts.upstream_idle,
                    upstream_idle,
                ),
                upstream_read: d.key(
                    "timeouts.upstream_read_ms",
                    RESTART,
                    &run.timeouts.upstream_read,
                    upstream_read,
                ),
                shutdown_grace: d.key(
                    "timeouts.shutdown_grace_ms",
                    RESTART,
                    &run.timeouts.shutdown_grace,
                    shutdown_grace,
                ),
            },
            // The health checker takes its settings at start; the gate's
            // fallback scenario uses the same path, so the two stay one.
            health: Health {
                path: d.key("health.path", RESTART, &run.health.path, path),
                interval: d.key(
                    "health.interval_ms",
                    RESTART,
                    &run.health.interval,
                    health_interval,
                ),
                timeout: d.key(
                    "health.timeout_ms",
                    RESTART,
                    &run.health.timeout,
                    health_timeout,
                ),
                fall: d.key("health.fall", RESTART, &run.health.fall, fall),
                rise: d.key("health.rise", RESTART, &run.health.rise, rise),
                passive_fall: d.key(
                    "health.passive_fall",
                    RESTART,
                    &run.health.passive_fall,
                    passive_fall,
                ),
            },
            // The public listener takes these at start; the routing policy
            // reads the body's limits per request.
            limits: Limits {
                header_read_timeout: d.key(
                    "limits.header_read_timeout_ms",
                    RESTART,
                    &run.limits.header_read_timeout,
                    header_read_timeout,
                ),
                idle_timeout: d.key(
                    "limits.idle_timeout_ms",
                    RESTART,
                    &run.limits.idle_timeout,
                    idle_timeout,
                ),
                body_timeout: d.key(
                    "limits.body_timeout_ms",
                    LIVE,
                    &run.limits.body_timeout,
                    body_timeout,
                ),
                max_header_bytes: d.key(
                    "limits.max_header_bytes",
                    RESTART,
                    &run.limits.max_header_bytes,
                    max_header_bytes,
                ),
                max_body_bytes: d.key(
                    "limits.max_body_bytes",
                    LIVE,
                    &run.limits.max_body_bytes,
                    max_body_bytes,
                ),
                max_connections: d.key(
                    "limits.max_connections",
                    RESTART,
                    &run.limits.max_connections,
                    max_connections,
                ),
                tls_handshake_timeout: d.key(
                    "limits.tls_handshake_timeout_ms",
                    RESTART,
                    &run.limits.tls_handshake_timeout,
                    tls_handshake_timeout,
                ),
            },
            forwarding: Forwarding {
                trusted_hops: d.key(
                    "forwarding.trusted_hops",
                    LIVE,
                    &run.forwarding.trusted_hops,
                    trusted_hops,
                ),
                retry: d.key("forwarding.retry", LIVE, &run.forwarding.retry, retry),
                retry_writes: d.key(
                    "forwarding.retry_writes",
                    LIVE,
                    &run.forwarding.retry_writes,
                    retry_writes,
                ),
            },
            canary: CanaryCfg {
                cookie: d.key("canary.cookie", LIVE, &run.canary.cookie, cookie),
                preview_header: d.key(
                    "canary.preview_header",
                    LIVE,
                    &run.canary.preview_header,
                    preview_header,
                ),
                preview_cookie: d.key(
                    "canary.preview_cookie",
                    LIVE,
                    &run.canary.preview_cookie,
                    preview_cookie,
                ),
                preview_secret: d.key(
                    "canary.preview_secret",
                    LIVE,
                    &run.canary.preview_secret,
                    preview_secret,
                ),
            },
            // Each guard tick reads the rules; the ticker's period is set
            // when the guard task starts.
            guard: GuardCfg {
                window: d.key("guard.window_ms", LIVE, &run.guard.window, window),
                interval: d.key(
                    "guard.interval_ms",
                    RESTART,
                    &run.guard.interval,
                    guard_interval,
                ),
                max_failure_ratio: d.key(
                    "guard.max_failure_ratio",
                    LIVE,
                    &run.guard.max_failure_ratio,
                    max_failure_ratio,
                ),
                margin: d.key("guard.margin", LIVE, &run.guard.margin, margin),
                min_requests: d.key(
                    "guard.min_requests",
                    LIVE,
                    &run.guard.min_requests,
                    min_requests,
                ),
                bake: d.key("guard.bake_ms", LIVE, &run.guard.bake, bake),
                // Read per request from the routing policy.
                answer_from_stable: d.key(
                    "guard.answer_from_stable",
                    LIVE,
                    &run.guard.answer_from_stable,
                    answer_from_stable,
                ),
            },
            // The incident detector, the budget and the notifier are started
            // with their settings.
            incidents: IncidentsCfg {
                failure_threshold: d.key(
                    "incidents.failure_threshold",
                    RESTART,
                    &run.incidents.failure_threshold,
                    failure_threshold,
                ),
                quiet: d.key("incidents.quiet_ms", RESTART, &run.incidents.quiet, quiet),
            },
            sla: SlaCfg {
                allowed_downtime: d.key(
                    "sla.allowed_downtime",
                    RESTART,
                    &run.sla.allowed_downtime,
                    allowed_downtime,
                ),
                bad_minute_ratio: d.key(
                    "sla.bad_minute_ratio",
                    RESTART,
                    &run.sla.bad_minute_ratio,
                    bad_minute_ratio,
                ),
            },
            notify: NotifyCfg {
                max_attempts: d.key(
                    "notify.max_attempts",
                    RESTART,
                    &run.notify.max_attempts,
                    max_attempts,
                ),
                backoff: d.key("notify.backoff_ms", RESTART, &run.notify.backoff, backoff),
                timeout: d.key(
                    "notify.timeout_ms",
                    RESTART,
                    &run.notify.timeout,
                    notify_timeout,
                ),
                webhooks: d.key("notify.webhook", RESTART, &run.notify.webhooks, webhooks),
            },
            // Each gate run reads these; the prober's request timeout is
            // set when the prober is made, at start.
            gate: Gate {
                passes: d.key("gate.passes", LIVE, &run.gate.passes, passes),
                deadline: d.key("gate.deadline_ms", LIVE, &run.gate.deadline, deadline),
                request_timeout: d.key(
                    "gate.request_timeout_ms",
                    RESTART,
                    &run.gate.request_timeout,
                    request_timeout,
                ),
            },
            scenarios: d.key("scenario", LIVE, &run.scenarios, scenarios),
            // New handshakes take the policy's certificates, rebuilt by the reload.
            tls: TlsCfg {
                certificates: d.key("tls.certificate", LIVE, &run.tls.certificates, certificates),
                redirect_http: d.key(
                    "tls.redirect_http",
                    LIVE,
                    &run.tls.redirect_http,
                    redirect_http,
                ),
                hsts_max_age: d.key(
                    "tls.hsts_max_age",
                    LIVE,
                    &run.tls.hsts_max_age,
                    hsts_max_age,
                ),
                // Read again by every load: new files at the same paths are
                // new certificates, so the file's always win.
                loaded,
            },
            // The store is connected to, and the name announced, at start.
            cluster: {
                let running = run.cluster.as_ref();
                let store = d.key(
                    "cluster.store",
                    RESTART,
                    &running.map(|c| c.store.clone()),
                    cluster.as_ref().map(|c| c.store.clone()),
                );
                let name = d.key(
                    "cluster.name",
                    RESTART,
                    &running.and_then(|c| c.name.clone()),
                    cluster.and_then(|c| c.name),
                );
                store.map(|store| ClusterCfg { store, name })
            },
        };
        Reconciled {
            config,
            changes: d.changes,
        }
    }
}

/// The changes found so far.
#[derive(Default)]
struct Diff {
    changes: Vec<Change>,
}

impl Diff {
    /// The value in effect after the reload: the file's when it is live or
    /// unchanged, the running one otherwise.
    fn key<T: PartialEq + Clone>(
        &mut self,
        key: &'static str,
        apply: Apply,
        running: &T,
        file: T,
    ) -> T {
        if *running == file {
            return file;
        }
        self.changes.push(Change { key, apply });
        match apply {
            Apply::Live => file,
            Apply::Restart { .. } | Apply::Seed { .. } => running.clone(),
        }
    }

    /// A slot's TLS keys (`tls`, `server_name`, `ca`, named in `keys`):
    /// each change waits for a restart, and the running value stays whole
    /// until then. A CA file is compared by its path: new contents at the
    /// same path are read by the next start.
    fn slot_tls(
        &mut self,
        keys: [&'static str; 3],
        running: &Option<SlotTls>,
        file: Option<SlotTls>,
    ) -> Option<SlotTls> {
        let before = self.changes.len();
        let name = |tls: &Option<SlotTls>| tls.as_ref().and_then(|t| t.server_name.clone());
        let ca = |tls: &Option<SlotTls>| tls.as_ref().and_then(|t| t.ca.clone());
        self.key(keys[0], RESTART, &running.is_some(), file.is_some());
        self.key(keys[1], RESTART, &name(running), name(&file));
        self.key(keys[2], RESTART, &ca(running), ca(&file));
        if self.changes.len() == before {
            file
        } else {
            running.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    const REFERENCE: &str = include_str!("../../../config/proxy.toml");

    /// Each key of the file, a value other than its default, and how a
    /// reload must apply a change to it.
    const CASES: &[(&str, &str, Apply)] = &[
        ("data_dir", "\"elsewhere\"", RESTART),
        ("listen.public", "\"127.0.0.1:1\"", RESTART),
        ("listen.admin", "\"127.0.0.1:1\"", RESTART),
        ("listen.status", "\"127.0.0.1:1\"", RESTART),
        ("listen.public_tls", "\"127.0.0.1:2\"", RESTART),
        ("admin.token_file", "\"token\"", RESTART),
        ("slots.active", "\"green\"", SWITCH),
        ("slots.blue.addr", "\"127.0.0.1:1\"", PUT_SLOT),
        ("slots.green.addr", "\"127.0.0.1:1\"", PUT_SLOT),
        (
            "slots.blue.addrs",
            "[\"127.0.0.1:1\", \"127.0.0.2:1\"]",
            PUT_SLOT,
        ),
        (
            "slots.green.addrs",
            "[\"127.0.0.1:1\", \"127.0.0.2:1\"]",
            PUT_SLOT,
        ),
        ("slots.blue.tls", "true", RESTART),
        ("slots.blue.server_name", "\"blue.test\"", RESTART),
        ("slots.blue.ca", "\"ca.pem\"", RESTART),
        ("slots.green.tls", "true", RESTART),
        ("slots.green.server_name", "\"green.test\"", RESTART),
        ("slots.green.ca", "\"ca.pem\"", RESTART),
        ("timeouts.connect_ms", "7", RESTART),
        ("timeouts.response_header_ms", "7", LIVE),
        ("timeouts.upstream_idle_ms", "7", RESTART),
        ("timeouts.upstream_read_ms", "7", RESTART),
        ("timeouts.shutdown_grace_ms", "7", RESTART),
        ("health.path", "\"/up\"", RESTART),
        ("health.interval_ms", "7", RESTART),
        ("health.timeout_ms", "7", RESTART),
        ("health.fall", "7", RESTART),
        ("health.rise", "7", RESTART),
        ("health.passive_fall", "7", RESTART),
        ("limits.header_read_timeout_ms", "7", RESTART),
        ("limits.idle_timeout_ms", "7", RESTART),
        ("limits.body_timeout_ms", "7", LIVE),
        ("limits.max_header_bytes", "7000", RESTART),
        ("limits.max_body_bytes", "7", LIVE),
        ("limits.max_connections", "7", RESTART),
        ("limits.tls_handshake_timeout_ms", "7", RESTART),
        ("forwarding.trusted_hops", "[\"10.0.0.1\"]", LIVE),
        ("forwarding.retry", "false", LIVE),
        ("forwarding.retry_writes", "true", LIVE),
        ("canary.cookie", "\"other\"", LIVE),
        ("canary.preview_header", "\"x-other\"", LIVE),
        ("canary.preview_cookie", "\"other\"", LIVE),
        ("canary.preview_secret", "\"0123456789abcdef\"", LIVE),
        ("guard.window_ms", "7", LIVE),
        ("guard.interval_ms", "7", RESTART),
        ("guard.max_failure_ratio", "0.5", LIVE),
        ("guard.margin", "0.5", LIVE),
        ("guard.min_requests", "7", LIVE),
        ("guard.bake_ms", "7", LIVE),
        ("guard.answer_from_stable", "false", LIVE),
        ("incidents.failure_threshold", "7", RESTART),
        ("incidents.quiet_ms", "7", RESTART),
        ("sla.allowed_downtime", "\"7m\"", RESTART),
        ("sla.bad_minute_ratio", "0.5", RESTART),
        ("notify.max_attempts", "7", RESTART),
        ("notify.backoff_ms", "7", RESTART),
        ("notify.timeout_ms", "7", RESTART),
        (
            "notify.webhook",
            "[{ url = \"http://127.0.0.1:1/\" }]",
            RESTART,
        ),
        ("tls.redirect_http", "true", LIVE),
        ("tls.hsts_max_age", "7", LIVE),
        (
            "tls.certificate",
            "[{ cert = \"c.pem\", key = \"k.pem\" }]",
            LIVE,
        ),
        ("gate.passes", "7", LIVE),
        ("gate.deadline_ms", "7", LIVE),
        ("gate.request_timeout_ms", "7", RESTART),
        (
            "scenario",
            "[{ name = \"s\", step = [{ name = \"t\", path = \"/\" }] }]",
            LIVE,
        ),
        ("cluster.store", "\"postgres://p@127.0.0.1:1/db\"", RESTART),
        ("cluster.name", "\"other\"", RESTART),
    ];

    /// A file that sets `key` to `value` and leaves the rest to the
    /// defaults: the key is written as the case names it, so a case whose
    /// key is not the file's fails to parse.
    fn setting(key: &str, value: &str) -> String {
        match key.rsplit_once('.') {
            Some((table, name)) => format!("[{table}]\n{name} = {value}\n"),
            None => format!("{key} = {value}\n"),
        }
    }

    /// The running file of a case: `[tls]` only means something with a TLS
    /// listener, and that needs a certificate; a slot's `server_name` and
    /// `ca` only with its `tls`.
    fn running_text(key: &str) -> String {
        if key == "cluster.name" {
            format!("[cluster]\n{CLUSTER_STORE}")
        } else if key.starts_with("tls.") || key == "listen.public_tls" {
            format!("{TLS_LISTENER}[tls]\n{TLS_CERTIFICATE}")
        } else if let Some(table) = slot_tls_table(key) {
            format!("[{table}]\ntls = true\n")
        } else {
            String::new()
        }
    }

    /// `slots.blue` for `slots.blue.server_name` and `slots.blue.ca`.
    fn slot_tls_table(key: &str) -> Option<&str> {
        key.strip_suffix(".server_name")
            .or_else(|| key.strip_suffix(".ca"))
            .filter(|table| table.starts_with("slots."))
    }

    /// The reloaded file of a case: the running one with the case's key set.
    fn file_text(key: &str, value: &str) -> String {
        match key.strip_prefix("tls.") {
            Some("certificate") => format!("{TLS_LISTENER}[tls]\ncertificate = {value}\n"),
            Some(name) => format!("{TLS_LISTENER}[tls]\n{TLS_CERTIFICATE}{name} = {value}\n"),
            None if key == "cluster.name" => {
                format!("[cluster]\n{CLUSTER_STORE}name = {value}\n")
            }
            None if key == "listen.public_tls" => {
                format!("[listen]\npublic_tls = {value}\n[tls]\n{TLS_CERTIFICATE}")
            }
            None if slot_tls_table(key).is_some() => {
                let name = key.rsplit('.').next().unwrap_or(key);
                format!("{}{name} = {value}\n", running_text(key))
            }
            None => setting(key, value),
        }
    }

    const CLUSTER_STORE: &str = "store = \"postgres://p@127.0.0.1:1/db\"\n";
    const TLS_LISTENER: &str = "[listen]\npublic_tls = \"127.0.0.1:1\"\n";
    const TLS_CERTIFICATE: &str = "certificate = [{ cert = \"a.pem\", key = \"a.key\" }]\n";

    fn parse(text: &str) -> Config {
        Config::parse(text).unwrap_or_else(|p| panic!("{text:?} is invalid: {p:?}"))
    }

    #[test]
    fn a_reload_applies_each_live_key_and_names_every_other_change() {
        for &(key, value, apply) in CASES {
            // Arrange
            let running = parse(&running_text(key));
            let text = file_text(key, value);
            let file = parse(&text);

            // Act
            let reloaded = running.reconcile(file.clone());

            // Assert
            let change = Change { key, apply };
            assert_eq!(reloaded.changes, [change], "{text:?}");
            // Taken when live, kept otherwise: the same file again finds
            // nothing left to apply, or the same change still waiting.
            let waiting = if apply == Apply::Live {
                vec![]
            } else {
                vec![change]
            };
            assert_eq!(
                reloaded.config.reconcile(file).changes,
                waiting,
                "{key} after its reload"
            );
        }
    }

    #[test]
    fn an_unchanged_file_changes_nothing() {
        let reloaded = parse(REFERENCE).reconcile(parse(REFERENCE));
        assert_eq!(reloaded.changes, []);
    }

    #[test]
    fn a_file_changing_several_keys_names_each_in_file_order() {
        let text = "[limits]\nmax_connections = 5\nbody_timeout_ms = 5000\n[health]\nfall = 5\n";
        let reloaded = parse("").reconcile(parse(text));
        assert_eq!(
            reloaded.changes,
            [
                Change {
                    key: "health.fall",
                    apply: RESTART
                },
                Change {
                    key: "limits.body_timeout_ms",
                    apply: LIVE
                },
                Change {
                    key: "limits.max_connections",
                    apply: RESTART
                },
            ]
        );
    }

    /// Every key of the reference config (the commented-out ones too), as
    /// `CASES` names them: a key added to the file without a case fails here.
    fn reference_keys() -> BTreeSet<String> {
        let uncommented: String = REFERENCE
            .lines()
            .map(|line| match line.strip_prefix("# ") {
                Some(rest) if rest.starts_with('[') || rest.contains(" = ") => rest,
                _ => line,
            })
            .collect::<Vec<_>>()
            .join("\n");
        let table: toml::Table = uncommented
            .parse()
            .expect("the reference config, uncommented, is TOML");
        let mut keys = BTreeSet::new();
        collect(&table, "", &mut keys);
        keys
    }

    fn collect(table: &toml::Table, prefix: &str, keys: &mut BTreeSet<String>) {
        for (name, value) in table {
            let key = format!("{prefix}{name}");
            match value {
                toml::Value::Table(inner) => collect(inner, &format!("{key}."), keys),
                // An array of tables (scenarios, webhooks) is one key.
                _ => {
                    keys.insert(key);
                }
            }
        }
    }

    #[test]
    fn every_key_of_the_reference_config_has_a_case() {
        let cases: BTreeSet<String> = CASES.iter().map(|(key, ..)| key.to_string()).collect();
        assert_eq!(reference_keys(), cases);
    }

    #[test]
    fn the_answer_names_each_key_and_how_it_was_applied() {
        let changes = [
            Change {
                key: "guard.margin",
                apply: LIVE,
            },
            Change {
                key: "slots.green.addr",
                apply: PUT_SLOT,
            },
        ];
        assert_eq!(
            serde_json::to_value(changes).expect("changes serialize"),
            serde_json::json!([
                { "key": "guard.margin", "apply": "live" },
                { "key": "slots.green.addr", "apply": "seed", "via": "PUT /slots/{slot}" },
            ])
        );
    }
}
