//! The control plane: every change to routing and what decides it. The
//! `controller` applies changes (the operator's and the guard's verdicts) as
//! new routing snapshots and persists them (`state`); the `gate` runs `probe`
//! scenarios before a release takes traffic; the `guard` judges a canary or a
//! freshly switched release by its users' outcomes; `health` checks both
//! slots in the background; `reload` applies a changed configuration.

pub mod controller;
pub mod gate;
pub mod guard;
pub mod health;
pub mod probe;
pub mod reload;
pub mod state;
