use std::time::Instant;

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::task;

/// What a running task knows about itself: its id, its attempt, and whether it should stop.
#[derive(Debug, Clone)]
pub struct TaskContext {
    id: task::Id,
    name: task::Name,
    attempt: u32,
    max_attempts: u32,
    deadline: Option<Instant>,
    cancel: CancellationToken,
}

impl TaskContext {
    /// A context for one attempt of a task. The worker runtime makes these; tests of a task
    /// implementation can too.
    pub fn new(id: task::Id, name: task::Name, attempt: u32, max_attempts: u32) -> Self {
        Self {
            id,
            name,
            attempt,
            max_attempts,
            deadline: None,
            cancel: CancellationToken::new(),
        }
    }

    /// Sets the instant at which the attempt is stopped.
    pub fn with_deadline(mut self, deadline: Option<Instant>) -> Self {
        self.deadline = deadline;
        self
    }

    /// Uses this token to tell the task to stop.
    pub fn with_cancellation(mut self, token: CancellationToken) -> Self {
        self.cancel = token;
        self
    }

    /// The task's id.
    pub fn id(&self) -> &task::Id {
        &self.id
    }

    /// The task's name, e.g. `examples.magic.v1.Magic/Add`.
    pub fn task(&self) -> &task::Name {
        &self.name
    }

    /// This attempt, counting from 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// How many attempts the task has in all.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// When this attempt is stopped, if it has a time limit.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Whether the task has been told to stop (time limit, cancel, shutdown).
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Completes when the task is told to stop; select on it in long tasks.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.cancel.cancelled()
    }
}
