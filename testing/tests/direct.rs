//! Tasks called by their own method path, with a plain gRPC client of the task's service.

use std::time::Duration;

use taskwire::v1::TaskState;
use taskwire_client::Client;
use taskwire_examples::chaos::v1::{FlakyArgs, FlakyResult};
use taskwire_examples::magic::v1::{AddArgs, AddResult};
use taskwire_testing::{Gateway, NatsServer, Worker, tasks};
use tonic::Code;
use tonic::codegen::http::uri::PathAndQuery;
use tonic_types::StatusExt as _;

const WAIT: Duration = Duration::from_secs(20);

/// A plain unary gRPC call, as a generated client in any language makes it.
async fn call<Req, Res>(
    url: &str,
    path: &'static str,
    request: tonic::Request<Req>,
) -> Result<tonic::Response<Res>, tonic::Status>
where
    Req: prost::Message + Send + Sync + 'static,
    Res: prost::Message + Default + Send + Sync + 'static,
{
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
        .map_err(|e| tonic::Status::internal(e.to_string()))?
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    grpc.unary(
        request,
        PathAndQuery::from_static(path),
        tonic_prost::ProstCodec::default(),
    )
    .await
}

#[tokio::test]
async fn a_task_answers_on_its_own_method_path() -> anyhow::Result<()> {
    let nats = NatsServer::start_temporary().await?;
    let gateway = Gateway::start(&nats.url()).await?;
    let _worker = Worker::start(&nats.url(), |w| {
        w.serve(tasks::magic()).serve(tasks::chaos())
    })
    .await?;
    let client = Client::connect(gateway.url()).await?;
    let url = gateway.url();

    // As if Add were a local rpc.
    let response: tonic::Response<AddResult> = call(
        &url,
        "/examples.magic.v1.Magic/Add",
        tonic::Request::new(AddArgs {
            arg1: 1,
            arg2: 2,
            arg3: 3,
        }),
    )
    .await?;
    let id = response
        .metadata()
        .get("taskwire-task-id")
        .expect("the task id")
        .to_str()?
        .to_owned();
    assert_eq!(response.into_inner().sum, 6);
    assert_eq!(client.get(&id, false).await?.state(), TaskState::Succeeded);

    // At once, with the id to follow it by.
    let mut request = tonic::Request::new(AddArgs {
        arg1: 40,
        arg2: 2,
        arg3: 0,
    });
    request
        .metadata_mut()
        .insert("taskwire-async", "true".parse()?);
    let response: tonic::Response<AddResult> =
        call(&url, "/examples.magic.v1.Magic/Add", request).await?;
    let id = response
        .metadata()
        .get("taskwire-task-id")
        .expect("the task id")
        .to_str()?
        .to_owned();
    assert_eq!(response.into_inner(), AddResult::default());
    let done = client.wait(&id, WAIT, false).await?;
    assert_eq!(
        <AddResult as prost::Message>::decode(done.result.as_slice())?.sum,
        42
    );

    // A task that fails for good: its error, in the status details.
    let err = call::<_, FlakyResult>(
        &url,
        "/examples.chaos.v1.Chaos/Flaky",
        tonic::Request::new(FlakyArgs {
            permanent: true,
            ..Default::default()
        }),
    )
    .await
    .expect_err("fails");
    assert_eq!(err.code(), Code::Aborted, "{err:?}");
    let info = err.get_details_error_info().expect("error info");
    assert_eq!(info.reason, "TASK_FAILED");
    assert_eq!(
        info.metadata.get("retryable").map(String::as_str),
        Some("false")
    );
    assert_eq!(
        info.metadata.get("error").map(String::as_str),
        Some("flaky: failed for good")
    );

    // Unknown methods and bad arguments.
    let err = call::<_, AddResult>(
        &url,
        "/examples.nope.v1.Nope/Nothing",
        tonic::Request::new(AddArgs::default()),
    )
    .await
    .expect_err("unknown");
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
    let err = call::<_, AddResult>(
        &url,
        "/examples.magic.v1.Magic/Add",
        tonic::Request::new(FlakyArgs {
            key: "not an AddArgs".into(),
            ..Default::default()
        }),
    )
    .await
    .expect_err("wrong message");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    Ok(())
}
