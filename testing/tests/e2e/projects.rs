//! A project outside the workspace, and producers of an earlier schema.

use super::*;
use crate::input::json;

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
        "taskwire.v1.Admin",
    ] {
        assert!(names.iter().any(|n| n == name), "{name} not in {names:?}");
    }
    // Only what a worker registered: the example contracts are no part of the gateway.
    assert!(
        !names.iter().any(|n| n.starts_with("examples.")),
        "{names:?}"
    );
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
