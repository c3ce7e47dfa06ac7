//! Dead letters and poison messages, against a real nats-server and real workers.

use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use taskwire::v1::TaskState;
use taskwire_client::{Client, SubmitOptions};
use taskwire_examples::chaos::v1::ChaosClient;
use taskwire_examples::chaos::v1::{FlakyArgs, FlakyResult, PanicArgs, SleepArgs};
use taskwire_examples::magic::v1::AddArgs;
use taskwire_examples::magic::v1::MagicClient;
use taskwire_testing::{Gateway, NatsServer, Worker, bin, eventually, tasks};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn tasks_that_fail_for_good_become_dead_letters_and_replay() -> anyhow::Result<()> {
    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    let _worker = Worker::start(&nats.url(), |w| w.serve(tasks::chaos())).await?;
    let client = Client::connect(gateway.url()).await?;
    let chaos = ChaosClient::new(client.clone());

    // One run allowed, and the first run of key "k" fails: dead, reason exhausted.
    let exhausted = chaos
        .flaky_with(
            FlakyArgs {
                succeed_on_attempt: 2,
                key: "k".into(),
                ..Default::default()
            },
            SubmitOptions::default().max_attempts(1),
        )
        .await?;
    exhausted.get(WAIT).await.expect_err("fails");
    let permanent = chaos
        .flaky(FlakyArgs {
            permanent: true,
            ..Default::default()
        })
        .await?;
    permanent.get(WAIT).await.expect_err("fails");
    let panicked = chaos
        .panic(PanicArgs {
            message: "kaput".into(),
        })
        .await?;
    panicked.get(WAIT).await.expect_err("fails");

    let dead = client.dead_letters("", 0).await?;
    let reasons: Vec<(&str, &str)> = dead
        .iter()
        .map(|d| (d.task_id.as_str(), d.reason.as_str()))
        .collect();
    assert_eq!(
        reasons,
        [
            (exhausted.id(), "exhausted"),
            (permanent.id(), "permanent"),
            (panicked.id(), "panic"),
        ]
    );
    assert!(dead[2].error.contains("kaput"), "{:?}", dead[2]);
    assert_eq!(
        client
            .dead_letters("examples.chaos.v1.Chaos/Panic", 0)
            .await?
            .len(),
        1
    );

    // The command line lists the same, one JSON object a line.
    let out = tokio::process::Command::new(bin("taskwire")?)
        .args(["dead", "list", "examples.chaos.v1.Chaos/Flaky"])
        .env("TASKWIRE_GATEWAY_URL", gateway.url())
        .stdin(Stdio::null())
        .output()
        .await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["id"], exhausted.id());

    // Replay: same id, new series of attempts; the second run of "k" succeeds.
    let replayed = client
        .replay_dead_letters(vec![exhausted.id().to_owned()], "", false)
        .await?;
    assert_eq!(replayed, [exhausted.id()]);
    assert_eq!(exhausted.get(WAIT).await?, FlakyResult { attempt: 1 });
    assert_eq!(exhausted.state().await?, TaskState::Succeeded);
    assert_eq!(client.dead_letters("", 0).await?.len(), 2);
    let again = client
        .replay_dead_letters(vec![exhausted.id().to_owned()], "", false)
        .await
        .expect_err("no longer dead");
    assert_eq!(again.code(), Some(Code::NotFound));
    let neither = client
        .replay_dead_letters(vec![], "", false)
        .await
        .expect_err("nothing named");
    assert_eq!(neither.code(), Some(Code::InvalidArgument));

    assert_eq!(
        client
            .purge_dead_letters("examples.chaos.v1.Chaos/Panic")
            .await?,
        1
    );
    assert_eq!(client.purge_dead_letters("").await?, 1);
    assert!(client.dead_letters("", 0).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn poison_messages_go_to_dead_letters_and_the_worker_goes_on() -> anyhow::Result<()> {
    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    let _worker = Worker::start(&nats.url(), |w| w.serve(tasks::magic())).await?;
    let client = Client::connect(gateway.url()).await?;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    let subject = "taskwire.tasks.examples.magic.v1.Magic.Add";

    // No task id at all.
    js.publish(subject, Bytes::from_static(b"not a task"))
        .await?
        .await?;
    // A task id, but arguments that are not an AddArgs.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Taskwire-Task-Id", "poisoned1");
    headers.insert("Taskwire-Task", "examples.magic.v1.Magic/Add");
    js.publish_with_headers(subject, headers, Bytes::from_static(&[0x08]))
        .await?
        .await?;

    eventually("both are dead letters", WAIT, || async {
        client
            .dead_letters("", 0)
            .await
            .map(|d| d.len())
            .unwrap_or(0)
            == 2
    })
    .await?;
    let dead = client.dead_letters("", 0).await?;
    assert!(dead.iter().all(|d| d.reason == "poison"), "{dead:?}");
    assert!(dead[0].task_id.starts_with("poison-"), "{dead:?}");
    assert_eq!(dead[1].task_id, "poisoned1");
    assert_eq!(
        client.get("poisoned1", false).await?.state(),
        TaskState::Failed
    );

    let magic = MagicClient::new(client);
    assert_eq!(
        magic
            .add_and_wait(
                AddArgs {
                    arg1: 1,
                    arg2: 2,
                    arg3: 3
                },
                WAIT
            )
            .await?
            .sum,
        6
    );
    // Acks travel after results: give the last one a moment.
    eventually("nothing left stuck in the work queue", WAIT, || async {
        match js.get_stream("TASKWIRE_TASKS").await {
            Ok(mut stream) => stream.info().await.is_ok_and(|i| i.state.messages == 0),
            Err(_) => false,
        }
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_time_limit_stops_a_hung_task_and_counts_as_a_retryable_failure() -> anyhow::Result<()> {
    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    let _worker = Worker::start(&nats.url(), |w| w.serve(tasks::chaos())).await?;
    let client = Client::connect(gateway.url()).await?;
    let chaos = ChaosClient::new(client.clone());
    let options = SubmitOptions::default()
        .timeout(Duration::from_millis(200))
        .max_attempts(2)
        .backoff(Duration::from_millis(50), Duration::from_millis(50));
    let hung = chaos
        .sleep_with(
            SleepArgs {
                millis: 60_000,
                label: "hung".into(),
            },
            options,
        )
        .await?;
    let err = hung.get(WAIT).await.expect_err("stopped at the time limit");
    assert!(
        matches!(&err, taskwire_client::Error::TaskFailed { message, retryable: true, .. } if message.contains("timed out")),
        "{err}"
    );
    assert_eq!(
        hung.info().await?.attempt,
        2,
        "the timeout was retried once"
    );
    let dead = client.dead_letters("", 0).await?;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].reason, "timeout");
    Ok(())
}

#[tokio::test]
async fn a_task_five_times_longer_than_the_ack_wait_runs_once() -> anyhow::Result<()> {
    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    let _worker = Worker::start(&nats.url(), |w| {
        w.serve(tasks::chaos()).ack_wait(Duration::from_millis(600))
    })
    .await?;
    let chaos = ChaosClient::connect(gateway.url()).await?;
    let long = chaos
        .sleep(SleepArgs {
            millis: 3000,
            label: "long".into(),
        })
        .await?;
    let result = long.get(WAIT).await?;
    assert_eq!(
        result.attempt, 1,
        "in-progress acks kept it from redelivery"
    );
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    let mut stream = js.get_stream("TASKWIRE_TASKS").await?;
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = stream
        .get_consumer("examples-chaos-v1-Chaos-Sleep")
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let info = consumer.info().await?;
    assert_eq!(info.config.ack_wait, Duration::from_millis(600));
    assert_eq!(info.num_redelivered, 0);
    assert_eq!(stream.info().await?.state.messages, 0);
    Ok(())
}

#[tokio::test]
async fn an_args_field_can_be_the_idempotency_key() -> anyhow::Result<()> {
    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    let _worker = Worker::start(&nats.url(), |w| w.serve(tasks::chaos())).await?;
    let client = Client::connect(gateway.url()).await?;
    let charge = |order: &'static str| {
        let client = client.clone();
        async move {
            client
                .submit_json(
                    "examples.chaos.v1.Chaos/Charge",
                    &format!(r#"{{"orderId":"{order}","cents":100}}"#),
                    SubmitOptions::default(),
                )
                .await
        }
    };
    let first = charge("A-1").await?;
    let again = charge("A-1").await?;
    let other = charge("B-2").await?;
    assert_eq!(first.task_id, again.task_id);
    assert!(again.duplicate);
    assert_ne!(first.task_id, other.task_id);
    Ok(())
}

#[tokio::test]
async fn a_full_queue_refuses_tasks_and_keeps_nothing_of_them() -> anyhow::Result<()> {
    let nats = NatsServer::start_temporary().await?;
    let mut config = taskwire_testing::examples_config(&nats.url());
    config.broker.max_queued = 3;
    let gateway = Gateway::start_with(config).await?;
    let magic = MagicClient::connect(gateway.url()).await?;
    let mut accepted = Vec::new();
    for i in 0..3 {
        accepted.push(
            magic
                .add(AddArgs {
                    arg1: i,
                    arg2: 0,
                    arg3: 0,
                })
                .await?,
        );
    }
    let full = magic
        .add(AddArgs {
            arg1: 9,
            arg2: 0,
            arg3: 0,
        })
        .await
        .expect_err("the queue is full");
    assert_eq!(full.code(), Some(Code::ResourceExhausted), "{full}");
    assert!(full.to_string().contains("queue is full"), "{full}");
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    let count = |name: &'static str| {
        let js = js.clone();
        async move {
            js.get_stream(name)
                .await?
                .info()
                .await
                .map(|i| i.state.messages)
                .map_err(anyhow::Error::from)
        }
    };
    assert_eq!(count("TASKWIRE_TASKS").await?, 3);
    assert_eq!(
        count("TASKWIRE_EVENTS").await?,
        3,
        "no queued event of the refused task"
    );

    let _worker = Worker::start(&nats.url(), |w| w.serve(tasks::magic())).await?;
    for (i, handle) in accepted.iter().enumerate() {
        assert_eq!(handle.get(WAIT).await?.sum, i as i64);
    }
    Ok(())
}

#[tokio::test]
async fn a_second_signal_releases_running_tasks_to_other_workers() -> anyhow::Result<()> {
    let nats = NatsServer::start_temporary().await?;
    let config = taskwire_testing::examples_config(&nats.url());
    let gateway = Gateway::start_with(config).await?;
    let client = Client::connect(gateway.url()).await?;
    let chaos = ChaosClient::new(client.clone());
    let mut worker = taskwire_testing::worker_process(
        &nats.url(),
        &[("TASKWIRE_ACK_WAIT", "60s"), ("TASKWIRE_GRACE", "60s")],
    )?;
    // Long enough that a drain slowed by a busy machine still ends before it does.
    let slow = chaos
        .sleep(SleepArgs {
            millis: 8_000,
            label: "handed over".into(),
        })
        .await?;
    eventually("the worker runs the task", WAIT, || async {
        client.get(slow.id(), false).await.map(|i| i.state()).ok() == Some(TaskState::Running)
    })
    .await?;
    let pid = nix::unistd::Pid::from_raw(worker.id().expect("running") as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
    // The first signal starts a drain of up to 60s; the second ends it now. (A second signal
    // that comes before the worker has taken the first is one with it, as signals are: on a
    // busy machine it is sent again until the worker is gone.)
    let deadline = tokio::time::Instant::now() + WAIT;
    let status = loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        if let Some(status) = worker.try_wait()? {
            break status;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the worker did not stop"
        );
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
    };
    assert!(status.success(), "{status}");
    assert_ne!(
        slow.state().await?,
        TaskState::Succeeded,
        "it was released, not finished"
    );

    // Released with a NAK: another worker gets it without waiting out the 60s ack wait.
    let _other = Worker::start(&nats.url(), |w| w.serve(tasks::chaos())).await?;
    let result = slow.get(WAIT).await?;
    assert_eq!(result.attempt, 2);
    Ok(())
}
