//! Operations: what the customer and the operator are told. `events` is the
//! append-only log every other part writes to; `incidents` turns failures and
//! verdicts into incidents and hands them to `notify` (signed webhooks);
//! `budget` counts the SLA's bad minutes; `status_page` shows all of it
//! publicly; `cert_expiry` warns of TLS certificates about to expire.

pub mod budget;
pub mod cert_expiry;
pub mod events;
pub mod incidents;
pub mod notify;
pub mod status_page;
