//! End-to-end tests whose verdict depends on how promptly the proxy runs: the guard on a live
//! canary under generated user load, with bounds made of its intervals (users who saw a
//! failure at most `min_requests` plus what green served in two intervals; a decision within
//! a gate run). A binary of their own, so that cargo runs them apart from the main binary
//! (`tests/tests/e2e`): the bounds allow one guard interval of slack for a busy machine, and
//! a 32 MB body, a headless browser or a release script running beside them would take more
//! than that.
//!
//! - `canary_guard`: a canary failing under user load is aborted within its bounds, blocked
//!   until an override; a promote or a switch the guard overtakes during its gate is refused.
//! - `canary_tripwire`: the guard trips on the request that crosses its limit, not on its tick.
//! - `answer_from_stable`: a failing canary or baking release costs users nothing: the stable
//!   release answers for it while the guard pulls it back.

mod answer_from_stable;
mod canary_guard;
mod canary_tripwire;
