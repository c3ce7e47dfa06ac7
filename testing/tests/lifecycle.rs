//! What happens to a task after submit: cancel, delays, priorities, expiry, result TTL, progress
//! and Watch, SubmitMany; against a real nats-server, gateway and workers.

use std::process::Stdio;
use std::time::{Duration, SystemTime};

use taskwire::v1::{self, Priority, TaskState};
use taskwire_client::{Client, SubmitOptions, request, request_json};
use taskwire_examples::chaos::v1::ChaosClient;
use taskwire_examples::chaos::v1::{SleepArgs, StepsArgs, StepsDone};
use taskwire_examples::magic::v1::AddArgs;
use taskwire_examples::magic::v1::MagicClient;
use taskwire_testing::{
    Gateway, NatsServer, Worker, bin, eventually, examples_config, tasks, worker_process,
};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(20);

fn sleep(label: &str, millis: u64) -> SleepArgs {
    SleepArgs {
        millis,
        label: label.into(),
    }
}

async fn events_in_stream(nats: &NatsServer) -> anyhow::Result<u64> {
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    let mut stream = js.get_stream(taskwire_protocol::EVENTS_STREAM).await?;
    Ok(stream.info().await?.state.messages)
}

#[tokio::test]
async fn a_task_cancelled_while_queued_never_runs() -> anyhow::Result<()> {
    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start_with(examples_config(&nats.url())).await?;
    let client = Client::connect(gateway.url()).await?;
    let chaos = ChaosClient::new(client.clone());

    // No worker yet: the task waits in the queue, and is cancelled there.
    let doomed = chaos.sleep(sleep("queued-then-cancelled", 10)).await?;
    assert_eq!(doomed.state().await?, TaskState::Queued);
    let cancelled = client.cancel(doomed.id()).await?;
    assert_eq!(cancelled.state(), TaskState::Cancelled);

    // A worker that starts afterwards learns of the cancellation from the broker.
    let _worker = Worker::start(&nats.url(), |w| w.serve(tasks::chaos())).await?;
    let after = chaos.sleep(sleep("after-the-cancelled-one", 10)).await?;
    after.get(WAIT).await?;
    eventually("the cancelled task to leave the queue", WAIT, || async {
        taskwire_testing::tasks_in_stream(&nats.url())
            .await
            .is_ok_and(|n| n == 0)
    })
    .await?;
    let started = tasks::journal("started");
    assert!(
        !started.contains(&"queued-then-cancelled".to_owned()),
        "{started:?}"
    );
    assert_eq!(doomed.state().await?, TaskState::Cancelled);

    // Cancelling it again, or a finished task, is refused.
    let err = client.cancel(after.id()).await.expect_err("finished");
    assert_eq!(err.code(), Some(Code::FailedPrecondition), "{err}");
    assert!(err.to_string().contains("finished already"), "{err}");
    Ok(())
}

#[tokio::test]
async fn a_running_task_observes_its_cancellation() -> anyhow::Result<()> {
    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    let _worker = Worker::start(&nats.url(), |w| w.serve(tasks::chaos())).await?;
    let client = Client::connect(gateway.url()).await?;
    let chaos = ChaosClient::new(client.clone());

    let long = chaos.sleep(sleep("running-then-cancelled", 60_000)).await?;
    eventually("the task to start", WAIT, || async {
        tasks::journal("started").contains(&"running-then-cancelled".to_owned())
    })
    .await?;
    long.cancel().await?;
    eventually("the task to see its token fire", WAIT, || async {
        tasks::journal("cancelled").contains(&"running-then-cancelled".to_owned())
    })
    .await?;
    let info = client.wait(long.id(), WAIT, false).await?;
    assert_eq!(info.state(), TaskState::Cancelled);
    // Acked, not retried: the queue empties, and the task never finished its sleep.
    eventually("the task to leave the queue", WAIT, || async {
        taskwire_testing::tasks_in_stream(&nats.url())
            .await
            .is_ok_and(|n| n == 0)
    })
    .await?;
    assert!(!tasks::journal("finished").contains(&"running-then-cancelled".to_owned()));
    Ok(())
}

#[tokio::test]
async fn a_cancellation_holds_when_the_worker_dies_and_another_takes_the_task() -> anyhow::Result<()>
{
    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    let client = Client::connect(gateway.url()).await?;
    let chaos = ChaosClient::new(client.clone());

    // A worker process starts the task and is killed; the task waits for redelivery.
    let mut first = worker_process(&nats.url(), &[("TASKWIRE_ACK_WAIT", "2s")])?;
    eventually("the worker to register", WAIT, || async {
        client
            .task_types()
            .await
            .is_ok_and(|t| t.iter().any(|t| t.name == "examples.chaos.v1.Chaos/Sleep"))
    })
    .await?;
    let task = chaos.sleep(sleep("killed-then-cancelled", 60_000)).await?;
    eventually("the task to run", WAIT, || async {
        task.state().await.is_ok_and(|s| s == TaskState::Running)
    })
    .await?;
    first.start_kill()?;
    first.wait().await?;
    client.cancel(task.id()).await?;

    // The gateway restarts too; the cancellation lives in the broker.
    gateway.stop().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    let client = Client::connect(gateway.url()).await?;

    // The next worker gets the task after the ack wait, and does not run it.
    let _second = Worker::start(&nats.url(), |w| w.serve(tasks::chaos())).await?;
    eventually("the redelivered task to be dropped", WAIT, || async {
        taskwire_testing::tasks_in_stream(&nats.url())
            .await
            .is_ok_and(|n| n == 0)
    })
    .await?;
    assert!(!tasks::journal("started").contains(&"killed-then-cancelled".to_owned()));
    assert_eq!(
        client.get(task.id(), false).await?.state(),
        TaskState::Cancelled
    );
    Ok(())
}

#[tokio::test]
async fn a_countdown_task_starts_at_its_time_and_once() -> anyhow::Result<()> {
    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    let _worker = Worker::start(&nats.url(), |w| w.serve(tasks::chaos())).await?;
    let client = Client::connect(gateway.url()).await?;
    let chaos = ChaosClient::new(client.clone());

    let submitted = SystemTime::now();
    let later = chaos
        .sleep_with(
            sleep("counted-down", 1),
            SubmitOptions::default().countdown(Duration::from_secs(2)),
        )
        .await?;
    let info = client.get(later.id(), false).await?;
    assert_eq!(info.state(), TaskState::Scheduled, "{info:?}");
    let due = SystemTime::try_from(info.not_before.expect("a due time"))?;
    assert!(due >= submitted + Duration::from_secs(2), "{due:?}");

    later.get(WAIT).await?;
    let started = tasks::journal_time("counted-down", "started").expect("it ran");
    assert!(
        started >= submitted + Duration::from_secs(2),
        "started {:?} after submit",
        started.duration_since(submitted)
    );
    // Once: one start, and the schedule is gone from the stream.
    let runs = tasks::journal("started")
        .iter()
        .filter(|l| *l == "counted-down")
        .count();
    assert_eq!(runs, 1);
    eventually("the stream to hold nothing", WAIT, || async {
        taskwire_testing::tasks_in_stream(&nats.url())
            .await
            .is_ok_and(|n| n == 0)
    })
    .await?;

    // The command line: --in.
    let out = tokio::process::Command::new(bin("taskwire")?)
        .args([
            "submit",
            "examples.chaos.v1.Chaos/Sleep",
            r#"{"millis":1}"#,
            "--in",
            "1s",
        ])
        .env("TASKWIRE_GATEWAY_URL", gateway.url())
        .stdin(Stdio::null())
        .output()
        .await?;
    assert!(out.status.success(), "{out:?}");
    let id = String::from_utf8(out.stdout)?.trim().to_owned();
    assert_eq!(client.get(&id, false).await?.state(), TaskState::Scheduled);
    Ok(())
}

#[tokio::test]
async fn higher_priority_tasks_start_first_under_a_backlog() -> anyhow::Result<()> {
    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start_with(examples_config(&nats.url())).await?;
    let client = Client::connect(gateway.url()).await?;
    let chaos = ChaosClient::new(client.clone());

    // The backlog builds up while no worker runs: low, normal and high, interleaved.
    let mut handles = Vec::new();
    for i in 0..5 {
        for (priority, name) in [
            (Priority::Low, "low"),
            (Priority::Normal, "normal"),
            (Priority::High, "high"),
        ] {
            handles.push(
                chaos
                    .sleep_with(
                        sleep(&format!("prio-{name}-{i}"), 20),
                        SubmitOptions::default().priority(priority),
                    )
                    .await?,
            );
        }
    }
    let _worker = Worker::start(&nats.url(), |w| w.serve(tasks::chaos()).concurrency(1)).await?;
    for handle in &handles {
        handle.get(WAIT).await?;
    }
    let order: Vec<String> = tasks::journal("started")
        .into_iter()
        .filter(|l| l.starts_with("prio-"))
        .collect();
    assert_eq!(order.len(), 15, "{order:?}");
    // Every high task starts before any other.
    assert!(
        order[..5].iter().all(|l| l.starts_with("prio-high")),
        "{order:?}"
    );
    // Normal comes before low, but low is not starved: one pull in eight starts at low.
    let mean = |level: &str| {
        let at: Vec<usize> = (0..order.len())
            .filter(|i| order[*i].starts_with(level))
            .collect();
        at.iter().sum::<usize>() as f64 / at.len() as f64
    };
    assert!(mean("prio-normal") < mean("prio-low"), "{order:?}");
    let first_low = order.iter().position(|l| l.starts_with("prio-low"));
    assert!(first_low.is_some_and(|p| p < 14), "{order:?}");
    Ok(())
}

#[tokio::test]
async fn an_expired_task_never_runs() -> anyhow::Result<()> {
    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start_with(examples_config(&nats.url())).await?;
    let client = Client::connect(gateway.url()).await?;
    let chaos = ChaosClient::new(client.clone());

    let stale = chaos
        .sleep_with(
            sleep("expired-in-queue", 1),
            SubmitOptions::default().ttl(Duration::from_secs(1)),
        )
        .await?;
    eventually("the task to expire", WAIT, || async {
        stale.state().await.is_ok_and(|s| s == TaskState::Expired)
    })
    .await?;

    let _worker = Worker::start(&nats.url(), |w| w.serve(tasks::chaos())).await?;
    let err = stale.get(WAIT).await.expect_err("expired");
    assert!(
        matches!(err, taskwire_client::Error::Expired { .. }),
        "{err}"
    );
    eventually("the queue to empty", WAIT, || async {
        taskwire_testing::tasks_in_stream(&nats.url())
            .await
            .is_ok_and(|n| n == 0)
    })
    .await?;
    assert!(!tasks::journal("started").contains(&"expired-in-queue".to_owned()));
    Ok(())
}

#[tokio::test]
async fn a_result_kept_for_its_ttl_then_not_found_as_expired() -> anyhow::Result<()> {
    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    let _worker = Worker::start(&nats.url(), |w| w.serve(tasks::magic())).await?;
    let client = Client::connect(gateway.url()).await?;
    let magic = MagicClient::new(client.clone());

    let short = magic
        .add_with(
            AddArgs {
                arg1: 1,
                ..Default::default()
            },
            SubmitOptions::default().result_ttl(Duration::from_secs(1)),
        )
        .await?;
    assert_eq!(short.get(WAIT).await?.sum, 1);
    let kept = magic.add(AddArgs::default()).await?;
    kept.get(WAIT).await?;
    eventually("the short-lived result to expire", WAIT, || async {
        client.get(short.id(), false).await.is_err()
    })
    .await?;
    let err = client.get(short.id(), false).await.expect_err("expired");
    assert_eq!(err.code(), Some(Code::NotFound), "{err}");
    assert!(err.to_string().contains("expired"), "{err}");
    // The other result is still there.
    assert_eq!(
        client.get(kept.id(), false).await?.state(),
        TaskState::Succeeded
    );
    Ok(())
}

#[tokio::test]
async fn watch_streams_every_state_and_progress_in_order() -> anyhow::Result<()> {
    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    let _worker = Worker::start(&nats.url(), |w| w.serve(tasks::chaos())).await?;
    let client = Client::connect(gateway.url()).await?;
    let chaos = ChaosClient::new(client.clone());

    let task = chaos
        .steps(StepsArgs {
            steps: 4,
            step_millis: 200,
            label: "watched".into(),
        })
        .await?;
    let mut watch = task.watch().await?;
    let mut seen = Vec::new();
    while let Some(info) = watch.next().await? {
        seen.push(info);
    }
    let states: Vec<TaskState> = seen.iter().map(|i| i.state()).collect();
    assert_eq!(states.last(), Some(&TaskState::Succeeded), "{states:?}");
    // States only move forward: queued, running..., succeeded.
    let rank = |s: &TaskState| match s {
        TaskState::Queued => 0,
        TaskState::Running => 1,
        _ => 2,
    };
    assert!(
        states.windows(2).all(|w| rank(&w[0]) <= rank(&w[1])),
        "{states:?}"
    );
    let percents: Vec<f32> = seen
        .iter()
        .filter_map(|i| i.progress.as_ref().map(|p| p.percent))
        .collect();
    assert!(percents.len() >= 3, "{seen:?}");
    assert!(percents.windows(2).all(|w| w[0] < w[1]), "{percents:?}");
    let last = seen
        .iter()
        .rev()
        .find_map(|i| i.progress.clone())
        .expect("progress");
    assert_eq!(last.details_type, "examples.chaos.v1.StepsDone");
    let details = <StepsDone as prost::Message>::decode(last.details.as_slice())?;
    assert_eq!(details.done + details.left, 4);

    // A watcher that joins after the end gets the final state at once.
    let mut late = task.watch().await?;
    let only = late.next().await?.expect("the final state");
    assert_eq!(only.state(), TaskState::Succeeded);
    assert!(late.next().await?.is_none());

    // The command line draws the same and prints the result. The task is held back a moment,
    // so that the command is watching before it starts.
    let task = chaos
        .steps_with(
            StepsArgs {
                steps: 3,
                step_millis: 100,
                label: "watched-by-cli".into(),
            },
            SubmitOptions::default().countdown(Duration::from_secs(2)),
        )
        .await?;
    let out = tokio::process::Command::new(bin("taskwire")?)
        .args(["watch", task.id()])
        .env("TASKWIRE_GATEWAY_URL", gateway.url())
        .stdin(Stdio::null())
        .output()
        .await?;
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8(out.stdout)?.contains("watched-by-cli"),
        "the result is printed"
    );
    let stderr = String::from_utf8(out.stderr)?;
    assert!(
        stderr.contains("scheduled") && stderr.contains("step 3 of 3"),
        "{stderr}"
    );

    let err = client
        .watch("0193f1c2-0000-7000-8000-000000000000", false)
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Some(Code::NotFound), "{err}");
    Ok(())
}

#[tokio::test]
async fn submit_many_stores_each_task_and_refuses_only_the_bad_ones() -> anyhow::Result<()> {
    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    let _worker = Worker::start(&nats.url(), |w| w.serve(tasks::magic())).await?;
    let client = Client::connect(gateway.url()).await?;

    let mut requests: Vec<v1::SubmitRequest> = (0..1000)
        .map(|i| {
            request(
                "examples.magic.v1.Magic/Add",
                &AddArgs {
                    arg1: i,
                    ..Default::default()
                },
                SubmitOptions::default(),
            )
        })
        .collect();
    requests.insert(
        10,
        request_json(
            "examples.nope.v1.Nope/Nothing",
            "{}",
            SubmitOptions::default(),
        ),
    );
    requests.insert(
        20,
        request_json(
            "examples.magic.v1.Magic/Add",
            r#"{"arg1":"one"}"#,
            SubmitOptions::default(),
        ),
    );
    let response = client.submit_many(requests).await?;
    assert_eq!(response.submitted, 1000);
    assert_eq!(response.refused, 2);
    assert_eq!(response.results.len(), 1002);
    assert_eq!(response.results[10].code, Code::NotFound as i32);
    assert_eq!(response.results[20].code, Code::InvalidArgument as i32);
    assert!(
        response.results[20].error.contains("arg1"),
        "{:?}",
        response.results[20]
    );
    for (i, result) in response.results.iter().enumerate() {
        if i != 10 && i != 20 {
            assert!(!result.task_id.is_empty(), "{i}: {result:?}");
        }
    }
    for result in response.results.iter().filter(|r| !r.task_id.is_empty()) {
        let info = client.wait(&result.task_id, WAIT, false).await?;
        assert_eq!(info.state(), TaskState::Succeeded);
    }

    // The command line reads JSON lines; a bad line stops it before anything is sent.
    let dir = tempfile::tempdir()?;
    let good = dir.path().join("good.jsonl");
    std::fs::write(
        &good,
        concat!(
            r#"{"task":"examples.magic.v1.Magic/Add","args":{"arg1":1}}"#,
            "\n",
            r#"{"task":"examples.magic.v1.Magic/Add","args":{"arg1":2},"priority":"high","key":"k-2"}"#,
            "\n"
        ),
    )?;
    let out = tokio::process::Command::new(bin("taskwire")?)
        .args(["submit-many", good.to_str().expect("utf-8")])
        .env("TASKWIRE_GATEWAY_URL", gateway.url())
        .stdin(Stdio::null())
        .output()
        .await?;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8(out.stdout)?.lines().count(), 2);

    let before =
        taskwire_testing::tasks_in_stream(&nats.url()).await? + events_in_stream(&nats).await?;
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        concat!(
            r#"{"task":"examples.magic.v1.Magic/Add","args":{"arg1":1}}"#,
            "\n",
            r#"{"task":"examples.magic.v1.Magic/Add","priority":"urgent"}"#,
            "\n"
        ),
    )?;
    let out = tokio::process::Command::new(bin("taskwire")?)
        .args(["submit-many", bad.to_str().expect("utf-8")])
        .env("TASKWIRE_GATEWAY_URL", gateway.url())
        .stdin(Stdio::null())
        .output()
        .await?;
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr)?;
    assert!(
        stderr.contains("line 2") && stderr.contains("urgent"),
        "{stderr}"
    );
    assert_eq!(
        taskwire_testing::tasks_in_stream(&nats.url()).await? + events_in_stream(&nats).await?,
        before
    );
    Ok(())
}

#[tokio::test]
async fn bad_lifecycle_options_are_refused_naming_the_field() -> anyhow::Result<()> {
    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start_with(examples_config(&nats.url())).await?;
    let client = Client::connect(gateway.url()).await?;

    let negative = prost_types::Duration {
        seconds: -5,
        nanos: 0,
    };
    let past = prost_types::Timestamp::from(SystemTime::now() - Duration::from_secs(600));
    let soon = prost_types::Timestamp::from(SystemTime::now() + Duration::from_secs(60));
    let cases: Vec<(&str, v1::SubmitOptions)> = vec![
        (
            "countdown",
            v1::SubmitOptions {
                countdown: Some(negative),
                ..Default::default()
            },
        ),
        (
            "not_before",
            v1::SubmitOptions {
                not_before: Some(past),
                ..Default::default()
            },
        ),
        (
            "not_before or countdown",
            v1::SubmitOptions {
                not_before: Some(soon),
                countdown: Some(prost_types::Duration {
                    seconds: 5,
                    nanos: 0,
                }),
                ..Default::default()
            },
        ),
        (
            "ttl",
            v1::SubmitOptions {
                ttl: Some(negative),
                ..Default::default()
            },
        ),
        (
            "expires_at",
            v1::SubmitOptions {
                expires_at: Some(past),
                ..Default::default()
            },
        ),
        (
            "result_ttl",
            v1::SubmitOptions {
                result_ttl: Some(negative),
                ..Default::default()
            },
        ),
        (
            "priority",
            v1::SubmitOptions {
                priority: 9,
                ..Default::default()
            },
        ),
    ];
    let mut tasks = taskwire::v1::tasks_client::TasksClient::connect(gateway.url()).await?;
    for (field, options) in cases {
        let err = tasks
            .submit(v1::SubmitRequest {
                task: "examples.magic.v1.Magic/Add".into(),
                args: Some(v1::submit_request::Args::ArgsJson("{}".into())),
                options: Some(options),
                ..Default::default()
            })
            .await
            .expect_err(field);
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert!(err.message().contains(field), "{field}: {}", err.message());
    }
    assert_eq!(taskwire_testing::tasks_in_stream(&nats.url()).await?, 0);
    assert_eq!(events_in_stream(&nats).await?, 0);
    drop(client);
    Ok(())
}
