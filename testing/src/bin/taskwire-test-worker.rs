//! A worker process for fault tests: serves the magic and chaos example services.
//! Reads TASKWIRE_NATS_URL, TASKWIRE_ACK_WAIT and TASKWIRE_GRACE.

use std::time::Duration;

fn duration(var: &str, default: Duration) -> Duration {
    std::env::var(var)
        .ok()
        .and_then(|v| humantime::parse_duration(&v).ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = taskwire::telemetry::init("info", "taskwire-worker");
    let nats =
        std::env::var("TASKWIRE_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
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
    let concurrency = std::env::var("TASKWIRE_CONCURRENCY")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100);
    taskwire_worker::Worker::builder()
        .concurrency(concurrency)
        .on_result(move |id, _state| {
            if let Some(log) = &log {
                use std::io::Write as _;
                let mut file = log.lock().unwrap_or_else(|e| e.into_inner());
                // One write per line: several workers append to the same file.
                let _ = file.write_all(format!("{id}\n").as_bytes());
            }
        })
        .nats(nats)
        .broker_settings(taskwire::broker::Settings::from_env().map_err(anyhow::Error::msg)?)
        .ack_wait(duration("TASKWIRE_ACK_WAIT", Duration::from_secs(30)))
        .second_signal_forces(true)
        .grace(duration("TASKWIRE_GRACE", Duration::from_secs(30)))
        .metrics_addr(
            std::env::var("TASKWIRE_METRICS_ADDR")
                .ok()
                .map(|a| a.parse())
                .transpose()?,
        )
        .serve(taskwire_testing::tasks::magic())
        .serve(taskwire_testing::tasks::chaos())
        .run(taskwire::shutdown_signal())
        .await?;
    Ok(())
}
