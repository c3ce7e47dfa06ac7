//! Everything a gateway call can fail with, and its mapping to gRPC status codes: the one place
//! where a failure becomes a `tonic::Status`.

use std::time::Duration;

use tonic::{Code, Status};

use crate::payload::PayloadError;

/// A failed gateway call. Every message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "unknown task `{0}`: no worker has registered it; start a worker that serves it, or give the gateway its descriptor set (TASKWIRE_DESCRIPTOR_SETS)"
    )]
    UnknownTask(String),
    #[error("{0}")]
    InvalidName(taskwire::task::Error),
    #[error("{0}")]
    InvalidId(taskwire::task::Error),
    #[error("{0}")]
    Payload(#[from] PayloadError),
    #[error("the task arguments are missing: set args_proto (protobuf bytes) or args_json")]
    MissingArgs,
    #[error(
        "NATS is unreachable ({0}); the task was not stored, try again when the broker is back"
    )]
    BrokerDown(String),
    #[error("the broker refused the request: {0}")]
    Broker(String),
    #[error(
        "the broker refused the task: {0}; the queue is full, try again later or raise the stream limits"
    )]
    QueueFull(String),
    #[error(
        "the task is too large for the broker: {0}; send smaller arguments (TASKWIRE_MAX_PAYLOAD bounds what the gateway accepts)"
    )]
    TooLarge(String),
    #[error(
        "no task with id {0}: it never existed or its record expired (results are kept for TASKWIRE_RESULT_TTL)"
    )]
    NotFound(String),
    #[error(
        "the result of task {0} expired: results are kept for the task's result_ttl, at most TASKWIRE_RESULT_TTL"
    )]
    Expired(String),
    #[error(
        "delayed tasks need message schedules, which the tasks stream has off because a queue limit (TASKWIRE_MAX_QUEUED) is set; drop not_before/countdown or the limit"
    )]
    NoSchedules,
    #[error("{0}")]
    PermissionDenied(String),
    #[error(
        "task {task}: the producer's schema is version {producer}, the workers registered version {registered}, and they do not fit: {reason}. Build the producer and the workers from compatible protos (regenerate the client, or deploy workers of the producer's proto)"
    )]
    SchemaMismatch {
        task: String,
        producer: String,
        registered: String,
        reason: String,
    },
    #[error(
        "task {id} has finished already ({state}); only a task that has not finished can be cancelled"
    )]
    Finished { id: String, state: &'static str },
    #[error(
        "task {id} has succeeded; a dead letter of a task that succeeded is not replayed (purge it instead)"
    )]
    Succeeded { id: String },
    #[error(
        "task {id} has no result after {waited:?}; it is still {state}, wait again or check `taskwire get {id}`"
    )]
    StillRunning {
        id: String,
        state: &'static str,
        waited: Duration,
    },
    #[error("the result of task {0} does not decode as its output type: {1}")]
    BadResult(String, String),
    #[error("no dead letter for task {0}: it did not fail for good, was replayed, or was purged")]
    NoDeadLetter(String),
    #[error("a schedule named {0} exists already; delete it first or choose another name")]
    ScheduleExists(String),
    #[error("no schedule named {0}; `taskwire schedule list` shows those that exist")]
    NoSchedule(String),
    #[error(
        "task {parent} {why}: it submits no more children (a child is submitted by a task while it runs)"
    )]
    ParentEnded { parent: String, why: String },
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    #[error("the gateway could not start: {0}")]
    Startup(String),
}

impl Error {
    /// The gRPC status code of this error.
    pub fn code(&self) -> Code {
        match self {
            Error::UnknownTask(_)
            | Error::NotFound(_)
            | Error::NoDeadLetter(_)
            | Error::Expired(_)
            | Error::NoSchedule(_) => Code::NotFound,
            Error::ScheduleExists(_) => Code::AlreadyExists,
            Error::InvalidName(_)
            | Error::InvalidId(_)
            | Error::Payload(_)
            | Error::MissingArgs
            | Error::BadRequest(_) => Code::InvalidArgument,
            Error::BrokerDown(_) => Code::Unavailable,
            Error::Broker(_) | Error::BadResult(..) | Error::Startup(_) => Code::Internal,
            Error::QueueFull(_) | Error::TooLarge(_) => Code::ResourceExhausted,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::Finished { .. }
            | Error::Succeeded { .. }
            | Error::ParentEnded { .. }
            | Error::NoSchedules
            | Error::SchemaMismatch { .. } => Code::FailedPrecondition,
            Error::StillRunning { .. } => Code::DeadlineExceeded,
            Error::Conflict(_) => Code::Aborted,
        }
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        Status::new(err.code(), err.to_string())
    }
}
