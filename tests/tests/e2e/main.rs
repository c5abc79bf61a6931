//! End-to-end tests of the proxy and the shortener: the real binaries on ephemeral loopback
//! ports, driven over real sockets through the harness of the `e2e` lib (`tests/src`). One
//! test binary with a module per scenario, so that the suite links once; the guard's
//! timing-bound tests are the other binary, `tests/tests/timing`.
//!
//! Data plane: a user's request from the public listener to an upstream and back.
//! - `headers`: hop-by-hop headers dropped both ways, `X-Forwarded-*` and `Host`, request ids,
//!   HTTP/2 cleartext, as an echo upstream and a raw client see them.
//! - `hostile_host`: a bad `Host` refused, forwarding claims trusted only from configured
//!   hops, `Connection` unable to strip what the proxy sets, the admin API out of reach.
//! - `smuggling`: ambiguous or malformed framing refused or passed on with one clean framing.
//! - `upstream_conformance`: hostile and sloppy upstreams (raw sockets), one test per row of
//!   issue 19: what the client gets, what reached the upstream, reuse, and who is blamed.
//! - `tls`: HTTPS end to end: HTTP/1.1 and HTTP/2 over TLS, SNI, certificates swapped and
//!   refused by reload and check-config, the http-to-https redirect, handshake timeouts, https
//!   webhooks.
//! - `upstream_tls`: a slot reached over TLS: probed, checked and served on kept-alive
//!   connections; one whose certificate does not verify is down with the reason, and refused.
//! - `large_body`: 32 MB bodies intact both ways, with a length, chunked, and over HTTP/2.
//! - `half_close`: a client that half-closes after its request still gets its answer.
//! - `parking`: idle HTTP/1.1 connections parked without buffers and served as before when
//!   their next bytes come (requests, pipelined bytes, a half-close); many at once; the drain.
//! - `limits`: the listener's limits (slow or large heads and bodies, idle connections, the
//!   connection cap) and the upstream timeouts, each with its own status.
//! - `failover`: a dead active hands its users to a vetted slot without an error, and back;
//!   which requests are retried on the other slot.
//! - `active_slot`: a slow active keeps its users away from an ungated green.
//! - `shutdown`, `graceful`: SIGTERM drains: requests in flight finish, new connections are
//!   refused, HTTP/2 gets GOAWAY, what outlasts the grace period is cut with a 504.
//!
//! Control plane: the gate, the switch, the canary, the guard, the persisted state, reloads.
//! - `story`: a green that cannot create links is refused at the create step; users see no
//!   error.
//! - `cross_release`: a green that cannot read blue's links is refused.
//! - `dead_green`: a green that is not running is refused at the first probe.
//! - `rollback`: a rollback returns to the slot that served before the last switch.
//! - `restart`: the persisted state, not the config, decides the slot after a restart.
//! - `pools`: three shorteners per slot on one PostgreSQL: a member or a whole slot killed
//!   under load, a broken member refused by the gate, switches under load.
//! - `switch_under_load`: fifty switches under concurrent users lose no request.
//! - `takeover`: a second proxy takes the listeners over: twenty in a row under load lose no
//!   request; an invalid or killed successor leaves the old one serving; the canary survives
//!   a takeover and a restart; a crash's downtime counts in the budget, a takeover's not.
//! - `cluster`: several proxies on one routing state in PostgreSQL: a switch through one is
//!   served by the others within a second, one of two racing changes wins, the guard judges
//!   every proxy's users and its abort acts once for all, a stopped store stops changes (503) but not serving, a restarted proxy
//!   starts on the current generation.
//! - `canary_split`: the sticky bucket split, the preview secret, canaries that are refused.
//! - `bake`: a switched release that fails during the bake is rolled back by the guard.
//! - `admin`: the admin API's refusals (token, active slot, bad input, unknown routes) and
//!   its status.
//! - `reload`: SIGHUP and `POST /reload` apply a valid change without dropping a request, and
//!   refuse an invalid file with every problem, changing nothing.
//!
//! Operations: what the operator and the customers see.
//! - `incidents`: prevented and guard-aborted incidents, signed webhook notices, the error
//!   budget, all kept across a restart.
//! - `metrics`: strict OpenMetrics on `/metrics`, counters that move exactly with user traffic.
//! - `status_page`: the public status page in headless Chromium, without secrets.
//! - `check_config`: `proxy check-config` on the reference config and on a broken one.
//!
//! Scripts: the release scripts against a real proxy and shortener.
//! - `scripts`: `deploy.sh`, a healthy release and a refused one.
//! - `canary_script`: `canary.sh` through its steps, stopped by the gate or by the guard.
//!
//! The harness itself.
//! - `echo_smoke`: the echo upstream and the raw client would see what the header tests look
//!   for.
//! - `shortener_smoke`: the shortener starts, answers, restarts on its port, shares its db.

// Data plane.
mod active_slot;
mod failover;
mod graceful;
mod half_close;
mod headers;
mod hostile_host;
mod large_body;
mod limits;
mod parking;
mod shutdown;
mod smuggling;
mod tls;
mod upstream_conformance;
mod upstream_tls;

// Control plane.
mod admin;
mod bake;
mod canary_split;
mod cluster;
mod cross_release;
mod dead_green;
mod pools;
mod reload;
mod restart;
mod rollback;
mod story;
mod switch_under_load;
mod takeover;

// Operations.
mod check_config;
mod incidents;
mod metrics;
mod status_page;

// Scripts.
mod canary_script;
mod scripts;

// The harness.
mod echo_smoke;
mod shortener_smoke;
