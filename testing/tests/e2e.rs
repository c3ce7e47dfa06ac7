//! End to end: real nats-server, real gRPC over loopback, real worker processes and signals.

use std::process::Stdio;
use std::time::Duration;

use prost::Message as _;
use taskwire::examples::chaos::v1::{
    FlakyArgs, FlakyResult, PanicArgs, PanicResult, SleepArgs, SleepResult,
};
use taskwire::examples::magic::v1::{AddArgs, AddResult};
use taskwire::v1::tasks_client::TasksClient;
use taskwire::v1::{self, TaskState};
use taskwire_client::examples::chaos::v1::ChaosClient;
use taskwire_client::examples::magic::v1::MagicClient;
use taskwire_client::{Client, SubmitOptions};
use taskwire_testing::{Gateway, NatsServer, Worker, bin, eventually, tasks};
use tokio::process::Command;
use tonic::Code;

const ADD: &str = "examples.magic.v1.Magic/Add";
const WAIT: Duration = Duration::from_secs(20);

/// A gateway that knows every example task from the start, without a worker.
async fn gateway_knowing_examples(nats: &NatsServer) -> anyhow::Result<Gateway> {
    Gateway::start_with(taskwire_testing::examples_config(&nats.url())).await
}

/// Messages stored in a stream now.
async fn stream_messages(nats: &NatsServer, stream: &str) -> anyhow::Result<u64> {
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    Ok(js.get_stream(stream).await?.info().await?.state.messages)
}

/// Messages on one subject of a stream.
async fn subject_messages(nats: &NatsServer, stream: &str, subject: &str) -> anyhow::Result<u64> {
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    let info = js
        .get_stream(stream)
        .await?
        .info_with_subjects(subject)
        .await?;
    use futures::StreamExt as _;
    let subjects: Vec<_> = info.collect().await;
    Ok(subjects
        .into_iter()
        .filter_map(Result::ok)
        .map(|(_, n)| n as u64)
        .sum())
}

async fn state_of(client: &Client, id: &str) -> TaskState {
    client
        .get(id, false)
        .await
        .map(|i| i.state())
        .unwrap_or(TaskState::Unspecified)
}

#[tokio::test]
async fn magic_add_through_grpc_gives_6() -> anyhow::Result<()> {
    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    let _worker = Worker::start(&nats.url(), |w| w.serve(tasks::magic())).await?;
    let mut grpc = TasksClient::connect(gateway.url()).await?;

    let by_json = grpc
        .submit(v1::SubmitRequest {
            task: ADD.into(),
            args: Some(v1::submit_request::Args::ArgsJson(
                r#"{"arg1":1,"arg2":2,"arg3":3}"#.into(),
            )),
            options: None,
            ..Default::default()
        })
        .await?
        .into_inner();
    let by_proto = grpc
        .submit(v1::SubmitRequest {
            task: ADD.into(),
            args: Some(v1::submit_request::Args::ArgsProto(
                AddArgs {
                    arg1: 10,
                    arg2: 20,
                    arg3: 30,
                }
                .encode_to_vec(),
            )),
            options: None,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_ne!(by_json.task_id, by_proto.task_id);

    for (id, sum) in [(&by_json.task_id, 6), (&by_proto.task_id, 60)] {
        let info = grpc
            .wait(v1::WaitRequest {
                task_id: id.clone(),
                timeout: Some(prost_types_duration(WAIT)),
                include_json: true,
            })
            .await?
            .into_inner();
        assert_eq!(info.state(), TaskState::Succeeded, "{info:?}");
        assert_eq!(AddResult::decode(info.result.as_slice())?.sum, sum);
        assert_eq!(info.result_json, format!(r#"{{"sum":{sum}}}"#));
        assert_eq!(info.attempt, 1);
        assert_eq!(info.task, ADD);
    }
    let got = grpc
        .get(v1::GetRequest {
            task_id: by_json.task_id.clone(),
            include_json: false,
        })
        .await?
        .into_inner();
    assert_eq!(got.state(), TaskState::Succeeded);
    assert_eq!(AddResult::decode(got.result.as_slice())?.sum, 6);
    Ok(())
}

fn prost_types_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(d).expect("duration fits")
}

#[tokio::test]
async fn typed_rust_client_gets_the_typed_result() -> anyhow::Result<()> {
    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    let _worker = Worker::start(&nats.url(), |w| w.serve(tasks::magic())).await?;

    let magic = MagicClient::connect(gateway.url()).await?;
    let handle = magic
        .add(AddArgs {
            arg1: 1,
            arg2: 2,
            arg3: 3,
        })
        .await?;
    assert!(!handle.id().is_empty());
    assert_eq!(handle.get(WAIT).await?, AddResult { sum: 6 });
    assert_eq!(handle.state().await?, TaskState::Succeeded);

    // Submit and wait in one call; with an idempotency key whose task has finished, the call
    // answers with that task's result at once.
    assert_eq!(
        magic
            .add_and_wait(
                AddArgs {
                    arg1: 2,
                    arg2: 2,
                    arg3: 3
                },
                WAIT
            )
            .await?
            .sum,
        7
    );
    let keyed = || {
        magic.client().run::<AddResult>(
            ADD,
            &AddArgs {
                arg1: 5,
                arg2: 5,
                arg3: 5,
            },
            SubmitOptions::default().idempotency_key("same"),
            WAIT,
        )
    };
    assert_eq!(keyed().await?.sum, 15);
    assert_eq!(keyed().await?.sum, 15);
    Ok(())
}

#[tokio::test]
async fn a_new_task_type_needs_no_gateway_restart() -> anyhow::Result<()> {
    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    let client = Client::connect(gateway.url()).await?;
    let err = client
        .submit_json(ADD, "{}", SubmitOptions::default())
        .await
        .expect_err("no worker has registered Magic/Add yet");
    assert_eq!(err.code(), Some(Code::NotFound), "{err}");
    assert!(err.to_string().contains("start a worker"), "{err}");

    let _worker = Worker::start(&nats.url(), |w| w.serve(tasks::magic())).await?;
    let id = client
        .submit_json(ADD, r#"{"arg1":40,"arg2":2}"#, SubmitOptions::default())
        .await?
        .task_id;
    let info = client.wait(&id, WAIT, true).await?;
    assert_eq!(info.result_json, r#"{"sum":42}"#);
    let names: Vec<String> = client
        .task_types()
        .await?
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, vec![ADD.to_owned()]);
    Ok(())
}

#[tokio::test]
async fn bad_input_gets_a_status_and_nothing_is_published() -> anyhow::Result<()> {
    let mut nats = NatsServer::start_temporary().await?;
    let gateway = gateway_knowing_examples(&nats).await?;
    let client = Client::connect(gateway.url()).await?;
    let tasks_before = stream_messages(&nats, "TASKWIRE_TASKS").await?;
    let events_before = stream_messages(&nats, "TASKWIRE_EVENTS").await?;

    let cases: Vec<(&str, v1::submit_request::Args, Code, &str)> = vec![
        (
            "examples.magic.v1.Magic/Nope",
            json("{}"),
            Code::NotFound,
            "unknown task",
        ),
        (
            "not a task",
            json("{}"),
            Code::InvalidArgument,
            "package.Service/Method",
        ),
        (
            ADD,
            json(r#"{"arg1":1,"arg4":2}"#),
            Code::InvalidArgument,
            "`arg4`",
        ),
        (
            ADD,
            json(r#"{"arg1":"one"}"#),
            Code::InvalidArgument,
            "`arg1`",
        ),
        (ADD, json(r#"{"arg1":1"#), Code::InvalidArgument, "not JSON"),
        (
            ADD,
            proto(vec![0x08]),
            Code::InvalidArgument,
            "do not decode",
        ),
        (
            ADD,
            proto(vec![0x48, 0x01]),
            Code::InvalidArgument,
            "field number 9",
        ),
        (
            ADD,
            proto(vec![0x0a; 1_000_001]),
            Code::InvalidArgument,
            "the limit is 1000000 bytes",
        ),
    ];
    let mut grpc = TasksClient::connect(gateway.url()).await?;
    for (task, args, code, says) in cases {
        let status = grpc
            .submit(v1::SubmitRequest {
                task: task.into(),
                args: Some(args),
                options: None,
                ..Default::default()
            })
            .await
            .expect_err("bad input must be refused");
        assert_eq!(status.code(), code, "{task}: {status:?}");
        assert!(
            status.message().contains(says),
            "{task}: {:?} should say {says:?}",
            status.message()
        );
    }
    let bad_options: Vec<(v1::SubmitOptions, &str)> = vec![
        (
            v1::SubmitOptions {
                max_attempts: 1000,
                ..Default::default()
            },
            "max_attempts is 1000",
        ),
        (
            v1::SubmitOptions {
                timeout: Some(prost_types::Duration {
                    seconds: -5,
                    nanos: 0,
                }),
                ..Default::default()
            },
            "timeout is negative",
        ),
        (
            v1::SubmitOptions {
                timeout: Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 0,
                }),
                ..Default::default()
            },
            "timeout is zero",
        ),
        (
            v1::SubmitOptions {
                backoff_max: Some(prost_types::Duration {
                    seconds: 90_000,
                    nanos: 0,
                }),
                ..Default::default()
            },
            "backoff_max is longer than 24h",
        ),
        (
            v1::SubmitOptions {
                idempotency_key: "k".repeat(300),
                ..Default::default()
            },
            "the limit is 256",
        ),
    ];
    for (options, says) in bad_options {
        let status = grpc
            .submit(v1::SubmitRequest {
                task: ADD.into(),
                args: Some(json("{}")),
                options: Some(options),
                ..Default::default()
            })
            .await
            .expect_err("bad options must be refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().contains(says),
            "{:?} should say {says:?}",
            status.message()
        );
    }
    for unknown in [
        client
            .wait("nosuchtask", Duration::from_secs(1), false)
            .await
            .expect_err("unknown"),
        client.cancel("nosuchtask").await.expect_err("unknown"),
    ] {
        assert_eq!(unknown.code(), Some(Code::NotFound), "{unknown}");
    }
    let missing = grpc
        .submit(v1::SubmitRequest {
            task: ADD.into(),
            args: None,
            options: None,
            ..Default::default()
        })
        .await
        .expect_err("missing args");
    assert_eq!(missing.code(), Code::InvalidArgument);
    // A producer built from another version of the proto: refused, naming both versions. (The
    // typed stubs send the fingerprint of their build; every typed submission in these tests
    // is checked the same way and accepted.)
    let registered = taskwire::schema::task_hash(taskwire::FILE_DESCRIPTOR_SET, ADD)
        .expect("the descriptors describe Add");
    let other = grpc
        .submit(v1::SubmitRequest {
            task: ADD.into(),
            args: Some(json("{}")),
            options: None,
            descriptor_hash: "0".repeat(64),
        })
        .await
        .expect_err("another schema");
    assert_eq!(other.code(), Code::FailedPrecondition, "{other:?}");
    for says in [ADD, "000000000000", &registered[..12]] {
        assert!(
            other.message().contains(says),
            "{:?} should say {says:?}",
            other.message()
        );
    }
    // The same check when the call waits for the result in one request.
    let waited = client
        .run_described::<AddResult>(
            ADD,
            &"0".repeat(64),
            &AddArgs::default(),
            SubmitOptions::default(),
            Duration::from_secs(5),
        )
        .await
        .expect_err("another schema, waited");
    assert_eq!(waited.code(), Some(Code::FailedPrecondition), "{waited}");
    let bad_id = client.get("a.b", false).await.expect_err("bad id");
    assert_eq!(bad_id.code(), Some(Code::InvalidArgument));
    let unknown_id = client
        .get("nosuchtask", false)
        .await
        .expect_err("unknown id");
    assert_eq!(unknown_id.code(), Some(Code::NotFound));

    assert_eq!(
        stream_messages(&nats, "TASKWIRE_TASKS").await?,
        tasks_before
    );
    assert_eq!(
        stream_messages(&nats, "TASKWIRE_EVENTS").await?,
        events_before
    );

    nats.stop().await;
    let down = client
        .submit_json(ADD, r#"{"arg1":1}"#, SubmitOptions::default())
        .await
        .expect_err("NATS is down");
    assert_eq!(down.code(), Some(Code::Unavailable), "{down}");
    assert!(down.to_string().contains("NATS is unreachable"), "{down}");
    Ok(())
}

fn json(text: &str) -> v1::submit_request::Args {
    v1::submit_request::Args::ArgsJson(text.into())
}

fn proto(bytes: Vec<u8>) -> v1::submit_request::Args {
    v1::submit_request::Args::ArgsProto(bytes)
}

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

#[tokio::test]
async fn an_idempotency_key_stores_one_task() -> anyhow::Result<()> {
    let nats = NatsServer::start_temporary().await?;
    let gateway = gateway_knowing_examples(&nats).await?;
    let client = Client::connect(gateway.url()).await?;
    let options = SubmitOptions::default().idempotency_key("order-42");
    let first = client
        .submit_json(ADD, r#"{"arg1":1}"#, options.clone())
        .await?;
    let again = client.submit_json(ADD, r#"{"arg1":1}"#, options).await?;
    assert_eq!(first.task_id, again.task_id);
    assert!(!first.duplicate);
    assert!(again.duplicate);
    assert_eq!(stream_messages(&nats, "TASKWIRE_TASKS").await?, 1);
    Ok(())
}

#[tokio::test]
async fn cancel_a_queued_task() -> anyhow::Result<()> {
    let nats = NatsServer::start_temporary().await?;
    let gateway = gateway_knowing_examples(&nats).await?;
    let chaos = ChaosClient::connect(gateway.url()).await?;
    let handle = chaos
        .sleep(SleepArgs {
            millis: 10,
            label: "never".into(),
        })
        .await?;
    assert_eq!(handle.state().await?, TaskState::Queued);
    handle.cancel().await?;
    assert_eq!(handle.state().await?, TaskState::Cancelled);
    let again = handle.cancel().await.expect_err("cancelling twice");
    assert_eq!(again.code(), Some(Code::FailedPrecondition), "{again}");
    let unknown = chaos
        .client()
        .cancel("nosuchtask")
        .await
        .expect_err("unknown id");
    assert_eq!(unknown.code(), Some(Code::NotFound));

    // A worker that comes later takes the task off the queue but cannot replace the outcome.
    let _worker = Worker::start(&nats.url(), |w| w.serve(tasks::chaos())).await?;
    eventually("the queue is empty", WAIT, || async {
        stream_messages(&nats, "TASKWIRE_TASKS").await.ok() == Some(0)
    })
    .await?;
    assert!(matches!(
        handle.get(WAIT).await,
        Err(taskwire_client::Error::Cancelled { .. })
    ));
    assert_eq!(
        subject_messages(
            &nats,
            "TASKWIRE_RESULTS",
            &format!("taskwire.results.{}.>", handle.id())
        )
        .await?,
        1
    );
    Ok(())
}

#[tokio::test]
async fn cli_submits_gets_and_lists() -> anyhow::Result<()> {
    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    let _worker = Worker::start(&nats.url(), |w| w.serve(tasks::magic())).await?;
    let cli = |args: &[&str]| {
        let mut command = Command::new(bin("taskwire").expect("taskwire binary"));
        command
            .args(args)
            .env("TASKWIRE_GATEWAY_URL", gateway.url())
            .stdin(Stdio::null());
        command
    };

    let out = cli(&["submit", ADD, r#"{"arg1":1,"arg2":2,"arg3":3}"#, "--wait"])
        .output()
        .await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(result, serde_json::json!({ "sum": 6 }));

    // The health check containers use: the gateway serves; a closed port does not.
    let addr = gateway.url().trim_start_matches("http://").to_owned();
    let out = cli(&["health", "--grpc", &addr]).output().await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "serving");
    let closed = taskwire_cli::stack::free_addr()?.to_string();
    let out = cli(&["health", "--grpc", &closed]).output().await?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect"));

    let out = cli(&["submit", ADD, r#"{"arg1":2,"arg2":2,"arg3":3}"#])
        .output()
        .await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8(out.stdout)?.trim().to_owned();
    assert_eq!(id.len(), 32, "{id}");
    let out = cli(&["wait", &id]).output().await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(&["get", &id]).output().await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(info["state"], "succeeded");
    assert_eq!(info["result"]["sum"], 7);
    assert_eq!(info["id"], id.as_str());

    let out = cli(&["tasks"]).output().await?;
    let listing = String::from_utf8(out.stdout)?;
    assert!(
        listing
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == [
                    ADD,
                    "examples.magic.v1.AddArgs",
                    "examples.magic.v1.AddResult"
                ]),
        "{listing}"
    );

    let out = cli(&["submit", ADD, r#"{"arg9":1}"#]).output().await?;
    assert!(!out.status.success());
    let stderr = String::from_utf8(out.stderr)?;
    assert_eq!(
        stderr.trim().lines().count(),
        1,
        "one readable line: {stderr}"
    );
    assert!(
        stderr.contains("invalid argument") && stderr.contains("`arg9`"),
        "{stderr}"
    );
    Ok(())
}

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

#[tokio::test]
async fn a_project_outside_the_workspace_runs_end_to_end() -> anyhow::Result<()> {
    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    let out = Command::new(bin("taskwire-external-fixture")?)
        .env("TASKWIRE_NATS_URL", nats.url())
        .env("TASKWIRE_GATEWAY_URL", gateway.url())
        .stdin(Stdio::null())
        .output()
        .await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout)?.trim(),
        "Hello, taskwire! (attempt 1)"
    );

    // Its worker registered greeter.v1.Greeter: server reflection lists it with the gateway's
    // own services, in both protocol versions, without a gateway restart.
    use tonic_reflection::pb::{v1, v1alpha};
    let channel = tonic::transport::Endpoint::from_shared(gateway.url())?
        .connect()
        .await?;
    let mut reflection = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut answers = reflection
        .server_reflection_info(futures::stream::iter([request]))
        .await?
        .into_inner();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        answers.message().await?.and_then(|a| a.message_response)
    else {
        anyhow::bail!("no list of services");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for name in [
        "greeter.v1.Greeter",
        "taskwire.v1.Tasks",
        "examples.magic.v1.Magic",
    ] {
        assert!(names.iter().any(|n| n == name), "{name} not in {names:?}");
    }
    let mut alpha = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                "greeter.v1.Greeter".into(),
            ),
        ),
    };
    let mut answers = alpha
        .server_reflection_info(futures::stream::iter([request]))
        .await?
        .into_inner();
    assert!(
        matches!(
            answers.message().await?.and_then(|a| a.message_response),
            Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(_))
        ),
        "the greeter's file is served"
    );
    Ok(())
}

/// The registry entry of `demo.v1.Echo/Say` with these fields in its arguments and result, and
/// the entry's schema fingerprint.
fn echo_version(
    dir: &std::path::Path,
    args: &str,
    result: &str,
) -> anyhow::Result<(v1::TaskType, String)> {
    let source = format!(
        "syntax = \"proto3\";\npackage demo.v1;\nmessage SayArgs {{ {args} }}\nmessage SayResult {{ {result} }}\nservice Echo {{ rpc Say(SayArgs) returns (SayResult); }}\n"
    );
    std::fs::write(dir.join("echo.proto"), source)?;
    let files = protox::compile(["echo.proto"], [dir])?;
    let bytes = files.encode_to_vec();
    let task = taskwire::task::TaskType::all_in(&bytes)?
        .into_iter()
        .find(|t| t.name.as_str() == "demo.v1.Echo/Say")
        .ok_or_else(|| anyhow::anyhow!("echo.proto has no demo.v1.Echo/Say"))?;
    Ok((task.registry_entry(&bytes), task.descriptor_hash.clone()))
}

#[tokio::test]
async fn a_producer_of_an_earlier_compatible_schema_is_accepted() -> anyhow::Result<()> {
    const SAY: &str = "demo.v1.Echo/Say";
    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    let registry = js.get_key_value("TASKWIRE_REGISTRY").await?;
    let schemas = js.get_key_value("TASKWIRE_SCHEMAS").await?;
    let grpc = TasksClient::connect(gateway.url()).await?;
    let client = Client::connect(gateway.url()).await?;
    let dir = tempfile::tempdir()?;
    // Workers register a version, as they do at start; the gateway follows.
    let register = |entry: &v1::TaskType, hash: &str| {
        let (registry, schemas, client) = (registry.clone(), schemas.clone(), client.clone());
        let (entry, hash) = (entry.encode_to_vec(), hash.to_owned());
        async move {
            registry.put("demo.v1.Echo.Say", entry.into()).await?;
            eventually("the gateway keeps the version", WAIT, || async {
                matches!(
                    schemas.get(format!("demo.v1.Echo.Say.{hash}")).await,
                    Ok(Some(_))
                )
            })
            .await?;
            eventually("the gateway serves the version", WAIT, || async {
                client.task_types().await.is_ok_and(|types| {
                    types
                        .iter()
                        .any(|t| t.name == SAY && t.descriptor_hash == hash)
                })
            })
            .await
        }
    };
    let submit = |hash: &str| {
        let mut grpc = grpc.clone();
        let request = v1::SubmitRequest {
            task: SAY.into(),
            args: Some(json("{}")),
            options: None,
            descriptor_hash: hash.to_owned(),
        };
        async move { grpc.submit(request).await }
    };
    let refused = |result: Result<tonic::Response<v1::SubmitResponse>, tonic::Status>,
                   says: &[&str]| {
        let status = result.expect_err("refused");
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        for says in std::iter::once(&SAY).chain(says) {
            assert!(
                status.message().contains(says),
                "{:?} should say {says:?}",
                status.message()
            );
        }
    };

    let (first, v1_hash) = echo_version(dir.path(), "string text = 1;", "string text = 1;")?;
    let (longer, v2_hash) = echo_version(
        dir.path(),
        "string text = 1;",
        "string text = 1; int32 length = 2;",
    )?;
    register(&first, &v1_hash).await?;
    // A version no worker has registered is refused...
    refused(submit(&v2_hash).await, &["no worker has registered"]);
    refused(submit(&"F".repeat(64)).await, &["not a schema fingerprint"]);
    // ...until one does: then it is judged, here compatible (a result field the producer
    // skips), also after workers of the first version register again.
    register(&longer, &v2_hash).await?;
    register(&first, &v1_hash).await?;
    submit(&v2_hash).await?;
    // The workers learn an argument field: producers of both earlier versions get through.
    let (more, v3_hash) = echo_version(
        dir.path(),
        "string text = 1; int32 times = 2;",
        "string text = 1; int32 length = 2;",
    )?;
    register(&more, &v3_hash).await?;
    submit(&v1_hash).await?;
    submit(&v2_hash).await?;
    // Workers that do not know it refuse producers that send it.
    register(&first, &v1_hash).await?;
    refused(
        submit(&v3_hash).await,
        &[&v3_hash[..12], &v1_hash[..12], "field 2 of demo.v1.SayArgs"],
    );
    // A changed field type: no earlier version fits.
    let (changed, v4_hash) = echo_version(
        dir.path(),
        "int64 text = 1; int32 times = 2;",
        "string text = 1; int32 length = 2;",
    )?;
    register(&changed, &v4_hash).await?;
    for earlier in [&v1_hash, &v2_hash, &v3_hash] {
        refused(
            submit(earlier).await,
            &[&earlier[..12], "field 1 of demo.v1.SayArgs"],
        );
    }
    Ok(())
}
