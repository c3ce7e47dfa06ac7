//! Reads that decide, in a three-node cluster.

use super::*;

/// In a three-node cluster with every stream at three replicas, reads that decide go to the
/// stream's leader: right after SubmitAndWait, Get answers the result, a key answers its task,
/// and Cancel knows the task, even with a node that was down and is catching up.
#[tokio::test]
async fn reads_that_decide_are_consistent_in_a_cluster() -> anyhow::Result<()> {
    let mut cluster = taskwire_testing::NatsCluster::start_temporary(3).await?;
    let urls = cluster.urls();
    let mut config = taskwire_gateway::Config::new(urls.clone());
    config.broker.replicas = 3;
    let gateway = Gateway::start_with(config).await?;
    let _worker = taskwire_testing::worker_process(&urls, &[("TASKWIRE_REPLICAS", "3")])?;
    taskwire_testing::wait_for_task(&gateway.url(), SLEEP, WAIT).await?;
    let client = Client::connect(gateway.url()).await?;
    let round = |client: Client, round: usize| async move {
        for i in 0..15 {
            let key = format!("cluster-{round}-{i}");
            let options = || SubmitOptions::default().idempotency_key(key.clone());
            let args = SleepArgs {
                millis: 1,
                label: key.clone(),
            };
            let proto =
                || v1::submit_request::Args::ArgsProto(prost::Message::encode_to_vec(&args));
            // While a leader is elected the broker answers UNAVAILABLE: a client tries again
            // (with the same key).
            let pending =
                patiently(|| client.submit_and_wait(SLEEP, proto(), options(), WAIT, false))
                    .await?;
            let id = pending.id().to_owned();
            let done = pending.finish().await?;
            anyhow::ensure!(done.state() == TaskState::Succeeded, "{done:?}");
            let info = patiently(|| client.get(&id, false)).await?;
            anyhow::ensure!(
                info.state() == TaskState::Succeeded,
                "Get right after: {info:?}"
            );
            let again = patiently(|| client.submit_raw(SLEEP, proto(), options())).await?;
            anyhow::ensure!(again.task_id == id && again.duplicate, "the key: {again:?}");
            let cancelled = patiently(|| client.cancel(&id)).await;
            anyhow::ensure!(
                !matches!(&cancelled, Err(e) if e.code() == Some(tonic::Code::NotFound)),
                "Cancel does not know it: {cancelled:?}"
            );
        }
        anyhow::Ok(())
    };
    round(client.clone(), 0).await?;
    // A node that is not the results stream's leader goes down, comes back and catches up
    // while the tasks go on.
    let js =
        async_nats::jetstream::new(async_nats::connect(taskwire_protocol::servers(&urls)).await?);
    let mut results = js.get_stream("TASKWIRE_RESULTS").await?;
    let leader = results
        .info()
        .await?
        .cluster
        .clone()
        .and_then(|c| c.leader)
        .unwrap_or_default();
    let follower = ["n1", "n2", "n3"]
        .into_iter()
        .find(|n| *n != leader)
        .unwrap_or("n1");
    let node = cluster
        .server_mut(follower)
        .ok_or_else(|| anyhow::anyhow!("no node {follower}"))?;
    node.kill().await;
    round(client.clone(), 1).await?;
    node.restart().await?;
    round(client.clone(), 2).await?;
    Ok(())
}

/// Calls again while the answer is UNAVAILABLE (a stream leader being elected), for a while.
async fn patiently<T, F, Fut>(mut call: F) -> Result<T, taskwire_client::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, taskwire_client::Error>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match call().await {
            Err(e)
                if e.code() == Some(tonic::Code::Unavailable)
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            answer => return answer,
        }
    }
}
