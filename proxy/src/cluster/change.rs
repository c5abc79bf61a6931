//! What a committed change did, in words, from the routing states before and
//! after it: the text a losing proxy's 409 names and every proxy logs.

use serde_json::Value;

use crate::control::state::PersistedState;
use crate::slot::Slot;

/// The change from `before` to `after`. A commit that only records the
/// guard's part (what a change writes once it is applied) keeps the name of
/// the change it follows, `last`: that is the change a loser lost to.
pub fn describe(before: &PersistedState, after: &PersistedState, last: &str) -> String {
    let mut parts = Vec::new();
    if before.active != after.active {
        parts.push(format!(
            "traffic moved from {} to {}",
            before.active, after.active
        ));
    }
    let (old, new) = (before.addrs(), after.addrs());
    for slot in Slot::ALL {
        let members = &new[slot.index()];
        if old[slot.index()] != *members {
            let shown = members
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ");
            parts.push(format!("{slot} now points at {shown}"));
        }
    }
    match (before.canary, after.canary) {
        (None, Some(c)) => parts.push(format!("a canary on {} at {}%", c.slot, c.percent)),
        (Some(b), Some(a)) if b != a => parts.push(format!(
            "the canary on {}: {}% -> {}%",
            a.slot, b.percent, a.percent
        )),
        (Some(b), None) if before.active == after.active => {
            parts.push(format!("the canary on {} ended", b.slot));
        }
        _ => {}
    }
    if !parts.is_empty() {
        return parts.join("; ");
    }
    if same_routing(before, after) && before.guard != after.guard {
        if let Some(reason) = &after.guard.reason
            && before.guard.reason.as_ref() != Some(reason)
        {
            return format!("the guard: {reason}");
        }
        return last.to_owned();
    }
    "the routing state was rewritten unchanged".into()
}

/// Whether two states route alike: everything but the guard's record.
pub fn same_routing(a: &PersistedState, b: &PersistedState) -> bool {
    let strip = |s: &PersistedState| {
        let mut v = as_value(s);
        if let Some(map) = v.as_object_mut() {
            map.remove("guard");
        }
        v
    };
    strip(a) == strip(b)
}

fn as_value(state: &PersistedState) -> Value {
    serde_json::to_value(state).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::guard::GuardRecord;
    use crate::control::state::PersistedCanary;

    fn state(active: Slot, green: &str) -> PersistedState {
        pool(active, &[green])
    }

    /// A state whose green slot is a pool of `green`.
    fn pool(active: Slot, green: &[&str]) -> PersistedState {
        PersistedState::new(
            active,
            None,
            [
                vec!["127.0.0.1:1".parse().expect("addr")],
                green.iter().map(|a| a.parse().expect("addr")).collect(),
            ],
            None,
        )
    }

    #[test]
    fn each_kind_of_change_is_named() {
        let blue = state(Slot::Blue, "127.0.0.1:2");
        let canary = blue.clone().with_canary(Some(PersistedCanary {
            slot: Slot::Green,
            percent: 10,
        }));
        let wider = blue.clone().with_canary(Some(PersistedCanary {
            slot: Slot::Green,
            percent: 50,
        }));
        let cases = [
            (
                &blue,
                &state(Slot::Green, "127.0.0.1:2"),
                "traffic moved from blue to green",
            ),
            (
                &blue,
                &state(Slot::Blue, "127.0.0.1:9"),
                "green now points at 127.0.0.1:9",
            ),
            (
                &blue,
                &pool(Slot::Blue, &["127.0.0.2:2", "127.0.0.3:2"]),
                "green now points at 127.0.0.2:2, 127.0.0.3:2",
            ),
            (
                &pool(Slot::Blue, &["127.0.0.2:2", "127.0.0.3:2"]),
                &pool(Slot::Blue, &["127.0.0.2:2"]),
                "green now points at 127.0.0.2:2",
            ),
            (&blue, &canary, "a canary on green at 10%"),
            (&canary, &wider, "the canary on green: 10% -> 50%"),
            (&wider, &blue, "the canary on green ended"),
            (&blue, &blue, "the routing state was rewritten unchanged"),
        ];
        for (before, after, expected) in cases {
            assert_eq!(describe(before, after, "last"), expected);
        }
    }

    #[test]
    fn a_guard_only_commit_keeps_the_name_of_the_change_it_follows_unless_the_guard_acted() {
        let before = state(Slot::Green, "127.0.0.1:2");
        let baking = before.clone().with_guard(GuardRecord {
            slot: Some(Slot::Green),
            ..GuardRecord::default()
        });
        let blocked = before.clone().with_guard(GuardRecord {
            reason: Some("3 of 20 failed".into()),
            ..GuardRecord::default()
        });

        assert!(same_routing(&before, &baking));
        assert_eq!(
            describe(&before, &baking, "traffic moved from blue to green"),
            "traffic moved from blue to green"
        );
        assert_eq!(
            describe(&before, &blocked, "x"),
            "the guard: 3 of 20 failed"
        );
        assert!(!same_routing(&before, &state(Slot::Blue, "127.0.0.1:2")));
    }
}
