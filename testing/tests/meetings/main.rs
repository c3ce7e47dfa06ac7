//! Where features meet: delayed and scheduled tasks that fail for good, results the broker
//! refuses, idempotency keys across task types and restarts, hostile input. Each case is a
//! promise of the README's guarantees, against a real nats-server, gateway and worker.

use std::time::Duration;

use taskwire::v1::{self, TaskState};
use taskwire_client::{Client, SubmitOptions};
use taskwire_examples::chaos::v1::{FlakyArgs, FlakyResult, SleepArgs, SleepResult};
use taskwire_testing::{Gateway, NatsServer, Worker, eventually, examples_config, tasks};

mod cluster;
mod failures;
mod follow;
mod input;
mod keys;
mod limits;
mod schedules;

const WAIT: Duration = Duration::from_secs(30);

const FLAKY: &str = "examples.chaos.v1.Chaos/Flaky";

const SLEEP: &str = "examples.chaos.v1.Chaos/Sleep";

fn failing_for_good() -> FlakyArgs {
    FlakyArgs {
        permanent: true,
        ..Default::default()
    }
}

async fn dead_letters_of(client: &Client, id: &str) -> anyhow::Result<Vec<v1::DeadLetter>> {
    Ok(client
        .dead_letters(FLAKY, 1000)
        .await?
        .into_iter()
        .filter(|d| d.task_id == id)
        .collect())
}
