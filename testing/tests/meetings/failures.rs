//! Tasks that fail for good (delayed, scheduled, results the broker refuses) and their
//! dead letters and replays.

use super::*;

#[tokio::test]
async fn a_delayed_task_that_fails_for_good_is_dead_lettered_once_and_replays() -> anyhow::Result<()>
{
    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    let _worker = Worker::start(&nats.url(), |w| w.serve(tasks::chaos())).await?;
    let client = Client::connect(gateway.url()).await?;

    let handle = client
        .submit::<FlakyResult>(
            FLAKY,
            &failing_for_good(),
            SubmitOptions::default().countdown(Duration::from_secs(1)),
        )
        .await?;
    let info = client.wait(handle.id(), WAIT, false).await?;
    assert_eq!(info.state(), TaskState::Failed, "{info:?}");
    assert_eq!(info.attempt, 1, "a permanent error is not retried");
    let dead = dead_letters_of(&client, handle.id()).await?;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].reason, "permanent");
    // Acked, not redelivered: the queue empties and the task is never run again.
    eventually("the failed task to leave the queue", WAIT, || async {
        taskwire_testing::tasks_in_stream(&nats.url())
            .await
            .is_ok_and(|n| n == 0)
    })
    .await?;

    // A replay of the fired task is a new series that ends the same way, with one new letter.
    let replayed = client
        .replay_dead_letters(vec![handle.id().to_owned()], "", false)
        .await?;
    assert_eq!(replayed, vec![handle.id().to_owned()]);
    eventually("the replay to fail for good again", WAIT, || async {
        dead_letters_of(&client, handle.id())
            .await
            .is_ok_and(|d| d.len() == 1 && d[0].replays == 1)
    })
    .await?;
    assert_eq!(handle.state().await?, TaskState::Failed);
    Ok(())
}

#[tokio::test]
async fn tasks_of_a_schedule_that_fail_for_good_are_dead_lettered() -> anyhow::Result<()> {
    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    let _worker = Worker::start(&nats.url(), |w| w.serve(tasks::chaos())).await?;
    let client = Client::connect(gateway.url()).await?;

    client
        .create_schedule(v1::Schedule {
            name: "failing".into(),
            task: FLAKY.into(),
            when: Some(v1::schedule::When::Every(prost_types::Duration {
                seconds: 1,
                nanos: 0,
            })),
            args: Some(v1::schedule::Args::ArgsJson(r#"{"permanent":true}"#.into())),
            options: Some(SubmitOptions::default().max_attempts(1).into_proto()),
            ..Default::default()
        })
        .await?;
    eventually("two ticks to be dead-lettered", WAIT, || async {
        client
            .dead_letters(FLAKY, 100)
            .await
            .is_ok_and(|d| d.len() >= 2)
    })
    .await?;
    client.delete_schedule("failing").await?;
    let dead = client.dead_letters(FLAKY, 100).await?;
    for letter in &dead {
        assert_eq!(letter.reason, "permanent", "{letter:?}");
        let info = client.get(&letter.task_id, false).await?;
        assert_eq!(info.state(), TaskState::Failed, "{info:?}");
    }
    // Each tick is its own task with its own letter.
    let mut ids: Vec<&str> = dead.iter().map(|d| d.task_id.as_str()).collect();
    ids.dedup();
    assert_eq!(ids.len(), dead.len(), "{dead:?}");
    eventually("the ticks' tasks to leave the queue", WAIT, || async {
        taskwire_testing::tasks_in_stream(&nats.url())
            .await
            .is_ok_and(|n| n == 0)
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_result_larger_than_the_broker_takes_fails_the_task_for_good() -> anyhow::Result<()> {
    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    let _worker = Worker::start(&nats.url(), |w| w.serve(tasks::chaos())).await?;
    let client = Client::connect(gateway.url()).await?;

    let handle = client
        .submit::<SleepResult>(
            SLEEP,
            &SleepArgs {
                millis: 1,
                label: format!("{}-1", tasks::OVERSIZED_RESULT),
            },
            SubmitOptions::default(),
        )
        .await?;
    let info = client.wait(handle.id(), WAIT, false).await?;
    assert_eq!(info.state(), TaskState::Failed, "{info:?}");
    let error = info.error.unwrap_or_default();
    assert!(
        error.message.contains("result could not be stored") && !error.retryable,
        "{error:?}"
    );
    let dead: Vec<_> = client
        .dead_letters(SLEEP, 100)
        .await?
        .into_iter()
        .filter(|d| d.task_id == handle.id())
        .collect();
    assert_eq!(dead.len(), 1, "{dead:?}");
    eventually("the task to leave the queue", WAIT, || async {
        taskwire_testing::tasks_in_stream(&nats.url())
            .await
            .is_ok_and(|n| n == 0)
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_gateway_refuses_a_max_payload_the_server_would_refuse() -> anyhow::Result<()> {
    let nats = NatsServer::start_temporary().await?;
    let mut config = examples_config(&nats.url());
    config.max_payload = 4 * 1024 * 1024;
    let err = Gateway::start_with(config)
        .await
        .expect_err("over the server's max_payload");
    let text = format!("{err:#}");
    assert!(
        text.contains("TASKWIRE_MAX_PAYLOAD") && text.contains("max_payload"),
        "{text}"
    );
    Ok(())
}

#[tokio::test]
async fn concurrent_replays_give_one_new_series_and_never_erase_a_success() -> anyhow::Result<()> {
    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    let _worker = Worker::start(&nats.url(), |w| w.serve(tasks::chaos())).await?;
    let client = Client::connect(gateway.url()).await?;

    // Fails on its first series (one attempt), succeeds on the run after: each run of the key
    // is counted by the worker.
    let args = FlakyArgs {
        succeed_on_attempt: 2,
        key: "replayed-once".into(),
        ..Default::default()
    };
    let handle = client
        .submit::<FlakyResult>(FLAKY, &args, SubmitOptions::default().max_attempts(1))
        .await?;
    let info = client.wait(handle.id(), WAIT, false).await?;
    assert_eq!(info.state(), TaskState::Failed);

    let id = handle.id().to_owned();
    let replays = (0..4).map(|_| {
        let client = client.clone();
        let id = id.clone();
        tokio::spawn(async move { client.replay_dead_letters(vec![id], "", false).await })
    });
    let mut replayed = 0;
    for replay in futures::future::join_all(replays).await {
        match replay? {
            Ok(ids) if ids == vec![id.clone()] => replayed += 1,
            Ok(other) => anyhow::bail!("replayed {other:?}"),
            // A replay that came after another deleted the letter finds none, or finds the
            // new series succeeded already.
            Err(e) => assert!(
                matches!(
                    e.code(),
                    Some(tonic::Code::NotFound | tonic::Code::FailedPrecondition)
                ),
                "{e}"
            ),
        }
    }
    assert!(replayed >= 1);
    eventually("the replay to succeed", WAIT, || async {
        handle
            .state()
            .await
            .is_ok_and(|s| s == TaskState::Succeeded)
    })
    .await?;
    // Exactly one new series ran: the key's second run succeeded and nothing ran after it.
    eventually("the queue to be empty", WAIT, || async {
        taskwire_testing::tasks_in_stream(&nats.url())
            .await
            .is_ok_and(|n| n == 0)
    })
    .await?;
    assert_eq!(handle.state().await?, TaskState::Succeeded);
    assert!(dead_letters_of(&client, &id).await?.is_empty());

    // A replay never erases a success: there is no dead letter left to replay, and the
    // success stays.
    let again = client
        .replay_dead_letters(vec![id.clone()], "", false)
        .await;
    assert_eq!(
        again.expect_err("nothing to replay").code(),
        Some(tonic::Code::NotFound)
    );
    assert_eq!(handle.state().await?, TaskState::Succeeded);
    Ok(())
}
