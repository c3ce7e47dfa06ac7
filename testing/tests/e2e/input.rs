//! Bad input gets a status, and nothing is published.

use super::*;

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
    let registered = taskwire::schema::task_hash(taskwire_examples::FILE_DESCRIPTOR_SET, ADD)
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

pub(crate) fn json(text: &str) -> v1::submit_request::Args {
    v1::submit_request::Args::ArgsJson(text.into())
}

fn proto(bytes: Vec<u8>) -> v1::submit_request::Args {
    v1::submit_request::Args::ArgsProto(bytes)
}
