//! One attempt as a call of the task's own method on the upstream: the arguments' bytes in, the
//! result's bytes out, the attempt in the metadata, and the answer's status deciding what the
//! attempt came to.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use taskwire::codec::Raw;
use taskwire::service::{BoxFuture, Service, TaskDef};
use taskwire::v1::HandlerCall;
use taskwire::{TaskContext, TaskError};
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::transport::Channel;
use tonic::{Code, Status};
use tonic_types::StatusExt as _;

use super::context::Attempts;
use super::handlers::{Answer, Handlers};
use super::health::Health;

/// The metadata keys of a call, as docs/protocol.md lists them.
pub mod metadata {
    /// The task's id.
    pub const TASK_ID: &str = "taskwire-task-id";
    /// The task's full name, `package.Service/Method`.
    pub const TASK: &str = "taskwire-task";
    /// This attempt, from 1.
    pub const ATTEMPT: &str = "taskwire-attempt";
    /// The attempts the task has in all.
    pub const MAX_ATTEMPTS: &str = "taskwire-max-attempts";
    /// Where the runtime serves `taskwire.v1.TaskContext` for this call.
    pub const CONTEXT: &str = "taskwire-context";
    /// The `google.rpc.ErrorInfo` metadata key that says, `true` or `false`, whether a failure
    /// is worth another attempt, whatever its status code.
    pub const RETRYABLE: &str = "retryable";
}

/// The largest result taken from the upstream: larger than any NATS server stores, so that a
/// result too large is refused by the broker, with the dead letter saying so.
pub(crate) const MAX_RESULT: usize = 256 << 20;

/// One service of the upstream, served by calling it.
pub(crate) struct Forward {
    pub(crate) name: String,
    pub(crate) tasks: Vec<TaskDef>,
    /// Shared by every service of the upstream.
    pub(crate) file_descriptor_set: Bytes,
    pub(crate) channel: Channel,
    pub(crate) attempts: Arc<Attempts>,
    pub(crate) health: Health,
    /// The stream of calls, while the upstream serves it.
    pub(crate) handlers: Arc<Handlers>,
}

impl Service for Forward {
    fn name(&self) -> &str {
        &self.name
    }

    fn tasks(&self) -> &[TaskDef] {
        &self.tasks
    }

    fn file_descriptor_set(&self) -> &[u8] {
        &self.file_descriptor_set
    }

    fn call(
        &self,
        task: &str,
        ctx: TaskContext,
        args: Bytes,
    ) -> BoxFuture<Result<Vec<u8>, TaskError>> {
        let path = format!("/{task}");
        let channel = self.channel.clone();
        let attempts = Arc::clone(&self.attempts);
        let health = self.health.clone();
        let handlers = Arc::clone(&self.handlers);
        Box::pin(async move {
            if !handlers.unserved() {
                let call = handler_call(&ctx, &path, &args, attempts.address());
                let _running = attempts.running(&ctx);
                if let Some(answer) = on_stream(&handlers, call, &ctx, &health).await {
                    return answer;
                }
            }
            let path = path.parse::<http::uri::PathAndQuery>().map_err(|e| {
                TaskError::permanent(format!("task {path} is not a gRPC path: {e}"))
            })?;
            let request = request(&ctx, args, attempts.address());
            // Progress reports of this attempt are taken while it runs.
            let _running = attempts.running(&ctx);
            let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(MAX_RESULT);
            let answer = async {
                grpc.ready()
                    .await
                    .map_err(|e| Status::unavailable(format!("cannot reach the upstream: {e}")))?;
                grpc.unary(request, path, Raw).await
            };
            tokio::select! {
                answer = answer => match answer {
                    Ok(response) => Ok(response.into_inner().to_vec()),
                    Err(status) if is_transport(&status) => Err(cut_short(&health, status.message())),
                    Err(status) => Err(failed(&status, &ctx).await),
                },
                // A cancel, the time limit or a forced stop: the call is dropped, which cancels
                // it (the handler sees its context cancelled).
                () = ctx.cancelled() => Err(TaskError::retryable("the attempt was stopped")),
            }
        })
    }
}

/// The attempt as a call on the stream; `None` when the upstream does not serve the stream.
async fn on_stream(
    handlers: &Handlers,
    call: HandlerCall,
    ctx: &TaskContext,
    health: &Health,
) -> Option<Result<Vec<u8>, TaskError>> {
    let (pending, answer) = handlers.call(call);
    tokio::select! {
        answer = answer => {
            pending.answered();
            match answer {
                Ok(Answer::Outcome(outcome)) if outcome.code == 0 => Some(Ok(outcome.result)),
                Ok(Answer::Outcome(outcome)) => {
                    let status = Status::with_details(
                        Code::from(outcome.code as i32),
                        outcome.message,
                        Bytes::from(outcome.details),
                    );
                    Some(Err(failed(&status, ctx).await))
                }
                Ok(Answer::Unserved) => None,
                Ok(Answer::Lost(why)) => Some(Err(cut_short(health, &why))),
                Err(_) => Some(Err(cut_short(health, "the worker is stopping"))),
            }
        }
        // A cancel, the time limit or a forced stop: `pending`, dropped, cancels the call.
        () = ctx.cancelled() => Some(Err(TaskError::retryable("the attempt was stopped"))),
    }
}

/// The upstream went away under the call (a run cut short, as by a crash): tried again, and no
/// new task starts until it answers its health check again.
fn cut_short(health: &Health, why: &str) -> TaskError {
    health.lost("a call to it was cut short");
    TaskError::retryable(format!("the call to the upstream was cut short: {why}"))
}

/// What the handler's failure means; at the time limit, the runtime stops the attempt as timed
/// out.
async fn failed(status: &Status, ctx: &TaskContext) -> TaskError {
    if status.code() == Code::DeadlineExceeded
        && ctx.deadline().is_some_and(|d| Instant::now() >= d)
    {
        ctx.cancelled().await;
    }
    task_error(status)
}

/// One attempt as a frame's call: what [`request`] puts in a call's metadata, as fields.
fn handler_call(ctx: &TaskContext, path: &str, args: &Bytes, context: &str) -> HandlerCall {
    struct Trace<'a>(&'a mut HandlerCall);
    impl opentelemetry::propagation::Injector for Trace<'_> {
        fn set(&mut self, key: &str, value: String) {
            match key {
                "traceparent" => self.0.traceparent = value,
                "tracestate" => self.0.tracestate = value,
                _ => {}
            }
        }
    }
    let mut call = HandlerCall {
        id: 0,
        method: path.to_owned(),
        argument: args.to_vec(),
        task_id: ctx.id().as_str().to_owned(),
        task: ctx.task().as_str().to_owned(),
        attempt: ctx.attempt(),
        max_attempts: ctx.max_attempts(),
        context: context.to_owned(),
        timeout_ms: ctx.deadline().map_or(0, |d| {
            d.saturating_duration_since(Instant::now())
                .as_millis()
                .clamp(1, u128::from(u64::MAX)) as u64
        }),
        ..HandlerCall::default()
    };
    taskwire::propagation::inject(&taskwire::propagation::current(), &mut Trace(&mut call));
    call
}

/// The request of one attempt: the arguments' bytes, the attempt in the metadata, the time
/// limit as the deadline, and the trace context.
fn request(ctx: &TaskContext, args: Bytes, context: &str) -> tonic::Request<Bytes> {
    let mut request = tonic::Request::new(args);
    let meta = request.metadata_mut();
    insert(meta, metadata::TASK_ID, ctx.id().as_str());
    insert(meta, metadata::TASK, ctx.task().as_str());
    insert(meta, metadata::ATTEMPT, &ctx.attempt().to_string());
    insert(
        meta,
        metadata::MAX_ATTEMPTS,
        &ctx.max_attempts().to_string(),
    );
    insert(meta, metadata::CONTEXT, context);
    taskwire::propagation::inject_metadata(meta);
    if let Some(deadline) = ctx.deadline() {
        request.set_timeout(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        );
    }
    request
}

fn insert(meta: &mut MetadataMap, key: &'static str, value: &str) {
    if let Ok(value) = AsciiMetadataValue::try_from(value) {
        meta.insert(key, value);
    }
}

/// Whether the call failed on its way (no connection, the connection lost), not by an answer
/// of the handler: a status the client made from an error it met carries that error as its
/// source, and one the server answered carries none.
pub(crate) fn is_transport(status: &Status) -> bool {
    use std::error::Error as _;
    status.source().is_some()
}

/// What a failed call's status means for the task: codes that mean "try again" retry (after
/// the `google.rpc.RetryInfo` delay when it gives one); an uncaught exception (UNKNOWN,
/// INTERNAL, DATA_LOSS) fails the task at once as a panic does; the other codes mean the input
/// will never work and fail it at once. A `google.rpc.ErrorInfo` with metadata `retryable`
/// overrides the code's word either way.
pub(crate) fn task_error(status: &Status) -> TaskError {
    let message = if status.message().is_empty() {
        format!("the handler answered {:?}", status.code())
    } else {
        status.message().to_owned()
    };
    let said = status.get_details_error_info().and_then(|info| {
        match info.metadata.get(metadata::RETRYABLE)?.as_str() {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        }
    });
    let retry_after = status.get_details_retry_info().and_then(|r| r.retry_delay);
    let retryable = matches!(
        status.code(),
        Code::Unavailable
            | Code::Aborted
            | Code::ResourceExhausted
            | Code::DeadlineExceeded
            | Code::Cancelled
    );
    let crash = matches!(
        status.code(),
        Code::Unknown | Code::Internal | Code::DataLoss
    );
    match (said, retry_after) {
        (Some(true), Some(after)) => TaskError::retryable(message).retry_after(after),
        (Some(true), None) => TaskError::retryable(message),
        (Some(false), _) => TaskError::permanent(message),
        (None, _) if crash => TaskError::crashed(message),
        (None, Some(after)) if retryable => TaskError::retryable(message).retry_after(after),
        (None, _) if retryable => TaskError::retryable(message),
        (None, _) => TaskError::permanent(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::ErrorDetails;

    #[test]
    fn codes_decide_retry_or_failure() {
        for code in [
            Code::Unavailable,
            Code::Aborted,
            Code::ResourceExhausted,
            Code::DeadlineExceeded,
        ] {
            let err = task_error(&Status::new(code, "busy"));
            assert!(err.is_retryable(), "{code:?}");
            assert_eq!(err.message(), "busy");
        }
        for code in [
            Code::InvalidArgument,
            Code::FailedPrecondition,
            Code::OutOfRange,
            Code::PermissionDenied,
            Code::Unimplemented,
            Code::NotFound,
        ] {
            let err = task_error(&Status::new(code, "never"));
            assert!(!err.is_retryable() && !err.is_crash(), "{code:?}");
        }
        for code in [Code::Unknown, Code::Internal] {
            assert!(
                task_error(&Status::new(code, "boom")).is_crash(),
                "{code:?}"
            );
        }
    }

    #[test]
    fn details_say_when_and_override_the_code() {
        let later = Status::with_error_details(
            Code::Unavailable,
            "rate limited",
            ErrorDetails::with_retry_info(Some(Duration::from_secs(7))),
        );
        assert_eq!(
            task_error(&later).retry_delay(),
            Some(Duration::from_secs(7))
        );
        let info = |retryable: &str| {
            ErrorDetails::with_error_info(
                "REASON",
                "example.com",
                [(metadata::RETRYABLE.to_owned(), retryable.to_owned())],
            )
        };
        let permanent = Status::with_error_details(Code::Unavailable, "no", info("false"));
        assert!(!task_error(&permanent).is_retryable());
        let retryable = Status::with_error_details(Code::InvalidArgument, "yes", info("true"));
        assert!(task_error(&retryable).is_retryable());
    }
}
