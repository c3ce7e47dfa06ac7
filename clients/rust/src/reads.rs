//! A task after its submit: its state, waits, live changes, cancel.

use std::time::Duration;

use taskwire::v1;

use crate::{Client, Error, TaskInfo, Watch};

impl Client {
    /// The current state of a task (and its result as JSON when `json`).
    pub async fn get(&self, id: &str, json: bool) -> Result<TaskInfo, Error> {
        let request = v1::GetRequest {
            task_id: id.to_owned(),
            include_json: json,
        };
        Ok(self.tasks.clone().get(request).await?.into_inner())
    }

    /// Waits on the gateway until the task has a result, at most `timeout`.
    pub async fn wait(&self, id: &str, timeout: Duration, json: bool) -> Result<TaskInfo, Error> {
        let request = v1::WaitRequest {
            task_id: id.to_owned(),
            timeout: prost_types::Duration::try_from(timeout).ok(),
            include_json: json,
        };
        let mut request = tonic::Request::new(request);
        request.set_timeout(timeout + Duration::from_secs(5));
        Ok(self.tasks.clone().wait(request).await?.into_inner())
    }

    /// Follows a task: its current state first, then every change until its final state.
    pub async fn watch(&self, id: &str, json: bool) -> Result<Watch, Error> {
        let request = v1::WatchRequest {
            task_id: id.to_owned(),
            include_json: json,
        };
        Ok(Watch {
            stream: self.tasks.clone().watch(request).await?.into_inner(),
        })
    }

    /// Cancels a task that has not finished.
    pub async fn cancel(&self, id: &str) -> Result<TaskInfo, Error> {
        let request = v1::CancelRequest {
            task_id: id.to_owned(),
        };
        Ok(self.tasks.clone().cancel(request).await?.into_inner())
    }
}
