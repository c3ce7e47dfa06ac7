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
    taskwire::telemetry::init("info");
    let nats =
        std::env::var("TASKWIRE_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    taskwire_worker::Worker::builder()
        .nats(nats)
        .broker_settings(taskwire::broker::Settings::from_env().map_err(anyhow::Error::msg)?)
        .ack_wait(duration("TASKWIRE_ACK_WAIT", Duration::from_secs(30)))
        .second_signal_forces(true)
        .grace(duration("TASKWIRE_GRACE", Duration::from_secs(30)))
        .serve(taskwire_testing::tasks::magic())
        .serve(taskwire_testing::tasks::chaos())
        .run(taskwire::shutdown_signal())
        .await?;
    Ok(())
}
