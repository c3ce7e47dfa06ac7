//! Real processes and signals: a killed worker, SIGTERM, a broker restart.

use super::*;

/// Starts the test worker binary as a real process.
fn worker_process(nats: &NatsServer, ack_wait: &str) -> anyhow::Result<tokio::process::Child> {
    taskwire_testing::worker_process(
        &nats.url(),
        &[("TASKWIRE_ACK_WAIT", ack_wait), ("TASKWIRE_GRACE", "20s")],
    )
}

#[tokio::test]
async fn a_task_of_a_killed_worker_is_redelivered_and_has_one_result() -> anyhow::Result<()> {
    let nats = NatsServer::start_temporary().await?;
    let gateway = gateway_knowing_examples(&nats).await?;
    let client = Client::connect(gateway.url()).await?;
    let chaos = ChaosClient::new(client.clone());

    let mut first = worker_process(&nats, "2s")?;
    let handle = chaos
        .sleep(SleepArgs {
            millis: 1500,
            label: "survivor".into(),
        })
        .await?;
    eventually("the first worker runs the task", WAIT, || async {
        state_of(&client, handle.id()).await == TaskState::Running
    })
    .await?;
    first.start_kill()?;
    first.wait().await?;

    let _second = worker_process(&nats, "2s")?;
    let result: SleepResult = handle.get(WAIT).await?;
    assert_eq!(result.label, "survivor");
    assert_eq!(result.attempt, 2, "the second delivery finished it");
    assert_eq!(
        subject_messages(
            &nats,
            "TASKWIRE_RESULTS",
            &format!("taskwire.results.{}.>", handle.id())
        )
        .await?,
        1
    );
    assert_eq!(stream_messages(&nats, "TASKWIRE_RESULTS").await?, 1);
    eventually("the queue is empty", WAIT, || async {
        stream_messages(&nats, "TASKWIRE_TASKS").await.ok() == Some(0)
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn sigterm_lets_the_running_task_finish() -> anyhow::Result<()> {
    let nats = NatsServer::start_temporary().await?;
    let gateway = gateway_knowing_examples(&nats).await?;
    let client = Client::connect(gateway.url()).await?;
    let chaos = ChaosClient::new(client.clone());

    let mut worker = worker_process(&nats, "30s")?;
    let handle = chaos
        .sleep(SleepArgs {
            millis: 1000,
            label: "drained".into(),
        })
        .await?;
    eventually("the worker runs the task", WAIT, || async {
        state_of(&client, handle.id()).await == TaskState::Running
    })
    .await?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(worker.id().expect("running") as i32),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    let status = tokio::time::timeout(WAIT, worker.wait()).await??;
    assert!(
        status.success(),
        "the worker exits 0 after draining: {status}"
    );
    let info = client.get(handle.id(), false).await?;
    assert_eq!(
        info.state(),
        TaskState::Succeeded,
        "finished before exit: {info:?}"
    );
    assert_eq!(SleepResult::decode(info.result.as_slice())?.attempt, 1);
    Ok(())
}

#[tokio::test]
async fn results_and_queued_tasks_survive_a_broker_restart() -> anyhow::Result<()> {
    let mut nats = NatsServer::start_temporary().await?;
    let gateway = gateway_knowing_examples(&nats).await?;
    let client = Client::connect(gateway.url()).await?;
    let magic = MagicClient::new(client.clone());

    let worker = Worker::start(&nats.url(), |w| w.serve(tasks::magic())).await?;
    let done = magic
        .add(AddArgs {
            arg1: 1,
            arg2: 2,
            arg3: 3,
        })
        .await?;
    assert_eq!(done.get(WAIT).await?.sum, 6);
    worker.stop().await?;

    let mut queued = Vec::new();
    for i in 0..5 {
        queued.push(
            magic
                .add(AddArgs {
                    arg1: i,
                    arg2: 0,
                    arg3: 0,
                })
                .await?,
        );
    }
    assert_eq!(stream_messages(&nats, "TASKWIRE_TASKS").await?, 5);

    nats.restart().await?;
    eventually("the gateway is connected again", WAIT, || async {
        client.get(done.id(), false).await.is_ok()
    })
    .await?;
    assert_eq!(done.get(WAIT).await?.sum, 6, "the result survived");
    assert_eq!(
        stream_messages(&nats, "TASKWIRE_TASKS").await?,
        5,
        "the queue survived"
    );

    let _worker = Worker::start(&nats.url(), |w| w.serve(tasks::magic())).await?;
    for (i, handle) in queued.iter().enumerate() {
        assert_eq!(handle.get(WAIT).await?.sum, i as i64);
    }
    Ok(())
}
