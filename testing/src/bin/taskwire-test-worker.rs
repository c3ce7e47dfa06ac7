//! A worker process for fault tests: serves the magic, chaos and flow example services, with the
//! settings of the environment (`Builder::from_env`).

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = taskwire::telemetry::init("info", "taskwire-worker");
    let builder = match taskwire_worker::Builder::from_env() {
        Ok(builder) => builder,
        Err(problems) => {
            eprintln!("taskwire-test-worker: {problems}");
            std::process::exit(taskwire::config::EXIT_USAGE.into());
        }
    };
    // With TASKWIRE_EXECUTION_LOG set, every result this worker stores is appended there, one
    // task id a line: fault drills count results from it as well as from the results stream.
    let log = match std::env::var_os("TASKWIRE_EXECUTION_LOG") {
        Some(path) => Some(std::sync::Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?,
        )),
        None => None,
    };
    // With TASKWIRE_RUN_LOG set, the start and end of every run of a chaos task is logged
    // there (the model test's record of executions).
    if let Some(path) = std::env::var_os("TASKWIRE_RUN_LOG") {
        taskwire_testing::tasks::log_runs_to(std::path::Path::new(&path))?;
    }
    builder
        .on_result(move |id, _state| {
            if let Some(log) = &log {
                use std::io::Write as _;
                let mut file = log.lock().unwrap_or_else(|e| e.into_inner());
                // One write per line: several workers append to the same file.
                let _ = file.write_all(format!("{id}\n").as_bytes());
            }
        })
        .second_signal_forces(true)
        .serve(taskwire_testing::tasks::magic())
        .serve(taskwire_testing::tasks::chaos())
        .serve(taskwire_testing::tasks::flow())
        .run(taskwire::shutdown_signal())
        .await?;
    Ok(())
}
