//! Child tasks: submitted by running tasks from their context, recorded with their parent,
//! found again by a retried parent, and cancelled with it.

use std::time::Duration;

use prost::Message as _;
use taskwire::v1::{self, TaskState};
use taskwire_client::Client;
use taskwire_examples::chaos::v1::{ChaosClient, SleepArgs, SleepResult, SpawnArgs, SpawnResult};
use taskwire_protocol::children;
use taskwire_testing::{Gateway, NatsServer, Worker, eventually, tasks};
use tonic::Code;

use super::WAIT;

const SLEEP: &str = "examples.chaos.v1.Chaos/Sleep";
const SPAWN: &str = "examples.chaos.v1.Chaos/Spawn";

async fn chaos_system() -> anyhow::Result<(NatsServer, Gateway, Worker, Client)> {
    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    let worker = Worker::start(&nats.url(), |w| w.serve(tasks::chaos())).await?;
    let client = Client::connect(gateway.url()).await?;
    Ok((nats, gateway, worker, client))
}

#[tokio::test]
async fn children_record_their_parent_and_a_retried_parent_finds_them() -> anyhow::Result<()> {
    let (_nats, gateway, _worker, client) = chaos_system().await?;
    // The first attempt submits three children, then fails; the second submits them again.
    // Submitted with a W3C trace context, as any traced producer sends it.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut submit = tonic::Request::new(v1::SubmitRequest {
        task: SPAWN.into(),
        args: Some(v1::submit_request::Args::ArgsProto(
            SpawnArgs {
                count: 3,
                label: "kin".into(),
                child_millis: 10,
                fail_first: true,
                ..Default::default()
            }
            .encode_to_vec(),
        )),
        ..Default::default()
    });
    submit.metadata_mut().insert(
        "traceparent",
        format!("00-{trace}-00f067aa0ba902b7-01").parse()?,
    );
    let parent_id = v1::tasks_client::TasksClient::connect(gateway.url().to_owned())
        .await?
        .submit(submit)
        .await?
        .into_inner()
        .task_id;
    let done = client.wait(&parent_id, WAIT, false).await?;
    assert_eq!(done.state(), TaskState::Succeeded, "{done:?}");
    let result = SpawnResult::decode(done.result.as_slice())?;
    assert_eq!(result.attempt, 2, "the first attempt failed");
    assert_eq!(result.children.len(), 3);

    let info = client.get(&parent_id, false).await?;
    assert_eq!(info.trace_id, trace);
    assert!(
        info.parent_id.is_empty(),
        "a task submitted by a client has no parent"
    );
    let listed: Vec<&str> = info.children.iter().map(|c| c.task_id.as_str()).collect();
    assert_eq!(
        listed,
        result
            .children
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        "the second attempt found the first attempt's children: three, not six"
    );
    assert!(info.children.iter().all(|c| c.task == SLEEP));

    for (i, id) in result.children.iter().enumerate() {
        let child = client.wait(id, WAIT, false).await?;
        assert_eq!(child.state(), TaskState::Succeeded, "{child:?}");
        let label = format!("kin-{i}");
        assert_eq!(SleepResult::decode(child.result.as_slice())?.label, label);
        assert_eq!(
            tasks::journal_count(&label, "started"),
            1,
            "child {i} ran once"
        );
        let child = client.get(id, false).await?;
        assert_eq!(child.parent_id, parent_id);
        assert!(child.children.is_empty());
        assert_eq!(
            child.trace_id, info.trace_id,
            "a child joins its parent's trace"
        );
    }
    Ok(())
}

#[tokio::test]
async fn cancelling_a_parent_cancels_its_children_and_it_submits_no_more() -> anyhow::Result<()> {
    let (nats, _gateway, _worker, client) = chaos_system().await?;
    let chaos = ChaosClient::new(client.clone());
    // Children that would sleep a minute, one submitted every 200 ms; the parent goes on
    // submitting after its cancel until its worker abandons it.
    let parent = chaos
        .spawn(SpawnArgs {
            count: 50,
            label: "orphan".into(),
            child_millis: 60_000,
            gap_millis: 200,
            ..Default::default()
        })
        .await?;
    let id = parent.id().to_owned();
    eventually("the first child runs", WAIT, || {
        let client = client.clone();
        let id = id.clone();
        async move {
            let Ok(info) = client.get(&id, false).await else {
                return false;
            };
            let Some(first) = info.children.first() else {
                return false;
            };
            client
                .get(&first.task_id, false)
                .await
                .is_ok_and(|child| child.state() == TaskState::Running)
        }
    })
    .await?;
    let before = client.get(&id, false).await?;
    client.cancel(&id).await?;
    // Cancel answers once the children it found are cancelled.
    assert_eq!(client.get(&id, false).await?.state(), TaskState::Cancelled);
    assert!(!before.children.is_empty());
    for child in &before.children {
        let state = client.get(&child.task_id, false).await?.state();
        assert_eq!(state, TaskState::Cancelled, "child {}", child.task_id);
    }
    // Whatever the parent tried to submit after its cancel was refused: no child it recorded
    // later runs or stays queued.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = client.get(&id, false).await?;
    assert!(after.children.len() < 50, "the parent stopped submitting");
    for child in &after.children {
        let info = client.wait(&child.task_id, WAIT, false).await?;
        assert_eq!(
            info.state(),
            TaskState::Cancelled,
            "child {}",
            child.task_id
        );
    }
    for i in 0..50 {
        assert_eq!(
            tasks::journal_count(&format!("orphan-{i}"), "finished"),
            0,
            "child {i} did not run to its end"
        );
    }

    // A child submitted for the cancelled parent is refused, and nothing of it is stored.
    let answer = submit_raw(&nats, &id, 99, SLEEP, &SleepArgs::default()).await?;
    assert_eq!(
        Code::from(answer.code as i32),
        Code::FailedPrecondition,
        "{answer:?}"
    );
    assert!(
        answer.message.contains("was cancelled"),
        "{}",
        answer.message
    );
    let late = children::child_id(
        &taskwire::task::Id::parse(&id)?,
        &taskwire::task::Name::parse(SLEEP)?,
        &children::index_key(99),
    );
    let err = client
        .get(late.as_str(), false)
        .await
        .expect_err("never stored");
    assert!(
        matches!(&err, taskwire_client::Error::Status(status) if status.code() == Code::NotFound),
        "{err}"
    );
    assert_eq!(
        client.get(&id, false).await?.children.len(),
        after.children.len()
    );
    Ok(())
}

#[tokio::test]
async fn a_child_that_does_not_fit_is_refused_and_nothing_is_recorded() -> anyhow::Result<()> {
    let (nats, _gateway, _worker, client) = chaos_system().await?;
    let chaos = ChaosClient::new(client.clone());
    let parent = chaos
        .spawn(SpawnArgs {
            count: 0,
            ..Default::default()
        })
        .await?;
    parent.get(WAIT).await?;
    let id = parent.id().to_owned();
    // A task nobody serves, and arguments that are no SleepArgs.
    let unknown = submit_raw(
        &nats,
        &id,
        0,
        "examples.chaos.v1.Chaos/Nope",
        &SleepArgs::default(),
    )
    .await?;
    assert_eq!(
        Code::from(unknown.code as i32),
        Code::NotFound,
        "{unknown:?}"
    );
    let mut bad = v1::ChildSubmission {
        parent_id: id.clone(),
        parent_task: SPAWN.into(),
        index: 1,
        child: Some(v1::SubmitRequest {
            task: SLEEP.into(),
            args: Some(v1::submit_request::Args::ArgsJson(
                r#"{"millis": "soon"}"#.into(),
            )),
            ..Default::default()
        }),
        traceparent: String::new(),
    };
    let answer = request(&nats, &bad).await?;
    assert_eq!(
        Code::from(answer.code as i32),
        Code::InvalidArgument,
        "{answer:?}"
    );
    // And a parent that ended submits none.
    bad.child = Some(v1::SubmitRequest {
        task: SLEEP.into(),
        args: Some(v1::submit_request::Args::ArgsJson("{}".into())),
        ..Default::default()
    });
    let answer = request(&nats, &bad).await?;
    assert_eq!(
        Code::from(answer.code as i32),
        Code::FailedPrecondition,
        "{answer:?}"
    );
    assert!(
        answer.message.contains("has ended (succeeded)"),
        "{}",
        answer.message
    );
    assert!(client.get(&id, false).await?.children.is_empty());
    Ok(())
}

/// A child submission as a worker runtime sends it.
async fn submit_raw(
    nats: &NatsServer,
    parent: &str,
    index: u32,
    task: &str,
    args: &SleepArgs,
) -> anyhow::Result<v1::ChildSubmitted> {
    request(
        nats,
        &v1::ChildSubmission {
            parent_id: parent.into(),
            parent_task: SPAWN.into(),
            index,
            child: Some(v1::SubmitRequest {
                task: task.into(),
                args: Some(v1::submit_request::Args::ArgsProto(args.encode_to_vec())),
                ..Default::default()
            }),
            traceparent: String::new(),
        },
    )
    .await
}

async fn request(
    nats: &NatsServer,
    submission: &v1::ChildSubmission,
) -> anyhow::Result<v1::ChildSubmitted> {
    let client = async_nats::connect(nats.url()).await?;
    let reply = client
        .request(children::SUBMIT, submission.encode_to_vec().into())
        .await?;
    Ok(v1::ChildSubmitted::decode(reply.payload.as_ref())?)
}

#[tokio::test]
async fn a_parent_waits_for_its_children_without_holding_its_worker() -> anyhow::Result<()> {
    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    // One slot: a parent that held it while waiting would leave none for its children.
    let _worker = Worker::start(&nats.url(), |w| w.serve(tasks::chaos()).concurrency(1)).await?;
    let client = Client::connect(gateway.url()).await?;
    let chaos = ChaosClient::new(client.clone());
    let parent = chaos
        .spawn(SpawnArgs {
            count: 3,
            label: "brood".into(),
            child_millis: 300,
            wait: true,
            ..Default::default()
        })
        .await?;
    eventually("the parent waits", WAIT, || {
        let client = client.clone();
        let id = parent.id().to_owned();
        async move {
            client
                .get(&id, false)
                .await
                .is_ok_and(|info| info.state() == TaskState::Waiting)
        }
    })
    .await?;
    let result: SpawnResult = parent.get(WAIT).await?;
    assert_eq!(
        result.labels,
        ["brood-0", "brood-1", "brood-2"],
        "each child's answer, in order"
    );
    assert_eq!(result.attempt, 1, "waiting used no attempt");
    assert_eq!(result.children.len(), 3);
    let info = client.get(parent.id(), false).await?;
    assert_eq!(info.children.len(), 3, "the resumed run found its children");
    for i in 0..3 {
        assert_eq!(tasks::journal_count(&format!("brood-{i}"), "started"), 1);
    }
    Ok(())
}

#[tokio::test]
async fn a_parent_of_hundreds_lists_every_child_in_order() -> anyhow::Result<()> {
    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    let _worker = Worker::start(&nats.url(), |w| w.serve(tasks::chaos())).await?;
    let client = Client::connect(gateway.url()).await?;
    let chaos = ChaosClient::new(client.clone());
    // More children than one batch read of the records holds.
    let parent = chaos
        .spawn(SpawnArgs {
            count: 300,
            label: "hundreds".into(),
            ..Default::default()
        })
        .await?;
    let result: SpawnResult = parent.get(Duration::from_secs(60)).await?;
    assert_eq!(result.children.len(), 300);
    let info = client.get(parent.id(), false).await?;
    let listed: Vec<&str> = info.children.iter().map(|c| c.task_id.as_str()).collect();
    assert_eq!(
        listed, result.children,
        "Get lists them all, in the order submitted"
    );
    let mut found = super::lists::ids_of(
        &client,
        v1::TaskFilter {
            parent_id: parent.id().to_owned(),
            ..Default::default()
        },
    )
    .await?;
    found.sort();
    let mut expected = result.children.clone();
    expected.sort();
    assert_eq!(found, expected, "a list by parent finds each child once");
    Ok(())
}
