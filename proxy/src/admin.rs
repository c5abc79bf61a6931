//! The operator's API on its own listener: `routes` (status, switch,
//! rollback, canary, slots, events, reload) behind the bearer token of `auth`.

pub mod auth;
pub mod routes;
