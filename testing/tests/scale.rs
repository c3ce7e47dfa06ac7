//! Size: more task types than a stream without a consumer limit of its own may serve on
//! nats-server 2.15 (1,000 consumers, three per task type), on a tasks stream made as an
//! earlier version made it; against a real nats-server, gateway and workers.

use std::time::Duration;

use async_nats::jetstream::stream;
use taskwire::v1::{self, TaskState};
use taskwire_client::Client;
use taskwire_examples::many;
use taskwire_testing::{Gateway, NatsServer, Worker, runtime};

/// More than the 333 task types that 1,000 consumers serve.
const TASK_TYPES: usize = 400;

/// The tasks stream as versions before the consumer limit made it: no limit of its own.
async fn tasks_stream_without_a_limit(nats: &NatsServer) -> anyhow::Result<()> {
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    js.create_stream(stream::Config {
        name: taskwire_protocol::TASKS_STREAM.into(),
        subjects: vec![
            "taskwire.tasks.>".into(),
            "taskwire.tasks-high.>".into(),
            "taskwire.tasks-low.>".into(),
            "taskwire.delayed.>".into(),
            "taskwire.schedules.>".into(),
        ],
        retention: stream::RetentionPolicy::WorkQueue,
        allow_message_ttl: true,
        ..Default::default()
    })
    .await?;
    Ok(())
}

async fn consumer_limit(nats: &NatsServer) -> anyhow::Result<i32> {
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    let mut stream = js.get_stream(taskwire_protocol::TASKS_STREAM).await?;
    Ok(stream.info().await?.config.max_consumers)
}

/// A task of the last generated type, answered through the gateway.
async fn last_type_answers(client: &Client) -> anyhow::Result<()> {
    let last = many::task_name(
        (TASK_TYPES - 1) / many::TASKS_PER_SERVICE,
        (TASK_TYPES - 1) % many::TASKS_PER_SERVICE,
    );
    let pending = client
        .submit_and_wait(
            &last,
            v1::submit_request::Args::ArgsJson(r#"{"n": 42}"#.into()),
            Default::default(),
            Duration::from_secs(30),
            true,
        )
        .await?;
    let info = pending.finish().await?;
    assert_eq!(info.state(), TaskState::Succeeded, "{info:?}");
    assert!(info.result_json.contains("42"), "{}", info.result_json);
    Ok(())
}

#[tokio::test]
async fn a_worker_serves_more_task_types_than_the_servers_default_consumer_limit()
-> anyhow::Result<()> {
    let nats = NatsServer::start_temporary().await?;
    tasks_stream_without_a_limit(&nats).await?;
    let gateway = Gateway::start(&nats.url()).await?;
    // Raised in place by the gateway's start, before any worker.
    assert_eq!(
        consumer_limit(&nats).await?,
        taskwire_protocol::MAX_TASK_CONSUMERS
    );
    let worker = Worker::start(&nats.url(), |mut w| {
        for service in many::services(TASK_TYPES) {
            w = w.serve(service);
        }
        w
    })
    .await?;
    let client = Client::connect(gateway.url()).await?;
    assert_eq!(client.task_types().await?.len(), TASK_TYPES);
    last_type_answers(&client).await?;
    worker.stop().await?;
    Ok(())
}

#[tokio::test]
async fn the_python_worker_raises_the_consumer_limit_of_an_earlier_tasks_stream()
-> anyhow::Result<()> {
    let nats = NatsServer::start_temporary().await?;
    tasks_stream_without_a_limit(&nats).await?;
    assert!(consumer_limit(&nats).await? < 1);
    let _worker = runtime::worker(runtime::Runtime::Python, &nats.url(), &[])?;
    taskwire_testing::eventually(
        "the Python worker to raise the tasks stream's consumer limit",
        Duration::from_secs(60),
        || async {
            consumer_limit(&nats)
                .await
                .is_ok_and(|n| n == taskwire_protocol::MAX_TASK_CONSUMERS)
        },
    )
    .await
}
