//! The typed handle of a submitted task, its live changes and its awaited outcome.

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use taskwire::v1::TaskState;

use crate::{Client, Error, TaskInfo};

/// Whether a state is final: the task will not change any more.
pub fn is_final(state: TaskState) -> bool {
    matches!(
        state,
        TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled | TaskState::Expired
    )
}

/// The changes of a task, from [`Client::watch`] or [`TaskHandle::watch`].
#[derive(Debug)]
pub struct Watch {
    pub(crate) stream: tonic::Streaming<TaskInfo>,
}

/// A task submitted with [`Client::submit_and_wait`]: stored, its final state on the way.
#[derive(Debug)]
pub struct Pending {
    pub(crate) first: TaskInfo,
    pub(crate) stream: tonic::Streaming<TaskInfo>,
}

/// The typed outcome of a finished task.
pub(crate) fn outcome<O: prost::Message + Default>(info: TaskInfo) -> Result<O, Error> {
    let id = info.task_id.clone();
    match info.state() {
        TaskState::Succeeded => {
            O::decode(info.result.as_slice()).map_err(|source| Error::Decode { id, source })
        }
        TaskState::Cancelled => Err(Error::Cancelled { id }),
        TaskState::Expired => Err(Error::Expired { id }),
        _ => {
            let failure = info.error.unwrap_or_default();
            Err(Error::TaskFailed {
                id,
                message: failure.message,
                retryable: failure.retryable,
            })
        }
    }
}

/// A submitted task whose result decodes as `O`.
pub struct TaskHandle<O> {
    pub(crate) client: Client,
    pub(crate) id: String,
    pub(crate) output: PhantomData<fn() -> O>,
}

impl Watch {
    /// The next state or progress report; `None` after the final state.
    pub async fn next(&mut self) -> Result<Option<TaskInfo>, Error> {
        Ok(self.stream.message().await?)
    }
}

impl Pending {
    /// The task id.
    pub fn id(&self) -> &str {
        &self.first.task_id
    }

    /// The state when the task was stored (queued, or final for a repeated idempotency key).
    pub fn first(&self) -> &TaskInfo {
        &self.first
    }

    /// Waits for the final state; a task still running at the timeout is a `DEADLINE_EXCEEDED`
    /// status.
    pub async fn finish(mut self) -> Result<TaskInfo, Error> {
        let last = if !is_final(self.first.state()) {
            self.stream.message().await?.ok_or_else(|| {
                Error::Status(tonic::Status::internal(
                    "the gateway closed the stream early",
                ))
            })?
        } else {
            self.first
        };
        // Read to the end of the stream (its trailers), so that it closes cleanly instead of
        // being reset.
        while self.stream.message().await?.is_some() {}
        Ok(last)
    }
}

impl<O> fmt::Debug for TaskHandle<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskHandle").field("id", &self.id).finish()
    }
}

impl<O> Clone for TaskHandle<O> {
    fn clone(&self) -> Self {
        Self {
            client: self.client.clone(),
            id: self.id.clone(),
            output: PhantomData,
        }
    }
}

impl<O: prost::Message + Default> TaskHandle<O> {
    /// A handle on a task submitted earlier.
    pub fn from_id(client: Client, id: impl Into<String>) -> Self {
        Self {
            client,
            id: id.into(),
            output: PhantomData,
        }
    }

    /// The task id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The task's current state.
    pub async fn state(&self) -> Result<TaskState, Error> {
        Ok(self.client.get(&self.id, false).await?.state())
    }

    /// Everything the gateway knows about the task now.
    pub async fn info(&self) -> Result<TaskInfo, Error> {
        self.client.get(&self.id, false).await
    }

    /// Waits up to `timeout` for the result. A failed or cancelled task is an error; a task
    /// still running after `timeout` is a `DEADLINE_EXCEEDED` status.
    pub async fn get(&self, timeout: Duration) -> Result<O, Error> {
        outcome(self.client.wait(&self.id, timeout, false).await?)
    }

    /// Cancels the task if it has not finished.
    pub async fn cancel(&self) -> Result<(), Error> {
        self.client.cancel(&self.id).await.map(|_| ())
    }

    /// Follows the task's state and progress until it ends.
    pub async fn watch(&self) -> Result<Watch, Error> {
        self.client.watch(&self.id, false).await
    }
}
