//! End to end: real nats-server, real gRPC over loopback, real worker processes and signals.

use std::process::Stdio;
use std::time::Duration;

use prost::Message as _;
use taskwire::v1::tasks_client::TasksClient;
use taskwire::v1::{self, TaskState};
use taskwire_client::{Client, SubmitOptions};
use taskwire_examples::chaos::v1::ChaosClient;
use taskwire_examples::chaos::v1::{
    FlakyArgs, FlakyResult, PanicArgs, PanicResult, SleepArgs, SleepResult,
};
use taskwire_examples::magic::v1::MagicClient;
use taskwire_examples::magic::v1::{AddArgs, AddResult};
use taskwire_testing::{Gateway, NatsServer, Worker, bin, eventually, tasks};
use tokio::process::Command;
use tonic::Code;

mod children;
mod cli;
mod failures;
mod input;
mod lists;
mod processes;
mod projects;
mod submit;
mod workflows;

const ADD: &str = "examples.magic.v1.Magic/Add";

const WAIT: Duration = Duration::from_secs(20);

/// A gateway that knows every example task from the start, without a worker.
async fn gateway_knowing_examples(nats: &NatsServer) -> anyhow::Result<Gateway> {
    Gateway::start_with(taskwire_testing::examples_config(&nats.url())).await
}

/// Messages stored in a stream now.
async fn stream_messages(nats: &NatsServer, stream: &str) -> anyhow::Result<u64> {
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    Ok(js.get_stream(stream).await?.info().await?.state.messages)
}

/// Messages on one subject of a stream.
async fn subject_messages(nats: &NatsServer, stream: &str, subject: &str) -> anyhow::Result<u64> {
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    let info = js
        .get_stream(stream)
        .await?
        .info_with_subjects(subject)
        .await?;
    use futures::StreamExt as _;
    let subjects: Vec<_> = info.collect().await;
    Ok(subjects
        .into_iter()
        .filter_map(Result::ok)
        .map(|(_, n)| n as u64)
        .sum())
}

async fn state_of(client: &Client, id: &str) -> TaskState {
    client
        .get(id, false)
        .await
        .map(|i| i.state())
        .unwrap_or(TaskState::Unspecified)
}
