//! The cutover gate: a candidate must pass every scenario N times in a row
//! within a deadline; the first failure refuses it.

use std::time::Duration;

use crate::config::{Gate, Scenario};
use crate::control::probe::{ProbeFailure, Prober, Targets};

/// Runs the gate. `Ok` means the candidate may take traffic.
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
        Err(_) => Err(deadline_failure(gate.passes, gate.deadline, passes)),
    }
}

fn deadline_failure(wanted: u32, deadline: Duration, done: u32) -> ProbeFailure {
    ProbeFailure {
        scenario: "(gate)".into(),
        step: "deadline".into(),
        expected: format!(
            "{wanted} passes of every scenario within {} ms",
            deadline.as_millis()
        ),
        got: format!("{done} passes"),
    }
}
