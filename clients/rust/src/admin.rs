//! The Admin API: dead letters, limits, workers, queues, history and task types.

use taskwire::v1;

use crate::{Client, Error, TaskType};

impl Client {
    /// Dead letters, oldest first; `task` empty means every task type.
    pub async fn dead_letters(&self, task: &str, limit: u32) -> Result<Vec<v1::DeadLetter>, Error> {
        let request = v1::ListDeadLettersRequest {
            task: task.to_owned(),
            limit,
        };
        Ok(self
            .admin
            .clone()
            .list_dead_letters(request)
            .await?
            .into_inner()
            .dead_letters)
    }

    /// Puts dead tasks back in line: these ids, or with `all` every dead task of `task`.
    pub async fn replay_dead_letters(
        &self,
        task_ids: Vec<String>,
        task: &str,
        all: bool,
    ) -> Result<Vec<String>, Error> {
        let request = v1::ReplayDeadLettersRequest {
            task_ids,
            task: task.to_owned(),
            all,
            ..Default::default()
        };
        self.replay_dead_letters_matching(request).await
    }

    /// Puts dead tasks back in line as the request says: its ids, or with `all` every dead
    /// letter that matches its filter fields (task pattern, reason, error text, times).
    pub async fn replay_dead_letters_matching(
        &self,
        request: v1::ReplayDeadLettersRequest,
    ) -> Result<Vec<String>, Error> {
        Ok(self
            .admin
            .clone()
            .replay_dead_letters(request)
            .await?
            .into_inner()
            .task_ids)
    }

    /// Deletes dead letters; `task` empty means all. Returns how many.
    pub async fn purge_dead_letters(&self, task: &str) -> Result<u64, Error> {
        let request = v1::PurgeDeadLettersRequest {
            task: task.to_owned(),
        };
        Ok(self
            .admin
            .clone()
            .purge_dead_letters(request)
            .await?
            .into_inner()
            .purged)
    }

    /// The cluster-wide limits in force for a task type.
    pub async fn task_limits(&self, task: &str) -> Result<v1::TaskLimitsResponse, Error> {
        let request = v1::GetTaskLimitsRequest {
            task: task.to_owned(),
        };
        Ok(self
            .admin
            .clone()
            .get_task_limits(request)
            .await?
            .into_inner())
    }

    /// Overrides a task type's declared limits; `None` drops the override.
    pub async fn set_task_limits(
        &self,
        task: &str,
        limits: Option<v1::TaskLimits>,
    ) -> Result<v1::TaskLimitsResponse, Error> {
        let request = v1::SetTaskLimitsRequest {
            task: task.to_owned(),
            clear: limits.is_none(),
            limits,
        };
        Ok(self
            .admin
            .clone()
            .set_task_limits(request)
            .await?
            .into_inner())
    }

    /// Pauses a task type's queue at `priorities` (none: every priority): workers start none
    /// of its tasks until it is resumed; what runs finishes, and Submit still stores.
    pub async fn pause_queue(
        &self,
        task: &str,
        priorities: &[v1::Priority],
        reason: &str,
    ) -> Result<v1::QueuePauseResponse, Error> {
        let request = v1::PauseQueueRequest {
            task: task.to_owned(),
            priorities: priorities.iter().map(|p| *p as i32).collect(),
            reason: reason.to_owned(),
        };
        Ok(self.admin.clone().pause_queue(request).await?.into_inner())
    }

    /// Resumes a paused queue at `priorities` (none: every priority).
    pub async fn resume_queue(
        &self,
        task: &str,
        priorities: &[v1::Priority],
    ) -> Result<v1::QueuePauseResponse, Error> {
        let request = v1::ResumeQueueRequest {
            task: task.to_owned(),
            priorities: priorities.iter().map(|p| *p as i32).collect(),
        };
        Ok(self.admin.clone().resume_queue(request).await?.into_inner())
    }

    /// Cancels every task waiting in a task type's queue at `priorities` (none: every
    /// priority), as a Cancel of each would; a task running now finishes. How many it
    /// cancelled.
    pub async fn purge_queue(&self, task: &str, priorities: &[v1::Priority]) -> Result<u64, Error> {
        let request = v1::PurgeQueueRequest {
            task: task.to_owned(),
            priorities: priorities.iter().map(|p| *p as i32).collect(),
        };
        Ok(self
            .admin
            .clone()
            .purge_queue(request)
            .await?
            .into_inner()
            .purged)
    }

    /// The workers alive now.
    pub async fn workers(&self) -> Result<Vec<v1::WorkerInfo>, Error> {
        Ok(self
            .admin
            .clone()
            .list_workers(v1::ListWorkersRequest {})
            .await?
            .into_inner()
            .workers)
    }

    /// Every task type's queues, per priority.
    pub async fn queues(&self) -> Result<Vec<v1::QueueInfo>, Error> {
        Ok(self
            .admin
            .clone()
            .list_queues(v1::ListQueuesRequest {})
            .await?
            .into_inner()
            .queues)
    }

    /// A task's state changes, oldest first, and its result.
    pub async fn task_history(&self, id: &str) -> Result<v1::GetTaskHistoryResponse, Error> {
        let request = v1::GetTaskHistoryRequest {
            task_id: id.to_owned(),
        };
        Ok(self
            .admin
            .clone()
            .get_task_history(request)
            .await?
            .into_inner())
    }

    /// The task types the gateway knows.
    pub async fn task_types(&self) -> Result<Vec<TaskType>, Error> {
        Ok(self
            .admin
            .clone()
            .list_task_types(v1::ListTaskTypesRequest {})
            .await?
            .into_inner()
            .task_types)
    }
}
