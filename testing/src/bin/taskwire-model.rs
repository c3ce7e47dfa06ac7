//! `taskwire-model`: the model test. Random sequences of operations against a real system, with
//! an oracle of the guarantees; prints one JSON line.
//!
//! ```text
//! taskwire-model --operations 10000 --seed 42          # the Rust worker
//! taskwire-model --operations 2000 --runtime python    # the Python worker
//! ```
//! Exits 1 when it found a violation; the seed repeats the same sequence.

use std::process::ExitCode;

use taskwire_testing::model::Config;
use taskwire_testing::runtime::Runtime;

fn usage(problem: &str) -> ExitCode {
    eprintln!(
        "taskwire-model: {problem}\nusage: taskwire-model [--operations N] [--seed N] [--workers N] [--runtime rust|python]"
    );
    ExitCode::from(64)
}

#[tokio::main]
async fn main() -> ExitCode {
    let _telemetry = taskwire::telemetry::init("error", "taskwire-model");
    let mut config = Config {
        seed: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(1),
        operations: 10_000,
        workers: 2,
        runtime: Runtime::Rust,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next();
        let number = || value.as_deref().and_then(|v| v.parse::<u64>().ok());
        match arg.as_str() {
            "--operations" => match number() {
                Some(n) => config.operations = n as usize,
                None => return usage("--operations needs a number"),
            },
            "--seed" => match number() {
                Some(n) => config.seed = n,
                None => return usage("--seed needs a number"),
            },
            "--workers" => match number() {
                Some(n @ 1..=16) => config.workers = n as usize,
                _ => return usage("--workers needs a number from 1 to 16"),
            },
            "--runtime" => match value.as_deref() {
                Some("rust") => config.runtime = Runtime::Rust,
                Some("python") => config.runtime = Runtime::Python,
                Some("plain") => config.runtime = Runtime::Plain,
                Some("typescript") => config.runtime = Runtime::TypeScript,
                _ => return usage("--runtime is rust, python, plain or typescript"),
            },
            other => return usage(&format!("unknown argument {other}")),
        }
    }
    match taskwire_testing::model::run(config.clone()).await {
        Ok(report) => {
            println!("{}", serde_json::to_string(&report).unwrap_or_default());
            if report.violations == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            println!(
                "{}",
                serde_json::json!({ "seed": config.seed, "error": format!("{e:#}") })
            );
            ExitCode::FAILURE
        }
    }
}
