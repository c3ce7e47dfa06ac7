//! Where features meet: delayed and scheduled tasks that fail for good, results the broker
//! refuses, idempotency keys across task types and restarts, hostile input. Each case is a
//! promise of the README's guarantees, against a real nats-server, gateway and worker.

use std::time::Duration;

use taskwire::examples::chaos::v1::{FlakyArgs, FlakyResult, SleepArgs, SleepResult};
use taskwire::v1::{self, TaskState};
use taskwire_client::{Client, SubmitOptions};
use taskwire_testing::{Gateway, NatsServer, Worker, eventually, examples_config, tasks};

const WAIT: Duration = Duration::from_secs(30);
const FLAKY: &str = "examples.chaos.v1.Chaos/Flaky";
const SLEEP: &str = "examples.chaos.v1.Chaos/Sleep";

fn failing_for_good() -> FlakyArgs {
    FlakyArgs {
        permanent: true,
        ..Default::default()
    }
}

async fn dead_letters_of(client: &Client, id: &str) -> anyhow::Result<Vec<v1::DeadLetter>> {
    Ok(client
        .dead_letters(FLAKY, 1000)
        .await?
        .into_iter()
        .filter(|d| d.task_id == id)
        .collect())
}

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

/// Values no field should pass on to NATS unchecked: line breaks, control characters, NATS
/// wildcards and separators, a string far over any limit.
fn hostile() -> Vec<String> {
    vec![
        "a b\nc".into(),
        "cr\r\nlf".into(),
        "nul\0".into(),
        "*".into(),
        ">".into(),
        "a.*.b".into(),
        "a.>".into(),
        "..".into(),
        " ".into(),
        "x".repeat(64 * 1024),
    ]
}

/// A status a caller can act on: the call was answered, not torn down or failed inside.
fn clear(what: &str, value: &str, result: Result<(), tonic::Status>) {
    if let Err(status) = result {
        let shown: String = value.chars().take(20).collect();
        assert!(
            !matches!(
                status.code(),
                tonic::Code::Cancelled
                    | tonic::Code::Unknown
                    | tonic::Code::Internal
                    | tonic::Code::Unavailable
            ),
            "{what} = {shown:?}: {status:?}"
        );
        assert!(
            !status.message().is_empty(),
            "{what} = {shown:?}: no message"
        );
    }
}

#[tokio::test]
async fn hostile_values_in_every_field_get_a_clear_status() -> anyhow::Result<()> {
    use v1::admin_client::AdminClient;
    use v1::schedules_client::SchedulesClient;
    use v1::tasks_client::TasksClient;

    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start_with(examples_config(&nats.url())).await?;
    let channel = tonic::transport::Endpoint::from_shared(gateway.url())?
        .connect()
        .await?;
    let mut tasks = TasksClient::new(channel.clone()).max_decoding_message_size(64 << 20);
    let mut admin = AdminClient::new(channel.clone());
    let mut schedules = SchedulesClient::new(channel);
    let submit =
        |task: &str, json: &str, options: v1::SubmitOptions, hash: &str| v1::SubmitRequest {
            task: task.into(),
            args: Some(v1::submit_request::Args::ArgsJson(json.into())),
            options: Some(options),
            descriptor_hash: hash.into(),
        };
    let sleep_args = r#"{"millis":1}"#;

    for value in hostile() {
        let v = value.as_str();
        clear(
            "SubmitRequest.task",
            v,
            tasks
                .submit(submit(v, sleep_args, Default::default(), ""))
                .await
                .map(drop),
        );
        let keyed = tasks
            .submit(submit(
                SLEEP,
                sleep_args,
                v1::SubmitOptions {
                    idempotency_key: value.clone(),
                    ..Default::default()
                },
                "",
            ))
            .await
            .map(drop);
        clear("SubmitOptions.idempotency_key", v, keyed.clone());
        if v.chars().any(char::is_control) || v.len() > 256 {
            assert_eq!(
                keyed.expect_err("a bad key").code(),
                tonic::Code::InvalidArgument
            );
        }
        clear(
            "SubmitRequest.descriptor_hash",
            v,
            tasks
                .submit(submit(SLEEP, sleep_args, Default::default(), v))
                .await
                .map(drop),
        );
        clear(
            "SubmitRequest.args_json",
            v,
            tasks
                .submit(submit(SLEEP, v, Default::default(), ""))
                .await
                .map(drop),
        );
        clear(
            "GetRequest.task_id",
            v,
            tasks
                .get(v1::GetRequest {
                    task_id: value.clone(),
                    ..Default::default()
                })
                .await
                .map(drop),
        );
        clear(
            "WaitRequest.task_id",
            v,
            tasks
                .wait(v1::WaitRequest {
                    task_id: value.clone(),
                    ..Default::default()
                })
                .await
                .map(drop),
        );
        clear(
            "CancelRequest.task_id",
            v,
            tasks
                .cancel(v1::CancelRequest {
                    task_id: value.clone(),
                })
                .await
                .map(drop),
        );
        clear(
            "WatchRequest.task_id",
            v,
            tasks
                .watch(v1::WatchRequest {
                    task_id: value.clone(),
                    ..Default::default()
                })
                .await
                .map(drop),
        );
        clear(
            "GetTaskHistoryRequest.task_id",
            v,
            admin
                .get_task_history(v1::GetTaskHistoryRequest {
                    task_id: value.clone(),
                })
                .await
                .map(drop),
        );
        clear(
            "ListDeadLettersRequest.task",
            v,
            admin
                .list_dead_letters(v1::ListDeadLettersRequest {
                    task: value.clone(),
                    limit: 10,
                })
                .await
                .map(drop),
        );
        clear(
            "ReplayDeadLettersRequest",
            v,
            admin
                .replay_dead_letters(v1::ReplayDeadLettersRequest {
                    task_ids: vec![value.clone()],
                    task: value.clone(),
                    all: false,
                })
                .await
                .map(drop),
        );
        clear(
            "PurgeDeadLettersRequest.task",
            v,
            admin
                .purge_dead_letters(v1::PurgeDeadLettersRequest {
                    task: value.clone(),
                })
                .await
                .map(drop),
        );
        clear(
            "GetTaskLimitsRequest.task",
            v,
            admin
                .get_task_limits(v1::GetTaskLimitsRequest {
                    task: value.clone(),
                })
                .await
                .map(drop),
        );
        clear(
            "SetTaskLimitsRequest",
            v,
            admin
                .set_task_limits(v1::SetTaskLimitsRequest {
                    task: "examples.chaos.v1.Chaos/Limited".into(),
                    limits: Some(v1::TaskLimits {
                        max_concurrency: 1,
                        rate_limit: value.clone(),
                    }),
                    clear: false,
                })
                .await
                .map(drop),
        );
        let schedule = |name: &str, cron: &str| v1::CreateScheduleRequest {
            schedule: Some(v1::Schedule {
                name: name.into(),
                task: SLEEP.into(),
                when: Some(v1::schedule::When::Cron(cron.into())),
                args: Some(v1::schedule::Args::ArgsJson(sleep_args.into())),
                ..Default::default()
            }),
        };
        clear(
            "Schedule.name",
            v,
            schedules.create(schedule(v, "@hourly")).await.map(drop),
        );
        clear(
            "Schedule.cron",
            v,
            schedules
                .create(schedule("hostile-cron", v))
                .await
                .map(drop),
        );
        for (what, call) in [
            ("GetScheduleRequest.name", 0),
            ("PauseScheduleRequest.name", 1),
            ("DeleteScheduleRequest.name", 2),
        ] {
            let answered = match call {
                0 => schedules
                    .get(v1::GetScheduleRequest {
                        name: value.clone(),
                    })
                    .await
                    .map(drop),
                1 => schedules
                    .pause(v1::PauseScheduleRequest {
                        name: value.clone(),
                    })
                    .await
                    .map(drop),
                _ => schedules
                    .delete(v1::DeleteScheduleRequest {
                        name: value.clone(),
                    })
                    .await
                    .map(drop),
            };
            clear(what, v, answered);
        }
    }
    // Nothing hostile was stored as a task or a schedule, and the gateway still serves.
    let client = Client::connect(gateway.url()).await?;
    assert!(client.schedules().await?.iter().all(|s| s.name != "*"));
    let ok = client
        .submit_json(SLEEP, sleep_args, SubmitOptions::default())
        .await?;
    assert_eq!(
        client.get(&ok.task_id, false).await?.state(),
        TaskState::Queued
    );
    Ok(())
}

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

#[tokio::test]
async fn a_task_delayed_far_ahead_and_cancelled_never_fires_and_stays_known() -> anyhow::Result<()>
{
    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    let _worker = Worker::start(&nats.url(), |w| w.serve(tasks::chaos())).await?;
    let client = Client::connect(gateway.url()).await?;
    let far = client
        .submit_json(
            SLEEP,
            r#"{"millis":1,"label":"far-ahead"}"#,
            SubmitOptions::default().countdown(Duration::from_secs(29 * 24 * 3600)),
        )
        .await?;
    // Its events are kept for the result TTL only; the broker's schedule of it tells its state
    // for as long as it waits.
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    js.get_stream(taskwire_protocol::EVENTS_STREAM)
        .await?
        .purge()
        .await?;
    let info = client.get(&far.task_id, false).await?;
    assert_eq!(info.state(), TaskState::Scheduled, "{info:?}");
    assert!(info.not_before.is_some());
    let cancelled = client.cancel(&far.task_id).await?;
    assert_eq!(cancelled.state(), TaskState::Cancelled);
    // Taken out of the broker: nothing is left to fire, whatever outlives what.
    eventually("the delayed task to leave the stream", WAIT, || async {
        taskwire_testing::tasks_in_stream(&nats.url())
            .await
            .is_ok_and(|n| n == 0)
    })
    .await?;
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

/// The message schedules the broker holds for a schedule's name (0 or 1 when consistent).
async fn held_schedules(nats: &NatsServer, name: &str) -> anyhow::Result<u64> {
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    let stream = js.get_stream(taskwire_protocol::TASKS_STREAM).await?;
    let info = stream
        .info_with_subjects(format!("taskwire.schedules.{name}"))
        .await?;
    let mut total = 0;
    let mut subjects = info;
    while let Some(entry) = futures::StreamExt::next(&mut subjects).await {
        total += entry?.1 as u64;
    }
    Ok(total)
}

#[tokio::test]
async fn racing_pause_resume_and_delete_never_leave_a_schedule_firing_against_its_definition()
-> anyhow::Result<()> {
    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start_with(examples_config(&nats.url())).await?;
    let client = Client::connect(gateway.url()).await?;
    let schedule = |name: &str| v1::Schedule {
        name: name.into(),
        task: SLEEP.into(),
        when: Some(v1::schedule::When::Cron("@hourly".into())),
        args: Some(v1::schedule::Args::ArgsJson(r#"{"millis":1}"#.into())),
        ..Default::default()
    };
    client.create_schedule(schedule("racing")).await?;
    for _ in 0..10 {
        let (a, b) = (client.clone(), client.clone());
        let (paused, resumed) = tokio::join!(
            async move { a.pause_schedule("racing").await },
            async move { b.resume_schedule("racing").await }
        );
        for outcome in [paused.map(drop), resumed.map(drop)] {
            if let Err(e) = outcome {
                assert_eq!(e.code(), Some(tonic::Code::Aborted), "{e}");
            }
        }
        let definition = client.schedule("racing").await?;
        let held = held_schedules(&nats, "racing").await?;
        assert_eq!(held, u64::from(!definition.paused), "{definition:?}");
    }
    // A delete racing a resume: neither a definition nor a firing schedule is left.
    client.pause_schedule("racing").await?;
    let (a, b) = (client.clone(), client.clone());
    let (_, _) = tokio::join!(
        async move { a.resume_schedule("racing").await },
        async move { b.delete_schedule("racing").await }
    );
    match client.schedule("racing").await {
        Err(e) if e.code() == Some(tonic::Code::NotFound) => {
            assert_eq!(held_schedules(&nats, "racing").await?, 0);
        }
        Ok(definition) => {
            // The delete lost to the resume (it looked before the resume wrote): consistent.
            assert_eq!(
                held_schedules(&nats, "racing").await?,
                u64::from(!definition.paused)
            );
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

#[tokio::test]
async fn max_concurrency_holds_across_a_nats_outage_longer_than_the_slot_lease()
-> anyhow::Result<()> {
    use nix::sys::signal::{Signal, kill};
    use taskwire::examples::chaos::v1::SleepResult as Slept;

    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    let _a = Worker::start(&nats.url(), |w| w.serve(tasks::chaos())).await?;
    let _b = Worker::start(&nats.url(), |w| w.serve(tasks::chaos())).await?;
    let client = Client::connect(gateway.url()).await?;
    let mut handles = Vec::new();
    for i in 0..8 {
        handles.push(
            client
                .submit::<Slept>(
                    "examples.chaos.v1.Chaos/Limited",
                    &SleepArgs {
                        millis: 45_000,
                        label: format!("outage-{i}"),
                    },
                    SubmitOptions::default(),
                )
                .await?,
        );
    }
    eventually("the limit's five tasks to start", WAIT, || async {
        tasks::start_times("outage-").len() >= 5
    })
    .await?;
    // NATS stops answering for longer than a slot's lease (20 s): nobody can refresh a slot.
    let pid = nix::unistd::Pid::from_raw(nats.pid().expect("running") as i32);
    kill(pid, Signal::SIGSTOP)?;
    tokio::time::sleep(Duration::from_secs(25)).await;
    kill(pid, Signal::SIGCONT)?;
    // The tasks whose slots could not be kept were stopped before their leases ran out...
    let stopped = tasks::journal("cancelled")
        .iter()
        .filter(|l| l.starts_with("outage-"))
        .count();
    assert!(stopped >= 5, "{stopped} of the running tasks were stopped");
    // ...so that, whoever takes the slots after the outage, never more than five ran at once.
    eventually(
        "five tasks to run again",
        Duration::from_secs(60),
        || async { tasks::start_times("outage-").len() >= 10 },
    )
    .await?;
    let most = tasks::max_overlap("outage-");
    assert!(most <= 5, "{most} Limited tasks ran at once");
    for handle in &handles {
        let _ = handle.cancel().await;
    }
    Ok(())
}

#[tokio::test]
async fn a_submit_many_call_is_bounded_and_its_answer_never_fails_after_storing()
-> anyhow::Result<()> {
    use v1::tasks_client::TasksClient;

    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start_with(examples_config(&nats.url())).await?;
    let request = |i: usize| {
        taskwire_client::request_json(
            SLEEP,
            &format!(r#"{{"millis":{i}}}"#),
            SubmitOptions::default(),
        )
    };
    let over = taskwire_client::SUBMIT_MANY_CALL + 5;

    // A plain gRPC client that sends more than a call takes: the answer (under the default
    // 4 MiB limit) covers what was read, and nothing past it was stored.
    let channel = tonic::transport::Endpoint::from_shared(gateway.url())?
        .connect()
        .await?;
    let requests: Vec<v1::SubmitRequest> = (0..over).map(request).collect();
    let answer = TasksClient::new(channel)
        .submit_many(futures::stream::iter(requests))
        .await?
        .into_inner();
    assert_eq!(answer.results.len(), taskwire_client::SUBMIT_MANY_CALL);
    assert_eq!(answer.submitted as usize, taskwire_client::SUBMIT_MANY_CALL);
    assert_eq!(
        taskwire_testing::tasks_in_stream(&nats.url()).await? as usize,
        taskwire_client::SUBMIT_MANY_CALL
    );

    // The Rust client splits a larger batch: every task answered, every one stored.
    let client = Client::connect(gateway.url()).await?;
    let answer = client.submit_many((0..over).map(request)).await?;
    assert_eq!(answer.results.len(), over);
    assert_eq!(
        answer.submitted as usize,
        over,
        "{:?}",
        answer.results.last()
    );
    assert_eq!(
        taskwire_testing::tasks_in_stream(&nats.url()).await? as usize,
        taskwire_client::SUBMIT_MANY_CALL + over
    );
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
    taskwire_cli::stack::wait_for_task(&gateway.url(), SLEEP, WAIT).await?;
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
