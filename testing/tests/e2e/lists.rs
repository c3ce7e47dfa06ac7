//! Finding tasks by filter, page by page, and cancelling or replaying them in bulk.

use super::*;

fn states(states: &[TaskState]) -> Vec<i32> {
    states.iter().map(|s| *s as i32).collect()
}

pub(super) async fn ids_of(client: &Client, filter: v1::TaskFilter) -> anyhow::Result<Vec<String>> {
    Ok(client
        .find_tasks(filter, 10_000)
        .await?
        .into_iter()
        .map(|t| t.task_id)
        .collect())
}

#[tokio::test]
async fn lists_find_tasks_by_state_type_error_and_key_a_page_at_a_time() -> anyhow::Result<()> {
    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    let worker = Worker::start(&nats.url(), |w| {
        w.serve(tasks::magic()).serve(tasks::chaos())
    })
    .await?;
    let client = Client::connect(gateway.url()).await?;

    let mut added = Vec::new();
    for n in 0..23 {
        let handle = client
            .submit::<AddResult>(
                ADD,
                &AddArgs {
                    arg1: n,
                    arg2: 0,
                    arg3: 0,
                },
                SubmitOptions {
                    idempotency_key: Some(format!("order-{n}")),
                    ..Default::default()
                },
            )
            .await?;
        handle.get(WAIT).await?;
        added.push(handle.id().to_owned());
    }
    let mut failed = Vec::new();
    for n in 0..3 {
        let handle = client
            .submit::<PanicResult>(
                "examples.chaos.v1.Chaos/Panic",
                &PanicArgs {
                    message: format!("Boom number {n}"),
                },
                SubmitOptions::default(),
            )
            .await?;
        handle.get(WAIT).await.expect_err("a panic fails");
        failed.push(handle.id().to_owned());
    }

    // The failed ones, and no other, from the outcome records.
    let found = ids_of(
        &client,
        v1::TaskFilter {
            states: states(&[TaskState::Failed]),
            ..Default::default()
        },
    )
    .await?;
    assert_eq!(found, failed);
    let one = ids_of(
        &client,
        v1::TaskFilter {
            states: states(&[TaskState::Failed]),
            error_contains: "boom NUMBER 1".into(),
            ..Default::default()
        },
    )
    .await?;
    assert_eq!(one, [failed[1].clone()]);

    // Every succeeded task of a pattern, seven a page, each once and in the order they ended.
    let mut pages = Vec::new();
    let mut token = String::new();
    let filter = v1::TaskFilter {
        task: "examples.magic.*".into(),
        states: states(&[TaskState::Succeeded]),
        ..Default::default()
    };
    loop {
        let page = client.list_tasks(filter.clone(), 7, &token).await?;
        assert!(page.tasks.len() <= 7);
        for info in &page.tasks {
            assert_eq!(info.task, ADD);
            assert_eq!(info.state(), TaskState::Succeeded);
            assert!(info.submitted_at.is_some(), "{info:?}");
        }
        pages.extend(page.tasks.into_iter().map(|t| t.task_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(pages, added);

    // No state named: every task, the chaos ones too.
    let all = ids_of(&client, v1::TaskFilter::default()).await?;
    assert_eq!(all.len(), added.len() + failed.len());

    // By idempotency key: the one task it names.
    let keyed = ids_of(
        &client,
        v1::TaskFilter {
            task: ADD.into(),
            idempotency_key: "order-5".into(),
            ..Default::default()
        },
    )
    .await?;
    assert_eq!(keyed, [added[5].clone()]);

    // Time ranges: finished in the future matches nothing, submitted since the start all.
    let later = std::time::SystemTime::now() + Duration::from_secs(3600);
    let none = ids_of(
        &client,
        v1::TaskFilter {
            finished_after: Some(later.into()),
            ..Default::default()
        },
    )
    .await?;
    assert!(none.is_empty(), "{none:?}");

    // A replay by filter takes the letters it matches and no other.
    let replayed = client
        .replay_dead_letters_matching(v1::ReplayDeadLettersRequest {
            all: true,
            task: "examples.chaos.*".into(),
            error_contains: "number 2".into(),
            ..Default::default()
        })
        .await?;
    assert_eq!(replayed, [failed[2].clone()]);
    let bad_reason = client
        .replay_dead_letters_matching(v1::ReplayDeadLettersRequest {
            all: true,
            reason: "tired".into(),
            ..Default::default()
        })
        .await
        .expect_err("no such reason");
    assert!(
        bad_reason.to_string().contains("none of exhausted"),
        "{bad_reason}"
    );

    // Bad input says what to fix.
    let mut raw = TasksClient::connect(gateway.url().to_owned()).await?;
    let bad = raw
        .list(v1::ListTasksRequest {
            page_token: "somewhere".into(),
            ..Default::default()
        })
        .await
        .expect_err("a token this gateway never gave");
    assert_eq!(bad.code(), Code::InvalidArgument);
    let bad = raw
        .list(v1::ListTasksRequest {
            filter: Some(v1::TaskFilter {
                idempotency_key: "order-1".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect_err("a key without its task type");
    assert!(bad.message().contains("task type"), "{}", bad.message());
    drop(worker);
    Ok(())
}

#[tokio::test]
async fn cancelling_by_filter_takes_what_matches_and_can_be_repeated() -> anyhow::Result<()> {
    let nats = NatsServer::start_temporary().await?;
    let gateway = gateway_knowing_examples(&nats).await?;
    let client = Client::connect(gateway.url()).await?;

    // No worker: the tasks wait, some queued, some delayed.
    let mut queued = Vec::new();
    for n in 0..5 {
        let handle = client
            .submit::<AddResult>(
                ADD,
                &AddArgs {
                    arg1: n,
                    arg2: 0,
                    arg3: 0,
                },
                SubmitOptions::default(),
            )
            .await?;
        queued.push(handle.id().to_owned());
    }
    let mut delayed = Vec::new();
    for _ in 0..2 {
        let handle = client
            .submit::<SleepResult>(
                "examples.chaos.v1.Chaos/Sleep",
                &SleepArgs {
                    millis: 1,
                    ..Default::default()
                },
                SubmitOptions {
                    countdown: Some(Duration::from_secs(3600)),
                    ..Default::default()
                },
            )
            .await?;
        delayed.push(handle.id().to_owned());
    }
    let open = ids_of(
        &client,
        v1::TaskFilter {
            states: states(&[TaskState::Queued]),
            ..Default::default()
        },
    )
    .await?;
    assert_eq!(open, queued);
    let scheduled = ids_of(
        &client,
        v1::TaskFilter {
            states: states(&[TaskState::Scheduled]),
            ..Default::default()
        },
    )
    .await?;
    assert_eq!(scheduled, delayed);

    // Cancel the magic ones only.
    let filter = v1::TaskFilter {
        task: "examples.magic.*".into(),
        ..Default::default()
    };
    assert_eq!(client.cancel_many(filter.clone()).await?, 5);
    // Repeating finds them finished: nothing more is cancelled.
    assert_eq!(client.cancel_many(filter).await?, 0);
    let cancelled = ids_of(
        &client,
        v1::TaskFilter {
            states: states(&[TaskState::Cancelled]),
            ..Default::default()
        },
    )
    .await?;
    assert_eq!(cancelled, queued);
    for id in &delayed {
        assert_eq!(client.get(id, false).await?.state(), TaskState::Scheduled);
    }
    // The delayed ones by state; then nothing is left open.
    let by_state = v1::TaskFilter {
        states: states(&[TaskState::Scheduled]),
        ..Default::default()
    };
    assert_eq!(client.cancel_many(by_state).await?, 2);
    let left = ids_of(
        &client,
        v1::TaskFilter {
            states: states(&[
                TaskState::Queued,
                TaskState::Scheduled,
                TaskState::Running,
                TaskState::Retrying,
            ]),
            ..Default::default()
        },
    )
    .await?;
    assert!(left.is_empty(), "{left:?}");
    Ok(())
}

/// Waits until Get says task `id` is in `state`.
async fn comes_to(client: &Client, what: &str, id: &str, state: TaskState) -> anyhow::Result<()> {
    eventually(what, WAIT, || {
        let (client, id) = (client.clone(), id.to_owned());
        async move {
            client
                .get(&id, false)
                .await
                .is_ok_and(|info| info.state() == state)
        }
    })
    .await
}

#[tokio::test]
async fn a_parent_waiting_for_its_children_is_listed_waiting_and_cancelled_by_filter()
-> anyhow::Result<()> {
    use taskwire_examples::chaos::v1::SpawnArgs;

    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    let _worker = Worker::start(&nats.url(), |w| w.serve(tasks::chaos())).await?;
    let client = Client::connect(gateway.url()).await?;
    let chaos = ChaosClient::new(client.clone());
    // Its one child sleeps for a minute: the parent waits, parked, out of the tasks stream.
    let parent = chaos
        .spawn(SpawnArgs {
            count: 1,
            label: "listed".into(),
            child_millis: 60_000,
            wait: true,
            ..Default::default()
        })
        .await?;
    let parent_id = parent.id().to_owned();
    comes_to(&client, "the parent waits", &parent_id, TaskState::Waiting).await?;
    let child = client.get(&parent_id, false).await?.children[0]
        .task_id
        .clone();

    let waiting = v1::TaskFilter {
        states: states(&[TaskState::Waiting]),
        ..Default::default()
    };
    assert_eq!(
        ids_of(&client, waiting.clone()).await?,
        vec![parent_id.clone()]
    );
    let by_type = v1::TaskFilter {
        task: "examples.chaos.*".into(),
        states: states(&[TaskState::Waiting]),
        ..Default::default()
    };
    assert_eq!(ids_of(&client, by_type).await?, vec![parent_id.clone()]);
    let running = ids_of(
        &client,
        v1::TaskFilter {
            states: states(&[TaskState::Running]),
            ..Default::default()
        },
    )
    .await?;
    assert_eq!(
        running,
        vec![child.clone()],
        "the child runs; the parent does not"
    );
    let all = ids_of(&client, v1::TaskFilter::default()).await?;
    assert_eq!(
        all.iter().filter(|id| **id == parent_id).count(),
        1,
        "a list of every task holds the waiting parent once: {all:?}"
    );

    // Cancelled by a filter that names its state, with its child.
    assert_eq!(client.cancel_many(waiting.clone()).await?, 1);
    assert_eq!(
        client.get(&parent_id, false).await?.state(),
        TaskState::Cancelled
    );
    assert!(ids_of(&client, waiting).await?.is_empty());
    comes_to(
        &client,
        "the child is cancelled with it",
        &child,
        TaskState::Cancelled,
    )
    .await?;
    let ended = parent.get(WAIT).await;
    assert!(ended.is_err(), "a cancelled parent answers no result");
    Ok(())
}
