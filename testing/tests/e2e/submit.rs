//! Submitting and getting tasks through gRPC, the typed client and keys; cancel.

use super::*;

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

#[tokio::test]
async fn submit_and_wait_streams_the_queued_state_unless_only_the_final_one_is_asked_for()
-> anyhow::Result<()> {
    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    let _worker = Worker::start(&nats.url(), |w| w.serve(tasks::magic())).await?;
    let mut grpc = TasksClient::connect(gateway.url()).await?;
    for final_only in [false, true] {
        let request = v1::SubmitAndWaitRequest {
            submit: Some(v1::SubmitRequest {
                task: ADD.into(),
                args: Some(v1::submit_request::Args::ArgsJson(
                    r#"{"arg1":1,"arg2":2,"arg3":3}"#.into(),
                )),
                ..Default::default()
            }),
            timeout: Some(prost_types_duration(WAIT)),
            include_json: true,
            final_only,
        };
        let mut stream = grpc.submit_and_wait(request).await?.into_inner();
        let mut states = Vec::new();
        while let Some(info) = stream.message().await? {
            states.push(info);
        }
        let last = states.last().expect("an answer");
        assert_eq!(last.state(), TaskState::Succeeded, "{states:?}");
        assert_eq!(last.result_json, r#"{"sum":6}"#);
        assert!(!last.task_id.is_empty());
        if final_only {
            assert_eq!(states.len(), 1, "{states:?}");
        } else {
            assert_eq!(states.len(), 2, "{states:?}");
            assert_eq!(states[0].state(), TaskState::Queued);
            assert_eq!(states[0].task_id, last.task_id);
        }
    }
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
