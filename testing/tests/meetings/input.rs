//! Bad input from a client: hostile values in every field, calls too large.

use super::*;

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
                    ..Default::default()
                })
                .await
                .map(drop),
        );
        clear(
            "ReplayDeadLettersRequest filter",
            v,
            admin
                .replay_dead_letters(v1::ReplayDeadLettersRequest {
                    task: value.clone(),
                    all: true,
                    reason: value.clone(),
                    error_contains: value.clone(),
                    ..Default::default()
                })
                .await
                .map(drop),
        );
        let filter = v1::TaskFilter {
            task: value.clone(),
            error_contains: value.clone(),
            idempotency_key: value.clone(),
            workflow_id: value.clone(),
            parent_id: value.clone(),
            ..Default::default()
        };
        for (what, filter) in [
            ("TaskFilter", filter),
            (
                "TaskFilter.task",
                v1::TaskFilter {
                    task: value.clone(),
                    ..Default::default()
                },
            ),
            (
                "TaskFilter.workflow_id",
                v1::TaskFilter {
                    workflow_id: value.clone(),
                    ..Default::default()
                },
            ),
        ] {
            clear(
                what,
                v,
                tasks
                    .list(v1::ListTasksRequest {
                        filter: Some(filter.clone()),
                        page_token: value.clone(),
                        ..Default::default()
                    })
                    .await
                    .map(drop),
            );
            clear(
                what,
                v,
                tasks
                    .list(v1::ListTasksRequest {
                        filter: Some(filter.clone()),
                        ..Default::default()
                    })
                    .await
                    .map(drop),
            );
            clear(
                what,
                v,
                tasks
                    .cancel_many(v1::CancelManyRequest {
                        filter: Some(filter),
                    })
                    .await
                    .map(drop),
            );
        }
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
                        ..Default::default()
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
