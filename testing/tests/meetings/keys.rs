//! Idempotency keys: per task type, across broker restarts, while the task waits, runs, or
//! was replayed.

use super::*;

#[tokio::test]
async fn an_idempotency_key_belongs_to_its_task_type_and_outlives_a_broker_restart()
-> anyhow::Result<()> {
    let mut nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start_with(examples_config(&nats.url())).await?;
    let _worker = Worker::start(&nats.url(), |w| {
        w.serve(tasks::magic()).serve(tasks::chaos())
    })
    .await?;
    let client = Client::connect(gateway.url()).await?;
    let keyed = || SubmitOptions::default().idempotency_key("42");

    let add = client
        .submit_json(
            "examples.magic.v1.Magic/Add",
            r#"{"arg1":1,"arg2":2}"#,
            keyed(),
        )
        .await?;
    assert!(!add.duplicate);
    // The same key for another task type is another task, which runs.
    let charge = client
        .submit_json(
            "examples.chaos.v1.Chaos/Charge",
            r#"{"order_id":"42","cents":5}"#,
            SubmitOptions::default(),
        )
        .await?;
    assert!(!charge.duplicate, "a key of Magic/Add swallowed a Charge");
    assert_ne!(add.task_id, charge.task_id);
    for id in [&add.task_id, &charge.task_id] {
        let info = client.wait(id, WAIT, false).await?;
        assert_eq!(info.state(), TaskState::Succeeded, "{info:?}");
    }

    // After a restart of the broker (which forgets its duplicate window for consumed tasks),
    // each key still answers its own task, and nothing new is stored or run.
    nats.restart().await?;
    let again = |task: &'static str, json: &'static str, options: SubmitOptions| {
        let client = client.clone();
        async move {
            loop {
                match client.submit_json(task, json, options.clone()).await {
                    Err(e) if e.code() == Some(tonic::Code::Unavailable) => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    other => return other,
                }
            }
        }
    };
    let add_again = tokio::time::timeout(
        WAIT,
        again(
            "examples.magic.v1.Magic/Add",
            r#"{"arg1":1,"arg2":2}"#,
            keyed(),
        ),
    )
    .await??;
    assert_eq!(add_again.task_id, add.task_id);
    assert!(add_again.duplicate);
    let charge_again = again(
        "examples.chaos.v1.Chaos/Charge",
        r#"{"order_id":"42","cents":5}"#,
        SubmitOptions::default(),
    )
    .await?;
    assert_eq!(charge_again.task_id, charge.task_id);
    assert!(charge_again.duplicate);
    assert_eq!(taskwire_testing::tasks_in_stream(&nats.url()).await?, 0);
    assert_eq!(
        client.get(&add.task_id, false).await?.state(),
        TaskState::Succeeded
    );
    Ok(())
}

#[tokio::test]
async fn a_key_resubmitted_while_its_task_waits_or_runs_answers_that_task() -> anyhow::Result<()> {
    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start_with(examples_config(&nats.url())).await?;
    let client = Client::connect(gateway.url()).await?;
    let keyed = || SubmitOptions::default().idempotency_key("only-once");
    let args = r#"{"millis":1500,"label":"keyed-once"}"#;

    // Queued, no worker yet.
    let first = client.submit_json(SLEEP, args, keyed()).await?;
    let queued = client.submit_json(SLEEP, args, keyed()).await?;
    assert_eq!(queued.task_id, first.task_id);
    assert!(queued.duplicate);
    assert_eq!(
        client.get(&first.task_id, false).await?.state(),
        TaskState::Queued
    );

    // Running.
    let _worker = Worker::start(&nats.url(), |w| w.serve(tasks::chaos())).await?;
    eventually("the task to start", WAIT, || async {
        tasks::journal("started").contains(&"keyed-once".to_owned())
    })
    .await?;
    let running = client.submit_json(SLEEP, args, keyed()).await?;
    assert_eq!(running.task_id, first.task_id);
    assert!(running.duplicate);
    let info = client.wait(&first.task_id, WAIT, false).await?;
    assert_eq!(info.state(), TaskState::Succeeded);
    assert_eq!(tasks::journal_count("keyed-once", "started"), 1);

    // Bad keys are refused before anything is stored.
    for bad in ["a b\nc", "tab\there", &"k".repeat(300)] {
        let err = client
            .submit_json(SLEEP, args, SubmitOptions::default().idempotency_key(bad))
            .await
            .expect_err("a bad key");
        assert_eq!(err.code(), Some(tonic::Code::InvalidArgument), "{err}");
        assert!(err.to_string().contains("idempotency key"), "{err}");
    }
    Ok(())
}

#[tokio::test]
async fn a_keyed_delayed_task_that_fired_and_waits_is_not_stored_again() -> anyhow::Result<()> {
    let mut nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start_with(examples_config(&nats.url())).await?;
    let client = Client::connect(gateway.url()).await?;
    let keyed = || {
        SubmitOptions::default()
            .idempotency_key("fired")
            .countdown(Duration::from_secs(1))
    };
    let args = r#"{"millis":1,"label":"fired-once"}"#;
    let first = client.submit_json(SLEEP, args, keyed()).await?;
    // No worker: the broker fires it at its time and it waits in the queue (the fired copy
    // carries no de-duplication id, and a restart forgets the rest of the window).
    eventually("the delayed task to fire", WAIT, || async {
        client
            .get(&first.task_id, false)
            .await
            .is_ok_and(|i| i.state() == TaskState::Queued)
    })
    .await?;
    nats.restart().await?;
    let again = loop {
        match client.submit_json(SLEEP, args, keyed()).await {
            Err(e) if e.code() == Some(tonic::Code::Unavailable) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => break other?,
        }
    };
    assert_eq!(again.task_id, first.task_id);
    assert!(again.duplicate);
    eventually("one task in the stream", WAIT, || async {
        taskwire_testing::tasks_in_stream(&nats.url())
            .await
            .is_ok_and(|n| n == 1)
    })
    .await?;
    let _worker = Worker::start(&nats.url(), |w| w.serve(tasks::chaos())).await?;
    let info = client.wait(&first.task_id, WAIT, false).await?;
    assert_eq!(info.state(), TaskState::Succeeded);
    assert_eq!(tasks::journal_count("fired-once", "started"), 1);
    Ok(())
}

#[tokio::test]
async fn a_key_resubmitted_after_its_task_was_replayed_answers_that_task() -> anyhow::Result<()> {
    let mut nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    let worker = Worker::start(&nats.url(), |w| w.serve(tasks::chaos())).await?;
    let client = Client::connect(gateway.url()).await?;
    let keyed = || SubmitOptions::default().idempotency_key("replayed-key");
    let args = r#"{"permanent":true}"#;
    let first = client.submit_json(FLAKY, args, keyed()).await?;
    let info = client.wait(&first.task_id, WAIT, false).await?;
    assert_eq!(info.state(), TaskState::Failed);
    worker.stop().await?;
    // Back in line with no worker to take it; a restart forgets the duplicate window.
    client
        .replay_dead_letters(vec![first.task_id.clone()], "", false)
        .await?;
    nats.restart().await?;
    let again = loop {
        match client.submit_json(FLAKY, args, keyed()).await {
            Err(e) if e.code() == Some(tonic::Code::Unavailable) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => break other?,
        }
    };
    assert_eq!(again.task_id, first.task_id);
    assert!(
        again.duplicate,
        "the replayed task was stored a second time"
    );
    assert_eq!(taskwire_testing::tasks_in_stream(&nats.url()).await?, 1);
    Ok(())
}
