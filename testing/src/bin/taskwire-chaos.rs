//! `taskwire-chaos`: runs the fault drills and prints one JSON line per drill.
//!
//! ```text
//! taskwire-chaos --tasks 10000              # every drill
//! taskwire-chaos --tasks 500 worker_sigkill  # one drill
//! ```
//! Exits 1 if any drill lost a task or stored a result twice.

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let _telemetry = taskwire::telemetry::init("error", "taskwire-chaos");
    let mut tasks = 10_000;
    let mut only = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--tasks" => match args.next().and_then(|n| n.parse().ok()) {
                Some(n) => tasks = n,
                None => {
                    eprintln!("taskwire-chaos: --tasks needs a number");
                    return ExitCode::from(64);
                }
            },
            name => only.push(name.to_owned()),
        }
    }
    let scenarios: Vec<&str> = if only.is_empty() {
        taskwire_testing::chaos::SCENARIOS.to_vec()
    } else {
        only.iter().map(String::as_str).collect()
    };
    let mut healthy = true;
    for scenario in scenarios {
        match taskwire_testing::chaos::run(scenario, tasks).await {
            Ok(report) => {
                // A workflow drill fails when any workflow did not succeed with all its results.
                healthy &= report.lost == 0
                    && report.duplicate_results == 0
                    && (report.scenario != "workflow_chords" || report.failed == 0);
                println!("{}", serde_json::to_string(&report).unwrap_or_default());
            }
            Err(e) => {
                healthy = false;
                println!(
                    "{}",
                    serde_json::json!({ "scenario": scenario, "error": format!("{e:#}") })
                );
            }
        }
    }
    if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
