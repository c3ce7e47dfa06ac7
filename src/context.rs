use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

use crate::{task, v1};

/// Where a task's progress reports go: the worker runtime publishes them as events.
pub type ProgressSink = Arc<dyn Fn(v1::TaskProgress) + Send + Sync>;

/// An answer of the worker runtime about a task's children, on its way.
pub type ChildFuture<T> = Pin<Box<dyn Future<Output = Result<T, tonic::Status>> + Send>>;

/// What the worker runtime does with a task's children: it hands them to a gateway, and asks
/// it whether they have ended.
pub trait Children: Send + Sync {
    /// Submits a child of the running attempt.
    fn submit(&self, child: v1::SubmitRequest) -> ChildFuture<v1::SubmitResponse>;
    /// Every child's outcome once all have ended; `None` while some have not.
    fn ended(&self) -> ChildFuture<Option<Vec<v1::TaskInfo>>>;
}

/// The error of an attempt that waits for its children.
pub const WAITING_FOR_CHILDREN: &str = "waiting for its children";

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
    children: Option<Arc<dyn Children>>,
    waiting: Arc<std::sync::atomic::AtomicBool>,
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
            children: None,
            waiting: Arc::default(),
        }
    }

    /// Hands the children the task submits, and its waits for them, to `children`.
    pub fn with_children(mut self, children: Arc<dyn Children>) -> Self {
        self.children = Some(children);
        self
    }

    /// Submits a child task: `task` (e.g. `examples.chaos.v1.Chaos/Sleep`) with its input
    /// message. The child records this task as its parent, Get lists it among this task's
    /// children, and cancelling this task cancels it. Its id is made from this task's id and
    /// its place among the children this attempt submitted, so an attempt that runs again
    /// after a retry finds the children it submitted before rather than submitting them twice
    /// (submit them one after another, or give each a key with [`Self::submit_child_with`]).
    pub async fn submit_child<M: prost::Message>(
        &self,
        task: &str,
        args: &M,
    ) -> Result<task::Id, tonic::Status> {
        let response = self
            .submit_child_with(v1::SubmitRequest {
                task: task.to_owned(),
                args: Some(v1::submit_request::Args::ArgsProto(args.encode_to_vec())),
                ..Default::default()
            })
            .await?;
        task::Id::parse(&response.task_id)
            .map_err(|e| tonic::Status::internal(format!("the gateway answered a bad id: {e}")))
    }

    /// Submits a child as `Tasks.Submit` takes a task (options, an idempotency key of its own
    /// among this task's children, JSON arguments).
    pub async fn submit_child_with(
        &self,
        request: v1::SubmitRequest,
    ) -> Result<v1::SubmitResponse, tonic::Status> {
        self.family()?.submit(request).await
    }

    /// Waits for this task's children without holding a worker: their outcomes (in the order
    /// they were submitted) once they have all ended. While some have not, this answers an
    /// error to return at once (`ctx.wait_for_children().await?`): the worker runtime then
    /// parks the task (Get shows it `waiting`) and runs it again from its start once the last
    /// child has ended. The children it submits again on that run are found, not stored
    /// twice, and this wait then answers their outcomes. (A handler that returns a success
    /// instead ends with it.)
    pub async fn wait_for_children(&self) -> Result<Vec<v1::TaskInfo>, crate::TaskError> {
        match self.children_ended().await {
            Ok(Some(children)) => Ok(children),
            Ok(None) => Err(crate::TaskError::retryable(WAITING_FOR_CHILDREN)),
            Err(status) => Err(crate::TaskError::retryable(format!(
                "cannot tell whether the children have ended: {}",
                status.message()
            ))),
        }
    }

    /// [`Self::wait_for_children`] as the runtime's context service answers it: `None` while
    /// some child has not ended, and the attempt is then marked as waiting.
    pub async fn children_ended(&self) -> Result<Option<Vec<v1::TaskInfo>>, tonic::Status> {
        let ended = self.family()?.ended().await?;
        if ended.is_none() {
            self.waiting
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(ended)
    }

    /// Whether the attempt waited for children that have not all ended: it is then parked
    /// rather than failed.
    pub fn is_waiting(&self) -> bool {
        self.waiting.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn family(&self) -> Result<&Arc<dyn Children>, tonic::Status> {
        self.children.as_ref().ok_or_else(|| {
            tonic::Status::failed_precondition(
                "this context has no children: it was not made by a worker runtime (give it one \
                 with TaskContext::with_children)",
            )
        })
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
