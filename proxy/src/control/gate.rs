//! The cutover gate: every member of a candidate slot must pass every
//! scenario N times in a row within a deadline; the first failure refuses
//! it, naming the member.

use std::net::SocketAddr;
use std::time::Duration;

use crate::config::{Gate, Scenario};
use crate::control::probe::{Endpoint, ProbeFailure, Prober, Targets};

/// Runs the gate against every member at once, each with the active
/// member of the same rank in `active` (cycled) for its cross-release
/// steps. `Ok` means the candidate may take traffic; a refusal names the
/// first failing member in the pool's order.
pub async fn run_members(
    prober: &Prober,
    scenarios: &[Scenario],
    gate: &Gate,
    candidates: &[Endpoint],
    active: &[Endpoint],
) -> Result<(), ProbeFailure> {
    let runs = candidates.iter().enumerate().map(|(i, candidate)| {
        let targets = Targets {
            candidate: candidate.clone(),
            active: (!active.is_empty()).then(|| active[i % active.len()].clone()),
        };
        run(prober, scenarios, gate, targets)
    });
    futures_util::future::join_all(runs)
        .await
        .into_iter()
        .collect()
}

/// Runs the gate against one member. `Ok` means it may take traffic.
pub async fn run(
    prober: &Prober,
    scenarios: &[Scenario],
    gate: &Gate,
    targets: Targets,
) -> Result<(), ProbeFailure> {
    let mut passes = 0u32;
    let rounds = async {
        for _ in 0..gate.passes {
            for scenario in scenarios {
                prober.run(scenario, &targets).await?;
            }
            passes += 1;
        }
        Ok(())
    };
    match tokio::time::timeout(gate.deadline, rounds).await {
        Ok(result) => result,
        Err(_) => Err(deadline_failure(
            targets.candidate.addr,
            gate.passes,
            gate.deadline,
            passes,
        )),
    }
}

fn deadline_failure(
    member: SocketAddr,
    wanted: u32,
    deadline: Duration,
    done: u32,
) -> ProbeFailure {
    ProbeFailure {
        member: Some(member.to_string()),
        scenario: "(gate)".into(),
        step: "deadline".into(),
        expected: format!(
            "{wanted} passes of every scenario within {} ms",
            deadline.as_millis()
        ),
        got: format!("{done} passes"),
    }
}
