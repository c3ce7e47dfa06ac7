use std::fmt;
use std::time::Duration;

/// Whether trying a failed task again could help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A passing condition (a timeout, a busy dependency): the task is tried again while it has
    /// attempts left.
    Retryable,
    /// The task can never succeed with these arguments: it fails at once.
    Permanent,
}

/// How a task fails. Return it from a task; the worker turns it into a retry or a failed result.
///
/// ```
/// use taskwire::TaskError;
/// let err = TaskError::retryable("database is busy");
/// assert!(err.is_retryable());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskError {
    kind: ErrorKind,
    message: String,
    poison: bool,
    crash: bool,
    retry_after: Option<Duration>,
}

impl TaskError {
    /// A failure that may pass: the task is tried again while it has attempts left.
    pub fn retryable(message: impl fmt::Display) -> Self {
        Self {
            kind: ErrorKind::Retryable,
            message: message.to_string(),
            poison: false,
            crash: false,
            retry_after: None,
        }
    }

    /// A failure that will not pass: the task fails at once.
    pub fn permanent(message: impl fmt::Display) -> Self {
        Self {
            kind: ErrorKind::Permanent,
            message: message.to_string(),
            poison: false,
            crash: false,
            retry_after: None,
        }
    }

    /// The arguments did not decode as the task's input message.
    pub fn undecodable(input_type: &str, err: prost::DecodeError) -> Self {
        Self {
            poison: true,
            ..Self::permanent(format!(
                "the arguments do not decode as {input_type}: {err}"
            ))
        }
    }

    /// The handler failed in a way it did not foresee (an uncaught exception in a handler the
    /// worker runtime called): the task fails at once, as a panic does.
    pub fn crashed(message: impl fmt::Display) -> Self {
        Self {
            crash: true,
            ..Self::permanent(message)
        }
    }

    /// Whether the handler failed in a way it did not foresee ([`TaskError::crashed`]).
    pub fn is_crash(&self) -> bool {
        self.crash
    }

    /// A service was asked to run a task it does not have.
    pub fn unknown_task(service: &str, task: &str) -> Self {
        Self::permanent(format!("service {service} has no task {task}"))
    }

    /// A retryable failure that says when to try again: the next attempt waits `after`
    /// instead of the task's backoff (while attempts are left).
    ///
    /// ```
    /// use std::time::Duration;
    /// use taskwire::TaskError;
    /// let err = TaskError::retryable("rate limited upstream").retry_after(Duration::from_secs(30));
    /// assert_eq!(err.retry_delay(), Some(Duration::from_secs(30)));
    /// ```
    pub fn retry_after(mut self, after: Duration) -> Self {
        self.kind = ErrorKind::Retryable;
        self.retry_after = Some(after);
        self
    }

    /// When the task asked to be tried again, if it did ([`TaskError::retry_after`]).
    pub fn retry_delay(&self) -> Option<Duration> {
        self.retry_after
    }

    /// Whether the task is tried again.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Shorthand for `kind() == ErrorKind::Retryable`.
    pub fn is_retryable(&self) -> bool {
        self.kind == ErrorKind::Retryable
    }

    /// Whether the task's message itself is broken (its arguments do not decode): such a task
    /// can never run, whoever tries.
    pub fn is_poison(&self) -> bool {
        self.poison
    }

    /// What went wrong, as the task said it.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TaskError {}
