//! Panics and retryable errors, up to `max_attempts`.

use super::*;

#[tokio::test]
async fn a_panic_fails_the_task_and_the_worker_goes_on() -> anyhow::Result<()> {
    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    let _worker = Worker::start(&nats.url(), |w| {
        w.serve(tasks::magic()).serve(tasks::chaos())
    })
    .await?;
    let client = Client::connect(gateway.url()).await?;

    let handle = client
        .submit::<PanicResult>(
            "examples.chaos.v1.Chaos/Panic",
            &PanicArgs {
                message: "boom at the bottom".into(),
            },
            SubmitOptions::default(),
        )
        .await?;
    let err = handle.get(WAIT).await.expect_err("a panicking task fails");
    assert!(
        matches!(&err, taskwire_client::Error::TaskFailed { message, retryable: false, .. } if message.contains("boom at the bottom")),
        "{err}"
    );
    assert_eq!(handle.state().await?, TaskState::Failed);
    let info = handle.info().await?;
    assert_eq!(info.attempt, 1, "a panic is not retried");

    let magic = MagicClient::new(client);
    assert_eq!(
        magic
            .add(AddArgs {
                arg1: 1,
                arg2: 2,
                arg3: 3
            })
            .await?
            .get(WAIT)
            .await?
            .sum,
        6
    );
    Ok(())
}

#[tokio::test]
async fn retryable_errors_retry_up_to_max_attempts() -> anyhow::Result<()> {
    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    let _worker = Worker::start(&nats.url(), |w| w.serve(tasks::chaos())).await?;
    let chaos = ChaosClient::connect(gateway.url()).await?;

    // Flaky declares max_attempts: 3 and a 100ms backoff in its proto.
    let second = chaos
        .flaky(FlakyArgs {
            succeed_on_attempt: 2,
            permanent: false,
            ..Default::default()
        })
        .await?;
    assert_eq!(second.get(WAIT).await?, FlakyResult { attempt: 2 });

    let never = chaos
        .flaky(FlakyArgs {
            succeed_on_attempt: 0,
            permanent: false,
            ..Default::default()
        })
        .await?;
    let err = never.get(WAIT).await.expect_err("runs out of attempts");
    assert!(
        matches!(
            &err,
            taskwire_client::Error::TaskFailed {
                retryable: true,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(never.info().await?.attempt, 3);

    let permanent = chaos
        .flaky(FlakyArgs {
            succeed_on_attempt: 2,
            permanent: true,
            ..Default::default()
        })
        .await?;
    let err = permanent.get(WAIT).await.expect_err("fails at once");
    assert!(
        matches!(
            &err,
            taskwire_client::Error::TaskFailed {
                retryable: false,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(permanent.info().await?.attempt, 1);

    let one_attempt = chaos
        .flaky_with(
            FlakyArgs {
                succeed_on_attempt: 2,
                permanent: false,
                ..Default::default()
            },
            SubmitOptions::default().max_attempts(1),
        )
        .await?;
    one_attempt
        .get(WAIT)
        .await
        .expect_err("the submit option allows one attempt");
    assert_eq!(one_attempt.info().await?.attempt, 1);
    Ok(())
}

/// A delivery that failed a task for good stored its dead letter and stopped before its failed
/// result (the worker killed in between); the task's time then ran out. The next delivery does
/// not end it `expired` beside its letter: it ends `failed`, as the letter says.
#[tokio::test]
async fn a_task_whose_letter_is_stored_fails_as_it_says_though_its_time_ran_out()
-> anyhow::Result<()> {
    let nats = NatsServer::start_temporary().await?;
    let gateway = gateway_knowing_examples(&nats).await?;
    let client = Client::connect(gateway.url()).await?;
    let handle = client
        .submit::<FlakyResult>(
            "examples.chaos.v1.Chaos/Flaky",
            &FlakyArgs {
                permanent: true,
                ..Default::default()
            },
            SubmitOptions {
                ttl: Some(Duration::from_secs(1)),
                ..Default::default()
            },
        )
        .await?;
    // The letter the killed delivery stored, as a worker stores it.
    let name = taskwire::task::Name::parse("examples.chaos.v1.Chaos/Flaky")?;
    let id = taskwire::task::Id::parse(handle.id())?;
    let letter = taskwire_protocol::DeadLetter::of(
        None,
        &name,
        &id,
        1,
        taskwire_protocol::DeadReason::Permanent,
        "flaky: failed for good before the kill",
    );
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    js.publish_with_headers(
        taskwire_protocol::subject::dead(&name, &id),
        letter.to_headers(),
        Default::default(),
    )
    .await?
    .await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let _worker = Worker::start(&nats.url(), |w| w.serve(tasks::chaos())).await?;
    let info = client.wait(handle.id(), WAIT, false).await?;
    assert_eq!(info.state(), TaskState::Failed, "{info:?}");
    assert_eq!(
        info.error.map(|e| e.message).unwrap_or_default(),
        "flaky: failed for good before the kill"
    );
    let letters = client
        .dead_letters("examples.chaos.v1.Chaos/Flaky", 10)
        .await?;
    assert_eq!(letters.len(), 1, "{letters:?}");
    Ok(())
}
