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

/// Three gateways: each holds a result partition of its own and gives the tasks it submits ids
/// in it, so a result reaches the gateway that waits for it and no other; an id from elsewhere
/// (submitted through another gateway, or an idempotency key's) is waited for on a subscription
/// of its own; a gateway that stops gives its partition up.
#[tokio::test]
async fn results_reach_the_gateway_that_waits_for_them_and_no_other() -> anyhow::Result<()> {
    use std::collections::BTreeSet;
    use taskwire::task::Id;
    use taskwire_protocol::partition::partition_of;

    let nats = NatsServer::start_temporary().await?;
    let mut gateways = Vec::new();
    for _ in 0..3 {
        let before = gateway_connections(&nats).await?;
        let gateway = gateway_knowing_examples(&nats).await?;
        let cid = gateway_connections(&nats)
            .await?
            .into_iter()
            .find(|(cid, _)| !before.iter().any(|(old, _)| old == cid))
            .map(|(cid, _)| cid)
            .ok_or_else(|| anyhow::anyhow!("the gateway's NATS connection is not listed"))?;
        let client = Client::connect(gateway.url()).await?;
        gateways.push((gateway, cid, client));
    }
    let held = held_partitions(&nats).await?;
    assert_eq!(held.len(), 3, "{held:?}");

    // The tasks of each gateway fall in one partition, its own.
    let mut used = BTreeSet::new();
    for (_, _, client) in &gateways {
        let mut seen = BTreeSet::new();
        for _ in 0..5 {
            let id = client
                .submit_json(ADD, r#"{"arg1":1}"#, SubmitOptions::default())
                .await?
                .task_id;
            seen.insert(partition_of(&Id::parse(&id)?));
        }
        assert_eq!(seen.len(), 1, "{seen:?}");
        used.extend(seen);
    }
    assert_eq!(used, held);

    // Submitted through the first gateway, waited for through the second: it waits on the
    // task's own subject until the result comes.
    let id = gateways[0]
        .2
        .submit_json(ADD, r#"{"arg1":2}"#, SubmitOptions::default())
        .await?
        .task_id;
    let own_subject = format!(
        "taskwire.stored.results.{}.{id}.>",
        partition_of(&Id::parse(&id)?)
    );
    let waiter = gateways[1].2.clone();
    let waiting = {
        let id = id.clone();
        tokio::spawn(async move { waiter.wait(&id, WAIT, false).await })
    };
    let second = gateways[1].1;
    eventually(
        "the second gateway subscribes to the task's result",
        WAIT,
        || {
            let subject = own_subject.clone();
            let nats = &nats;
            async move {
                subscriptions_of(nats, second)
                    .await
                    .is_ok_and(|subs| subs.contains(&subject))
            }
        },
    )
    .await?;
    let _worker = Worker::start(&nats.url(), |w| w.serve(tasks::magic())).await?;
    let info = waiting.await??;
    assert_eq!(info.state(), TaskState::Succeeded, "{info:?}");
    // The subscription is dropped once the result is told; the server hears of it a moment
    // after the answer leaves.
    eventually(
        "the second gateway drops the task's subscription",
        WAIT,
        || {
            let subject = own_subject.clone();
            let nats = &nats;
            async move {
                subscriptions_of(nats, second)
                    .await
                    .is_ok_and(|subs| !subs.contains(&subject))
            }
        },
    )
    .await?;

    // The same idempotency key through two gateways: one task, its result told to both.
    let keyed = SubmitOptions::default().idempotency_key("partitions-1");
    let first = gateways[1]
        .2
        .submit_json(ADD, r#"{"arg1":3}"#, keyed.clone())
        .await?;
    let again = gateways[2]
        .2
        .submit_json(ADD, r#"{"arg1":3}"#, keyed)
        .await?;
    assert_eq!(first.task_id, again.task_id);
    for (_, _, client) in &gateways[1..] {
        let info = client.wait(&first.task_id, WAIT, false).await?;
        assert_eq!(info.state(), TaskState::Succeeded, "{info:?}");
    }

    // Tasks waited for through the first gateway: the others receive none of their results.
    let before = out_messages(&nats).await?;
    let tasks = 100;
    let runs = (0..tasks).map(|n| {
        let client = gateways[0].2.clone();
        async move {
            let id = client
                .submit_json(ADD, &format!(r#"{{"arg1":{n}}}"#), SubmitOptions::default())
                .await?
                .task_id;
            client.wait(&id, WAIT, false).await
        }
    });
    for info in futures::future::join_all(runs).await {
        assert_eq!(info?.state(), TaskState::Succeeded);
    }
    let after = out_messages(&nats).await?;
    let grew = |cid: u64| after.get(&cid).unwrap_or(&0) - before.get(&cid).unwrap_or(&0);
    assert!(grew(gateways[0].1) >= tasks, "{before:?} {after:?}");
    for (_, cid, _) in &gateways[1..] {
        // A refresh of its partition's claim now and then, no result.
        assert!(grew(*cid) < 10, "gateway {cid}: {before:?} {after:?}");
    }

    // A gateway that stops gives its partition up.
    let (last, _, _) = gateways.pop().expect("three gateways");
    last.stop().await?;
    assert_eq!(held_partitions(&nats).await?.len(), 2);
    Ok(())
}

/// The partitions the gateways bucket says are held.
async fn held_partitions(nats: &NatsServer) -> anyhow::Result<std::collections::BTreeSet<u32>> {
    use futures::TryStreamExt as _;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    let bucket = js.get_key_value(taskwire_protocol::GATEWAYS_BUCKET).await?;
    let keys: Vec<String> = bucket.keys().await?.try_collect().await?;
    keys.iter()
        .map(|k| {
            k.strip_prefix("partition-")
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| anyhow::anyhow!("unexpected key {k}"))
        })
        .collect()
}

/// `/connz` of the server, with subscriptions.
async fn connz(nats: &NatsServer) -> anyhow::Result<serde_json::Value> {
    let monitoring = nats
        .monitoring_url()
        .and_then(|m| m.strip_prefix("http://"))
        .ok_or_else(|| anyhow::anyhow!("the server has no monitoring endpoint"))?;
    let body = taskwire_testing::http_get(monitoring, "/connz?subs=1").await?;
    Ok(serde_json::from_str(&body)?)
}

/// The gateways' connections: cid and messages sent to it.
async fn gateway_connections(nats: &NatsServer) -> anyhow::Result<Vec<(u64, u64)>> {
    let connz = connz(nats).await?;
    Ok(connz["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["name"].as_str() == Some("taskwire-gateway"))
        .filter_map(|c| Some((c["cid"].as_u64()?, c["out_msgs"].as_u64()?)))
        .collect())
}

async fn out_messages(nats: &NatsServer) -> anyhow::Result<std::collections::BTreeMap<u64, u64>> {
    Ok(gateway_connections(nats).await?.into_iter().collect())
}

/// The subjects connection `cid` subscribes to.
async fn subscriptions_of(nats: &NatsServer, cid: u64) -> anyhow::Result<Vec<String>> {
    let connz = connz(nats).await?;
    Ok(connz["connections"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["cid"].as_u64() == Some(cid))
        .flat_map(|c| {
            c["subscriptions_list"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|s| s.as_str().map(str::to_owned))
        .collect())
}

/// A results stream made before results were partitioned (each republished on
/// `taskwire.stored.results.<id>.<token>`) is brought up to date in place: the results it holds
/// stay readable, and new ones reach the gateway that waits.
#[tokio::test]
async fn a_results_stream_of_an_earlier_version_gets_partitioned_republishing() -> anyhow::Result<()>
{
    use async_nats::jetstream::stream;
    use taskwire::task::{Id, Name};

    let nats = NatsServer::start_temporary().await?;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    let day = Duration::from_secs(24 * 3600);
    js.create_stream(stream::Config {
        name: taskwire_protocol::RESULTS_STREAM.into(),
        subjects: vec!["taskwire.results.>".into()],
        max_messages_per_subject: 1,
        max_age: day,
        allow_direct: true,
        allow_message_ttl: true,
        subject_delete_marker_ttl: Some(day),
        republish: Some(stream::Republish {
            source: "taskwire.results.*.>".into(),
            destination: "taskwire.stored.results.{{wildcard(1)}}.>".into(),
            headers_only: false,
        }),
        ..Default::default()
    })
    .await?;
    let (name, earlier) = (Name::parse(ADD)?, Id::generate());
    let headers =
        taskwire_protocol::ResultMessage::new(&name, &earlier, TaskState::Succeeded, 1, "0", None)
            .to_headers();
    js.publish_with_headers(
        taskwire_protocol::subject::result(&name, &earlier),
        headers,
        AddResult { sum: 7 }.encode_to_vec().into(),
    )
    .await?
    .await?;

    let gateway = gateway_knowing_examples(&nats).await?;
    let republish = js
        .get_stream(taskwire_protocol::RESULTS_STREAM)
        .await?
        .info()
        .await?
        .config
        .republish
        .clone()
        .map(|r| r.destination);
    assert_eq!(
        republish.as_deref(),
        Some(taskwire_protocol::subject::STORED_RESULTS_MAPPING)
    );
    let client = Client::connect(gateway.url()).await?;
    let info = client.get(earlier.as_str(), false).await?;
    assert_eq!(info.state(), TaskState::Succeeded);
    assert_eq!(AddResult::decode(info.result.as_slice())?.sum, 7);

    let _worker = Worker::start(&nats.url(), |w| w.serve(tasks::magic())).await?;
    let id = client
        .submit_json(ADD, r#"{"arg1":4}"#, SubmitOptions::default())
        .await?
        .task_id;
    let info = client.wait(&id, WAIT, false).await?;
    assert_eq!(info.state(), TaskState::Succeeded, "{info:?}");
    Ok(())
}
