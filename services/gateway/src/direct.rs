//! Every registered task served by its own method path: a plain gRPC client of
//! `examples.magic.v1.Magic` calling `/examples.magic.v1.Magic/Add` with an `AddArgs` gets the
//! `AddResult` back, as if the task were a local rpc. The gateway submits the task, waits for its
//! result (for the call's deadline, at most 5 minutes; 30 seconds without one) and answers with
//! it; a task that failed is an error status whose details say why and whether a retry could
//! succeed. With the metadata `taskwire-async: true` the call answers at once with an empty
//! output message and the task id in the `taskwire-task-id` response metadata.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use taskwire::codec::Raw;
use taskwire::v1::{self, TaskState};
use tonic::{Code, Request, Response, Status};

use crate::{Error, Gateway, MAX_WAIT};

/// Metadata that asks for the task id at once instead of the result.
pub const ASYNC: &str = "taskwire-async";
/// Response metadata with the task id.
pub const TASK_ID: &str = "taskwire-task-id";
/// Request metadata with an idempotency key.
pub const IDEMPOTENCY_KEY: &str = "taskwire-idempotency-key";
/// Request metadata with the producer's schema fingerprint, checked like
/// `SubmitRequest.descriptor_hash`.
pub const DESCRIPTOR_HASH: &str = "taskwire-descriptor-hash";

const DEFAULT_WAIT: Duration = Duration::from_secs(30);

/// Answers a gRPC call to a path that no built-in service has.
pub(crate) async fn call(
    gateway: Arc<Gateway>,
    request: axum::extract::Request,
) -> http::Response<tonic::body::Body> {
    let path = request.uri().path().trim_start_matches('/').to_owned();
    // The bytes as they came: the gateway checks them against the task's descriptor.
    let mut grpc = tonic::server::Grpc::new(Raw)
        .max_decoding_message_size(gateway.max_payload.saturating_add(1024));
    grpc.unary(TaskCall { gateway, path }, request).await
}

struct TaskCall {
    gateway: Arc<Gateway>,
    path: String,
}

impl tonic::server::UnaryService<Bytes> for TaskCall {
    type Response = Bytes;
    type Future = BoxFuture<'static, Result<Response<Bytes>, Status>>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let gateway = Arc::clone(&self.gateway);
        let path = self.path.clone();
        Box::pin(async move { run(&gateway, &path, request).await })
    }
}

/// The call's deadline from its `grpc-timeout` metadata (`10S`, `500m`, ...).
fn deadline(request: &Request<Bytes>) -> Duration {
    let Some(text) = request
        .metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
    else {
        return DEFAULT_WAIT;
    };
    let (number, unit) = text.split_at(text.len().saturating_sub(1));
    let Ok(n) = number.parse::<u64>() else {
        return DEFAULT_WAIT;
    };
    let d = match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => DEFAULT_WAIT,
    };
    d.min(MAX_WAIT)
}

async fn run(
    gateway: &Gateway,
    path: &str,
    request: Request<Bytes>,
) -> Result<Response<Bytes>, Status> {
    let unknown = || {
        Status::unimplemented(format!(
            "no method {path}: it is neither a taskwire.v1 rpc nor a task a worker has registered"
        ))
    };
    // A path that names no registered task is a method this server does not have.
    let refused = |e: Error| match e {
        Error::UnknownTask(_) | Error::InvalidName(_) => unknown(),
        e => e.into(),
    };
    let scope = crate::auth::caller(&request).key_scope();
    let metadata = request.metadata();
    let answer_at_once = metadata
        .get(ASYNC)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let idempotency_key = metadata
        .get(IDEMPOTENCY_KEY)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let descriptor_hash = request
        .metadata()
        .get(DESCRIPTOR_HASH)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let wait = deadline(&request);
    let submit = v1::SubmitRequest {
        task: path.to_owned(),
        args: Some(v1::submit_request::Args::ArgsProto(
            request.into_inner().to_vec(),
        )),
        options: Some(v1::SubmitOptions {
            idempotency_key,
            ..Default::default()
        }),
        descriptor_hash,
    };
    let with_id = |body: Bytes, id: &str| -> Result<Response<Bytes>, Status> {
        let mut response = Response::new(body);
        if let Ok(value) = id.parse() {
            response.metadata_mut().insert(TASK_ID, value);
        }
        Ok(response)
    };
    if answer_at_once {
        let submitted = gateway
            .submit(submit, scope.as_deref())
            .await
            .map_err(refused)?;
        // An empty message is the output type's default value.
        return with_id(Bytes::new(), &submitted.task_id);
    }
    let info = gateway
        .submit_and_finish(submit, scope.as_deref(), wait)
        .await
        .map_err(refused)?;
    match info.state() {
        TaskState::Succeeded => with_id(Bytes::from(info.result), &info.task_id),
        state => Err(failure(&info, state)),
    }
}

/// A task that did not succeed, as a status: the code says how it ended, the details carry the
/// task's own error and whether trying again could succeed.
fn failure(info: &v1::TaskInfo, state: TaskState) -> Status {
    let error = info.error.clone().unwrap_or_default();
    let code = match state {
        TaskState::Cancelled => Code::Cancelled,
        TaskState::Expired => Code::DeadlineExceeded,
        _ if error.retryable => Code::Unavailable,
        _ => Code::Aborted,
    };
    let message = format!(
        "task {} {}: {}",
        info.task_id,
        taskwire_protocol::state_name(state),
        error.message
    );
    let details = tonic_types::ErrorDetails::with_error_info(
        "TASK_FAILED",
        "taskwire",
        [
            ("task_id".to_owned(), info.task_id.clone()),
            ("task".to_owned(), info.task.clone()),
            (
                "state".to_owned(),
                taskwire_protocol::state_name(state).to_owned(),
            ),
            ("attempt".to_owned(), info.attempt.to_string()),
            ("retryable".to_owned(), error.retryable.to_string()),
            ("error".to_owned(), error.message.clone()),
        ],
    );
    use tonic_types::StatusExt as _;
    let mut status = Status::with_error_details(code, message, details);
    if let Ok(value) = info.task_id.parse() {
        status.metadata_mut().insert(TASK_ID, value);
    }
    status
}
