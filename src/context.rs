use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::{task, v1};

/// Where a task's progress reports go: the worker runtime publishes them as events.
pub type ProgressSink = Arc<dyn Fn(v1::TaskProgress) + Send + Sync>;

/// What a running task knows about itself: its id, its attempt, and whether it should stop;
/// and how it tells the world how far it got.
#[derive(Clone)]
pub struct TaskContext {
    id: task::Id,
    name: task::Name,
    attempt: u32,
    max_attempts: u32,
    deadline: Option<Instant>,
    cancel: CancellationToken,
    progress: Option<ProgressSink>,
}

impl fmt::Debug for TaskContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskContext")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("attempt", &self.attempt)
            .field("max_attempts", &self.max_attempts)
            .field("deadline", &self.deadline)
            .field("cancelled", &self.cancel.is_cancelled())
            .finish_non_exhaustive()
    }
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
            progress: None,
        }
    }

    /// Sends progress reports here.
    pub fn with_progress_sink(mut self, sink: ProgressSink) -> Self {
        self.progress = Some(sink);
        self
    }

    /// Reports how far the task got: `percent` from 0 to 100 and a short message. Watchers
    /// (`Tasks.Watch`, `taskwire watch`) see it at once, and Get shows the last one.
    pub fn progress(&self, percent: f32, message: impl Into<String>) {
        self.report(v1::TaskProgress {
            percent: percent.clamp(0.0, 100.0),
            message: message.into(),
            ..Default::default()
        });
    }

    /// Reports progress with a typed message of the task's own (say, rows done and rows left).
    pub fn progress_details<M: prost::Message + prost::Name>(
        &self,
        percent: f32,
        message: impl Into<String>,
        details: &M,
    ) {
        self.report(v1::TaskProgress {
            percent: percent.clamp(0.0, 100.0),
            message: message.into(),
            details: details.encode_to_vec(),
            details_type: M::full_name(),
        });
    }

    /// Reports progress as the event carries it (the worker runtime's bridge forwards the
    /// reports of handlers it calls this way).
    pub fn report(&self, progress: v1::TaskProgress) {
        if let Some(sink) = &self.progress {
            sink(progress);
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
