//! The model test, short: random operations against a real system with each worker runtime,
//! checked against the guarantees. `make model` runs it at full size.

use taskwire_testing::model::{self, Config};
use taskwire_testing::runtime::Runtime;

/// One model at a time: each starts its own servers and processes.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn run(runtime: Runtime, seed: u64, operations: usize) -> anyhow::Result<()> {
    let _turn = ONE_AT_A_TIME.lock().await;
    let report = model::run(Config {
        seed,
        operations,
        workers: 2,
        runtime,
    })
    .await?;
    println!("{}", serde_json::to_string(&report)?);
    assert!(report.tasks > operations / 4, "{report:?}");
    assert!(report.runs > 0, "{report:?}");
    assert_eq!(report.violations, 0, "{:#?}", report.first_violations);
    Ok(())
}

#[tokio::test]
async fn the_rust_worker_keeps_every_guarantee_under_random_operations() -> anyhow::Result<()> {
    run(Runtime::Rust, 20261129, 600).await
}

#[tokio::test]
async fn the_python_worker_keeps_every_guarantee_under_random_operations() -> anyhow::Result<()> {
    if std::env::var_os("TASKWIRE_PYTHON").is_none() {
        // `make test` sets it to the project's venv, which has grpcio.
        anyhow::bail!(
            "TASKWIRE_PYTHON is not set: run this through make test (or set it to a Python with grpcio)"
        );
    }
    run(Runtime::Python, 20261130, 400).await
}
