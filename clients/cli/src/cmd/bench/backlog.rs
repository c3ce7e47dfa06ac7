//! A backlog: tasks stored while no worker runs, then drained by one worker, which is timed.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream;
use taskwire::task::Name;
use taskwire::v1::Priority;
use taskwire_client::Client;
use taskwire_supervisor::{self as stack, ProcessSpec};

use super::{TASK, submit_many};

/// What a backlog run measured.
pub(super) struct Drained {
    /// Tasks stored per second with SubmitMany.
    pub(super) stored_per_sec: f64,
    /// Tasks run per second from the worker's first start to the last.
    pub(super) drained_per_sec: f64,
    /// Peak resident memory of the draining worker, MiB.
    pub(super) worker_rss_mib: f64,
}

/// Stores `tasks` tasks (`batch` a SubmitMany call) while no worker runs, then starts the
/// worker `spec` and times it from its first task to its last.
pub(super) async fn drain(
    client: &Client,
    jetstream: &jetstream::Context,
    spec: &ProcessSpec,
    tasks: usize,
    batch: usize,
) -> anyhow::Result<Drained> {
    let started = Instant::now();
    let stored = submit_many(client, tasks, batch).await?;
    let stored_per_sec = stored as f64 / started.elapsed().as_secs_f64();

    let name = Name::parse(TASK)?;
    let mut consumer: jetstream::consumer::PullConsumer = jetstream
        .get_stream(taskwire_protocol::TASKS_STREAM)
        .await?
        .get_consumer(&taskwire_protocol::consumer_name(&name, Priority::Normal))
        .await
        .map_err(|e| anyhow::anyhow!("the task's consumer: {e}"))?;
    let waiting = left(&mut consumer).await?;
    let mut worker = stack::spawn(spec)?;
    let pid = worker.id().context("the worker exited")?;
    // From the first task taken to the last done: the worker's start-up is not drain time.
    let deadline = Instant::now() + Duration::from_secs(3600);
    let (first, at_first) = loop {
        let now = left(&mut consumer).await?;
        if now < waiting {
            break (Instant::now(), now);
        }
        anyhow::ensure!(Instant::now() < deadline, "the worker took no task");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    while left(&mut consumer).await? > 0 {
        anyhow::ensure!(Instant::now() < deadline, "the backlog did not drain");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let drained_per_sec = at_first as f64 / first.elapsed().as_secs_f64();
    let worker_rss_mib = stack::peak_rss_mib(pid).unwrap_or(0.0);
    stack::terminate(&mut worker, Duration::from_secs(10)).await;
    Ok(Drained {
        stored_per_sec,
        drained_per_sec,
        worker_rss_mib,
    })
}

/// Tasks of the consumer not yet done: waiting, and delivered but not acknowledged.
async fn left(consumer: &mut jetstream::consumer::PullConsumer) -> anyhow::Result<usize> {
    let info = consumer.info().await?;
    Ok(info.num_pending as usize + info.num_ack_pending)
}
