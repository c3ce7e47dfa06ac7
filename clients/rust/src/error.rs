//! What a call can fail with, by gRPC status and by what the gateway said.

/// What a client call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The gateway could not be reached.
    #[error("cannot reach the gateway at {endpoint}: {source}")]
    Connect {
        endpoint: String,
        source: tonic::transport::Error,
    },
    /// The gateway refused the call; the status says why and what to fix.
    #[error("{}: {}", code_name(.0.code()), .0.message())]
    Status(tonic::Status),
    /// The task ran and failed.
    #[error("task {id} failed: {message}")]
    TaskFailed {
        id: String,
        message: String,
        retryable: bool,
    },
    /// The task was cancelled.
    #[error("task {id} was cancelled")]
    Cancelled { id: String },
    #[error("task {id} expired: it was not started before its expiry time")]
    Expired { id: String },
    /// A connection setting is wrong (a file missing, a token malformed).
    #[error("{0}")]
    Config(String),
    /// The result does not decode as the task's output type.
    #[error("the result of task {id} does not decode: {source}")]
    Decode {
        id: String,
        source: prost::DecodeError,
    },
}

pub(crate) fn code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::NotFound => "not found",
        tonic::Code::InvalidArgument => "invalid argument",
        tonic::Code::Unavailable => "unavailable",
        tonic::Code::DeadlineExceeded => "deadline exceeded",
        tonic::Code::FailedPrecondition => "failed precondition",
        tonic::Code::ResourceExhausted => "resource exhausted",
        tonic::Code::PermissionDenied => "permission denied",
        tonic::Code::Unauthenticated => "unauthenticated",
        _ => "error",
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        Error::Status(status)
    }
}

impl Error {
    /// The gRPC status code, when the gateway refused the call.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Error::Status(s) => Some(s.code()),
            _ => None,
        }
    }
}
