//! Blocks: a release the guard pulled back is refused until an operator
//! overrides, so a failing release does not come back by a plain retry.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::slot::Slot;

/// What runs on a slot: the slot, its address and the release label it
/// reports. A block names one, so that a new release on the same slot (or
/// the slot pointed elsewhere) is not refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    pub slot: Slot,
    pub addr: SocketAddr,
    pub release: Option<String>,
}

/// Options an operator can give with a change.
#[derive(Debug, Clone, Copy, Default)]
pub struct Override {
    /// Try a release again that the guard pulled back.
    pub guard: bool,
}

/// Whether `candidate` may take traffic while `blocked` is blocked;
/// `reason` is why the guard pulled it back. The refusal names the way out.
pub fn check(
    blocked: &Deployment,
    reason: Option<&str>,
    candidate: &Deployment,
    over: Override,
) -> Result<(), String> {
    if blocked == candidate && !over.guard {
        return Err(format!(
            "release {} on {} was pulled back by the guard ({}); to try it again, send \"override_guard\": true",
            blocked.release.as_deref().unwrap_or("(unknown)"),
            blocked.slot,
            reason.unwrap_or("a breach")
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn green(port: u16, release: &str) -> Deployment {
        Deployment {
            slot: Slot::Green,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            release: Some(release.into()),
        }
    }

    #[test]
    fn the_release_pulled_back_is_refused_and_the_refusal_names_the_way_out() {
        let err = check(
            &green(9002, "v2"),
            Some("3 of 100 failed"),
            &green(9002, "v2"),
            Override::default(),
        )
        .expect_err("the same release on the same slot and address is blocked");
        assert!(
            err.contains("v2") && err.contains("3 of 100 failed") && err.contains("override_guard"),
            "{err}"
        );
    }

    #[test]
    fn the_operator_s_override_lets_it_through() {
        let over = Override { guard: true };
        assert_eq!(
            check(&green(9002, "v2"), None, &green(9002, "v2"), over),
            Ok(())
        );
    }

    #[test]
    fn another_release_address_or_slot_is_not_blocked() {
        let blocked = green(9002, "v2");
        let none = Override::default();
        assert_eq!(check(&blocked, None, &green(9002, "v3"), none), Ok(()));
        assert_eq!(check(&blocked, None, &green(9003, "v2"), none), Ok(()));
        let blue = Deployment {
            slot: Slot::Blue,
            ..green(9002, "v2")
        };
        assert_eq!(check(&blocked, None, &blue, none), Ok(()));
    }
}
