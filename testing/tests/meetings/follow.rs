//! What the gateway follows and tells: the registry across restarts, waiters told only
//! stored outcomes.

use super::*;

#[tokio::test]
async fn a_gateway_learns_a_task_type_registered_after_a_broker_restart() -> anyhow::Result<()> {
    let mut nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    let client = Client::connect(gateway.url()).await?;
    // A first worker registers its types, so the registry exists and is being followed.
    let first = Worker::start(&nats.url(), |w| w.serve(tasks::chaos())).await?;
    eventually("the gateway to learn Chaos", WAIT, || async {
        client
            .task_types()
            .await
            .is_ok_and(|t| t.iter().any(|t| t.name == SLEEP))
    })
    .await?;
    first.stop().await?;

    nats.restart().await?;
    let _second = Worker::start(&nats.url(), |w| w.serve(tasks::magic())).await?;
    eventually(
        "the gateway to learn Magic after the restart",
        WAIT,
        || async {
            client
                .task_types()
                .await
                .is_ok_and(|t| t.iter().any(|t| t.name == "examples.magic.v1.Magic/Add"))
        },
    )
    .await?;
    let submitted = client
        .submit_json(
            "examples.magic.v1.Magic/Add",
            r#"{"arg1":2,"arg2":3}"#,
            SubmitOptions::default(),
        )
        .await?;
    let info = client.wait(&submitted.task_id, WAIT, false).await?;
    assert_eq!(info.state(), TaskState::Succeeded, "{info:?}");
    Ok(())
}

/// The registry's bucket deleted under a running gateway (its watch can only end) and created
/// again by a worker that starts later: the gateway reads the bucket again and learns the type.
#[tokio::test]
async fn a_gateway_follows_the_registry_again_after_its_watch_ends() -> anyhow::Result<()> {
    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    let client = Client::connect(gateway.url()).await?;
    let first = Worker::start(&nats.url(), |w| w.serve(tasks::chaos())).await?;
    eventually("the gateway to learn Chaos", WAIT, || async {
        client
            .task_types()
            .await
            .is_ok_and(|t| t.iter().any(|t| t.name == SLEEP))
    })
    .await?;
    first.stop().await?;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    js.delete_stream("KV_TASKWIRE_REGISTRY").await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _second = Worker::start(&nats.url(), |w| w.serve(tasks::magic())).await?;
    eventually(
        "the gateway to learn Magic from the new bucket",
        WAIT,
        || async {
            client
                .task_types()
                .await
                .is_ok_and(|t| t.iter().any(|t| t.name == "examples.magic.v1.Magic/Add"))
        },
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn waiters_are_told_only_what_the_results_stream_stored() -> anyhow::Result<()> {
    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start_with(examples_config(&nats.url())).await?;
    let client = Client::connect(gateway.url()).await?;
    let submitted = client
        .submit_json(SLEEP, r#"{"millis":1}"#, SubmitOptions::default())
        .await?;
    let id = submitted.task_id.clone();
    // A watcher is told the current state once it listens for the result: from then on it
    // would hear any result published.
    let mut watch = client.watch(&id, false).await?;
    let first = watch.next().await?.expect("the current state");
    assert_eq!(first.state(), TaskState::Queued);
    let nc = async_nats::connect(nats.url()).await?;

    // A result the stream refuses (a wrong expected sequence) still reaches core subscribers
    // of the subject: it must not reach the waiter.
    let mut refused = async_nats::HeaderMap::new();
    refused.insert("Taskwire-Task-Id", id.as_str());
    refused.insert("Taskwire-Task", SLEEP);
    refused.insert("Taskwire-State", "succeeded");
    refused.insert("Taskwire-Attempt", "1");
    refused.insert("Nats-Expected-Last-Subject-Sequence", "4242");
    let js = async_nats::jetstream::new(nc.clone());
    let answer = js
        .publish_with_headers(
            format!("taskwire.results.{id}.examples.chaos.v1.Chaos.Sleep"),
            refused,
            bytes::Bytes::new(),
        )
        .await?
        .await;
    assert!(answer.is_err(), "the stream stored the forged result");

    // The real outcome is the next thing the watcher hears.
    client.cancel(&id).await?;
    let info = tokio::time::timeout(WAIT, watch.next())
        .await??
        .expect("the final state");
    assert_eq!(info.state(), TaskState::Cancelled, "{info:?}");
    assert_eq!(client.get(&id, false).await?.state(), TaskState::Cancelled);
    Ok(())
}
