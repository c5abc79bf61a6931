//! Integration tests of the shortener over real HTTP on ephemeral ports: the app in-process
//! (`support::spawn_app`) for most, the real binary (`support::ChildApp`) for process-level ones.
//! One test binary with a module per concern, so the suite links once.

#[macro_use]
mod support;

mod faults;
mod flask_routes;
mod health;
mod input_rules;
mod json_api;
mod outage;
mod processes;
mod release_header;
mod schema;
mod short_links;
mod write_keys;
