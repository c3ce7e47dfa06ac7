//! The gateway and workers as NATS users of the documented account config, and over TLS.

use super::*;

#[tokio::test]
async fn the_gateway_and_a_worker_run_as_their_own_nats_users() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let gateway_user = User::new(dir.path(), "gateway")?;
    let worker_user = User::new(dir.path(), "magic-worker")?;
    let config = accounts(&gateway_user, &worker_user)?;
    let nats = NatsServer::start_temporary_with_config(&config, gateway_user.auth()).await?;

    // Without credentials NATS refuses the connection.
    let anonymous = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .connect(nats.url())
        .await;
    assert!(anonymous.is_err(), "an anonymous connection was accepted");

    // The gateway (which creates the streams) and the magic worker, each as its user.
    let mut gateway_config = examples_config(&nats.url());
    gateway_config.nats_auth = gateway_user.auth();
    let gateway = Gateway::start_with(gateway_config).await?;
    let worker_auth = worker_user.auth();
    let _worker = Worker::start(&nats.url(), move |w| {
        w.serve(tasks::magic()).nats_auth(worker_auth)
    })
    .await?;
    let magic = MagicClient::new(Client::connect(gateway.url()).await?);
    let sum = magic
        .add_and_wait(
            AddArgs {
                arg1: 1,
                arg2: 2,
                arg3: 3,
            },
            WAIT,
        )
        .await?
        .sum;
    assert_eq!(sum, 6);

    // A workflow runs under these users too: the gateway advances it, the worker stores its
    // steps' results. Add(1, 2, 3) = 6, then Add(6, 10, 0) = 16.
    let mut workflows =
        taskwire::v1::workflows_client::WorkflowsClient::connect(gateway.url()).await?;
    let step = |name: &str, after: &[&str], args: AddArgs| taskwire::v1::Step {
        name: name.into(),
        task: "examples.magic.v1.Magic/Add".into(),
        after: after.iter().map(|s| (*s).to_owned()).collect(),
        args: Some(taskwire::v1::step::Args::ArgsProto(
            prost::Message::encode_to_vec(&args),
        )),
        ..Default::default()
    };
    let workflow = taskwire::v1::Workflow {
        steps: vec![
            step(
                "first",
                &[],
                AddArgs {
                    arg1: 1,
                    arg2: 2,
                    arg3: 3,
                },
            ),
            taskwire::v1::Step {
                fields: vec![taskwire::v1::FieldMapping {
                    from: "sum".into(),
                    to: "arg1".into(),
                }],
                ..step(
                    "second",
                    &["first"],
                    AddArgs {
                        arg1: 0,
                        arg2: 10,
                        arg3: 0,
                    },
                )
            },
        ],
        ..Default::default()
    };
    let id = workflows
        .submit(taskwire::v1::SubmitWorkflowRequest {
            workflow: Some(workflow),
            idempotency_key: String::new(),
        })
        .await?
        .into_inner()
        .workflow_id;
    let deadline = tokio::time::Instant::now() + WAIT;
    let info = loop {
        let info = workflows
            .get(taskwire::v1::GetWorkflowRequest {
                workflow_id: id.clone(),
                include_json: true,
            })
            .await?
            .into_inner();
        if info.state() != taskwire::v1::WorkflowState::Running {
            break info;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "{info:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        info.state(),
        taskwire::v1::WorkflowState::Succeeded,
        "{info:?}"
    );
    let second = info.steps[1].info.as_ref().expect("the second step ran");
    assert_eq!(second.result_json, r#"{"sum":16}"#);

    // The worker's user reaches a gateway for the children its tasks submit and wait for
    // (answered on its own inbox), and the gateway counts them.
    let parent = magic
        .add(AddArgs {
            arg1: 1,
            ..Default::default()
        })
        .await?;
    parent.get(WAIT).await?;
    let worker_nats = worker_user
        .auth()
        .apply(async_nats::ConnectOptions::new().custom_inbox_prefix("_INBOX.magic-worker"))
        .await
        .map_err(anyhow::Error::msg)?
        .connect(nats.url())
        .await?;
    let ask = |subject: &'static str, payload: Vec<u8>| {
        let worker_nats = worker_nats.clone();
        async move { anyhow::Ok(worker_nats.request(subject, payload.into()).await?.payload) }
    };
    let waited = <taskwire::v1::ChildrenWait as prost::Message>::encode_to_vec(
        &taskwire::v1::ChildrenWait {
            parent_id: parent.id().to_owned(),
        },
    );
    let waited: taskwire::v1::ChildrenWaited =
        prost::Message::decode(ask(taskwire_protocol::children::WAIT, waited).await?)?;
    assert_eq!((waited.code, waited.ended), (0, true), "{waited:?}");
    let child = prost::Message::encode_to_vec(&taskwire::v1::ChildSubmission {
        parent_id: parent.id().to_owned(),
        parent_task: "examples.magic.v1.Magic/Add".into(),
        index: 0,
        child: Some(taskwire::v1::SubmitRequest {
            task: "examples.magic.v1.Magic/Add".into(),
            args: Some(taskwire::v1::submit_request::Args::ArgsJson("{}".into())),
            ..Default::default()
        }),
        traceparent: String::new(),
    });
    let submitted: taskwire::v1::ChildSubmitted =
        prost::Message::decode(ask(taskwire_protocol::children::SUBMIT, child).await?)?;
    assert_eq!(
        tonic::Code::from(submitted.code as i32),
        tonic::Code::FailedPrecondition,
        "a parent that ended submits no child: {submitted:?}"
    );

    // The gateway's user pauses a queue and the worker's user follows the pause (its heartbeat
    // says it holds it), then the resume; a task then runs.
    let client = Client::connect(gateway.url()).await?;
    let add = "examples.magic.v1.Magic/Add";
    client.pause_queue(add, &[], "secured").await?;
    let holds = |want: usize| {
        let client = client.clone();
        async move {
            client
                .workers()
                .await
                .is_ok_and(|w| w.len() == 1 && w[0].paused.len() == want)
        }
    };
    taskwire_testing::eventually("the worker holds the pause", WAIT, || holds(3)).await?;
    // A task that runs out of time while the queue is paused: the worker's user records its
    // `expired` outcome and result, and a list by state finds it.
    let stale = client
        .submit::<taskwire_examples::magic::v1::AddResult>(
            add,
            &AddArgs::default(),
            taskwire_client::SubmitOptions {
                ttl: Some(Duration::from_secs(1)),
                ..Default::default()
            },
        )
        .await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    client.resume_queue(add, &[]).await?;
    let expired = taskwire::v1::TaskFilter {
        states: vec![taskwire::v1::TaskState::Expired as i32],
        ..Default::default()
    };
    taskwire_testing::eventually("the expired task is listed", WAIT, || {
        let (client, expired, id) = (client.clone(), expired.clone(), stale.id().to_owned());
        async move {
            client
                .find_tasks(expired, 10)
                .await
                .is_ok_and(|found| found.len() == 1 && found[0].task_id == id)
        }
    })
    .await?;
    taskwire_testing::eventually("the worker holds no pause", WAIT, || holds(0)).await?;
    let sum = magic
        .add_and_wait(
            AddArgs {
                arg1: 2,
                ..Default::default()
            },
            WAIT,
        )
        .await?
        .sum;
    assert_eq!(sum, 2);

    // A limit per value of a field: the worker's user takes the slot of that value.
    client
        .set_task_limits(
            add,
            Some(taskwire::v1::TaskLimits {
                max_concurrency: 1,
                concurrency_key_field: "arg1".into(),
                ..Default::default()
            }),
        )
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sum = magic
        .add_and_wait(
            AddArgs {
                arg1: 3,
                ..Default::default()
            },
            WAIT,
        )
        .await?
        .sum;
    assert_eq!(sum, 3);
    client.set_task_limits(add, None).await?;

    // Its user may hold a result partition (else it would receive every stored result).
    let gateway_nats = gateway_user
        .auth()
        .apply(async_nats::ConnectOptions::new().custom_inbox_prefix("_INBOX.gateway"))
        .await
        .map_err(anyhow::Error::msg)?
        .connect(nats.url())
        .await?;
    let partitions = async_nats::jetstream::new(gateway_nats)
        .get_key_value(taskwire_protocol::GATEWAYS_BUCKET)
        .await?;
    let mut held = Vec::new();
    for n in 0..taskwire_protocol::partition::RESULT_PARTITIONS {
        if partitions.get(format!("partition-{n}")).await?.is_some() {
            held.push(n);
        }
    }
    assert_eq!(held.len(), 1, "{held:?}");

    // The magic worker's user may pull its own consumer, and no other task's.
    let (worker_nats, errors) = connect_as(&nats, &worker_user).await?;
    let next = |consumer: &str| {
        let subject = format!("$JS.API.CONSUMER.MSG.NEXT.TASKWIRE_TASKS.{consumer}");
        let worker_nats = worker_nats.clone();
        async move {
            tokio::time::timeout(
                Duration::from_secs(2),
                worker_nats.request(subject, r#"{"batch":1,"no_wait":true}"#.into()),
            )
            .await
        }
    };
    assert!(
        matches!(next("examples-magic-v1-Magic-Add").await, Ok(Ok(_))),
        "the worker's own consumer did not answer"
    );
    assert!(
        !matches!(next("examples-chaos-v1-Chaos-Sleep").await, Ok(Ok(_))),
        "another task's consumer answered the magic worker"
    );
    let denied = errors.lock().expect("errors").clone();
    assert!(
        denied
            .iter()
            .any(|e| e.contains("Permissions Violation")
                && e.contains("examples-chaos-v1-Chaos-Sleep")),
        "{denied:?}"
    );
    // Nor may it read replies sent to others: another worker's pulled tasks, the gateway's
    // answers.
    for inbox in ["_INBOX.>", "_INBOX.gateway.>"] {
        let _subscription = worker_nats.subscribe(inbox).await?;
        worker_nats.flush().await?;
        let refused = tokio::time::timeout(WAIT, async {
            loop {
                let seen = errors.lock().expect("errors").clone();
                if seen.iter().any(|e| {
                    e.contains("Permissions Violation for Subscription") && e.contains(inbox)
                }) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(
            refused.is_ok(),
            "the magic worker may subscribe to {inbox}: {:?}",
            errors.lock().expect("errors")
        );
    }
    // An inbox prefix that is not a literal subject is refused before connecting.
    let wild = NatsAuth {
        inbox_prefix: Some("_INBOX.*".into()),
        ..NatsAuth::default()
    };
    let refused = wild
        .apply(async_nats::ConnectOptions::new())
        .await
        .err()
        .unwrap_or_default();
    assert!(refused.contains("not a literal subject"), "{refused:?}");
    // Without their inbox prefixes, the gateway and the worker cannot receive replies: each
    // stops at start, naming the setting to fix.
    let mut unprefixed = examples_config(&nats.url());
    unprefixed.nats_auth = NatsAuth {
        inbox_prefix: None,
        ..gateway_user.auth()
    };
    let worker_unprefixed = NatsAuth {
        inbox_prefix: None,
        ..worker_user.auth()
    };
    let url = nats.url();
    let (gateway_refused, worker_refused) = tokio::join!(
        Gateway::start_with(unprefixed),
        Worker::start(&url, move |w| w
            .serve(tasks::magic())
            .nats_auth(worker_unprefixed)),
    );
    for (who, refused) in [
        ("gateway", gateway_refused.err()),
        ("worker", worker_refused.err()),
    ] {
        let refused = refused.map(|e| format!("{e:#}")).unwrap_or_default();
        assert!(
            refused.contains("TASKWIRE_NATS_INBOX_PREFIX"),
            "the {who} without its inbox prefix: {refused:?}"
        );
    }
    // Nor may it publish tasks: producers go through the gateway.
    worker_nats
        .publish("taskwire.tasks.examples.magic.v1.Magic.Add", "x".into())
        .await?;
    worker_nats.flush().await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let denied = errors.lock().expect("errors").clone();
    assert!(
        denied
            .iter()
            .any(|e| e.contains("Permissions Violation") && e.contains("taskwire.tasks.")),
        "{denied:?}"
    );
    // Results: of its own task types only. It may read its own (a direct get with the subject in
    // the API subject answers, here that there is none)...
    let id = "0123456789abcdef0123456789abcdef";
    let read = |subject: String, body: &'static str| {
        let worker_nats = worker_nats.clone();
        async move {
            tokio::time::timeout(
                Duration::from_secs(2),
                worker_nats.request(subject, body.into()),
            )
            .await
        }
    };
    let own = format!("taskwire.results.{id}.examples.magic.v1.Magic.Add");
    let other = format!("taskwire.results.{id}.examples.chaos.v1.Chaos.Sleep");
    assert!(
        matches!(
            read(format!("$JS.API.DIRECT.GET.TASKWIRE_RESULTS.{own}"), "").await,
            Ok(Ok(_))
        ),
        "the worker cannot read its own task's result"
    );
    // ...but neither read another task type's result, nor any by a request body...
    assert!(
        !matches!(
            read(format!("$JS.API.DIRECT.GET.TASKWIRE_RESULTS.{other}"), "").await,
            Ok(Ok(_))
        ),
        "the magic worker read a Chaos result"
    );
    assert!(
        !matches!(
            read(
                "$JS.API.DIRECT.GET.TASKWIRE_RESULTS".into(),
                r#"{"last_by_subj":"taskwire.results.>"}"#
            )
            .await,
            Ok(Ok(_))
        ),
        "the magic worker listed results"
    );
    // ...nor store one for another task type.
    worker_nats.publish(other.clone(), "x".into()).await?;
    worker_nats.flush().await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let denied = errors.lock().expect("errors").clone();
    assert!(
        denied
            .iter()
            .any(|e| e.contains("Permissions Violation") && e.contains(&other)),
        "{denied:?}"
    );
    Ok(())
}

#[tokio::test]
async fn bad_nats_credentials_stop_the_process_with_the_setting_to_fix() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let empty = dir.path().join("empty.nk");
    std::fs::write(&empty, "")?;
    let auth = NatsAuth {
        nkey_file: Some(empty),
        ..NatsAuth::default()
    };
    let err = auth
        .apply(async_nats::ConnectOptions::new())
        .await
        .expect_err("an empty seed file");
    assert!(
        err.contains("TASKWIRE_NATS_NKEY") && err.contains("seed"),
        "{err}"
    );
    let missing = NatsAuth {
        creds_file: Some(dir.path().join("missing.creds")),
        ..NatsAuth::default()
    };
    let err = missing
        .apply(async_nats::ConnectOptions::new())
        .await
        .expect_err("a missing creds file");
    assert!(err.contains("TASKWIRE_NATS_CREDS"), "{err}");
    Ok(())
}

#[tokio::test]
async fn the_gateway_and_workers_speak_tls_to_nats_with_client_certificates() -> anyhow::Result<()>
{
    let dir = tempfile::tempdir()?;
    let ca = Ca::new("taskwire NATS CA")?;
    let (server_cert, server_key) = ca.issue(&["127.0.0.1", "localhost"])?;
    let (client_cert, client_key) = ca.issue(&["taskwire"])?;
    let write = |name: &str, text: &str| -> anyhow::Result<PathBuf> {
        let path = dir.path().join(name);
        std::fs::write(&path, text)?;
        Ok(path)
    };
    let ca_file = write("ca.pem", &ca.pem)?;
    let config = format!(
        "jetstream {{}}\ntls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  ca_file: \"{}\"\n  verify: true\n}}\n",
        write("server.pem", &server_cert)?.display(),
        write("server.key", &server_key)?.display(),
        ca_file.display(),
    );
    let auth = NatsAuth {
        ca_file: Some(ca_file),
        client_cert: Some((
            write("client.pem", &client_cert)?,
            write("client.key", &client_key)?,
        )),
        ..NatsAuth::default()
    };
    let nats = NatsServer::start_temporary_with_config(&config, auth.clone()).await?;

    // Without a client certificate the server refuses the connection.
    let without = NatsAuth {
        client_cert: None,
        ..auth.clone()
    };
    let refused = without
        .apply(async_nats::ConnectOptions::new().connection_timeout(Duration::from_secs(2)))
        .await
        .map_err(anyhow::Error::msg)?
        .connect(nats.url())
        .await;
    assert!(
        refused.is_err(),
        "a client without a certificate got through"
    );

    let mut gateway_config = examples_config(&nats.url());
    gateway_config.nats_auth = auth.clone();
    let gateway = Gateway::start_with(gateway_config).await?;
    let worker_auth = auth.clone();
    let _worker = Worker::start(&nats.url(), move |w| {
        w.serve(tasks::magic()).nats_auth(worker_auth)
    })
    .await?;
    let client = Client::connect(gateway.url()).await?;
    assert_eq!(add_with(&client).await?, 9);
    Ok(())
}
